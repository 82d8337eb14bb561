package jsguard

import (
	"math"
	"math/bits"
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
	parentTimeouts                                       atomic.Uint64 // timeouts the caller's deadline caused
	sumNanos                                             atomic.Int64
	buckets                                              [16]atomic.Uint64 // len(DurationBuckets)+1
	// fine is the latency histogram of the calls that returned before
	// their deadline (see LatencyBucket); maxOK the longest of them.
	fine  [LatencyBuckets]atomic.Uint64
	maxOK atomic.Int64
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
	if o == OK {
		s.fine[LatencyBucket(d)].Add(1)
		for m := s.maxOK.Load(); int64(d) > m && !s.maxOK.CompareAndSwap(m, int64(d)); m = s.maxOK.Load() {
		}
	}
	i := sort.Search(len(DurationBuckets), func(i int) bool { return d <= DurationBuckets[i] })
	s.buckets[min(i, len(s.buckets)-1)].Add(1)
	if g.hooks.OnCall != nil {
		g.hooks.OnCall(CallInfo{Category: c, Operation: op, Budget: budget, Duration: d, Outcome: o})
	}
}

// LatencyBuckets is the number of buckets of the latency histograms that
// Guard.Latency returns: quarter octaves (each bound about 19% above the
// one before) from 100µs up, the last one open-ended (past about 47 min).
const LatencyBuckets = 100

// latencyBase is the upper bound of bucket 0.
const latencyBase = 100 * time.Microsecond

// LatencyBucket returns the latency bucket of a call that took d: bucket 0
// holds d <= 100µs, bucket i > 0 holds LatencyBound(i-1) < d <=
// LatencyBound(i).
func LatencyBucket(d time.Duration) int {
	if d <= latencyBase {
		return 0
	}
	// The smallest i with d <= LatencyBound(i).
	n := uint64((d - 1) / latencyBase) // d in (n, n+1] * base
	e := bits.Len64(n) - 1             // octave of n: 2^e <= n < 2^(e+1)
	q := 0
	if e >= 2 {
		q = int(n>>(e-2)) & 3
	} else if e >= 0 {
		q = int(n<<(2-e)) & 3
	}
	i := min(4*e+q+1, LatencyBuckets-1)
	for i > 1 && d <= LatencyBound(i-1) {
		i--
	}
	for i < LatencyBuckets-1 && d > LatencyBound(i) {
		i++
	}
	return i
}

// LatencyBound returns the upper bound of latency bucket i: 100µs ×
// 2^(i/4). It panics unless 0 <= i < LatencyBuckets.
func LatencyBound(i int) time.Duration { return latencyBounds[i] }

var latencyBounds = func() (b [LatencyBuckets]time.Duration) {
	for i := range b {
		b[i] = time.Duration(float64(latencyBase) * math.Exp2(float64(i)/4))
	}
	return b
}()

// Latency is one category's latency histogram since the guard was made:
// the calls that succeeded by LatencyBucket, how many
// ran out of the category's budget instead (not counting those the
// caller's own, earlier deadline cut short), and the longest that returned
// in time.
type Latency struct {
	Category Category
	Counts   [LatencyBuckets]uint64
	Timeouts uint64
	MaxOK    time.Duration
}

// Latency returns a histogram per category that has seen a call, sorted by
// category; the counts only grow, so two snapshots give the calls between
// them (see Latency.Sub).
func (g *Guard) Latency() []Latency {
	m := g.stats.Load()
	if m == nil {
		return nil
	}
	out := make([]Latency, 0, len(*m))
	for c, s := range *m {
		l := Latency{Category: c, Timeouts: s.timeouts.Load() - min(s.parentTimeouts.Load(), s.timeouts.Load()), MaxOK: time.Duration(s.maxOK.Load())}
		for i := range s.fine {
			l.Counts[i] = s.fine[i].Load()
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Category < out[j].Category })
	return out
}

// Sub returns the calls in l that are not in an earlier snapshot prev of
// the same category (MaxOK stays l's: the longest since the guard was
// made).
func (l Latency) Sub(prev Latency) Latency {
	out := l
	for i := range out.Counts {
		out.Counts[i] -= min(prev.Counts[i], out.Counts[i])
	}
	out.Timeouts -= min(prev.Timeouts, out.Timeouts)
	return out
}

// Calls returns how many calls l counts that returned in time.
func (l *Latency) Calls() uint64 {
	var n uint64
	for _, c := range l.Counts {
		n += c
	}
	return n
}
