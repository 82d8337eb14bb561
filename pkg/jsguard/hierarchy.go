package jsguard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// The T1–T5 hierarchy: five levels of work, each with its budget and its
// own way of degrading when the budget runs out, so that a request always
// returns something and never hangs:
//
//	Request → T1 Cache → T2 File → T3 Layer → T4 Full → Result
//
//	level       budget  on timeout (graceful)
//	T1 cache    100ms   skip the cache, go on to the source      Cached
//	T2 file     500ms   the caller's fallback content             File
//	T3 layer    2s      the parts that loaded, flagged partial    Layer
//	T4 full     5s      the core, flagged core-only               Full
//	T5 complex  10s     abort, with a summary of what was done    Complex
//
// The levels compose by nesting: a T4 load runs T3 layer loads, which run
// T2 file reads, which try a T1 cache. A call's deadline is the earlier of
// its level's budget and its parent's deadline, so a child never outlives
// its parent. Each result lists what degraded beneath it (Degradation), so
// a parent's result reflects its children's.
//
// The strategy (the policy's, or WithStrategy on a call, which its nested
// hierarchy calls inherit) decides what a timeout does:
//
//   - graceful degrades as in the table;
//   - strict returns the *TimeoutError and degrades nothing (no fallback
//     is called, no partial result returned);
//   - none runs without the levels' budgets, under the parent's deadline
//     alone; when that deadline fires the call is still audited and its
//     *TimeoutError returns.
//
// Every timeout is exactly one audit event. When several calls share a
// deadline (children clamped to their parent's remaining time), the
// outermost hierarchy call among them reports it, with its level and
// whether it degraded (fallback_used); the children return a
// *TimeoutError naming that event.

// noBudget is the budget of a call under strategy none: longer than any
// parent's deadline.
const noBudget = time.Duration(1<<63 - 1)

// Degradation is one hierarchy call that returned less than it was asked
// for because its deadline fired.
type Degradation struct {
	Level     Level
	Operation string
	// Fallback is what was returned instead (Level.DefaultFallback).
	Fallback string
	// Missing names the parts (T3) or layers (T4) that were left out.
	Missing []string
	// Cause is the timeout; its EventID names the audit event. It is nil
	// when a call inside failed fast on an open circuit instead; Open
	// then says which (Cached and File degrade for that too).
	Cause *TimeoutError
	Open  *CircuitOpenError
}

// String returns e.g. "T3 layer physics: partial result, missing [b.md]".
func (d Degradation) String() string {
	s := fmt.Sprintf("%s %s: %s", d.Level, d.Operation, d.Fallback)
	if d.Open != nil {
		s += " (" + d.Open.Category.Code() + " circuit open)"
	}
	if len(d.Missing) > 0 {
		s += fmt.Sprintf(", missing %v", d.Missing)
	}
	return s
}

// degradeKey carries a hierarchy call's collector to its children.
type degradeKey struct{}

// strategyKey carries the strategy a hierarchy call ran with to its children.
type strategyKey struct{}

// collector gathers the degradations of a hierarchy call's children. A
// child that finishes after its parent returned (it ignored its context)
// reports into a closed collector and is dropped.
type collector struct {
	mu     sync.Mutex
	closed bool
	list   []Degradation
}

func (c *collector) add(ds ...Degradation) {
	c.mu.Lock()
	if !c.closed {
		c.list = append(c.list, ds...)
	}
	c.mu.Unlock()
}

// close returns what was collected; later adds are dropped.
func (c *collector) close() []Degradation {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return slices.Clone(c.list)
}

// level is one hierarchy call in progress.
type level struct {
	g        *Guard
	l        Level
	op       string
	strategy Strategy
	parent   *collector
	children collector
	opts     []CallOption
}

func startLevel(ctx context.Context, g *Guard, l Level, op string, opts []CallOption) (*level, context.Context) {
	g = orDefault(g)
	o := applyOpts(opts)
	st := o.strategy
	if st == "" {
		st, _ = ctx.Value(strategyKey{}).(Strategy)
	}
	if st == "" {
		st = g.policy.Load().Strategy
	}
	lv := &level{g: g, l: l, op: op, strategy: st}
	lv.parent, _ = ctx.Value(degradeKey{}).(*collector)
	lv.opts = append(slices.Clip(opts), func(o *callOpts) {
		o.level, o.strategy = true, st
		o.noBudget = st == None
	})
	ctx = context.WithValue(ctx, degradeKey{}, &lv.children)
	ctx = context.WithValue(ctx, strategyKey{}, st)
	return lv, ctx
}

