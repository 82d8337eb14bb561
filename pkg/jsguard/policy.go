package jsguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Strategy says what a timed-out call does with a fallback.
type Strategy string

// The strategies.
const (
	// Graceful returns the caller's fallback (or a stale cached value up to
	// Policy.MaxStaleAge) instead of the timeout error, marked degraded.
	Graceful Strategy = "graceful"
	// Strict returns the timeout error even when a fallback was given; the
	// fallback is never called.
	Strict Strategy = "strict"
	// None turns fallbacks off altogether: neither fallbacks nor stale
	// cached values are consulted, and the timeout error returns. The
	// T1–T5 hierarchy calls (Cached, File, Layer, Full, Complex) also
	// run without their level's budget under it, bounded by the caller's
	// deadline alone, and are audited when that deadline fires. Other
	// categories keep their budgets.
	None Strategy = "none"
)

// ErrInvalidPolicy is wrapped by every error Policy.Validate returns.
var ErrInvalidPolicy = errors.New("jsguard: invalid policy")

// Policy is the timeout matrix: a budget per category (levels included), the
// budget of anything unlisted, the fallback strategy and how stale a cached
// value may be when served as a fallback. A Policy is a plain value; a Guard
// holds one at a time and swaps it atomically (see Guard.SetPolicy).
type Policy struct {
	// Budgets maps a category to its budget. A category missing here uses
	// its registered default, and an unknown one uses Default.
	Budgets map[Category]time.Duration
	// Default is the budget of a category that is neither listed nor
	// registered (30s in DefaultPolicy).
	Default time.Duration
	// Strategy is graceful, strict or none.
	Strategy Strategy
	// MaxStaleAge bounds how old a cached value may be when Cache serves it
	// because its loader timed out (60s in DefaultPolicy).
	MaxStaleAge time.Duration
	// Breakers configures a circuit breaker per category (none in
	// DefaultPolicy): see BreakerConfig. A policy change keeps the state
	// of breakers whose configuration did not change.
	Breakers map[Category]BreakerConfig
}

// DefaultPolicy returns the seed matrix: every registered category at its
// default budget, Default 30s, Strategy graceful, MaxStaleAge 60s.
func DefaultPolicy() Policy {
	return Policy{
		Budgets:     registeredBudgets(),
		Default:     DefaultBudget,
		Strategy:    Graceful,
		MaxStaleAge: 60 * time.Second,
	}
}

// Budget returns the budget of category c under p.
func (p *Policy) Budget(c Category) time.Duration {
	if d, ok := p.Budgets[c]; ok {
		return d
	}
	registry.RLock()
	d, ok := registry.budgets[c]
	registry.RUnlock()
	if ok {
		return d
	}
	if p.Default > 0 {
		return p.Default
	}
	return DefaultBudget
}

// Clone returns a deep copy of p, safe to modify.
func (p Policy) Clone() Policy {
	b := make(map[Category]time.Duration, len(p.Budgets))
	for c, d := range p.Budgets {
		b[c] = d
	}
	p.Budgets = b
	if p.Breakers != nil {
		br := make(map[Category]BreakerConfig, len(p.Breakers))
		for c, cfg := range p.Breakers {
			br[c] = cfg
		}
		p.Breakers = br
	}
	return p
}

func checkBudget(name string, d time.Duration) error {
	if d <= 0 || d > MaxBudget {
		return fmt.Errorf("%w: %s budget %s is out of range: must be > 0 and <= %s", ErrInvalidPolicy, name, d, MaxBudget)
	}
	return nil
}

// Validate checks every entry. The error wraps ErrInvalidPolicy and names the
// first bad entry and its allowed range: each budget and Default > 0 and
// <= 1h, MaxStaleAge >= 0 and <= 1h, Strategy graceful, strict or none, every
// category code ^TIMEOUT_[A-Z0-9_]+$, and the hierarchy's budgets in order,
// T1 < T2 < T3 < T4 < T5 (the error names the two entries out of order).
func (p *Policy) Validate() error {
	cats := make([]Category, 0, len(p.Budgets))
	for c := range p.Budgets {
		cats = append(cats, c)
	}
	sort.Slice(cats, func(i, j int) bool { return cats[i] < cats[j] })
	for _, c := range cats {
		if !codePattern.MatchString(c.Code()) {
			return fmt.Errorf("%w: category code %q must match %s", ErrInvalidPolicy, c.Code(), codePattern)
		}
		if err := checkBudget(c.Code(), p.Budgets[c]); err != nil {
			return err
		}
	}
	if err := checkBudget("default", p.Default); err != nil {
		return err
	}
	for l := T1; l < T5; l++ {
		lo, hi := l.Category(), (l + 1).Category()
		if p.Budget(lo) >= p.Budget(hi) {
			return fmt.Errorf("%w: hierarchy budgets out of order: %s %s must be below %s %s (T1 < T2 < T3 < T4 < T5)",
				ErrInvalidPolicy, lo.Code(), p.Budget(lo), hi.Code(), p.Budget(hi))
		}
	}
	switch p.Strategy {
	case Graceful, Strict, None:
	default:
		return fmt.Errorf("%w: strategy %q is not one of graceful, strict, none", ErrInvalidPolicy, p.Strategy)
	}
	if p.MaxStaleAge < 0 || p.MaxStaleAge > MaxBudget {
		return fmt.Errorf("%w: max_stale_age %s is out of range: must be >= 0 and <= %s", ErrInvalidPolicy, p.MaxStaleAge, MaxBudget)
	}
	cats = cats[:0]
	for c := range p.Breakers {
		cats = append(cats, c)
	}
	sort.Slice(cats, func(i, j int) bool { return cats[i] < cats[j] })
	for _, c := range cats {
		if !codePattern.MatchString(c.Code()) {
			return fmt.Errorf("%w: breakers: category code %q must match %s", ErrInvalidPolicy, c.Code(), codePattern)
		}
		if c.Level() != LevelNone {
			return fmt.Errorf("%w: breakers.%s: the T1-T5 levels degrade on their own; put the breaker on the category of the calls inside them", ErrInvalidPolicy, c.Code())
		}
		if err := p.Breakers[c].Validate(); err != nil {
			return fmt.Errorf("breakers.%s: %w", c.Code(), err)
		}
	}
	return nil
}

