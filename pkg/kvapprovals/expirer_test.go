package kvapprovals

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

var expiredCode = jsguard.ApprovalExpired.Code()

func TestExpiry(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var lateness []time.Duration
	e := newEnv(t, nil, WithHooks(Hooks{OnExpired: func(d time.Duration) {
		mu.Lock()
		lateness = append(lateness, d)
		mu.Unlock()
	}}))
	startConsumers(t, e.svc)
	ctx := jsguard.WithTenant(t.Context(), "acme")
	r := e.request("acme", RequestInput{ID: "x1", SessionID: "sess-1", RequestedBy: "alice", OperatorID: "op-7", Timeout: Duration(time.Second)})
	deadline := r.Deadline(e.cfg.GracePeriod)

	waitFor(t, 10*time.Second, "expired record", func() bool { return e.get("acme", "x1").Status == StatusExpired })
	got := e.get("acme", "x1")
	if got.DecidedAt == nil || got.DecidedAt.Before(deadline) || got.DecidedBy != "" || got.Reason == "" {
		t.Errorf("expired record = %+v (deadline %s)", got, deadline)
	}
	// A decision now is refused as expired (and already decided).
	_, err := e.svc.Approve(ctx, "acme", DecisionInput{ID: "x1", DecidedBy: "bob"})
	var se *StateError
	if !errors.Is(err, ErrExpired) || !errors.Is(err, ErrAlreadyDecided) || !errors.As(err, &se) || se.Record.Status != StatusExpired {
		t.Errorf("approve after expiry: %v", err)
	}

	waitFor(t, 10*time.Second, "expired event", func() bool { return e.countEvents("guardian.v1.events.acme.expired") == 1 })
	evs := e.events("guardian.v1.events.acme.>")
	var kinds []string
	for _, ev := range evs {
		kinds = append(kinds, ev.Kind)
		if ev.Tenant != "acme" || ev.ID != "x1" || ev.Record.Revision != ev.Revision || ev.Revision == 0 {
			t.Errorf("event = %+v", ev)
		}
	}
	// 1s timeout = WarningBefore: no warning scheduled.
	if fmt.Sprint(kinds) != "[requested expired]" {
		t.Errorf("event kinds = %v, want [requested expired]", kinds)
	}

	waitFor(t, 5*time.Second, "audit event", func() bool { return len(e.audit.byCode(expiredCode)) == 1 })
	a := e.audit.byCode(expiredCode)[0]
	wantCtx := map[string]string{"approval_id": "x1", "session_id": "sess-1", "requested_by": "alice", "operator_id": "op-7", "timeout": "1s", "grace": "1s"}
	for k, v := range wantCtx {
		if a.AdditionalContext[k] != v {
			t.Errorf("audit additional_context[%s] = %q, want %q", k, a.AdditionalContext[k], v)
		}
	}
	late, err := time.ParseDuration(a.AdditionalContext["lateness"])
	if err != nil || late < 0 || late > 3*time.Second {
		t.Errorf("audit lateness %q: %v", a.AdditionalContext["lateness"], err)
	}
	if a.TenantID != "acme" || a.CorrelationID != "sess-1" || a.EventType != jsguard.EventType || !a.StartedAt.Equal(r.RequestedAt) {
		t.Errorf("audit event = %+v", a)
	}
	if a.EventID != jsguard.EventID(expiredCode, a.Operation, "acme", "sess-1", "", r.RequestedAt) {
		t.Errorf("audit event id %s is not derived from the approval", a.EventID)
	}
	mu.Lock()
	if len(lateness) != 1 || lateness[0] < 0 {
		t.Errorf("OnExpired lateness = %v", lateness)
	}
	mu.Unlock()
	s := e.svc.Stats()
	if s.Requested != 1 || s.Expired != 1 || s.AuditEvents != 1 || s.EventsPublished < 2 {
		t.Errorf("stats = %+v", s)
	}
}

