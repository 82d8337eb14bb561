package jsguard

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// ErrCircuitOpen is matched (errors.Is) by the *CircuitOpenError a guarded
// call returns without running its function while its category's circuit
// is open.
var ErrCircuitOpen = errors.New("jsguard: circuit open")

// CircuitOpenError is returned instead of running a call whose category's
// circuit breaker is open, or half-open with all its probes in flight.
type CircuitOpenError struct {
	Category  Category
	Operation string
	// Until is when the breaker lets probes through again (zero while
	// half-open).
	Until time.Time
}

// Error returns e.g. "TIMEOUT_KV_GET: circuit open until 2026-11-30T12:00:05Z; kv get b/k not called".
func (e *CircuitOpenError) Error() string {
	if e.Until.IsZero() {
		return fmt.Sprintf("%s: circuit half-open, its probes are in flight; %s not called", e.Category.Code(), e.Operation)
	}
	return fmt.Sprintf("%s: circuit open until %s; %s not called", e.Category.Code(), e.Until.UTC().Format(time.RFC3339), e.Operation)
}

// Unwrap returns ErrCircuitOpen.
func (e *CircuitOpenError) Unwrap() error { return ErrCircuitOpen }

// CircuitState is the state of a category's circuit breaker.
type CircuitState int

// The states.
const (
	CircuitClosed   CircuitState = iota // calls run
	CircuitOpen                         // calls fail fast with ErrCircuitOpen
	CircuitHalfOpen                     // up to Probes calls run; the others fail fast
)

// String returns closed, open or half-open.
func (s CircuitState) String() string {
	switch s {
	case CircuitClosed:
		return "closed"
	case CircuitOpen:
		return "open"
	case CircuitHalfOpen:
		return "half-open"
	}
	return "CircuitState(" + strconv.Itoa(int(s)) + ")"
}

// The audit codes of circuit state changes. Each change is one event with
// the category's code in additional_context.category.
const (
	CircuitOpenCode     = "AUDIT_CIRCUIT_OPEN"
	CircuitHalfOpenCode = "AUDIT_CIRCUIT_HALF_OPEN"
	CircuitClosedCode   = "AUDIT_CIRCUIT_CLOSED"
)

// BreakerConfig configures the circuit breaker of one category (see
// Policy.Breakers). The circuit opens when, over the last Window, at least
// MinCalls calls finished and the share that timed out reached TimeoutRate,
// or the share that took SlowCall or longer reached SlowRate. While open,
// calls fail fast with a *CircuitOpenError and nothing runs; after Cooldown
// it turns half-open and lets Probes calls through: if each of them returns
// without timing out (and faster than SlowCall), it closes; the first that
// times out (or is slow) opens it again for another Cooldown. Errors other
// than timeouts count as calls that did not time out.
type BreakerConfig struct {
	Window      time.Duration `json:"window"`       // 1s–1h
	MinCalls    int           `json:"min_calls"`    // >= 1
	TimeoutRate float64       `json:"timeout_rate"` // 0–1; 0: timeouts alone never open it
	SlowCall    time.Duration `json:"slow_call"`    // 0: no slow-call rule
	SlowRate    float64       `json:"slow_rate"`    // 0–1; needs SlowCall
	Cooldown    time.Duration `json:"cooldown"`     // 100ms–1h
	Probes      int           `json:"probes"`       // 1–100
}

// DefaultBreaker returns the defaults a breaker entry of a policy
// document starts from: a 30s window, at least 20 calls, open at half of
// them timing out, no slow-call rule, 10s cool-down, 3 probes.
func DefaultBreaker() BreakerConfig {
	return BreakerConfig{Window: 30 * time.Second, MinCalls: 20, TimeoutRate: 0.5, Cooldown: 10 * time.Second, Probes: 3}
}