// graceful reports whether a timeout of this call degrades.
func (lv *level) graceful() bool { return lv.strategy == Graceful }

// degrades reports whether this call degrades for te: graceful, and the
// deadline is not one an enclosing hierarchy call reports and degrades
// for (a child's fallback would be thrown away with its parent's work).
func (lv *level) degrades(te *TimeoutError) bool {
	return te != nil && lv.graceful() && !te.delegated
}

// finish closes the children's collector, adds own (when not nil) and
// hands the whole list to the parent's collector. It returns the list.
func (lv *level) finish(own *Degradation) []Degradation {
	ds := lv.children.close()
	if own != nil {
		ds = append(ds, *own)
	}
	if lv.parent != nil && len(ds) > 0 {
		lv.parent.add(ds...)
	}
	return ds
}

func (lv *level) degraded(te *TimeoutError, missing []string) *Degradation {
	return &Degradation{Level: lv.l, Operation: lv.op, Fallback: lv.l.DefaultFallback(), Missing: missing, Cause: te}
}

// Cached runs lookup, a cache read, as a T1 call. On a hit it returns the
// cached value; on a miss it returns source's value. When the lookup's
// deadline fires under graceful, the cache is skipped: source runs, and
// the result is marked Degraded with the timeout as Cause (one T1 audit
// event, fallback_used). A lookup that fails fast on an open circuit
// (ErrCircuitOpen) is skipped the same way, with a nil Cause. source runs under the caller's context, not
// under T1's budget; a T2 File that wraps Cached bounds both.
//
// It returns lookup's or source's error, ctx.Err() when ctx is done, or
// the *TimeoutError under strict or none (when the parent's deadline
// fires).
func Cached[T any](ctx context.Context, g *Guard, op string, lookup func(context.Context) (T, bool, error), source func(context.Context) (T, error), opts ...CallOption) (Result[T], error) {
	lv, lctx := startLevel(ctx, g, T1, op, opts)
	type hit struct {
		v  T
		ok bool
	}
	o := applyOpts(lv.opts)
	r := run(lctx, lv.g, T1Cache, op, valueFunc[hit](func(ctx context.Context) (hit, error) {
		v, ok, err := lookup(ctx)
		return hit{v, ok}, err
	}), &o, nil, lv.graceful)
	var own *Degradation
	var coe *CircuitOpenError
	switch {
	case lv.degrades(r.te):
		own = lv.degraded(r.te, nil)
	case lv.graceful() && errors.As(r.err, &coe):
		own = lv.degraded(nil, nil)
		own.Open = coe
	case r.err != nil:
		lv.finish(nil)
		return Result[T]{}, r.err
	case r.v.ok:
		lv.finish(nil)
		return Result[T]{Value: r.v.v}, nil
	}
	lv.finish(own)
	v, err := source(ctx)
	if err != nil {
		return Result[T]{}, err
	}
	if own != nil {
		return Result[T]{Value: v, Degraded: true, Cause: own.Cause}, nil
	}
	return Result[T]{Value: v}, nil
}

// File runs read as a T2 call. When its deadline fires under graceful, it
// returns fallback's value marked Degraded, with the timeout as Cause and
// a nil error (one T2 audit event, fallback_used). When read fails fast on
// an open circuit (ErrCircuitOpen), it falls back the same way, with a nil
// cause. fallback runs without a deadline of its own and should be cheap:
// fixed content, a default.
//
// It returns read's error, ctx.Err() when ctx is done, the *TimeoutError
// under strict or none, or fallback's error joined with the timeout.
func File[T any](ctx context.Context, g *Guard, op string, read func(context.Context) (T, error), fallback func(context.Context, *TimeoutError) (T, error), opts ...CallOption) (Result[T], error) {
	lv, lctx := startLevel(ctx, g, T2, op, opts)
	useFallback := fallback != nil && lv.graceful()
	o := applyOpts(lv.opts)
	r := run(lctx, lv.g, T2File, op, valueFunc[T](read), &o, nil, func() bool { return useFallback })
	var coe *CircuitOpenError
	open := useFallback && r.te == nil && errors.As(r.err, &coe)
	if !open && (!useFallback || !lv.degrades(r.te)) {
		lv.finish(nil)
		return Result[T]{Value: r.v}, r.err
	}
	own := lv.degraded(r.te, nil)
	own.Open = coe
	lv.finish(own)
	fv, ferr := fallback(context.WithoutCancel(ctx), r.te)
	if ferr != nil {
		return Result[T]{}, errors.Join(r.err, fmt.Errorf("fallback: %w", ferr))
	}
	return Result[T]{Value: fv, Degraded: true, Cause: r.te}, nil
}