func TestWarnings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		send    bool
		timeout time.Duration
		warn    bool
	}{
		{"scheduled", true, 3 * time.Second, true},
		{"timeout equals WarningBefore", true, time.Second, false},
		{"warnings off", false, 3 * time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, func(c *Config) { c.SendTimeoutWarnings = tt.send; c.GracePeriod = 0 })
			startConsumers(t, e.svc)
			r := e.request("acme", RequestInput{ID: "w", SessionID: "s", RequestedBy: "alice", Timeout: Duration(tt.timeout)})
			waitFor(t, 10*time.Second, "expired event", func() bool { return e.countEvents("guardian.v1.events.acme.expired") == 1 })
			warnings := e.events("guardian.v1.events.acme.warning")
			got := e.get("acme", "w")
			if !tt.warn {
				if len(warnings) != 0 || got.WarnedAt != nil {
					t.Errorf("unscheduled warning: %d events, warned_at %v", len(warnings), got.WarnedAt)
				}
				return
			}
			if len(warnings) != 1 {
				t.Fatalf("%d warning events, want 1", len(warnings))
			}
			w := warnings[0].Record.WarnedAt
			warnAt := r.ExpiresAt.Add(-e.cfg.WarningBefore)
			if w == nil || w.Before(warnAt) || !w.Before(r.ExpiresAt) || got.WarnedAt == nil || !got.WarnedAt.Equal(*w) {
				t.Errorf("warned_at %v, want in [%s, %s)", w, warnAt, r.ExpiresAt)
			}
			if e.svc.Stats().Warned != 1 {
				t.Errorf("stats = %+v", e.svc.Stats())
			}
		})
	}
}

// TestDecidedNeverExpires: a decided approval's timers are purged, and even
// a timer left behind fires into a record that is no longer pending.
func TestDecidedNeverExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.GracePeriod = 0 })
	startConsumers(t, e.svc)
	ctx := t.Context()
	e.request("acme", RequestInput{ID: "a", SessionID: "s", RequestedBy: "alice", Timeout: Duration(time.Second)})
	e.request("acme", RequestInput{ID: "b", SessionID: "s", RequestedBy: "alice", Timeout: Duration(time.Second)})
	if _, err := e.svc.Approve(ctx, "acme", DecisionInput{ID: "a", DecidedBy: "bob"}); err != nil {
		t.Fatal(err)
	}
	// The decision removed a's timer before it could fire.
	if keys := e.timerKeys(); slices.ContainsFunc(keys, func(k string) bool { return strings.HasPrefix(k, "acme.a.") }) {
		t.Errorf("armed timers after a's approval: %v", keys)
	}
	// Decide b behind the service's back so its timer stays armed.
	rb := e.get("acme", "b")
	now := time.Now().UTC()
	rb.Status, rb.DecidedBy, rb.DecidedAt = StatusDenied, "bob", &now
	if _, err := e.svc.update(ctx, &rb, rb.Revision); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b's timer to fire", func() bool { return len(e.timerKeys()) == 0 })
	waitFor(t, 10*time.Second, "events", func() bool { return e.countEvents("guardian.v1.events.acme.>") == 4 })
	time.Sleep(500 * time.Millisecond) // give a wrong expiry the chance to show
	if e.countEvents("guardian.v1.events.acme.expired") != 0 || e.get("acme", "a").Status != StatusApproved || e.get("acme", "b").Status != StatusDenied {
		t.Errorf("a decided approval expired")
	}
	if n := len(e.history("acme.b")); n != 2 {
		t.Errorf("b has %d revisions, want 2", n)
	}
}