// Validate returns an error wrapping ErrInvalidPolicy that names the first
// field out of range.
func (b BreakerConfig) Validate() error {
	bad := func(field string, v any, rng string) error {
		return fmt.Errorf("%w: breaker %s %v is out of range: %s", ErrInvalidPolicy, field, v, rng)
	}
	switch {
	case b.Window < time.Second || b.Window > MaxBudget:
		return bad("window", b.Window, "must be >= 1s and <= 1h")
	case b.MinCalls < 1:
		return bad("min_calls", b.MinCalls, "must be >= 1")
	case b.TimeoutRate < 0 || b.TimeoutRate > 1:
		return bad("timeout_rate", b.TimeoutRate, "must be >= 0 and <= 1")
	case b.SlowRate < 0 || b.SlowRate > 1:
		return bad("slow_rate", b.SlowRate, "must be >= 0 and <= 1")
	case b.SlowCall < 0 || b.SlowCall > MaxBudget:
		return bad("slow_call", b.SlowCall, "must be >= 0 and <= 1h")
	case b.SlowRate > 0 && b.SlowCall == 0:
		return bad("slow_rate", b.SlowRate, "needs slow_call")
	case b.TimeoutRate == 0 && b.SlowRate == 0:
		return bad("timeout_rate", b.TimeoutRate, "timeout_rate or slow_rate must be above 0")
	case b.Cooldown < 100*time.Millisecond || b.Cooldown > MaxBudget:
		return bad("cooldown", b.Cooldown, "must be >= 100ms and <= 1h")
	case b.Probes < 1 || b.Probes > 100:
		return bad("probes", b.Probes, "must be >= 1 and <= 100")
	}
	return nil
}

// breakerBuckets is how many slices the window is counted in.
const breakerBuckets = 10

// breaker is one category's circuit.
type breaker struct {
	cfg BreakerConfig

	mu      sync.Mutex
	state   CircuitState
	until   time.Time // open: when it turns half-open
	probing int       // half-open: probes admitted and not finished
	passed  int       // half-open: probes that finished well
	buckets [breakerBuckets]struct {
		start                 time.Time
		calls, timeouts, slow int
	}
}

// transition is a state change to report.
type transition struct {
	to                    CircuitState
	calls, timeouts, slow int
	at                    time.Time
	reason                string // set when not the calls' doing
}

// admit decides whether a call may run. It returns a *CircuitOpenError when
// not, and whether the call is a half-open probe. A change to half-open is
// reported (see report) before it returns.
func (b *breaker) admit(g *Guard, c Category, op string, now time.Time) (probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case CircuitClosed:
		return false, nil
	case CircuitOpen:
		if now.Before(b.until) {
			return false, &CircuitOpenError{Category: c, Operation: op, Until: b.until}
		}
		b.state, b.probing, b.passed = CircuitHalfOpen, 0, 0
		g.report(c, b, &transition{to: CircuitHalfOpen, at: now})
	}
	if b.probing+b.passed >= b.cfg.Probes {
		return false, &CircuitOpenError{Category: c, Operation: op}
	}
	b.probing++
	return true, nil
}

// done records a call that ran: its outcome and duration, and reports the
// change it caused, if any. Changes are reported under the breaker's lock,
// so in the order they happen.
func (b *breaker) done(g *Guard, c Category, probe bool, o Outcome, d time.Duration, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if tr := b.record(probe, o, d, now); tr != nil {
		g.report(c, b, tr)
	}
}

// record is done's bookkeeping, under b.mu; it returns the change.
func (b *breaker) record(probe bool, o Outcome, d time.Duration, now time.Time) *transition {
	if o == Canceled {
		if probe {
			b.probing--
		}
		return nil
	}
	timedOut := o == TimedOut || o == Abandoned
	slow := b.cfg.SlowCall > 0 && d >= b.cfg.SlowCall
	if probe {
		b.probing--
		if b.state != CircuitHalfOpen {
			return nil
		}
		if timedOut || slow {
			b.state, b.until = CircuitOpen, now.Add(b.cfg.Cooldown)
			b.reset(now)
			return &transition{to: CircuitOpen, calls: 1, timeouts: boolInt(timedOut), slow: boolInt(slow), at: now}
		}
		b.passed++
		if b.passed >= b.cfg.Probes {
			b.state = CircuitClosed
			b.reset(now)
			return &transition{to: CircuitClosed, calls: b.passed, at: now}
		}
		return nil
	}
	if b.state != CircuitClosed {
		return nil // a call admitted before the circuit opened
	}
	width := b.cfg.Window / breakerBuckets
	slot := now.UnixNano() / int64(width)
	i := int(slot % breakerBuckets)
	start := time.Unix(0, slot*int64(width))
	bk := &b.buckets[i]
	if !bk.start.Equal(start) {
		bk.start, bk.calls, bk.timeouts, bk.slow = start, 0, 0, 0
	}
	bk.calls++
	bk.timeouts += boolInt(timedOut)
	bk.slow += boolInt(slow)
	var calls, timeouts, slows int
	for j := range b.buckets {
		if now.Sub(b.buckets[j].start) < b.cfg.Window {
			calls += b.buckets[j].calls
			timeouts += b.buckets[j].timeouts
			slows += b.buckets[j].slow
		}
	}
	if calls < b.cfg.MinCalls {
		return nil
	}
	rate := func(n int) float64 { return float64(n) / float64(calls) }
	if (b.cfg.TimeoutRate > 0 && rate(timeouts) >= b.cfg.TimeoutRate) || (b.cfg.SlowRate > 0 && rate(slows) >= b.cfg.SlowRate) {
		b.state, b.until = CircuitOpen, now.Add(b.cfg.Cooldown)
		b.reset(now)
		return &transition{to: CircuitOpen, calls: calls, timeouts: timeouts, slow: slows, at: now}
	}
	return nil
}

