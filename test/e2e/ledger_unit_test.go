package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// TestTallyDetects checks that the exactly-once tally the scenarios rely
// on counts each kind of loss and duplication: a scenario whose tally
// cannot see them could not fail.
func TestTallyDetects(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	rec := func(id string, rev uint64, st kvapprovals.Status, decidedAfter time.Duration) kvapprovals.Record {
		r := kvapprovals.Record{ID: id, Tenant: "acme", Status: st, ExpiresAt: t0, Revision: rev}
		if st.Terminal() {
			at := t0.Add(decidedAfter)
			r.DecidedAt = &at
		}
		return r
	}
	ev := func(r kvapprovals.Record) kvapprovals.Event {
		return kvapprovals.Event{Kind: r.Kind(), Tenant: r.Tenant, ID: r.ID, Revision: r.Revision, Record: r}
	}
	audit := func(id, eventID string) jsguard.Event {
		return jsguard.Event{EventID: eventID, TenantID: "acme", AdditionalContext: map[string]string{"approval_id": id}}
	}
	clean := func() *ledger {
		l := &ledger{revs: map[string][]kvapprovals.Record{}, events: map[string][]kvapprovals.Event{}, eventIDs: map[string]int{},
			audit: map[string][]jsguard.Event{}, auditIDs: map[string]int{}}
		add := func(rs ...kvapprovals.Record) {
			for _, r := range rs {
				l.revs[r.Key()] = append(l.revs[r.Key()], r)
				l.events[r.Key()] = append(l.events[r.Key()], ev(r))
				l.eventIDs[r.Key()+"."+strconv.FormatUint(r.Revision, 10)]++
			}
		}
		add(rec("a", 1, kvapprovals.StatusPending, 0), rec("a", 3, kvapprovals.StatusExpired, 200*time.Millisecond))
		add(rec("b", 2, kvapprovals.StatusPending, 0), rec("b", 4, kvapprovals.StatusApproved, -time.Second))
		l.audit["acme.a"] = []jsguard.Event{audit("a", "e1")}
		l.auditIDs["e1"] = 1
		return l
	}
	cases := []struct {
		name   string
		mutate func(l *ledger)
		check  func(c tally) bool
	}{
		{"clean", func(*ledger) {}, func(c tally) bool { return c.lost() == 0 && c.dup() == 0 && c.Early == 0 }},
		{"acked approval missing", func(l *ledger) {}, nil},
		{"event lost", func(l *ledger) { l.events["acme.b"] = l.events["acme.b"][:1] }, func(c tally) bool { return c.EventsLost == 1 }},
		{"event stored twice", func(l *ledger) { l.eventIDs["acme.a.3"] = 2 }, func(c tally) bool { return c.EventsDup == 1 }},
		{"second terminal event", func(l *ledger) {
			l.events["acme.b"] = append(l.events["acme.b"], ev(rec("b", 5, kvapprovals.StatusDenied, 0)))
		}, func(c tally) bool { return c.EventsDup == 1 && c.EventsWrong == 1 }},
		{"event of the wrong kind", func(l *ledger) { l.events["acme.b"][1].Kind = kvapprovals.KindDenied }, func(c tally) bool { return c.EventsWrong == 1 }},
		{"two terminal revisions", func(l *ledger) {
			r := rec("b", 6, kvapprovals.StatusExpired, time.Second)
			l.revs["acme.b"] = append(l.revs["acme.b"], r)
			l.events["acme.b"] = append(l.events["acme.b"], ev(r))
			l.audit["acme.b"] = []jsguard.Event{audit("b", "e2")}
		}, func(c tally) bool { return c.MultiTerminal == 1 }},
		{"still pending", func(l *ledger) {
			l.revs["acme.b"] = l.revs["acme.b"][:1]
			l.events["acme.b"] = l.events["acme.b"][:1]
		}, func(c tally) bool { return c.NotTerminal == 1 }},
		{"audit lost", func(l *ledger) { delete(l.audit, "acme.a") }, func(c tally) bool { return c.AuditLost == 1 }},
		{"audit twice", func(l *ledger) {
			l.audit["acme.a"] = append(l.audit["acme.a"], audit("a", "e1"))
			l.auditIDs["e1"] = 2
		}, func(c tally) bool { return c.AuditDup == 2 }},
		{"audit for an approval", func(l *ledger) { l.audit["acme.b"] = []jsguard.Event{audit("b", "e3")} }, func(c tally) bool { return c.AuditStray == 1 }},
		{"expired early", func(l *ledger) {
			at := t0.Add(-time.Millisecond)
			l.revs["acme.a"][1].DecidedAt = &at
		}, func(c tally) bool { return c.Early == 1 }},
	}
	for _, tc := range cases {
		l := clean()
		tc.mutate(l)
		acked := []string{"acme.a", "acme.b"}
		check := tc.check
		if check == nil { // the missing approval
			acked = append(acked, "acme.c")
			check = func(c tally) bool { return c.Missing == 1 }
		}
		c := l.tally(acked, 0)
		if !check(c) {
			t.Errorf("%s: not detected: %s", tc.name, &c)
		}
		if tc.name != "clean" && c.lost()+c.dup()+c.Early == 0 {
			t.Errorf("%s: the scenarios' assertion would pass: %s", tc.name, &c)
		}
	}
}