// TestRestart stops the expirer and notifier, lets the timers fire (while
// nats-server, too, is down for part of the set), and starts them again:
// every approval expires exactly once, with one event each.
func TestRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.GracePeriod = 0 })
	stop := startConsumers(t, e.svc)
	for i := range 20 {
		e.request("acme", RequestInput{ID: fmt.Sprint("r", i), SessionID: "s", RequestedBy: "alice", Timeout: Duration(2 * time.Second)})
	}
	waitFor(t, 5*time.Second, "requested events", func() bool { return e.countEvents("guardian.v1.events.acme.requested") == 20 })
	stop()
	// Half fall due while the consumers are down, half while the server is.
	for i := 20; i < 40; i++ {
		e.request("acme", RequestInput{ID: fmt.Sprint("r", i), SessionID: "s", RequestedBy: "alice", Timeout: Duration(3 * time.Second)})
	}
	time.Sleep(2500 * time.Millisecond) // the first 20 fall due, nobody listens
	e.srv = natstest.Restart(t, e.srv)
	time.Sleep(time.Second) // the rest fall due while nobody listens
	startConsumers(t, e.svc)
	waitFor(t, 15*time.Second, "40 expired events", func() bool { return e.countEvents("guardian.v1.events.acme.expired") == 40 })
	time.Sleep(300 * time.Millisecond)
	counts := map[string]int{}
	for _, ev := range e.events("guardian.v1.events.acme.>") {
		counts[ev.ID+"/"+ev.Kind]++
	}
	for i := range 40 {
		id := fmt.Sprint("r", i)
		if counts[id+"/expired"] != 1 || counts[id+"/requested"] != 1 {
			t.Errorf("%s: %d expired, %d requested events", id, counts[id+"/expired"], counts[id+"/requested"])
		}
		expired := 0
		for _, r := range e.history("acme." + id) {
			if r.Status == StatusExpired {
				expired++
			}
		}
		if expired != 1 {
			t.Errorf("%s: %d expired revisions", id, expired)
		}
	}
	if n := len(e.audit.byCode(expiredCode)); n != 40 {
		t.Errorf("%d audit events, want 40", n)
	}
}