type policyJSON struct {
	Budgets     map[string]string      `json:"budgets"`
	Default     string                 `json:"default"`
	Strategy    Strategy               `json:"strategy"`
	MaxStaleAge string                 `json:"max_stale_age"`
	Breakers    map[string]breakerJSON `json:"breakers,omitempty"`
}

// breakerJSON is a BreakerConfig in a policy document: durations as Go
// duration strings, missing fields from DefaultBreaker.
type breakerJSON struct {
	Window      string   `json:"window,omitempty"`
	MinCalls    *int     `json:"min_calls,omitempty"`
	TimeoutRate *float64 `json:"timeout_rate,omitempty"`
	SlowCall    string   `json:"slow_call,omitempty"`
	SlowRate    *float64 `json:"slow_rate,omitempty"`
	Cooldown    string   `json:"cooldown,omitempty"`
	Probes      *int     `json:"probes,omitempty"`
}

// MarshalJSON encodes p with budgets keyed by audit code and durations as Go
// duration strings: {"budgets":{"TIMEOUT_KV_GET":"5s"},"default":"30s",
// "strategy":"graceful","max_stale_age":"1m0s"}. It never fails.
func (p Policy) MarshalJSON() ([]byte, error) {
	j := policyJSON{
		Budgets:     make(map[string]string, len(p.Budgets)),
		Default:     p.Default.String(),
		Strategy:    p.Strategy,
		MaxStaleAge: p.MaxStaleAge.String(),
	}
	for c, d := range p.Budgets {
		j.Budgets[c.Code()] = d.String()
	}
	if len(p.Breakers) > 0 {
		j.Breakers = make(map[string]breakerJSON, len(p.Breakers))
		for c, b := range p.Breakers {
			bj := breakerJSON{Window: b.Window.String(), MinCalls: &b.MinCalls, TimeoutRate: &b.TimeoutRate,
				SlowRate: &b.SlowRate, Cooldown: b.Cooldown.String(), Probes: &b.Probes}
			if b.SlowCall > 0 {
				bj.SlowCall = b.SlowCall.String()
			}
			j.Breakers[c.Code()] = bj
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes the form MarshalJSON writes. Missing fields keep the
// values DefaultPolicy gives them, so a partial document overrides only what
// it names. It returns an error wrapping ErrInvalidPolicy for a malformed
// code or duration; it does not call Validate.
func (p *Policy) UnmarshalJSON(b []byte) error {
	var j policyJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	out := DefaultPolicy()
	for code, s := range j.Budgets {
		c, err := ParseCode(code)
		if err != nil {
			return fmt.Errorf("%w: budgets: %w", ErrInvalidPolicy, err)
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%w: budgets.%s: %q is not a duration like \"5s\"", ErrInvalidPolicy, code, s)
		}
		out.Budgets[c] = d
	}
	for _, f := range []struct {
		name string
		s    string
		dst  *time.Duration
	}{{"default", j.Default, &out.Default}, {"max_stale_age", j.MaxStaleAge, &out.MaxStaleAge}} {
		if f.s == "" {
			continue
		}
		d, err := time.ParseDuration(f.s)
		if err != nil {
			return fmt.Errorf("%w: %s: %q is not a duration like \"30s\"", ErrInvalidPolicy, f.name, f.s)
		}
		*f.dst = d
	}
	if j.Strategy != "" {
		out.Strategy = j.Strategy
	}
	for code, bj := range j.Breakers {
		c, err := ParseCode(code)
		if err != nil {
			return fmt.Errorf("%w: breakers: %w", ErrInvalidPolicy, err)
		}
		b := DefaultBreaker()
		for _, f := range []struct {
			name string
			s    string
			dst  *time.Duration
		}{{"window", bj.Window, &b.Window}, {"slow_call", bj.SlowCall, &b.SlowCall}, {"cooldown", bj.Cooldown, &b.Cooldown}} {
			if f.s == "" {
				continue
			}
			d, err := time.ParseDuration(f.s)
			if err != nil {
				return fmt.Errorf("%w: breakers.%s.%s: %q is not a duration like \"30s\"", ErrInvalidPolicy, code, f.name, f.s)
			}
			*f.dst = d
		}
		if bj.MinCalls != nil {
			b.MinCalls = *bj.MinCalls
		}
		if bj.TimeoutRate != nil {
			b.TimeoutRate = *bj.TimeoutRate
		}
		if bj.SlowRate != nil {
			b.SlowRate = *bj.SlowRate
		}
		if bj.Probes != nil {
			b.Probes = *bj.Probes
		}
		if out.Breakers == nil {
			out.Breakers = map[Category]BreakerConfig{}
		}
		out.Breakers[c] = b
	}
	*p = out
	return nil
}