// Part is one piece of a T3 layer or one optional layer of a T4 load: a
// name to report it by when it is missing, and its loader.
type Part[T any] struct {
	Name string
	Load func(context.Context) (T, error)
}

// Named is a loaded part's value with its name.
type Named[T any] struct {
	Name  string
	Value T
}

// Partial is what Layer returns.
type Partial[T any] struct {
	// Parts holds the parts that loaded, in the order they were given.
	Parts []Named[T]
	// Partial is true when the deadline fired before every part loaded;
	// Missing then names the others, in order.
	Partial bool
	Missing []string
	// Degraded lists what degraded in this call and beneath it.
	Degraded []Degradation
	// Cause is the timeout that made the result partial, else nil.
	Cause *TimeoutError
}

// maxParallel bounds how many parts of one Layer or Full load at once.
const maxParallel = 8

// loadParts loads parts, up to maxParallel at once, until all have
// returned or ctx is done. It returns the values that loaded before then
// by index, and the first error a part returned (ignored once ctx is done).
// A part still running when ctx is done is left to finish on its own; its
// result is dropped.
func loadParts[T any](ctx context.Context, parts []Part[T]) (map[int]T, error) {
	var (
		mu     sync.Mutex
		got    = make(map[int]T, len(parts))
		first  error
		closed bool
	)
	done := make(chan struct{}, len(parts))
	sem := make(chan struct{}, maxParallel)
	go func() {
		for i, p := range parts {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			go func() {
				defer func() { <-sem; done <- struct{}{} }()
				v, err := p.Load(ctx)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case closed:
				case err != nil:
					if first == nil {
						first = fmt.Errorf("%s: %w", p.Name, err)
					}
				default:
					got[i] = v
				}
			}()
		}
	}()
	for range parts {
		select {
		case <-done:
		case <-ctx.Done():
			mu.Lock()
			closed = true
			out := got
			mu.Unlock()
			return out, nil
		}
	}
	mu.Lock()
	defer mu.Unlock()
	closed = true
	return got, first
}

func collect[T any](parts []Part[T], got map[int]T) (loaded []Named[T], missing []string) {
	for i, p := range parts {
		if v, ok := got[i]; ok {
			loaded = append(loaded, Named[T]{p.Name, v})
		} else {
			missing = append(missing, p.Name)
		}
	}
	return loaded, missing
}

// Layer loads parts, up to eight at once, as a T3 call. When its deadline
// fires under graceful, it returns the parts that loaded, flagged Partial,
// with Missing naming the rest and a nil error (one T3 audit event,
// fallback_used). A part that ignores its context is left running and its
// result dropped.
//
// It returns the first part's error (the others' results are dropped),
// ctx.Err() when ctx is done, or the *TimeoutError under strict or none.
func Layer[T any](ctx context.Context, g *Guard, op string, parts []Part[T], opts ...CallOption) (Partial[T], error) {
	lv, lctx := startLevel(ctx, g, T3, op, opts)
	o := applyOpts(lv.opts)
	var got map[int]T
	r := run(lctx, lv.g, T3Layer, op, errFunc(func(ctx context.Context) error {
		var err error
		got, err = loadParts(ctx, parts)
		if err == nil {
			err = ctx.Err()
		}
		return err
	}), &o, nil, lv.graceful)
	switch {
	case lv.degrades(r.te) && !r.te.Abandoned:
		loaded, missing := collect(parts, got)
		own := lv.degraded(r.te, missing)
		return Partial[T]{Parts: loaded, Partial: true, Missing: missing, Degraded: lv.finish(own), Cause: r.te}, nil
	case r.err != nil:
		lv.finish(nil)
		return Partial[T]{}, r.err
	}
	loaded, _ := collect(parts, got)
	return Partial[T]{Parts: loaded, Degraded: lv.finish(nil)}, nil
}

// Whole is what Full returns.
type Whole[C, L any] struct {
	Core C
	// Layers holds the optional layers that loaded, in the order given.
	Layers []Named[L]
	// CoreOnly is true when the deadline fired before every layer loaded:
	// the result is the core and the layers that had loaded, and Missing
	// names the rest, in order.
	CoreOnly bool
	Missing  []string
	// Degraded lists what degraded in this call and beneath it.
	Degraded []Degradation
	// Cause is the timeout that made the result core-only, else nil.
	Cause *TimeoutError
}