// TestReplicas runs two expirers and two notifiers, each on its own
// Service and connection: exactly one expired revision, one event and one
// audit event per approval.
func TestReplicas(t *testing.T) {
	t.Parallel()
	const n = 200
	e := newEnv(t, func(c *Config) { c.GracePeriod = 0 })
	other := e.open()
	for _, svc := range []*Service{e.svc, other} {
		startConsumers(t, svc, WithWorkers(4))
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				svc := []*Service{e.svc, other}[i%2]
				if _, err := svc.Request(t.Context(), "acme", RequestInput{ID: fmt.Sprint("x", i), SessionID: "s", RequestedBy: "alice", Timeout: Duration(time.Second)}); err != nil {
					t.Errorf("request: %v", err)
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, 20*time.Second, "expired events", func() bool { return e.countEvents("guardian.v1.events.acme.expired") == n })
	time.Sleep(500 * time.Millisecond) // duplicates, if any, would show now
	if got := e.countEvents("guardian.v1.events.acme.expired"); got != n {
		t.Errorf("%d expired events, want %d", got, n)
	}
	ids := map[string]int{}
	for _, a := range e.audit.byCode(expiredCode) {
		ids[a.AdditionalContext["approval_id"]]++
	}
	if len(ids) != n {
		t.Errorf("audit events for %d approvals, want %d", len(ids), n)
	}
	for id, c := range ids {
		if c != 1 {
			t.Errorf("%s: %d audit events", id, c)
		}
	}
	revs := e.revisions("acme")
	for i := range n {
		expired := 0
		for _, r := range revs[fmt.Sprint("x", i)] {
			if r.Status == StatusExpired {
				expired++
			}
		}
		if expired != 1 {
			t.Errorf("x%d: %d expired revisions", i, expired)
		}
	}
	a, b := e.svc.Stats(), other.Stats()
	if a.Expired+b.Expired != n {
		t.Errorf("expired by replicas: %d + %d, want %d", a.Expired, b.Expired, n)
	}
	t.Logf("replica A expired %d and published %d events, replica B %d and %d", a.Expired, a.EventsPublished, b.Expired, b.EventsPublished)
}

// TestOutage: the expirer is down longer than MaxOutage while timers fire.
// The fired timers wait in the timers stream; at start the expirer reports
// the outage and every overdue approval is expired, exactly once, by the
// start sweep or by its waiting timer.
func TestOutage(t *testing.T) {
	t.Parallel()
	outages := make(chan Outage, 4)
	e := newEnv(t, func(c *Config) {
		c.GracePeriod = 0
		c.MaxOutage = time.Second
	}, WithHooks(Hooks{OnOutage: func(o Outage) { outages <- o }}))
	// Start once so the durable consumer exists and has been active.
	stop := run(t, e.svc.Expirer().Run)
	e.request("acme", RequestInput{ID: "warmup", SessionID: "s", RequestedBy: "alice", Timeout: Duration(time.Second)})
	waitFor(t, 10*time.Second, "warmup expiry", func() bool { return e.get("acme", "warmup").Status == StatusExpired })
	stop()

	for i := range 5 {
		e.request("acme", RequestInput{ID: fmt.Sprint("o", i), SessionID: "s", RequestedBy: "alice", Timeout: Duration(time.Second)})
	}
	waitFor(t, 15*time.Second, "the timers to fire", func() bool {
		n, err := e.timerMsgs("fire")
		return err == nil && n == 5 && time.Since(e.get("acme", "o4").ExpiresAt) > 2500*time.Millisecond
	})
	for i := range 5 {
		if st := e.get("acme", fmt.Sprint("o", i)).Status; st != StatusPending {
			t.Fatalf("o%d is %s before the expirer restarts", i, st)
		}
	}
	run(t, e.svc.Expirer().Run)
	run(t, e.svc.Notifier().Run)
	var o Outage
	select {
	case o = <-outages:
	case <-time.After(10 * time.Second):
		t.Fatal("no outage reported")
	}
	if o.Down <= time.Second || o.LastActive.IsZero() || o.Overdue > 5 || o.Late != o.Overdue {
		t.Errorf("outage = %+v, want down > 1s, at most 5 overdue, all of them late", o)
	}
	waitFor(t, 10*time.Second, "expiries", func() bool {
		for i := range 5 {
			if e.get("acme", fmt.Sprint("o", i)).Status != StatusExpired {
				return false
			}
		}
		return true
	})
	waitFor(t, 10*time.Second, "the expired events", func() bool { return e.countEvents("guardian.v1.events.acme.expired") >= 6 })
	waitFor(t, 10*time.Second, "the fired timers to be acknowledged", func() bool {
		n, err := e.timerMsgs("*")
		return err == nil && n == 0
	})
	if n := e.countEvents("guardian.v1.events.acme.expired"); n != 6 {
		t.Errorf("%d expired events, want 6 (warmup and o0..o4)", n)
	}
	if s := e.svc.Stats(); s.Outages != 1 || s.Expired != 6 {
		t.Errorf("stats = %+v, want 1 outage, 6 expired", s)
	}
}

// TestWarnFiredDuringOutage: the expire timer is armed by the handler of
// the warn timer. When the warn timer fired while the expirer was down,
// the fired timer waits: at start the warning is sent (late, before the
// deadline), the expire timer is armed, and the approval expires at its
// deadline, not before. No timer needs repair.
func TestWarnFiredDuringOutage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) {
		c.GracePeriod = time.Second
		c.WarningBefore = 4 * time.Second
		c.MaxOutage = time.Second
	})
	r := e.request("acme", RequestInput{ID: "lw", SessionID: "s", RequestedBy: "alice", Timeout: Duration(8 * time.Second)})
	waitFor(t, 15*time.Second, "the warn timer to fire", func() bool {
		n, err := e.timerMsgs("fire")
		return err == nil && n == 1 && time.Since(r.ExpiresAt.Add(-e.cfg.WarningBefore)) > e.cfg.MaxOutage
	})
	if !time.Now().Before(r.Deadline(e.cfg.GracePeriod)) {
		t.Skip("the machine was too slow: the deadline passed before the expirer could start")
	}
	if keys := e.timerKeys(); len(keys) != 0 {
		t.Fatalf("armed timers before the restart = %v, want none", keys)
	}
	startConsumers(t, e.svc)
	waitFor(t, 15*time.Second, "expiry", func() bool { return e.get("acme", "lw").Status == StatusExpired })
	got := e.get("acme", "lw")
	if got.DecidedAt.Before(r.Deadline(e.cfg.GracePeriod)) {
		t.Errorf("expired at %s, before the deadline %s", got.DecidedAt, r.Deadline(e.cfg.GracePeriod))
	}
	if got.WarnedAt == nil || !got.WarnedAt.Before(r.ExpiresAt) {
		t.Errorf("warned_at = %v: want the warning sent before expires_at %s", got.WarnedAt, r.ExpiresAt)
	}
	if s := e.svc.Stats(); s.TimersRepaired != 0 || s.Expired != 1 {
		t.Errorf("stats = %+v, want no timer repaired, 1 expired", s)
	}
}