func (b *breaker) reset(time.Time) {
	for j := range b.buckets {
		b.buckets[j].start, b.buckets[j].calls, b.buckets[j].timeouts, b.buckets[j].slow = time.Time{}, 0, 0, 0
	}
}

func boolInt(v bool) int {
	if v {
		return 1
	}
	return 0
}

// setBreakers installs the breakers of a new policy: a category whose
// configuration did not change keeps its breaker and state; one that
// changed starts closed; one no longer configured has none. A breaker
// that was open or half-open and is replaced or removed is reported
// closed (reason "policy change").
func (g *Guard) setBreakers(cfgs map[Category]BreakerConfig) {
	g.breakersMu.Lock()
	defer g.breakersMu.Unlock()
	old := g.breakers.Load()
	m := make(map[Category]*breaker, len(cfgs))
	for c, cfg := range cfgs {
		if old != nil {
			if b, ok := (*old)[c]; ok && b.cfg == cfg {
				m[c] = b
				continue
			}
		}
		m[c] = &breaker{cfg: cfg}
	}
	g.breakers.Store(&m)
	if old == nil {
		return
	}
	for c, b := range *old {
		if m[c] == b {
			continue
		}
		b.mu.Lock()
		if b.state != CircuitClosed {
			b.state = CircuitClosed
			g.report(c, b, &transition{to: CircuitClosed, at: time.Now(), reason: "policy change"})
		}
		b.mu.Unlock()
	}
}

// breaker returns c's breaker, nil when the policy configures none.
func (g *Guard) breaker(c Category) *breaker {
	m := g.breakers.Load()
	if m == nil || len(*m) == 0 {
		return nil
	}
	return (*m)[c]
}

// Circuit returns the state of c's circuit breaker; CircuitClosed when
// the policy configures none.
func (g *Guard) Circuit(c Category) CircuitState {
	b := g.breaker(c)
	if b == nil {
		return CircuitClosed
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// report emits the audit event of a state change and calls
// Hooks.OnCircuit; its caller holds b.mu, so that changes are reported in
// order (an emit holds it at most the guard's emit bound).
func (g *Guard) report(c Category, b *breaker, tr *transition) {
	code := map[CircuitState]string{CircuitOpen: CircuitOpenCode, CircuitHalfOpen: CircuitHalfOpenCode, CircuitClosed: CircuitClosedCode}[tr.to]
	details := map[string]string{"category": c.Code(), "state": tr.to.String()}
	switch tr.to {
	case CircuitOpen:
		details["calls"] = strconv.Itoa(tr.calls)
		details["timeouts"] = strconv.Itoa(tr.timeouts)
		details["slow_calls"] = strconv.Itoa(tr.slow)
		details["cooldown"] = b.cfg.Cooldown.String()
		details["window"] = b.cfg.Window.String()
	case CircuitClosed:
		details["probes"] = strconv.Itoa(tr.calls)
	}
	if tr.reason != "" {
		details["reason"] = tr.reason
	}
	if g.hooks.OnCircuit != nil {
		g.hooks.OnCircuit(c, tr.to)
	}
	g.Emit(context.Background(), Event{
		Code:              code,
		Operation:         "circuit " + c.Code() + " " + tr.to.String(),
		AdditionalContext: details,
		StartedAt:         tr.at.UTC(),
		Timestamp:         tr.at.UTC(),
	})
}
