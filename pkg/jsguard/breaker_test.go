package jsguard_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// breakerGuard returns a guard with KVGet's budget at 100ms and a breaker
// on it: window 10s, at least 4 calls, open at half timing out, 5s
// cool-down, 2 probes. It records the circuit states it reports.
func breakerGuard(t *testing.T) (*jsguard.Guard, *recSink, *[]jsguard.CircuitState) {
	t.Helper()
	p := policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 100 * time.Millisecond})
	p.Breakers = map[jsguard.Category]jsguard.BreakerConfig{jsguard.KVGet: {
		Window: 10 * time.Second, MinCalls: 4, TimeoutRate: 0.5, Cooldown: 5 * time.Second, Probes: 2,
	}}
	var states []jsguard.CircuitState
	g, sink := newGuard(t, jsguard.WithPolicy(p), jsguard.WithHooks(jsguard.Hooks{
		OnCircuit: func(_ jsguard.Category, s jsguard.CircuitState) { states = append(states, s) },
	}))
	return g, sink, &states
}

func codes(evs []jsguard.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Code)
	}
	return out
}

// TestBreakerStateMachine, in virtual time: timeouts over the threshold
// open the circuit; open, calls fail fast without running and without an
// audit event each; after the cool-down two probes that succeed close it;
// a probe that times out opens it again. Each change is one audit event.
func TestBreakerStateMachine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, sink, states := breakerGuard(t)
		ctx := t.Context()
		var ran atomic.Int64
		slowCall := func(ctx context.Context) error { ran.Add(1); return honour(ctx) }
		quick := func(context.Context) error { ran.Add(1); return nil }

		// 2 quick, 2 timeouts: 4 calls, half timed out: open.
		for _, fn := range []func(context.Context) error{quick, quick, slowCall, slowCall} {
			_ = g.Do(ctx, jsguard.KVGet, "kv get k", fn)
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitOpen {
			t.Fatalf("circuit %s after 2 of 4 timed out, want open", g.Circuit(jsguard.KVGet))
		}
		if got := codes(sink.events()); strings.Join(got, ",") != "TIMEOUT_KV_GET,TIMEOUT_KV_GET,AUDIT_CIRCUIT_OPEN" {
			t.Fatalf("events %v", got)
		}
		open := sink.events()[2]
		if open.AdditionalContext["category"] != "TIMEOUT_KV_GET" || open.AdditionalContext["timeouts"] != "2" || open.AdditionalContext["calls"] != "4" {
			t.Errorf("open event context %v", open.AdditionalContext)
		}

		// Open: fail fast, nothing runs, nothing audited, counted.
		ran.Store(0)
		start := time.Now()
		for range 10 {
			err := g.Do(ctx, jsguard.KVGet, "kv get k", quick)
			var coe *jsguard.CircuitOpenError
			if !errors.Is(err, jsguard.ErrCircuitOpen) || !errors.As(err, &coe) || !coe.Until.Equal(start.Add(5*time.Second)) {
				t.Fatalf("err = %v, want ErrCircuitOpen until the cool-down ends", err)
			}
		}
		if ran.Load() != 0 || time.Since(start) != 0 || len(sink.events()) != 3 {
			t.Errorf("open circuit: %d calls ran, took %s, %d events", ran.Load(), time.Since(start), len(sink.events()))
		}
		if s := statsOf(g, jsguard.KVGet); s.Rejected != 10 {
			t.Errorf("rejected %d, want 10", s.Rejected)
		}

		// After the cool-down: half-open, a probe that times out opens it again.
		time.Sleep(5 * time.Second)
		if err := g.Do(ctx, jsguard.KVGet, "kv get k", slowCall); !errors.Is(err, jsguard.ErrTimeout) {
			t.Fatalf("probe: %v", err)
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitOpen {
			t.Fatalf("circuit %s after a probe timed out, want open", g.Circuit(jsguard.KVGet))
		}
		// Next cool-down: two probes that succeed close it; while they
		// run a third call fails fast.
		time.Sleep(5 * time.Second)
		release := make(chan struct{})
		held := func(context.Context) error { <-release; return nil }
		done := make(chan error, 2)
		for range 2 {
			go func() { done <- g.Do(ctx, jsguard.KVGet, "kv get k", held) }()
		}
		synctest.Wait()
		if err := g.Do(ctx, jsguard.KVGet, "kv get k", quick); !errors.Is(err, jsguard.ErrCircuitOpen) {
			t.Errorf("a third call while the probes run: %v, want ErrCircuitOpen", err)
		}
		close(release)
		for range 2 {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitClosed {
			t.Fatalf("circuit %s after two good probes, want closed", g.Circuit(jsguard.KVGet))
		}
		want := "TIMEOUT_KV_GET,TIMEOUT_KV_GET,AUDIT_CIRCUIT_OPEN,AUDIT_CIRCUIT_HALF_OPEN,TIMEOUT_KV_GET,AUDIT_CIRCUIT_OPEN,AUDIT_CIRCUIT_HALF_OPEN,AUDIT_CIRCUIT_CLOSED"
		if got := strings.Join(codes(sink.events()), ","); got != want {
			t.Errorf("events\n%s\nwant\n%s", got, want)
		}
		wantStates := []jsguard.CircuitState{jsguard.CircuitOpen, jsguard.CircuitHalfOpen, jsguard.CircuitOpen, jsguard.CircuitHalfOpen, jsguard.CircuitClosed}
		if len(*states) != len(wantStates) {
			t.Fatalf("states %v, want %v", *states, wantStates)
		}
		for i := range wantStates {
			if (*states)[i] != wantStates[i] {
				t.Errorf("states %v, want %v", *states, wantStates)
				break
			}
		}
		// Closed again: calls run; the window starts afresh.
		if err := g.Do(ctx, jsguard.KVGet, "kv get k", quick); err != nil {
			t.Error(err)
		}
	})
}