// TestEarlyFire: when the expirer's clock is behind the clock that wrote
// the record, the timer fires before expires_at + grace by the
// expirer's clock; it waits (the fired timer is redelivered later) rather than
// expire early.
func TestEarlyFire(t *testing.T) {
	t.Parallel()
	const skew = 2 * time.Second
	e := newEnv(t, func(c *Config) { c.GracePeriod = 0 })
	behind := e.open(WithClock(func() time.Time { return time.Now().Add(-skew) }))
	run(t, behind.Expirer().Run)
	start := time.Now()
	r := e.request("acme", RequestInput{ID: "e", SessionID: "s", RequestedBy: "alice", Timeout: Duration(time.Second)})
	waitFor(t, 15*time.Second, "expiry", func() bool { return e.get("acme", "e").Status == StatusExpired })
	got := e.get("acme", "e")
	if got.DecidedAt.Before(r.Deadline(0)) {
		t.Errorf("expired at %s before its deadline %s", got.DecidedAt, r.Deadline(0))
	}
	if took := time.Since(start); took < time.Second+skew {
		t.Errorf("expired after %s, before the skewed deadline (%s)", took, time.Second+skew)
	}
}

// TestPeriodicSweepExpiresLostTimer: an approval whose timer was removed
// behind guardian's back (as a request that died between its two writes
// leaves it) still expires, exactly once, with two replicas running: the
// periodic sweep checks the record's change periodicSweepSlack after it
// was made, within SweepInterval, and arms the timer again. One whose
// deadline has passed by then expires within a second of the check.
func TestPeriodicSweepExpiresLostTimer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) {
		c.GracePeriod = 0
		c.SendTimeoutWarnings = false
		c.SweepInterval = 2 * time.Second
	})
	second := e.open()
	// Without start sweeps, which would re-arm the timer at once when
	// they run after its removal.
	run(t, e.svc.Expirer(WithoutStartSweep()).Run)
	run(t, second.Expirer(WithoutStartSweep()).Run)
	run(t, e.svc.Notifier().Run)
	r := e.request("acme", RequestInput{ID: "lost", SessionID: "s", RequestedBy: "alice", Timeout: Duration(time.Second)})
	// Remove the timer as someone with access to the stream could.
	if err := e.svc.timers.disarm(t.Context(), r.Key()+"."+timerExpire); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 25*time.Second, "the sweep to expire it", func() bool { return e.get("acme", "lost").Status == StatusExpired })
	got := e.get("acme", "lost")
	// Checked at most slack + SweepInterval + a sweep after the request,
	// then the re-armed timer's second and its lateness.
	if late := got.DecidedAt.Sub(r.RequestedAt); late < periodicSweepSlack || late > periodicSweepSlack+2*time.Second+4*time.Second {
		t.Errorf("expired %s after the request, want after the slack %s and within it plus SweepInterval plus 4s", late, periodicSweepSlack)
	}
	waitFor(t, 10*time.Second, "the expired event", func() bool { return e.countEvents("guardian.v1.events.acme.expired") >= 1 })
	time.Sleep(2500 * time.Millisecond) // another sweep passes
	if n := e.countEvents("guardian.v1.events.acme.expired"); n != 1 {
		t.Errorf("%d expired events, want 1", n)
	}
	if s1, s2 := e.svc.Stats(), second.Stats(); s1.Sweeps+s2.Sweeps < 2 || s1.TimersRepaired+s2.TimersRepaired != 1 {
		t.Errorf("sweeps %d and %d, timers repaired %d and %d: want periodic sweeps and one repair",
			s1.Sweeps, s2.Sweeps, s1.TimersRepaired, s2.TimersRepaired)
	}
}

