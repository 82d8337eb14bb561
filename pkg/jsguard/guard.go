package jsguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// ErrTimeout is matched by every *TimeoutError: errors.Is(err, ErrTimeout).
var ErrTimeout = errors.New("jsguard: timeout")

// ErrEmitTimeout is passed to Hooks.OnSinkError when a sink did not return
// within the guard's emit bound.
var ErrEmitTimeout = errors.New("jsguard: audit emit exceeded its bound")

// TimeoutError reports a guarded call that ran out of time. It matches both
// ErrTimeout and context.DeadlineExceeded with errors.Is.
type TimeoutError struct {
	Category  Category
	Code      string // e.g. TIMEOUT_KV_GET
	Level     Level  // LevelNone outside the hierarchy
	Operation string
	Budget    time.Duration // the budget that applied
	Elapsed   time.Duration
	// ParentBound is true when the parent context's deadline came no later
	// than the call's own budget, so the parent's budget ran out.
	ParentBound bool
	// Abandoned is true when the function ignored its context and was left
	// running.
	Abandoned bool
	// EventID is the id of the audit event describing this timeout. When
	// nested guarded calls share the deadline, that event may be the one a
	// nested call emitted (see Guard.Do).
	EventID string

	source  string
	started time.Time
	// delegated: an enclosing hierarchy call reports this deadline and
	// degrades for it, so this call does not.
	delegated bool
}

// Error returns e.g. "TIMEOUT_KV_GET: kv get b/k timed out after 5.001s (budget 5s)".
func (e *TimeoutError) Error() string {
	s := fmt.Sprintf("%s: %s timed out after %s (budget %s", e.Code, e.Operation, e.Elapsed.Round(time.Millisecond), e.Budget)
	if e.ParentBound {
		s += ", bound by parent deadline"
	}
	if e.Abandoned {
		s += ", abandoned"
	}
	return s + ")"
}

// Unwrap returns ErrTimeout and context.DeadlineExceeded.
func (e *TimeoutError) Unwrap() []error { return []error{ErrTimeout, context.DeadlineExceeded} }

// Outcome is how a guarded call ended, as reported to Hooks.OnCall.
type Outcome int

// The outcomes.
const (
	OK        Outcome = iota // fn returned nil
	Failed                   // fn returned an error before the deadline
	TimedOut                 // the deadline fired and fn returned
	Abandoned                // the deadline fired and fn was left running
	Canceled                 // the parent was cancelled (not a deadline)
	Rejected                 // the category's circuit was open: fn did not run
)

var outcomeNames = [...]string{"ok", "error", "timeout", "abandoned", "canceled", "rejected"}

// String returns ok, error, timeout, abandoned, canceled or rejected.
func (o Outcome) String() string {
	if o < 0 || int(o) >= len(outcomeNames) {
		return fmt.Sprintf("Outcome(%d)", int(o))
	}
	return outcomeNames[o]
}

// CallInfo describes one finished guarded call.
type CallInfo struct {
	Category  Category
	Operation string
	Budget    time.Duration
	Duration  time.Duration
	Outcome   Outcome
}

// Hooks are called synchronously by a Guard; they must be fast and safe for
// concurrent use. Any of them may be nil.
type Hooks struct {
	// OnCall is called after every guarded call.
	OnCall func(CallInfo)
	// OnTimeout is called with every timeout event before it is emitted.
	OnTimeout func(Event)
	// OnSinkError is called when the sink returned an error or overran the
	// emit bound (err wraps ErrEmitTimeout then). The event may be lost
	// unless the sink spooled it.
	OnSinkError func(Event, error)
	// OnPolicyRejected is called when a PolicyStore receives a policy that
	// does not decode or validate; the old policy stays in force.
	OnPolicyRejected func(error)
	// OnCircuit is called when a category's circuit breaker changes state
	// (before its audit event is emitted).
	OnCircuit func(Category, CircuitState)
}

