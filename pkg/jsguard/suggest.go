package jsguard

import (
	"math"
	"sort"
	"time"
)

// SuggestOptions tunes Suggest.
type SuggestOptions struct {
	// Percentile of the observed durations a budget must cover (99.9).
	Percentile float64
	// Margin multiplies the percentile (1.5).
	Margin float64
	// MinCalls leaves out categories with fewer observed calls (100).
	MinCalls uint64
	// BelowMax lets a budget fall below the longest call that succeeded;
	// by default a budget never does, so no call that succeeded would have
	// timed out.
	BelowMax bool
}

func (o *SuggestOptions) defaults() {
	if o.Percentile <= 0 || o.Percentile > 100 {
		o.Percentile = 99.9
	}
	if o.Margin <= 0 {
		o.Margin = 1.5
	}
	if o.MinCalls == 0 {
		o.MinCalls = 100
	}
}

// Suggestion is a proposed budget for one category, with what it is based
// on.
type Suggestion struct {
	Category Category
	// Calls succeeded; Timeouts ran out of the category's budget.
	Calls, Timeouts uint64
	// Observed is the duration at the percentile (the upper bound of its
	// histogram bucket); when the percentile falls among the timeouts, it
	// is the old budget, a lower bound.
	Observed time.Duration
	// MaxOK is the longest call that succeeded (see Latency.MaxOK).
	MaxOK time.Duration
	// Old is the budget in force, New the proposal.
	Old, New time.Duration
	// OldRate is the share of calls that timed out; NewRate estimates the
	// share that would have under New (calls that returned in time but
	// took longer than New, plus the timeouts, which are counted as
	// timeouts under any budget).
	OldRate, NewRate float64
	// Note says what bounded New, if anything.
	Note string
}

// Suggest proposes a budget per category from observed latency
// histograms (summed over replicas and a window; see Guard.Latency): the
// Percentile of the durations times Margin, rounded up to two significant
// digits, clamped to [1ms, MaxBudget] and, unless BelowMax, to at least
// the longest call that succeeded. Categories with fewer than
// MinCalls calls are left out. Proposals that would break the order of
// the hierarchy's budgets (T1 < … < T5) keep their old budget, with a
// note. The result is sorted by category; it never fails.
func Suggest(p Policy, hists []Latency, o SuggestOptions) []Suggestion {
	o.defaults()
	var out []Suggestion
	for _, h := range hists {
		calls := h.Calls()
		total := calls + h.Timeouts
		if total < o.MinCalls || total == 0 {
			continue
		}
		s := Suggestion{Category: h.Category, Calls: calls, Timeouts: h.Timeouts, MaxOK: h.MaxOK, Old: p.Budget(h.Category)}
		s.OldRate = float64(h.Timeouts) / float64(total)
		rank := uint64(math.Ceil(o.Percentile*float64(total)/100 - 1e-9))
		var seen uint64
		s.Observed = s.Old // the percentile is among the timeouts
		for i, c := range h.Counts {
			seen += c
			if seen >= rank && c > 0 {
				s.Observed = LatencyBound(i)
				break
			}
		}
		switch want := float64(s.Observed) * o.Margin; {
		case want < float64(time.Millisecond):
			s.New, s.Note = time.Millisecond, "raised to the 1ms floor"
		case want > float64(MaxBudget):
			s.New, s.Note = MaxBudget, "cut to the 1h ceiling"
		default:
			s.New = min(niceCeil(time.Duration(want)), MaxBudget)
		}
		if !o.BelowMax && s.New < s.MaxOK {
			s.New, s.Note = min(niceCeil(s.MaxOK), MaxBudget), "raised to the longest call that succeeded"
		}
		if s.Observed == s.Old && seen < rank {
			s.Note = "the percentile is among the timeouts: the old budget times the margin"
		}
		s.NewRate = float64(above(h, s.New)+h.Timeouts) / float64(total)
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Category < out[j].Category })
	// Keep the levels in order: a proposal that breaks it stays old.
	budget := func(c Category) time.Duration {
		for _, s := range out {
			if s.Category == c {
				return s.New
			}
		}
		return p.Budget(c)
	}
	for changed := true; changed; {
		changed = false
		for l := T1; l < T5; l++ {
			lo, hi := l.Category(), (l + 1).Category()
			if budget(lo) < budget(hi) {
				continue
			}
			for i := range out {
				if c := out[i].Category; (c == lo || c == hi) && out[i].New != out[i].Old {
					out[i].New, out[i].NewRate = out[i].Old, out[i].OldRate
					out[i].Note = "kept: the proposal would break T1 < T2 < T3 < T4 < T5"
					changed = true
				}
			}
		}
	}
	return out
}

// above estimates how many calls of h that returned in time took longer
// than d, spreading each bucket's calls evenly over its range.
func above(h Latency, d time.Duration) uint64 {
	var n float64
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		lo, hi := time.Duration(0), LatencyBound(i)
		if i > 0 {
			lo = LatencyBound(i - 1)
		}
		switch {
		case lo >= d:
			n += float64(c)
		case hi > d:
			n += float64(c) * float64(hi-d) / float64(hi-lo)
		}
	}
	return uint64(math.Round(n))
}

// niceCeil rounds d up to two significant digits (1.234s → 1.3s).
func niceCeil(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	step := time.Duration(1)
	for d/step >= 100 {
		step *= 10
	}
	return (d + step - 1) / step * step
}