// TestSoakDriftDetects checks the soak's drift rule on made-up samples:
// steady readings with noise pass; a leak of goroutines, heap, files or
// memory, or CPU per call that climbs, fails; too few samples fail.
func TestSoakDriftDetects(t *testing.T) {
	steady := func(i int) soakSample {
		noise := float64(i%3) - 1 // -1, 0, 1
		return soakSample{
			at: time.Duration(i) * time.Minute, ops: int64(i) * 6000,
			goroutines: 80 + noise, heapInuse: 30e6 + noise*4e6, guardianFDs: 20, guardianCPU: float64(i) * 6000 * 200e-6 * (1 + noise/20),
			guardianRSS: 60e6, natsCPU: float64(i) * 6000 * 150e-6, natsRSS: 100e6 + float64(i)*0.5e6 + noise*5e6, natsFDs: 40,
		}
	}
	gen := func(n int, mutate func(i int, s *soakSample)) []soakSample {
		out := make([]soakSample, n)
		for i := range out {
			out[i] = steady(i)
			if mutate != nil {
				mutate(i, &out[i])
			}
		}
		return out
	}
	failing := func(samples []soakSample) []string {
		checks, err := soakDrift(samples, 6*time.Minute)
		if err != nil {
			return []string{err.Error()}
		}
		var out []string
		for _, c := range checks {
			if !c.ok() {
				out = append(out, c.String())
			}
		}
		return out
	}
	if p := failing(gen(60, nil)); len(p) != 0 {
		t.Errorf("steady samples: %v", p)
	}
	for _, tc := range []struct {
		name   string
		mutate func(i int, s *soakSample)
	}{
		{"goroutines", func(i int, s *soakSample) { s.goroutines += float64(i) }},
		{"heap", func(i int, s *soakSample) { s.heapInuse += float64(i) * 2e6 }},
		{"guardian open files", func(i int, s *soakSample) { s.guardianFDs += float64(i / 2) }},
		{"guardian RSS", func(i int, s *soakSample) { s.guardianRSS += float64(i) * 4e6 }},
		{"nats-server open files", func(i int, s *soakSample) { s.natsFDs += float64(i / 2) }},
		{"nats-server memory", func(i int, s *soakSample) { s.natsRSS += float64(i) * 4e6 }},
		// CPU per call growing with time, as with stale TTL entries.
		{"nats-server CPU per call", func(i int, s *soakSample) { s.natsCPU += float64(i*i) * 6000 * 5e-6 }},
		{"guardian CPU per call", func(i int, s *soakSample) { s.guardianCPU += float64(i*i) * 6000 * 5e-6 }},
	} {
		if p := failing(gen(60, tc.mutate)); len(p) != 1 || !strings.Contains(p[0], tc.name) {
			t.Errorf("%s leaking: got %q, want one line naming it", tc.name, p)
		}
	}
	if p := failing(gen(8, nil)); len(p) != 1 || !strings.Contains(p[0], "samples") {
		t.Errorf("8 samples with a 6 min warm-up: got %q", p)
	}
}