// Option configures a Guard.
type Option func(*Guard)

// WithPolicy sets the initial policy (default DefaultPolicy). New returns
// the policy's validation error when it is invalid.
func WithPolicy(p Policy) Option { return func(g *Guard) { pp := p.Clone(); g.initial = &pp } }

// WithSink sets where timeout events go. Without a sink, events are only
// counted and passed to Hooks.OnTimeout.
func WithSink(s Sink) Option { return func(g *Guard) { g.sink.Store(&sinkBox{s}) } }

// WithHooks sets the observability hooks.
func WithHooks(h Hooks) Option { return func(g *Guard) { g.hooks = h } }

// WithEmitBound sets how long emitting one event may hold the caller after
// its deadline (default 100ms); d <= 0 keeps the default.
func WithEmitBound(d time.Duration) Option {
	return func(g *Guard) {
		if d > 0 {
			g.emitBound = d
		}
	}
}

// WithAbandonGrace sets how long after a deadline a call waits for its
// function to return before it abandons it (default 10ms). A function that
// honours its context returns well within it. When nested guarded calls
// share a deadline, an enclosing call may wait up to twice the grace. A
// negative d keeps the default.
func WithAbandonGrace(d time.Duration) Option {
	return func(g *Guard) {
		if d >= 0 {
			g.abandonGrace = d
		}
	}
}

// WithLogger sets the logger for the few things a Guard logs itself: what a
// PolicyStore rejects or retries. Default slog.Default(); nil keeps it.
func WithLogger(l *slog.Logger) Option {
	return func(g *Guard) {
		if l != nil {
			g.log = l
		}
	}
}

type sinkBox struct{ Sink }

// Guard runs calls under deadlines taken from its policy and reports every
// timeout as an audit event. A Guard is safe for concurrent use; its policy
// can be swapped at run time without disturbing calls in flight.
type Guard struct {
	policy       atomic.Pointer[Policy]
	sink         atomic.Pointer[sinkBox]
	hooks        Hooks
	emitBound    time.Duration
	abandonGrace time.Duration
	log          *slog.Logger
	initial      *Policy

	breakers   atomic.Pointer[map[Category]*breaker] // copy on write, by setBreakers
	breakersMu sync.Mutex

	statsMu    sync.Mutex                             // serialises adding a category to stats
	stats      atomic.Pointer[map[Category]*catStats] // copy on write
	sinkErrors atomic.Uint64
	rejected   atomic.Uint64
}