// TestPeriodicSweepRearmsBeforeDeadline: a lost timer found before the
// approval's deadline is armed again for that deadline, so the approval
// expires on time, not a sweep late.
func TestPeriodicSweepRearmsBeforeDeadline(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) {
		c.GracePeriod = 0
		c.SendTimeoutWarnings = false
		c.SweepInterval = time.Second
	})
	run(t, e.svc.Expirer(WithoutStartSweep()).Run)
	r := e.request("acme", RequestInput{ID: "far", SessionID: "s", RequestedBy: "alice", Timeout: Duration(periodicSweepSlack + 6*time.Second)})
	if err := e.svc.timers.disarm(t.Context(), r.Key()+"."+timerExpire); err != nil {
		t.Fatal(err)
	}
	waitFor(t, periodicSweepSlack+5*time.Second, "the timer to be armed again", func() bool {
		return slices.Contains(e.timerKeys(), r.Key()+"."+timerExpire)
	})
	waitFor(t, 20*time.Second, "expiry", func() bool { return e.get("acme", "far").Status == StatusExpired })
	if late := e.get("acme", "far").DecidedAt.Sub(r.Deadline(0)); late < 0 || late > 2*time.Second {
		t.Errorf("expired %s after its deadline, want within 2s", late)
	}
}

// TestStartSweepRearmsMissingTimer: a timer removed after the periodic
// sweep checked its record is armed again by the full sweep an expirer
// runs when it starts.
func TestStartSweepRearmsMissingTimer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.SendTimeoutWarnings = false })
	r := e.request("acme", RequestInput{ID: "later", SessionID: "s", RequestedBy: "alice", Timeout: Duration(time.Hour)})
	if err := e.svc.timers.disarm(t.Context(), r.Key()+"."+timerExpire); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.Expirer().Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(e.timerKeys(), r.Key()+"."+timerExpire) || e.svc.Stats().TimersRepaired != 1 {
		t.Errorf("timers %v, repaired %d: want the expire timer armed again", e.timerKeys(), e.svc.Stats().TimersRepaired)
	}
	// A second sweep finds the timer and arms nothing.
	if _, _, err := e.svc.Expirer().Sweep(t.Context()); err != nil || e.svc.Stats().TimersRepaired != 1 {
		t.Errorf("second sweep: %v, repaired %d", err, e.svc.Stats().TimersRepaired)
	}
}

// TestPeriodicSweepReadsChangesOnce: a periodic sweep reads only the
// records' changes since the last one, not every retained record, so its
// cost does not grow with Retention.
func TestPeriodicSweepReadsChangesOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.DefaultTimeout = time.Hour })
	for i := range 20 {
		e.request("acme", RequestInput{ID: fmt.Sprint("c", i), SessionID: "s", RequestedBy: "alice"})
	}
	ex := e.svc.Expirer()
	// The first sweep has no cursor and reads every record; its cursor
	// stops periodicSweepSlack ago, so it finds nothing yet.
	if n, err := ex.checkChanges(t.Context()); err != nil || n != 0 {
		t.Fatalf("first sweep: rearmed %d, %v", n, err)
	}
	// A sweep starts sweepOverlap before its cursor: let the cursor pass
	// the requests by more than that.
	time.Sleep(periodicSweepSlack + sweepOverlap + 500*time.Millisecond)
	var checked int
	countChecked := func() int {
		t.Helper()
		before := e.svc.Stats().SweepChecked
		if _, err := ex.checkChanges(t.Context()); err != nil {
			t.Fatal(err)
		}
		return int(e.svc.Stats().SweepChecked - before)
	}
	if checked = countChecked(); checked != 20 {
		t.Errorf("the sweep after the slack checked %d changes, want the 20 requests", checked)
	}
	if checked = countChecked(); checked > 0 {
		t.Errorf("the next sweep checked %d changes, want none: nothing changed", checked)
	}
	e.request("acme", RequestInput{ID: "late", SessionID: "s", RequestedBy: "alice"})
	time.Sleep(periodicSweepSlack + sweepOverlap + 500*time.Millisecond)
	if checked = countChecked(); checked != 1 {
		t.Errorf("after one more request the sweep checked %d changes, want 1", checked)
	}
}

