package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// The JetStream objects guardian uses by default.
const (
	recordsBucket = "GUARDIAN_APPROVALS"
	recordsStream = "KV_GUARDIAN_APPROVALS"
	timersStream  = "GUARDIAN_TIMERS"
	policyStream  = "KV_GUARDIAN_POLICY"
	eventsStream  = "GUARDIAN_EVENTS"
	auditStream   = "GUARDIAN_AUDIT"
	eventsPrefix  = "guardian.v1.events."
	auditPrefix   = "guardian.v1.audit."
	expiredCode   = "TIMEOUT_APPROVAL_EXPIRED"
	notifierName  = "guardian-notifier"
	expirerName   = "guardian-expirer"
	msgIDHeader   = "Nats-Msg-Id"
	kvOpHeader    = "KV-Operation"
)

// terminalKind reports whether a lifecycle event kind is a final one.
func terminalKind(kind string) bool {
	switch kind {
	case kvapprovals.KindApproved, kvapprovals.KindDenied, kvapprovals.KindCancelled, kvapprovals.KindExpired:
		return true
	}
	return false
}

// ledger is what a user can read back after a run: every record revision
// from the records bucket's stream, every lifecycle event and every
// TIMEOUT_APPROVAL_EXPIRED audit event.
type ledger struct {
	revs     map[string][]kvapprovals.Record // key -> revisions, oldest first
	events   map[string][]kvapprovals.Event  // key -> lifecycle events, stream order
	eventIDs map[string]int                  // Nats-Msg-Id -> stored copies
	audit    map[string][]jsguard.Event      // approval key -> expiry audit events
	auditIDs map[string]int                  // event_id -> stored copies
}

func readLedger(t testing.TB, js jetstream.JetStream) *ledger {
	t.Helper()
	l := newLedger()
	must := func(add func(jetstream.Msg) error) func(jetstream.Msg) {
		return func(m jetstream.Msg) {
			if err := add(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	readStream(t, js, recordsStream, "$KV."+recordsBucket+".>", must(l.addRecord))
	readStream(t, js, eventsStream, eventsPrefix+">", must(l.addEvent))
	readStream(t, js, auditStream, auditPrefix+"*."+expiredCode, must(l.addAudit))
	return l
}

func newLedger() *ledger {
	return &ledger{
		revs: map[string][]kvapprovals.Record{}, events: map[string][]kvapprovals.Event{}, eventIDs: map[string]int{},
		audit: map[string][]jsguard.Event{}, auditIDs: map[string]int{},
	}
}

// addRecord adds a record revision; deletes, purges and markers are not.
func (l *ledger) addRecord(m jetstream.Msg) error {
	if m.Headers().Get(kvOpHeader) != "" || m.Headers().Get(jetstream.MarkerReasonHeader) != "" {
		return nil
	}
	md, err := m.Metadata()
	if err != nil {
		return fmt.Errorf("record metadata: %w", err)
	}
	var r kvapprovals.Record
	if err := json.Unmarshal(m.Data(), &r); err != nil {
		return fmt.Errorf("record %s: %w", m.Subject(), err)
	}
	r.Revision = md.Sequence.Stream
	l.revs[r.Key()] = append(l.revs[r.Key()], r)
	return nil
}

// addEvent adds a lifecycle event.
func (l *ledger) addEvent(m jetstream.Msg) error {
	var ev kvapprovals.Event
	if err := json.Unmarshal(m.Data(), &ev); err != nil {
		return fmt.Errorf("event %s: %w", m.Subject(), err)
	}
	l.eventIDs[m.Headers().Get(msgIDHeader)]++
	key := ev.Tenant + "." + ev.ID
	l.events[key] = append(l.events[key], ev)
	return nil
}

// addAudit adds a TIMEOUT_APPROVAL_EXPIRED audit event.
func (l *ledger) addAudit(m jetstream.Msg) error {
	var ev jsguard.Event
	if err := json.Unmarshal(m.Data(), &ev); err != nil {
		return fmt.Errorf("audit event %s: %w", m.Subject(), err)
	}
	l.auditIDs[ev.EventID]++
	key := ev.TenantID + "." + ev.AdditionalContext["approval_id"]
	l.audit[key] = append(l.audit[key], ev)
	return nil
}

// liveLedger collects the records' revisions and the lifecycle events as
// they are stored, for runs longer than guardian keeps them (the soak
// keeps records and events 11 minutes); the audit trail, kept 90 days, is
// read at the end.
type liveLedger struct {
	mu                sync.Mutex
	l                 *ledger
	terminal, expired int
	errs              []error
	ccs               []jetstream.ConsumeContext
}

// collectLedger starts collecting from the beginning of the streams.
func collectLedger(t testing.TB, js jetstream.JetStream) *liveLedger {
	t.Helper()
	c := &liveLedger{l: newLedger()}
	countEvent := func(m jetstream.Msg) error {
		if err := c.l.addEvent(m); err != nil {
			return err
		}
		kind := m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:]
		if terminalKind(kind) {
			c.terminal++
		}
		if kind == kvapprovals.KindExpired {
			c.expired++
		}
		return nil
	}
	for _, s := range []struct {
		stream, filter string
		add            func(jetstream.Msg) error
	}{{recordsStream, "$KV." + recordsBucket + ".>", c.l.addRecord}, {eventsStream, eventsPrefix + ">", countEvent}} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		cons, err := js.OrderedConsumer(ctx, s.stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{s.filter}})
		cancel()
		if err != nil {
			t.Fatalf("collect %s: %v", s.stream, err)
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if err := s.add(m); err != nil {
				c.errs = append(c.errs, err)
			}
		})
		if err != nil {
			t.Fatalf("collect %s: %v", s.stream, err)
		}
		c.ccs = append(c.ccs, cc)
	}
	t.Cleanup(c.stop)
	return c
}