// New returns a Guard. It returns an error wrapping ErrInvalidPolicy when
// the policy given with WithPolicy does not validate.
func New(opts ...Option) (*Guard, error) {
	g := &Guard{emitBound: 100 * time.Millisecond, abandonGrace: 10 * time.Millisecond, log: slog.Default()}
	for _, o := range opts {
		o(g)
	}
	p := DefaultPolicy()
	if g.initial != nil {
		p = *g.initial
		g.initial = nil
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	g.policy.Store(&p)
	g.setBreakers(p.Breakers)
	return g, nil
}

var defaultGuard atomic.Pointer[Guard]

func init() {
	g, _ := New()
	defaultGuard.Store(g)
}

// Default returns the package's default Guard, used by the package-level Do
// and wherever a nil *Guard is passed. It starts with DefaultPolicy and no sink.
func Default() *Guard { return defaultGuard.Load() }

// SetDefault replaces the default Guard; nil is ignored.
func SetDefault(g *Guard) {
	if g != nil {
		defaultGuard.Store(g)
	}
}

func orDefault(g *Guard) *Guard {
	if g == nil {
		return Default()
	}
	return g
}

// Policy returns a copy of the policy in force.
func (g *Guard) Policy() Policy { return g.policy.Load().Clone() }

// Budget returns the budget of c under the policy in force.
func (g *Guard) Budget(c Category) time.Duration { return g.policy.Load().Budget(c) }

// SetPolicy validates p and makes it the policy for calls that start from now
// on; calls in flight keep the budget they started with. It returns the
// validation error (wrapping ErrInvalidPolicy) and keeps the old policy when p
// is invalid.
func (g *Guard) SetPolicy(p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	pp := p.Clone()
	g.policy.Store(&pp)
	g.setBreakers(pp.Breakers)
	return nil
}

// SetSink replaces the sink; nil removes it. Safe while calls run.
func (g *Guard) SetSink(s Sink) {
	if s == nil {
		g.sink.Store(nil)
		return
	}
	g.sink.Store(&sinkBox{s})
}

// CallOption adjusts one guarded call.
type CallOption func(*callOpts)

type callOpts struct {
	budget   time.Duration
	details  map[string]string
	strategy Strategy
	inline   bool
	// level marks a T1–T5 hierarchy call (see hierarchy.go): the
	// outermost one among the calls a deadline bounds reports it.
	level bool
	// noBudget runs the call under its parent's deadline only (the
	// hierarchy's strategy none).
	noBudget bool
}

// applyOpts returns the options opts set. The options work on a copy on the
// heap, so that a call without options allocates nothing for them.
func applyOpts(opts []CallOption) callOpts {
	if len(opts) == 0 {
		return callOpts{}
	}
	o := new(callOpts)
	for _, f := range opts {
		f(o)
	}
	return *o
}

// WithBudget shortens the call's budget to d when d is below the category's
// budget; it never lengthens it.
func WithBudget(d time.Duration) CallOption { return func(o *callOpts) { o.budget = d } }

// WithDetail adds a key and value to the audit event's additional_context.
func WithDetail(key, value string) CallOption {
	return func(o *callOpts) {
		if o.details == nil {
			o.details = map[string]string{}
		}
		o.details[key] = value
	}
}

// WithInline runs the function on the caller's goroutine instead of a
// pooled worker goroutine. That saves the hand-off to the worker and back
// (under a microsecond) but gives up abandonment: the call returns only when
// the function does. Use it only for functions that return promptly once
// their context is done; a nats.go call can, in rare cases, block longer
// (e.g. behind a write to a stalled socket, bounded by
// nats.FlusherTimeout). The deadline, the error and the audit event are as
// without it.
func WithInline() CallOption { return func(o *callOpts) { o.inline = true } }

// WithStrategy overrides the policy's fallback strategy for this call.
func WithStrategy(s Strategy) CallOption { return func(o *callOpts) { o.strategy = s } }

// Do runs fn under the default Guard; see Guard.Do.
func Do(ctx context.Context, c Category, op string, fn func(context.Context) error, opts ...CallOption) error {
	return Default().Do(ctx, c, op, fn, opts...)
}

// Do runs fn with a context whose deadline is the earliest of ctx's, the
// category's budget and a WithBudget override. It never retries. g may be
// nil for the default Guard.
//
// It returns fn's error when fn fails before the deadline; ctx.Err() without
// auditing when ctx is cancelled (not by a deadline) or was already done;
// and a *TimeoutError (errors.Is ErrTimeout and context.DeadlineExceeded)
// when the deadline fires, after emitting exactly one audit event. A fn that
// ignores its context is abandoned: Do returns at most the guard's abandon
// grace after the deadline (plus the emit bound) and the event says
// abandoned.
//
// Nested guarded calls bound by the same deadline (a call inside fn whose
// deadline is this call's) produce one event between them: the innermost
// call that timed out emits it, and the enclosing calls return its error as
// it is, or, when they had to abandon their function, a *TimeoutError of
// their own whose EventID names that event.
func (g *Guard) Do(ctx context.Context, c Category, op string, fn func(context.Context) error, opts ...CallOption) error {
	g = orDefault(g)
	o := applyOpts(opts)
	return run(ctx, g, c, op, errFunc(fn), &o, nil, nil).err
}

// errFunc adapts fn to the shape run takes without allocating a closure.
type errFunc func(context.Context) error

func (f errFunc) call(ctx context.Context) (struct{}, error) { return struct{}{}, f(ctx) }

// valueFunc adapts a value-returning fn to the shape run takes.
type valueFunc[T any] func(context.Context) (T, error)

func (f valueFunc[T]) call(ctx context.Context) (T, error) { return f(ctx) }

// caller is what run executes.
type caller[T any] interface {
	call(context.Context) (T, error)
}

// DoValue is Do for a function that returns a value. g may be nil for the
// default Guard. It returns the zero T with any error Do would return.
func DoValue[T any](ctx context.Context, g *Guard, c Category, op string, fn func(context.Context) (T, error), opts ...CallOption) (T, error) {
	return doValue(ctx, g, c, op, fn, nil, opts)
}

// doValue is DoValue with release, which receives a value fn returned after
// the call gave up on it (abandoned or cancelled), so it can be closed.
func doValue[T any](ctx context.Context, g *Guard, c Category, op string, fn func(context.Context) (T, error), release func(T), opts []CallOption) (T, error) {
	g = orDefault(g)
	o := applyOpts(opts)
	r := run(ctx, g, c, op, valueFunc[T](fn), &o, release, nil)
	return r.v, r.err
}

// Result is what DoFallback and Cache.Get return: the value and, when it
// came from a fallback or a stale cache entry, why.
type Result[T any] struct {
	Value T
	// Degraded is true when Value came from the fallback or a stale cache.
	Degraded bool
	// Cause is the timeout that made the result degraded, else nil.
	Cause *TimeoutError
}

// Level returns the hierarchy level of a degraded result, else LevelNone.
func (r Result[T]) Level() Level {
	if r.Cause == nil {
		return LevelNone
	}
	return r.Cause.Level
}

// DoFallback runs fn like DoValue. When the deadline fires and the strategy
// (the policy's, or WithStrategy) is graceful, it calls fallback with the
// timeout and returns its value marked degraded, with a nil error; the audit
// event is still emitted, with fallback_used set. Under strict the
// *TimeoutError returns and fallback is never called; under none fallbacks
// are off and the *TimeoutError returns. A nil fallback behaves as strict.
// Errors other than timeouts return as from DoValue; an error from fallback
// is returned joined with the timeout (errors.Is matches both). fallback
// runs without a deadline of its own: it should be cheap.
func DoFallback[T any](ctx context.Context, g *Guard, c Category, op string, fn func(context.Context) (T, error), fallback func(ctx context.Context, cause *TimeoutError) (T, error), opts ...CallOption) (Result[T], error) {
	g = orDefault(g)
	o := applyOpts(opts)
	useFallback := fallback != nil && g.strategy(&o) == Graceful
	r := run(ctx, g, c, op, valueFunc[T](fn), &o, nil, func() bool { return useFallback })
	if r.te == nil || !useFallback {
		return Result[T]{Value: r.v}, r.err
	}
	fv, ferr := fallback(context.WithoutCancel(ctx), r.te)
	if ferr != nil {
		return Result[T]{}, errors.Join(r.err, fmt.Errorf("fallback: %w", ferr))
	}
	return Result[T]{Value: fv, Degraded: true, Cause: r.te}, nil
}

func (g *Guard) strategy(o *callOpts) Strategy {
	if o.strategy != "" {
		return o.strategy
	}
	return g.policy.Load().Strategy
}

type outcome[T any] struct {
	v   T
	err error
}

// runResult is how run ended. err is what the caller returns; te is non-nil
// when this call's deadline fired.
type runResult[T any] struct {
	v   T
	err error
	te  *TimeoutError
}

// run executes fn under its deadline and emits the timeout's event; see
// Guard.Do for the outcomes. A non-nil release receives a value fn returns
// after run stopped waiting for it. fallbackUsed, when not nil, is asked
// after a timeout whether the caller will return a fallback instead of the
// error, for the event's fallback_used.
func run[T any, F caller[T]](ctx context.Context, g *Guard, c Category, op string, fn F, o *callOpts, release func(T), fallbackUsed func() bool) runResult[T] {
	if err := ctx.Err(); err != nil {
		return runResult[T]{err: err}
	}
	p := g.policy.Load()
	st := g.stat(c)
	ended := Canceled    // what the call's record says; see rec
	parentBound := false // the caller's deadline, not the budget, applied
	rec := func(budget, d time.Duration, o Outcome) {
		ended = o
		g.record(st, c, op, budget, d, o)
		if parentBound && (o == TimedOut || o == Abandoned) {
			st.parentTimeouts.Add(1)
		}
	}
	if br := g.breaker(c); br != nil {
		probe, err := br.admit(g, c, op, time.Now())
		if err != nil {
			g.record(st, c, op, 0, 0, Rejected)
			return runResult[T]{err: err}
		}
		defer func(start time.Time) {
			o := ended
			if parentBound && (o == TimedOut || o == Abandoned) {
				// The caller's deadline cut it short (a client can send
				// any): that says nothing about the category.
				o = Canceled
			}
			br.done(g, c, probe, o, time.Since(start), time.Now())
		}(time.Now())
	}
	budget := p.Budget(c)
	level := c.Level()
	source := SourceCategory
	if level != LevelNone {
		source = SourceLevel
	}
	if o.budget > 0 && o.budget < budget {
		budget, source = o.budget, SourceOverride
	}
	if o.noBudget {
		budget, source = noBudget, SourceParent
	}
	start := time.Now()
	deadline := start.Add(budget)
	cl := &call[T]{}
	f := &cl.frame
	f.parent, f.deadline = ctx, deadline
	f.sc = &f.own
	if pd, ok := ctx.Deadline(); ok && !pd.After(deadline) {
		deadline, parentBound, source = pd, true, SourceParent
		f.deadline = deadline
		if pf, _ := ctx.Value(frameKey{}).(*frame); pf != nil && pf.sc.deadline.Equal(pd) {
			// Bound by an enclosing guarded call's deadline: share its
			// scope so that one event describes this timeout.
			f.sc, f.depth = pf.sc, pf.depth+1
			f.sc.enter(f.depth)
			defer f.sc.leave(f.depth)
		}
	}
	f.own.deadline = deadline
	if o.noBudget {
		budget = deadline.Sub(start)
	}
	if o.level {
		id := EventID(c.Code(), op, Tenant(ctx), CorrelationID(ctx), TraceID(ctx), start)
		f.sc.adopt(f.depth, id)
		defer f.sc.disown(f.depth, id)
	}
	// Like the cancel of context.WithDeadline: the function's context is
	// done once the call returns.
	defer f.cancel(context.Canceled)

	var res outcome[T]
	abandoned := false
	if o.inline {
		disarm := f.armInline(ctx, deadline.Sub(start))
		res.v, res.err = fn.call(f)
		disarm()
	} else {
		res, abandoned = cl.await(ctx, fn, deadline.Sub(start), g.abandonGrace, canPool(start), st.quick.Load())
		if abandoned {
			if release != nil {
				go releaseLate(cl, release)
			}
			if ctx.Err() == context.Canceled {
				rec(budget, time.Since(start), Canceled)
				return runResult[T]{err: ctx.Err()}
			}
		}
	}
	elapsed := time.Since(start)
	if !abandoned {
		if res.err == nil {
			rec(budget, elapsed, OK)
			return runResult[T]{v: res.v}
		}
		// The deadline counts as fired when the clock has passed it, even if
		// the context's timer has not run yet (a loaded machine): fn may have
		// returned an error of its own making for the same instant, such as
		// an i/o timeout.
		fired := f.Err() == context.DeadlineExceeded || (ctx.Err() == nil && !time.Now().Before(deadline))
		if !fired {
			if ctx.Err() == context.Canceled && errors.Is(res.err, context.Canceled) {
				rec(budget, elapsed, Canceled)
				return runResult[T]{err: ctx.Err()}
			}
			rec(budget, elapsed, Failed)
			return runResult[T]{err: res.err}
		}
	}

	te := &TimeoutError{
		Category:    c,
		Code:        c.Code(),
		Level:       level,
		Operation:   op,
		Budget:      budget,
		Elapsed:     elapsed,
		ParentBound: parentBound,
		Abandoned:   abandoned,
		source:      source,
		started:     start,
	}
	outc := TimedOut
	if abandoned {
		outc = Abandoned
	}
	if depth, id, ok := f.sc.owner(); ok && depth != f.depth {
		// A hierarchy call this deadline bounds reports it, for the
		// level whose budget ran out.
		te.EventID, te.delegated = id, true
		rec(budget, elapsed, outc)
		return runResult[T]{err: te, te: te}
	} else if !ok {
		// Let nested calls sharing this deadline decide first, so that
		// the innermost one reports the timeout; they decide within the
		// grace.
		f.sc.waitDeeper(f.depth, g.abandonGrace)
	}
	id := EventID(te.Code, op, Tenant(ctx), CorrelationID(ctx), TraceID(ctx), start)
	won, winner, emitted := f.sc.claim(id)
	te.EventID = winner
	rec(budget, elapsed, outc)
	if won {
		g.emit(ctx, te, o, fallbackUsed != nil && fallbackUsed())
		close(emitted)
		return runResult[T]{err: te, te: te}
	}
	// Another call sharing the deadline emits the event: return once it
	// has, so that the event exists when this call returns, as it does for
	// a call that emits itself.
	wait := time.NewTimer(g.emitBound)
	select {
	case <-emitted:
	case <-wait.C:
	}
	wait.Stop()
	var inner *TimeoutError
	if !abandoned && errors.As(res.err, &inner) && inner.EventID == winner {
		return runResult[T]{err: res.err, te: te}
	}
	return runResult[T]{err: te, te: te}
}

// call is one guarded call: the context its function runs with, the
// function, and its result, which is written before done is closed.
type call[T any] struct {
	frame
	fn   caller[T]
	v    T
	err  error
	done chan struct{}
}

// run is what a worker does with the call.
func (cl *call[T]) run() {
	cl.v, cl.err = cl.fn.call(&cl.frame)
	close(cl.done)
}

// await runs fn on a worker and waits for it, at most wait. When the wait
// ends or ctx is done first, it cancels the frame; it returns at once with
// abandoned set if ctx was cancelled, and otherwise waits up to grace for fn
// before abandoning it.
//
// pooled says whether the function may run on a pooled worker with a
// pooled timer; see canPool. quick says whether the function is expected to
// return within a few microseconds: then await first yields its processor
// once, which runs the worker it just woke, and returns without arming a
// timer or parking if the function is done by then.
func (cl *call[T]) await(ctx context.Context, fn caller[T], wait, grace time.Duration, pooled, quick bool) (outcome[T], bool) {
	cl.fn = fn
	cl.done = make(chan struct{})
	var t *time.Timer
	if pooled {
		dispatch(cl)
		if quick {
			runtime.Gosched()
			select {
			case <-cl.done:
				return outcome[T]{cl.v, cl.err}, false
			default:
			}
		}
		t = getTimer(wait)
		defer putTimer(t)
	} else {
		go cl.run()
		t = time.NewTimer(wait)
		defer t.Stop()
	}
	select {
	case <-cl.done:
		return outcome[T]{cl.v, cl.err}, false
	case <-t.C:
		cl.frame.cancel(context.DeadlineExceeded)
	case <-ctx.Done():
		err := ctx.Err()
		cl.frame.cancel(err)
		if err == context.Canceled {
			return outcome[T]{}, true
		}
	}
	t.Reset(grace)
	select {
	case <-cl.done:
		return outcome[T]{cl.v, cl.err}, false
	case <-t.C:
		return outcome[T]{}, true
	}
}

func releaseLate[T any](cl *call[T], release func(T)) {
	<-cl.done
	if cl.err == nil {
		release(cl.v)
	}
}

// emit builds the event for te and passes it to the hook and the sink,
// bounded by the emit bound.
func (g *Guard) emit(ctx context.Context, te *TimeoutError, o *callOpts, fallbackUsed bool) {
	ev := Event{
		EventID:           te.EventID,
		EventType:         EventType,
		Code:              te.Code,
		Operation:         te.Operation,
		TimeoutSeconds:    te.Budget.Seconds(),
		TenantID:          Tenant(ctx),
		CorrelationID:     CorrelationID(ctx),
		TraceID:           TraceID(ctx),
		AdditionalContext: maps.Clone(o.details),
		StartedAt:         te.started.UTC(),
		Timestamp:         te.started.Add(te.Elapsed).UTC(),
		Level:             te.Level.String(),
		ElapsedSeconds:    te.Elapsed.Seconds(),
		BudgetSource:      te.source,
		Abandoned:         te.Abandoned,
		FallbackUsed:      fallbackUsed,
	}
	g.stat(te.Category).events.Add(1)
	g.Emit(ctx, ev)
}

// announce fills an event's defaults (EventType, EventID), hands it to
// Hooks.OnTimeout and returns it with the sink, nil when there is none.
func (g *Guard) announce(ev Event) (Event, *sinkBox) {
	if ev.EventType == "" {
		ev.EventType = EventType
	}
	if ev.EventID == "" {
		ev.EventID = EventID(ev.Code, ev.Operation, ev.TenantID, ev.CorrelationID, ev.TraceID, ev.StartedAt)
	}
	if g.hooks.OnTimeout != nil {
		g.hooks.OnTimeout(ev)
	}
	return ev, g.sink.Load()
}

// EmitDurable hands an event to the hooks and the sink, like Emit, but
// waits, as long as ctx allows, until the sink has stored it: through the
// sink's EmitDurable when it is a DurableSink, else its Emit. For events
// whose loss must be noticed, such as an approval's expiry, whose producer
// retries on an error. It returns nil when there is no sink, else the
// sink's error (also counted in SinkErrors and passed to
// Hooks.OnSinkError). The hooks see the event once per call.
func (g *Guard) EmitDurable(ctx context.Context, ev Event) error {
	ev, sb := g.announce(ev)
	if sb == nil {
		return nil
	}
	var err error
	if d, ok := sb.Sink.(DurableSink); ok {
		err = d.EmitDurable(ctx, ev)
	} else {
		err = sb.Emit(ctx, ev)
	}
	if err != nil {
		g.sinkErrors.Add(1)
		if g.hooks.OnSinkError != nil {
			g.hooks.OnSinkError(ev, err)
		}
	}
	return err
}

// Emit hands an event to the hooks and the sink, bounded by the guard's emit
// bound, without running any call: for events a caller produces itself (an
// approval that expired, a timeout reported by another service). An empty
// EventType is set to EventType and an empty EventID to the id EventID
// derives from the event's fields. A sink error or overrun is counted (see
// SinkErrors) and passed to Hooks.OnSinkError, never returned.
func (g *Guard) Emit(ctx context.Context, ev Event) {
	ev, sb := g.announce(ev)
	if sb == nil {
		return
	}
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.emitBound)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sb.Emit(ectx, ev) }()
	var err error
	select {
	case err = <-errc:
	case <-ectx.Done():
		err = fmt.Errorf("%w (%s)", ErrEmitTimeout, g.emitBound)
	}
	if err != nil {
		g.sinkErrors.Add(1)
		if g.hooks.OnSinkError != nil {
			g.hooks.OnSinkError(ev, err)
		}
	}
}