// TestHandledTimersLeave: once the expirer has acknowledged a fired
// timer, it leaves the timers stream (a work queue), so the stream holds
// only armed timers; the warning's successor, armed while the warn timer
// was being handled, fires in its turn.
func TestHandledTimersLeave(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) {
		c.GracePeriod = time.Second
		c.WarningBefore = 2 * time.Second
	})
	run(t, e.svc.Expirer().Run)
	for i := range 10 {
		e.request("acme", RequestInput{ID: fmt.Sprint("m", i), SessionID: "s", RequestedBy: "alice", Timeout: Duration(3 * time.Second)})
	}
	waitFor(t, 20*time.Second, "expiries", func() bool { return e.get("acme", "m9").Status == StatusExpired })
	waitFor(t, 5*time.Second, "the timers stream to empty", func() bool {
		n, err := e.timerMsgs("*")
		return err == nil && n == 0
	})
	for i := range 10 {
		if r := e.get("acme", fmt.Sprint("m", i)); r.Status != StatusExpired || r.WarnedAt == nil {
			t.Errorf("m%d: %s, warned %v; want warned and expired", i, r.Status, r.WarnedAt)
		}
	}
	if n, err := e.svc.Pending(t.Context(), "acme"); err != nil || n != 0 {
		t.Errorf("pending = %d, %v", n, err)
	}
}

// TestTimers checks the timers' own operations: arm stores a schedule once
// (a second arm of the key is a no-op), disarm removes it and leaves the
// stream's other keys alone, a disarmed timer never fires, and a timer for
// an instant already past fires at once and stays live until acknowledged.
func TestTimers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	tm := e.svc.timers
	now := time.Now()
	for _, tc := range []struct {
		key  string
		want bool
	}{{"acme.p1.expire", true}, {"acme.p1.expire", false}, {"acme.p2.expire", true}} {
		if created, err := tm.arm(ctx, tc.key, now.Add(2*time.Second)); err != nil || created != tc.want {
			t.Fatalf("arm %s: %v, %v; want created %v", tc.key, created, err, tc.want)
		}
	}
	if err := tm.disarm(ctx, "acme.p1.expire"); err != nil {
		t.Fatal(err)
	}
	if keys := e.timerKeys(); !slices.Equal(keys, []string{"acme.p2.expire"}) {
		t.Fatalf("armed after the disarm: %v, want acme.p2.expire", keys)
	}
	if live, err := tm.live(ctx, "acme.p1.*"); err != nil || live {
		t.Fatalf("disarmed timer live = %v, %v", live, err)
	}
	if created, err := tm.arm(ctx, "acme.p3.expire", now.Add(-time.Minute)); err != nil || !created {
		t.Fatalf("arm in the past: %v, %v", created, err)
	}
	time.Sleep(3 * time.Second) // p2 and p3 fire; p1 would have
	if n, err := e.timerMsgs("fire"); err != nil || n != 2 {
		t.Fatalf("fired = %d, %v; want p2 and p3", n, err)
	}
	for key, want := range map[string]bool{"acme.p1.*": false, "acme.p2.*": true, "acme.p3.*": true} {
		if live, err := tm.live(ctx, key); err != nil || live != want {
			t.Errorf("live(%s) = %v, %v; want %v", key, live, err, want)
		}
	}
	if keys := e.timerKeys(); len(keys) != 0 {
		t.Errorf("armed after firing: %v, want none", keys)
	}
}

