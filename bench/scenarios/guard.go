package scenarios

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/timeout"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// Variant is one way of making the same call.
type Variant struct {
	Name string
	Fn   func()
}

var sinkErr error

func noop(context.Context) error { return nil }

// GuardVariants returns a no-op called bare, through jsguard.Do (by
// default and WithInline) and through failsafe-go's Timeout policy, all
// with the same 5s budget. The failsafe-go call passes a per-call context
// and hands the function the execution's context, as jsguard.Do does;
// "failsafe-go, no ctx" is its cheapest form, Run(fn) without a context.
func GuardVariants() ([]Variant, error) {
	g, err := jsguard.New()
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	exec := failsafe.With[any](timeout.New[any](g.Budget(jsguard.KVGet)))
	fn := noop
	return []Variant{
		{"bare call", func() { sinkErr = fn(ctx) }},
		{"jsguard.Do", func() { sinkErr = g.Do(ctx, jsguard.KVGet, "noop", noop) }},
		{"jsguard.Do WithInline", func() { sinkErr = g.Do(ctx, jsguard.KVGet, "noop", noop, jsguard.WithInline()) }},
		{"failsafe-go Timeout", func() {
			sinkErr = exec.WithContext(ctx).RunWithExecution(func(e failsafe.Execution[any]) error { return noop(e.Context()) })
		}},
		{"failsafe-go Timeout, no ctx", func() { sinkErr = exec.Run(func() error { return noop(ctx) }) }},
	}, nil
}

// OpCost is the cost of one call.
type OpCost struct {
	NsPerOp, AllocsPerOp, BytesPerOp float64
	// CPUNsPerOp is the process's CPU time per call (all goroutines,
	// GC included); unlike NsPerOp it does not count time the process
	// waited for a CPU that other processes held.
	CPUNsPerOp float64
}

// measureCost runs fn n times and returns its cost per call. Allocations
// come from runtime.MemStats, as in testing.B.
func measureCost(fn func(), n int) OpCost {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c0 := selfCPU()
	start := time.Now()
	for range n {
		fn()
	}
	el := time.Since(start)
	cpu := selfCPU() - c0
	runtime.ReadMemStats(&after)
	return OpCost{
		NsPerOp:     float64(el.Nanoseconds()) / float64(n),
		CPUNsPerOp:  float64(cpu.Nanoseconds()) / float64(n),
		AllocsPerOp: float64(after.Mallocs-before.Mallocs) / float64(n),
		BytesPerOp:  float64(after.TotalAlloc-before.TotalAlloc) / float64(n),
	}
}

// Interleaved runs blocks of n calls of each variant in turn, the order
// rotating each round, and returns each variant's median cost over the
// rounds, so that noise from other processes falls on all alike, and each
// variant's median over the rounds of its ns/op divided by variant ref's
// in the same round.
func Interleaved(vs []Variant, rounds, n, ref int) ([]OpCost, []float64) {
	costs := make([][]OpCost, len(vs))
	for _, v := range vs { // warm up
		measureCost(v.Fn, n/10+1)
	}
	for r := range rounds {
		for k := range vs {
			i := (r + k) % len(vs)
			costs[i] = append(costs[i], measureCost(vs[i].Fn, n))
		}
	}
	out := make([]OpCost, len(vs))
	rel := make([]float64, len(vs))
	for i, cs := range costs {
		var ns, al, by, cp, rs []float64
		for r, c := range cs {
			ns, al, by, cp = append(ns, c.NsPerOp), append(al, c.AllocsPerOp), append(by, c.BytesPerOp), append(cp, c.CPUNsPerOp)
			rs = append(rs, c.NsPerOp/costs[ref][r].NsPerOp)
		}
		out[i] = OpCost{NsPerOp: medianF(ns), AllocsPerOp: medianF(al), BytesPerOp: medianF(by), CPUNsPerOp: medianF(cp)}
		rel[i] = medianF(rs)
	}
	return out, rel
}

// GuardResult is scenario 1's outcome.
type GuardResult struct {
	Names []string
	Costs []OpCost
	// VsFailsafe is each variant's median, over the rounds, of its ns/op
	// over failsafe-go's (with ctx) in the same round.
	VsFailsafe []float64
}

// Guard measures scenario 1: the fixed cost of a guarded call.
func Guard(rounds, n int) (GuardResult, error) {
	vs, err := GuardVariants()
	if err != nil {
		return GuardResult{}, err
	}
	costs, rel := Interleaved(vs, rounds, n, 3)
	res := GuardResult{Costs: costs, VsFailsafe: rel}
	for _, v := range vs {
		res.Names = append(res.Names, v.Name)
	}
	return res, nil
}

// Rows returns the table rows of scenario 1. The target compares jsguard.Do
// with failsafe-go's Timeout given a per-call context (the same work:
// a deadline context for the function); the context-free failsafe-go form
// and the inline jsguard form are shown for reference.
func (r GuardResult) Rows() []Row {
	const sc = "1 Guard overhead (no-op)"
	c := func(i int) string {
		return fmt.Sprintf("%.0f ns/op (CPU %.0f ns), %.0f allocs/op, %.0f B/op", r.Costs[i].NsPerOp, r.Costs[i].CPUNsPerOp, r.Costs[i].AllocsPerOp, r.Costs[i].BytesPerOp)
	}
	bare, do, inline, fs, fsNoCtx := 0, 1, 2, 3, 4
	return []Row{
		{sc, "bare call", c(bare), "", "", "", Info},
		{sc, "jsguard.Do vs failsafe-go Timeout (ctx)", c(do), c(fs), fmt.Sprintf("%.3f", r.VsFailsafe[do]),
			"ns/op ratio ≤ 1", check(r.VsFailsafe[do] <= 1)},
		{sc, "jsguard.Do WithInline vs failsafe-go Timeout (ctx)", c(inline), c(fs), fmt.Sprintf("%.3f", r.VsFailsafe[inline]),
			"ns/op ratio ≤ 1", check(r.VsFailsafe[inline] <= 1)},
		{sc, "failsafe-go Timeout without ctx (reference)", "", c(fsNoCtx), "", "", Info},
	}
}
