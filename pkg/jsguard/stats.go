package jsguard

import (
	"sort"
	"sync/atomic"
	"time"
)

// DurationBuckets are the upper bounds of the duration histogram in
// CategoryStats, in the style of Prometheus buckets; a last, implicit bucket
// holds everything longer.
var DurationBuckets = []time.Duration{
	time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond,
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second, 30 * time.Second,
	time.Minute, 5 * time.Minute,
}

type catStats struct {
	// quick is set while the category's last call that ran its course
	// took under quickCall: such calls wait for their function by
	// yielding once instead of parking on a timer (see call.await).
	quick                                                atomic.Bool
	calls, failed, timeouts, abandoned, canceled, events atomic.Uint64
	rejected                                             atomic.Uint64
	sumNanos                                             atomic.Int64
	buckets                                              [16]atomic.Uint64 // len(DurationBuckets)+1
}

// CategoryStats is a snapshot of one category's calls.
type CategoryStats struct {
	Category Category
	Calls    uint64 // every finished call
	Failed   uint64 // fn returned an error before its deadline
	Timeouts uint64 // deadline fired, abandoned ones included
	// Abandoned counts timeouts whose function ignored its context.
	Abandoned uint64
	Canceled  uint64 // parent cancelled
	// Rejected counts calls that failed fast because the category's
	// circuit was open (not counted in Calls, Buckets or Sum).
	Rejected uint64
	// Events counts audit events emitted for this category.
	Events uint64
	// Buckets[i] counts calls with duration <= DurationBuckets[i] and above
	// the previous bound; the last entry counts the rest (not cumulative).
	Buckets []uint64
	// Sum is the total duration of all calls.
	Sum time.Duration
}

// Stats returns a snapshot per category that has seen a call or an event,
// sorted by category.
func (g *Guard) Stats() []CategoryStats {
	var out []CategoryStats
	m := g.stats.Load()
	if m == nil {
		return nil
	}
	for c, s := range *m {
		cs := CategoryStats{
			Category:  c,
			Calls:     s.calls.Load(),
			Failed:    s.failed.Load(),
			Timeouts:  s.timeouts.Load(),
			Abandoned: s.abandoned.Load(),
			Canceled:  s.canceled.Load(),
			Rejected:  s.rejected.Load(),
			Events:    s.events.Load(),
			Sum:       time.Duration(s.sumNanos.Load()),
			Buckets:   make([]uint64, len(s.buckets)),
		}
		for i := range s.buckets {
			cs.Buckets[i] = s.buckets[i].Load()
		}
		out = append(out, cs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Category < out[j].Category })
	return out
}

// SinkErrors returns how many events the sink failed to take or overran the
// emit bound with.
func (g *Guard) SinkErrors() uint64 { return g.sinkErrors.Load() }

// PolicyRejections returns how many policy updates a PolicyStore rejected.
func (g *Guard) PolicyRejections() uint64 { return g.rejected.Load() }

func (g *Guard) stat(c Category) *catStats {
	if m := g.stats.Load(); m != nil {
		if s, ok := (*m)[c]; ok {
			return s
		}
	}
	g.statsMu.Lock()
	defer g.statsMu.Unlock()
	old := g.stats.Load()
	if old != nil {
		if s, ok := (*old)[c]; ok {
			return s
		}
	}
	m := make(map[Category]*catStats, 1+lenOf(old))
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	s := new(catStats)
	m[c] = s
	g.stats.Store(&m)
	return s
}

func lenOf(m *map[Category]*catStats) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// quickCall is the duration under which a category's calls count as quick.
const quickCall = 2 * time.Microsecond

func (g *Guard) record(s *catStats, c Category, op string, budget, d time.Duration, o Outcome) {
	if o == Rejected {
		s.rejected.Add(1)
		if g.hooks.OnCall != nil {
			g.hooks.OnCall(CallInfo{Category: c, Operation: op, Budget: budget, Duration: d, Outcome: o})
		}
		return
	}
	if o == OK || o == Failed {
		if q := d < quickCall; s.quick.Load() != q {
			s.quick.Store(q)
		}
	}
	s.calls.Add(1)
	switch o {
	case Failed:
		s.failed.Add(1)
	case TimedOut:
		s.timeouts.Add(1)
	case Abandoned:
		s.timeouts.Add(1)
		s.abandoned.Add(1)
	case Canceled:
		s.canceled.Add(1)
	}
	s.sumNanos.Add(int64(d))
	i := sort.Search(len(DurationBuckets), func(i int) bool { return d <= DurationBuckets[i] })
	s.buckets[min(i, len(s.buckets)-1)].Add(1)
	if g.hooks.OnCall != nil {
		g.hooks.OnCall(CallInfo{Category: c, Operation: op, Budget: budget, Duration: d, Outcome: o})
	}
}