// Full loads core and, at the same time, the optional layers (up to eight
// at once) as a T4 call. When its deadline fires under graceful after the
// core loaded, it returns the core, flagged CoreOnly, with the layers that
// had loaded and Missing naming the rest, and a nil error (one T4 audit
// event, fallback_used). Without its core there is nothing to degrade to:
// the *TimeoutError returns (the event says fallback_used false).
//
// It returns core's error, the first layer's error, ctx.Err() when ctx is
// done, or the *TimeoutError under strict or none or without the core.
func Full[C, L any](ctx context.Context, g *Guard, op string, core func(context.Context) (C, error), layers []Part[L], opts ...CallOption) (Whole[C, L], error) {
	lv, lctx := startLevel(ctx, g, T4, op, opts)
	o := applyOpts(lv.opts)
	var (
		mu       sync.Mutex
		coreV    C
		coreDone bool
		got      map[int]L
	)
	coreLoaded := func() bool { mu.Lock(); defer mu.Unlock(); return coreDone }
	r := run(lctx, lv.g, T4Full, op, errFunc(func(ctx context.Context) error {
		coreErr := make(chan error, 1)
		go func() {
			v, err := core(ctx)
			mu.Lock()
			if err == nil && ctx.Err() == nil {
				coreV, coreDone = v, true
			}
			mu.Unlock()
			coreErr <- err
		}()
		var lerr error
		got, lerr = loadParts(ctx, layers)
		select {
		case err := <-coreErr:
			if err != nil {
				return fmt.Errorf("core: %w", err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		if lerr != nil {
			return lerr
		}
		return ctx.Err()
	}), &o, nil, func() bool { return lv.graceful() && coreLoaded() })
	switch {
	case lv.degrades(r.te) && !r.te.Abandoned && coreLoaded():
		loaded, missing := collect(layers, got)
		own := lv.degraded(r.te, missing)
		mu.Lock()
		c := coreV
		mu.Unlock()
		return Whole[C, L]{Core: c, Layers: loaded, CoreOnly: true, Missing: missing, Degraded: lv.finish(own), Cause: r.te}, nil
	case r.err != nil:
		lv.finish(nil)
		return Whole[C, L]{}, r.err
	}
	loaded, _ := collect(layers, got)
	return Whole[C, L]{Core: coreV, Layers: loaded, Degraded: lv.finish(nil)}, nil
}

// Summary is what Complex returns.
type Summary[S any] struct {
	// Value is what work returned, or, when Aborted, the last progress it
	// reported.
	Value S
	// Aborted is true when the deadline fired before work finished.
	Aborted bool
	// Degraded lists what degraded in this call and beneath it.
	Degraded []Degradation
	// Cause is the timeout that aborted the work, else nil.
	Cause *TimeoutError
}

// Complex runs work as a T5 call. work reports its progress by calling
// progress with a summary of what it has done so far (say, how many items
// it checked), as often as it likes. When the deadline fires under
// graceful, the work is aborted and the last summary returns, flagged
// Aborted, with a nil error (one T5 audit event, fallback_used).
//
// It returns work's error, ctx.Err() when ctx is done, or the
// *TimeoutError under strict or none.
func Complex[S any](ctx context.Context, g *Guard, op string, work func(ctx context.Context, progress func(S)) (S, error), opts ...CallOption) (Summary[S], error) {
	lv, lctx := startLevel(ctx, g, T5, op, opts)
	o := applyOpts(lv.opts)
	var (
		mu   sync.Mutex
		last S
	)
	progress := func(s S) {
		mu.Lock()
		last = s
		mu.Unlock()
	}
	r := run(lctx, lv.g, T5Complex, op, valueFunc[S](func(ctx context.Context) (S, error) {
		return work(ctx, progress)
	}), &o, nil, lv.graceful)
	switch {
	case lv.degrades(r.te):
		mu.Lock()
		s := last
		mu.Unlock()
		own := lv.degraded(r.te, nil)
		return Summary[S]{Value: s, Aborted: true, Degraded: lv.finish(own), Cause: r.te}, nil
	case r.err != nil:
		lv.finish(nil)
		return Summary[S]{}, r.err
	}
	return Summary[S]{Value: r.v, Degraded: lv.finish(nil)}, nil
}