// TestBreakerWindow: timeouts older than the window do not count, and
// fewer calls than MinCalls never open the circuit.
func TestBreakerWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, _, _ := breakerGuard(t)
		ctx := t.Context()
		for range 3 {
			_ = g.Do(ctx, jsguard.KVGet, "kv get k", honour)
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitClosed {
			t.Fatal("opened below MinCalls")
		}
		time.Sleep(11 * time.Second) // the three timeouts leave the window
		for range 3 {
			_ = g.Do(ctx, jsguard.KVGet, "kv get k", func(context.Context) error { return nil })
		}
		_ = g.Do(ctx, jsguard.KVGet, "kv get k", honour)
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitClosed {
			t.Errorf("opened on 1 of 4 in the window (old timeouts counted)")
		}
	})
}

// TestBreakerSlowCalls: the slow-call rule opens the circuit on calls that
// finish, but slowly.
func TestBreakerSlowCalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := jsguard.DefaultPolicy()
		p.Breakers = map[jsguard.Category]jsguard.BreakerConfig{jsguard.KVGet: {
			Window: 10 * time.Second, MinCalls: 3, SlowCall: time.Second, SlowRate: 1, Cooldown: time.Second, Probes: 1,
		}}
		g, sink := newGuard(t, jsguard.WithPolicy(p))
		for range 3 {
			_ = g.Do(t.Context(), jsguard.KVGet, "kv get k", func(context.Context) error { time.Sleep(2 * time.Second); return nil })
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitOpen || sink.one(t).AdditionalContext["slow_calls"] != "3" {
			t.Errorf("circuit %s, events %v", g.Circuit(jsguard.KVGet), sink.events())
		}
	})
}

// TestBreakerLiveReload: a policy change that keeps a breaker's
// configuration keeps its state; one that changes it starts it closed;
// one that removes it lets every call run.
func TestBreakerLiveReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, sink, states := breakerGuard(t)
		for range 4 {
			_ = g.Do(t.Context(), jsguard.KVGet, "kv get k", honour)
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitOpen {
			t.Fatal("not open")
		}
		p := g.Policy()
		p.Budgets[jsguard.KVPut] = time.Second // an unrelated change
		if err := g.SetPolicy(p); err != nil {
			t.Fatal(err)
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitOpen {
			t.Error("an unrelated change closed the circuit")
		}
		b := p.Breakers[jsguard.KVGet]
		b.Cooldown = time.Minute
		p.Breakers[jsguard.KVGet] = b
		if err := g.SetPolicy(p); err != nil {
			t.Fatal(err)
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitClosed {
			t.Error("a changed breaker kept its state")
		}
		// The reset is reported: the state hook and one CLOSED event.
		evs := sink.events()
		if last := evs[len(evs)-1]; last.Code != jsguard.CircuitClosedCode || last.AdditionalContext["reason"] != "policy change" ||
			(*states)[len(*states)-1] != jsguard.CircuitClosed {
			t.Errorf("after the reset: last event %s %v, states %v", last.Code, last.AdditionalContext, *states)
		}
		p.Breakers = nil
		if err := g.SetPolicy(p); err != nil {
			t.Fatal(err)
		}
		for range 10 {
			_ = g.Do(t.Context(), jsguard.KVGet, "kv get k", honour)
		}
		if err := g.Do(t.Context(), jsguard.KVGet, "kv get k", func(context.Context) error { return nil }); err != nil {
			t.Errorf("without a breaker: %v", err)
		}
	})
}