func (c *liveLedger) stop() {
	for _, cc := range c.ccs {
		cc.Stop()
	}
}

// waitSettled is waitSettled for what was collected.
func (c *liveLedger) waitSettled(js jetstream.JetStream, n int, d time.Duration) bool {
	return poll(d, 250*time.Millisecond, func() bool {
		c.mu.Lock()
		terminal, expired := c.terminal, c.expired
		c.mu.Unlock()
		if terminal < n {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		audits, err := subjectCounts(ctx, js, auditStream, auditPrefix+"*."+expiredCode)
		if err != nil || sum(audits) < expired {
			return false
		}
		return consumerIdle(ctx, js, recordsStream, notifierName)
	})
}

// ledger stops collecting, reads the audit trail and returns the ledger.
func (c *liveLedger) ledger(t testing.TB, js jetstream.JetStream) *ledger {
	t.Helper()
	c.stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, err := range c.errs {
		t.Error(err)
	}
	readStream(t, js, auditStream, auditPrefix+"*."+expiredCode, func(m jetstream.Msg) {
		if err := c.l.addAudit(m); err != nil {
			t.Fatal(err)
		}
	})
	return c.l
}

// tally counts what a user would check after a run.
type tally struct {
	Approvals     int
	Missing       int // acknowledged approvals that are not in the bucket
	Final         map[kvapprovals.Status]int
	NotTerminal   int // latest revision is not terminal
	MultiTerminal int // more than one terminal revision
	Revisions     int
	Events        int
	EventsLost    int // revisions without their event
	EventsDup     int // extra stored copies of an event, or a second terminal event
	EventsWrong   int // an event whose kind or revision matches no record revision
	Warnings      int
	AuditLost     int // expired approvals without their audit event
	AuditDup      int // extra audit events for one expiry, or an event id stored twice
	AuditStray    int // audit events of approvals that did not expire
	Early         int // expired before expires_at + grace
	Lateness      []time.Duration
}

// lost and dup sum the counts that must be zero.
func (c *tally) lost() int { return c.Missing + c.NotTerminal + c.EventsLost + c.AuditLost }
func (c *tally) dup() int {
	return c.MultiTerminal + c.EventsDup + c.EventsWrong + c.AuditDup + c.AuditStray
}

// tally checks every approval in the bucket and every key in acked (those
// whose request was answered with success).
func (l *ledger) tally(acked []string, grace time.Duration) tally {
	c := tally{Final: map[kvapprovals.Status]int{}}
	for _, k := range acked {
		if len(l.revs[k]) == 0 {
			c.Missing++
		}
	}
	for key, revs := range l.revs {
		c.Approvals++
		c.Revisions += len(revs)
		last := revs[len(revs)-1]
		c.Final[last.Status]++
		terminals := 0
		for _, r := range revs {
			if r.Status.Terminal() {
				terminals++
			}
		}
		switch {
		case !last.Status.Terminal():
			c.NotTerminal++
		case terminals > 1:
			c.MultiTerminal += terminals - 1
		}
		// One event per revision, of the revision's kind.
		byRev := map[uint64][]kvapprovals.Event{}
		terminalEvents := 0
		for _, ev := range l.events[key] {
			byRev[ev.Revision] = append(byRev[ev.Revision], ev)
			if terminalKind(ev.Kind) {
				terminalEvents++
			}
			if ev.Kind == kvapprovals.KindWarning {
				c.Warnings++
			}
		}
		c.Events += len(l.events[key])
		if terminalEvents > 1 {
			c.EventsDup += terminalEvents - 1
		}
		for _, r := range revs {
			evs := byRev[r.Revision]
			delete(byRev, r.Revision)
			id := fmt.Sprintf("%s.%d", key, r.Revision)
			switch {
			case len(evs) == 0:
				c.EventsLost++
				continue
			case len(evs) > 1:
				c.EventsDup += len(evs) - 1
			}
			if l.eventIDs[id] > 1 {
				c.EventsDup += l.eventIDs[id] - 1
			}
			if evs[0].Kind != r.Kind() {
				c.EventsWrong++
			}
		}
		for _, evs := range byRev { // events of revisions that do not exist
			c.EventsWrong += len(evs)
		}
		// One audit event per expiry, none otherwise.
		audits := l.audit[key]
		if last.Status == kvapprovals.StatusExpired {
			switch {
			case len(audits) == 0:
				c.AuditLost++
			case len(audits) > 1:
				c.AuditDup += len(audits) - 1
			}
			deadline := last.Deadline(grace)
			if last.DecidedAt != nil {
				late := last.DecidedAt.Sub(deadline)
				if late < 0 {
					c.Early++
				}
				c.Lateness = append(c.Lateness, late)
			}
		} else {
			c.AuditStray += len(audits)
		}
		delete(l.audit, key)
	}
	for _, audits := range l.audit { // audit events of approvals not in the bucket
		c.AuditStray += len(audits)
	}
	for _, n := range l.auditIDs {
		if n > 1 {
			c.AuditDup += n - 1
		}
	}
	return c
}

func (c *tally) String() string {
	p50, p99, mx := percentiles(c.Lateness)
	return fmt.Sprintf("%d approvals (approved %d, denied %d, cancelled %d, expired %d, still pending %d), %d revisions, %d events (%d warnings); "+
		"lost %d / duplicated %d [missing %d, not terminal %d, >1 terminal %d, events lost %d dup %d wrong %d, audit lost %d dup %d stray %d]; "+
		"expiry lateness after expires_at+grace p50 %s p99 %s max %s, early %d",
		c.Approvals, c.Final[kvapprovals.StatusApproved], c.Final[kvapprovals.StatusDenied], c.Final[kvapprovals.StatusCancelled],
		c.Final[kvapprovals.StatusExpired], c.Final[kvapprovals.StatusPending], c.Revisions, c.Events, c.Warnings,
		c.lost(), c.dup(), c.Missing, c.NotTerminal, c.MultiTerminal, c.EventsLost, c.EventsDup, c.EventsWrong,
		c.AuditLost, c.AuditDup, c.AuditStray, ms(p50), ms(p99), ms(mx), c.Early)
}

// assertExactlyOnce fails unless nothing was lost or duplicated and no
// expiry came early.
func assertExactlyOnce(t *testing.T, c *tally) {
	t.Helper()
	if c.lost() != 0 || c.dup() != 0 {
		t.Errorf("lost %d / duplicated %d, want 0 / 0: %s", c.lost(), c.dup(), c)
	}
	if c.Early != 0 {
		t.Errorf("%d approvals expired before expires_at + grace", c.Early)
	}
}

// waitSettled waits until n approvals have a terminal event, every expiry
// has its audit event and the notifier has nothing left to do. It reports
// whether that happened within d; the caller checks the details.
func waitSettled(t testing.TB, js jetstream.JetStream, n int, d time.Duration) bool {
	t.Helper()
	return poll(d, 250*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		terminal, expired, err := terminalEvents(ctx, js)
		if err != nil || terminal < n {
			return false
		}
		audits, err := subjectCounts(ctx, js, auditStream, auditPrefix+"*."+expiredCode)
		if err != nil || sum(audits) < expired {
			return false
		}
		return consumerIdle(ctx, js, recordsStream, notifierName)
	})
}

// terminalEvents counts the terminal lifecycle events stored, and the
// expired ones among them.
func terminalEvents(ctx context.Context, js jetstream.JetStream) (terminal, expired int, err error) {
	counts, err := subjectCounts(ctx, js, eventsStream, eventsPrefix+">")
	if err != nil {
		return 0, 0, err
	}
	for subj, n := range counts {
		kind := subj[strings.LastIndexByte(subj, '.')+1:]
		if terminalKind(kind) {
			terminal += int(n)
		}
		if kind == kvapprovals.KindExpired {
			expired += int(n)
		}
	}
	return terminal, expired, nil
}

func sum(m map[string]uint64) int {
	n := 0
	for _, v := range m {
		n += int(v)
	}
	return n
}

// percentiles returns p50, p99 and the max of ds.
func percentiles(ds []time.Duration) (p50, p99, mx time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[max(0, int(math.Ceil(q*float64(len(s))))-1)] }
	return at(0.5), at(0.99), s[len(s)-1]
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }
