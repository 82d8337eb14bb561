package auditstream

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestRateTracker(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type step struct {
		code      string
		ms        int
		fire      bool
		count     int
		commentIs string
	}
	// window 1s, threshold 3: fires on the 4th event within (t-1s, t].
	tests := []struct {
		name  string
		steps []step
	}{
		{"fires once per crossing", []step{
			{"A", 0, false, 1, ""},
			{"A", 100, false, 2, ""},
			{"A", 200, false, 3, ""},
			{"A", 300, true, 4, "crosses"},
			{"A", 400, false, 4, "still above: silent (count capped at threshold+1)"},
			{"A", 1250, false, 3, "300,400,1250 in window: count 2 before, so re-armed; 3 is not above"},
			{"A", 1260, true, 4, "crosses again"},
		}},
		{"window edge is exclusive", []step{
			{"A", 0, false, 1, ""},
			{"A", 1, false, 2, ""},
			{"A", 2, false, 3, ""},
			{"A", 1000, false, 3, "event at 0 leaves exactly at 1000"},
			{"A", 1001, false, 3, "event at 1 leaves"},
			{"A", 1002, false, 3, ""},
			{"A", 1003, true, 4, ""},
		}},
		{"at the threshold is not below it", []step{
			{"A", 0, false, 1, ""},
			{"A", 10, false, 2, ""},
			{"A", 20, false, 3, ""},
			{"A", 30, true, 4, ""},
			{"A", 1015, false, 3, "before: 20,30 = 2 < 3, re-armed"},
			{"A", 1016, true, 4, ""},
			{"A", 1025, false, 4, "before: 30,1015,1016 = 3, not below: silent"},
			{"A", 1026, false, 4, ""},
		}},
		{"codes are independent", []step{
			{"A", 0, false, 1, ""},
			{"B", 1, false, 1, ""},
			{"A", 2, false, 2, ""},
			{"B", 3, false, 2, ""},
			{"A", 4, false, 3, ""},
			{"A", 5, true, 4, ""},
			{"B", 6, false, 3, ""},
			{"B", 7, true, 4, ""},
		}},
		{"time going backwards counts as the latest time", []step{
			{"A", 1000, false, 1, ""},
			{"A", 500, false, 2, ""},
			{"A", 400, false, 3, ""},
			{"A", 300, true, 4, ""},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newRateTracker(time.Second, 3)
			for i, s := range tt.steps {
				fire, count := tr.add(s.code, at(s.ms))
				if fire != s.fire || count != s.count {
					t.Fatalf("step %d (%s at %dms, %s): add = %v, %d; want %v, %d", i, s.code, s.ms, s.commentIs, fire, count, s.fire, s.count)
				}
			}
		})
	}
}

func TestRateTrackerMemoryBounded(t *testing.T) {
	tr := newRateTracker(time.Hour, 10)
	t0 := time.Now()
	fires := 0
	for i := range 100_000 {
		if fire, _ := tr.add("A", t0.Add(time.Duration(i)*time.Millisecond)); fire {
			fires++
		}
	}
	if fires != 1 {
		t.Errorf("fires = %d, want 1", fires)
	}
	if n := len(tr.codes["A"].times); n != 11 {
		t.Errorf("kept %d times, want threshold+1 = 11", n)
	}
}

func TestAlerterFiresOncePerCrossing(t *testing.T) {
	_, nc, js, cfg := startStream(t)
	cfg.AlertWindow = time.Second
	cfg.AlertThreshold = 5

	var mu sync.Mutex
	var alerts []Alert
	sub, err := nc.Subscribe(cfg.AlertPrefix+".>", func(m *nats.Msg) {
		var a Alert
		if err := json.Unmarshal(m.Data, &a); err != nil || m.Subject != cfg.AlertPrefix+"."+a.Code {
			t.Errorf("bad alert on %s: %s (%v)", m.Subject, m.Data, err)
			return
		}
		mu.Lock()
		alerts = append(alerts, a)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(alerts) }

	p, err := NewPublisher(nil, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a, err := NewAlerter(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	runInBackground(t, a.Run)

	ctx := t.Context()
	burst := func(code string, n, from int) {
		for i := range n {
			if err := p.Emit(ctx, testEvent(from+i, "acme", code)); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	burst("AUDIT_APPROVAL_DECIDED", 8, 100) // approvals' own audit: never an alert
	burst("TIMEOUT_KV_GET", 6, 0)           // crosses: 6 > 5
	burst("TIMEOUT_KV_PUT", 5, 10)          // at the threshold: no alert
	eventually(t, 5*time.Second, func() bool { return count() == 1 }, "first alert")
	burst("TIMEOUT_KV_GET", 4, 20) // still above: silent
	time.Sleep(1200 * time.Millisecond)
	if n := count(); n != 1 {
		t.Fatalf("alerts = %d while the rate stayed high, want 1", n)
	}
	burst("TIMEOUT_KV_GET", 6, 30) // the window emptied: crosses again
	eventually(t, 5*time.Second, func() bool { return count() == 2 }, "second alert")

	mu.Lock()
	defer mu.Unlock()
	for _, a := range alerts {
		if a.Code != "TIMEOUT_KV_GET" || a.Count != 6 || a.Threshold != 5 || a.Window != "1s" || a.Time.IsZero() {
			t.Errorf("alert = %+v", a)
		}
	}
}

func TestAlerterDisabled(t *testing.T) {
	_, _, js, cfg := startStream(t)
	cfg.AlertThreshold = 0
	a, err := NewAlerter(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

// TestAlertersOnePerCrossing: two Alerters (two replicas) and a restarted
// one give one alert per threshold crossing, not one each.
func TestAlertersOnePerCrossing(t *testing.T) {
	_, nc, js, cfg := startStream(t)
	cfg.AlertWindow = time.Second
	cfg.AlertThreshold = 5
	var mu sync.Mutex
	var alerts []Alert
	sub, err := nc.Subscribe(cfg.AlertPrefix+".>", func(m *nats.Msg) {
		var a Alert
		_ = json.Unmarshal(m.Data, &a)
		mu.Lock()
		alerts = append(alerts, a)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(alerts) }
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	start := func() context.CancelFunc {
		a, err := NewAlerter(nil, js, cfg, quiet)
		if err != nil {
			t.Fatal(err)
		}
		return runInBackground(t, a.Run)
	}
	stopA := start()
	start()
	burst := func(n, from int) {
		for i := range n {
			if err := p.Emit(t.Context(), testEvent(from+i, "acme", "TIMEOUT_KV_GET")); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	settle := func() { time.Sleep(500 * time.Millisecond) } // both Alerters read what was stored

	burst(6, 0)
	eventually(t, 5*time.Second, func() bool { return count() >= 1 }, "first alert")
	settle()
	if n := count(); n != 1 {
		t.Fatalf("%d alerts from two Alerters for one crossing, want 1", n)
	}
	// A restart while the rate is still high: no second alert.
	stopA()
	start()
	burst(3, 10)
	settle()
	if n := count(); n != 1 {
		t.Fatalf("%d alerts after a restart during the same episode, want 1", n)
	}
	// The window empties; the next crossing gives one more alert.
	time.Sleep(1200 * time.Millisecond)
	burst(6, 20)
	eventually(t, 5*time.Second, func() bool { return count() >= 2 }, "second alert")
	settle()
	if n := count(); n != 2 {
		t.Fatalf("%d alerts for two crossings, want 2", n)
	}
}