// TestBreakerPolicyJSON: breakers in a policy document, with defaults for
// the fields left out, and validation naming the entry.
func TestBreakerPolicyJSON(t *testing.T) {
	var p jsguard.Policy
	if err := json.Unmarshal([]byte(`{"breakers":{"TIMEOUT_KV_GET":{"timeout_rate":0.3,"cooldown":"20s"}}}`), &p); err != nil {
		t.Fatal(err)
	}
	want := jsguard.DefaultBreaker()
	want.TimeoutRate, want.Cooldown = 0.3, 20*time.Second
	if got := p.Breakers[jsguard.KVGet]; got != want {
		t.Errorf("breaker %+v, want %+v", got, want)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back jsguard.Policy
	if err := json.Unmarshal(b, &back); err != nil || back.Breakers[jsguard.KVGet] != want {
		t.Errorf("round trip: %+v, %v (%s)", back.Breakers, err, b)
	}
	p.Breakers[jsguard.KVGet] = jsguard.BreakerConfig{Window: time.Second, MinCalls: 1, Cooldown: time.Second, Probes: 1}
	if err := p.Validate(); !errors.Is(err, jsguard.ErrInvalidPolicy) || !strings.Contains(err.Error(), "breakers.TIMEOUT_KV_GET") {
		t.Errorf("a breaker with no rate: %v", err)
	}
}

// TestBreakerIgnoresCallerDeadlines: timeouts caused by the caller's own,
// shorter deadline (a client may send any) neither open the circuit nor
// count as the category's timeouts in its latency histogram.
func TestBreakerIgnoresCallerDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, _, _ := breakerGuard(t) // KV_GET 100ms, opens at 2 of 4
		for range 10 {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
			err := g.Do(ctx, jsguard.KVGet, "kv get k", honour)
			cancel()
			if te := asTimeout(t, err); !te.ParentBound {
				t.Fatalf("not parent-bound: %v", err)
			}
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitClosed {
			t.Errorf("the callers' deadlines opened the circuit")
		}
		for _, l := range g.Latency() {
			if l.Category == jsguard.KVGet && l.Timeouts != 0 {
				t.Errorf("latency counts %d timeouts of the callers' deadlines", l.Timeouts)
			}
		}
		// The category's own budget still counts.
		for range 4 {
			_ = g.Do(t.Context(), jsguard.KVGet, "kv get k", honour)
		}
		if g.Circuit(jsguard.KVGet) != jsguard.CircuitOpen {
			t.Errorf("circuit %s after 4 of its own timeouts", g.Circuit(jsguard.KVGet))
		}
	})
}

// TestLevelsDegradeOnOpenCircuit: under graceful, a File whose read fails
// fast on an open circuit returns its fallback, and a Cached whose lookup
// does goes on to the source; breakers on the levels themselves are
// refused.
func TestLevelsDegradeOnOpenCircuit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, _, _ := breakerGuard(t)
		for range 4 {
			_ = g.Do(t.Context(), jsguard.KVGet, "kv get k", honour)
		}
		get := func(ctx context.Context) (string, error) {
			return "", g.Do(ctx, jsguard.KVGet, "kv get k", func(context.Context) error { return nil })
		}
		r, err := jsguard.File(t.Context(), g, "read f", get,
			func(_ context.Context, te *jsguard.TimeoutError) (string, error) { return "fallback", nil })
		if err != nil || r.Value != "fallback" || !r.Degraded || r.Cause != nil {
			t.Errorf("File: %+v, %v; want the fallback", r, err)
		}
		c, err := jsguard.Cached(t.Context(), g, "cache k",
			func(ctx context.Context) (string, bool, error) { v, err := get(ctx); return v, err == nil, err },
			func(context.Context) (string, error) { return "source", nil })
		if err != nil || c.Value != "source" || !c.Degraded {
			t.Errorf("Cached: %+v, %v; want the source", c, err)
		}
		// Strict: the error.
		if _, err := jsguard.File(t.Context(), g, "read f", get, func(context.Context, *jsguard.TimeoutError) (string, error) { return "fb", nil },
			jsguard.WithStrategy(jsguard.Strict)); !errors.Is(err, jsguard.ErrCircuitOpen) {
			t.Errorf("strict File: %v", err)
		}
	})
	p := jsguard.DefaultPolicy()
	p.Breakers = map[jsguard.Category]jsguard.BreakerConfig{jsguard.T2File: jsguard.DefaultBreaker()}
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "levels degrade on their own") {
		t.Errorf("a breaker on T2: %v", err)
	}
}