// TestTimersSkew: a timer names its instant on the stream leader's clock.
// With the server's clock measured 10 s ahead of this host's, a timer due
// in 1 s is scheduled 11 s ahead by this host's clock; a server on this
// host's clock (here: in process) is measured as no skew at all.
func TestTimersSkew(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	tm := e.svc.timers
	if _, err := tm.measureSkew(ctx); err != nil || tm.skew.Load() != 0 {
		t.Fatalf("skew of an in-process server = %s, %v; want 0", time.Duration(tm.skew.Load()), err)
	}
	tm.skew.Store(int64(10 * time.Second))
	defer tm.skew.Store(0)
	before := time.Now()
	if _, err := tm.arm(ctx, "acme.sk.expire", e.svc.now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	m, err := tm.str.GetLastMsgForSubject(ctx, tm.sched("acme.sk.expire"))
	if err != nil {
		t.Fatal(err)
	}
	at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(m.Header.Get(jetstream.ScheduleHeader), "@at "))
	if err != nil {
		t.Fatal(err)
	}
	want := 11*time.Second - timerLead
	if d := at.Sub(before); d < want || d > want+time.Second {
		t.Errorf("scheduled %s after arming, want %s (1s + the server's 10s ahead - the lead)", d, want)
	}
	if due := m.Header.Get(dueHeader); due == "" {
		t.Errorf("no %s header on the schedule", dueHeader)
	}
}

// TestHeldTimer: a timer fires timerLead ahead of its instant; the expirer
// holds it in memory until then, without a redelivery, and expires the
// approval at its deadline, not before.
func TestHeldTimer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.GracePeriod, c.SendTimeoutWarnings = 0, false })
	run(t, e.svc.Expirer().Run)
	r := e.request("acme", RequestInput{ID: "h", SessionID: "s", RequestedBy: "alice", Timeout: Duration(3 * time.Second)})
	waitFor(t, 10*time.Second, "the timer to be held", func() bool { return e.svc.Stats().TimersHeld == 1 })
	waitFor(t, 10*time.Second, "expiry", func() bool { return e.get("acme", "h").Status == StatusExpired })
	if got := e.get("acme", "h"); got.DecidedAt.Before(r.Deadline(0)) {
		t.Errorf("expired at %s, before its deadline %s", got.DecidedAt, r.Deadline(0))
	}
	cons, err := e.svc.js.Consumer(t.Context(), e.cfg.TimersStream, e.cfg.ExpirerDurable)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := cons.Info(t.Context()); err != nil || info.NumRedelivered != 0 {
		t.Errorf("consumer info %+v, %v: want no redelivery", info, err)
	}
}

// TestHeldTimerNakedOnStop: an expirer that stops while it holds a timer
// naks it at once, rather than leaving it to AckWait, and another replica
// expires the approval at its deadline.
func TestHeldTimerNakedOnStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.GracePeriod, c.SendTimeoutWarnings = 0, false })
	stop := run(t, e.svc.Expirer().Run)
	r := e.request("acme", RequestInput{ID: "n", SessionID: "s", RequestedBy: "alice", Timeout: Duration(3 * time.Second)})
	waitFor(t, 10*time.Second, "the timer to be held", func() bool { return e.svc.Stats().TimersHeld == 1 })
	stop()
	second := e.open()
	run(t, second.Expirer().Run)
	waitFor(t, 10*time.Second, "expiry", func() bool { return e.get("acme", "n").Status == StatusExpired })
	// Held from about a second before the deadline; without the nak the
	// second replica would get it AckWait after its delivery, about
	// AckWait - 1s after the deadline.
	got := e.get("acme", "n")
	if late := got.DecidedAt.Sub(r.Deadline(0)); late < 0 || late >= consumerAckWait/2 {
		t.Errorf("expired %s after its deadline, want from 0 to %s", late, consumerAckWait/2)
	}
	if s1, s2 := e.svc.Stats(), second.Stats(); s1.Expired != 0 || s2.Expired != 1 {
		t.Errorf("expired by the first %d, by the second %d; want 0 and 1", s1.Expired, s2.Expired)
	}
}
