package jsguard

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

type frameKey struct{}

// frame is the context a guarded function runs with. It carries the call's
// deadline and the scope the call belongs to, which nested guarded calls
// find through Value(frameKey{}).
//
// It is a context of its own rather than one from context.WithDeadline
// because that costs a runtime timer, a timer context and a parent
// registration per call, about as much as the rest of the guard together.
// Instead, the goroutine waiting for the function is the timer: it cancels
// the frame when the deadline passes or the parent is done (see await).
// Only a call WithInline, which has no waiting goroutine, arms a timer
// (see armInline).
type frame struct {
	parent   context.Context
	deadline time.Time

	done  atomic.Value // chan struct{}, created on first use
	mu    sync.Mutex
	err   error
	after []*afterFunc // run once the frame is done

	sc    *scope
	depth int
	own   scope
}

type afterFunc struct{ f func() }

// closedChan is the Done channel of a frame cancelled before anyone asked
// for its channel.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Deadline returns the call's deadline.
func (f *frame) Deadline() (time.Time, bool) { return f.deadline, true }

// Done returns a channel closed when the call's deadline passes, its parent
// is done, or the guarded call returns.
func (f *frame) Done() <-chan struct{} {
	if d, ok := f.done.Load().(chan struct{}); ok {
		return d
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.done.Load().(chan struct{})
	if !ok {
		d = make(chan struct{})
		f.done.Store(d)
	}
	return d
}

// Err returns nil until Done is closed, then context.DeadlineExceeded or
// the parent's error, or context.Canceled once the guarded call returned.
// It reads the clock too: once the deadline has passed it reports
// DeadlineExceeded (and closes Done) even if the waiting goroutine has not
// been scheduled yet to do so, so a function that checks Err between steps
// stops on time on a busy machine.
func (f *frame) Err() error {
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	if err == nil && !time.Now().Before(f.deadline) {
		f.cancel(context.DeadlineExceeded)
		return f.Err()
	}
	return err
}

// Value returns the frame for frameKey{} and the parent's value otherwise.
func (f *frame) Value(key any) any {
	if _, ok := key.(frameKey); ok {
		return f
	}
	return f.parent.Value(key)
}

// AfterFunc lets context.WithCancel, WithDeadline and AfterFunc on a frame
// register with it instead of starting a goroutine that watches Done: fn
// runs in its own goroutine once the frame is done. stop reports whether it
// kept fn from running.
func (f *frame) AfterFunc(fn func()) (stop func() bool) {
	a := &afterFunc{f: fn}
	f.mu.Lock()
	if f.err != nil {
		f.mu.Unlock()
		go fn()
		return func() bool { return false }
	}
	f.after = append(f.after, a)
	f.mu.Unlock()
	return func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		i := slices.Index(f.after, a)
		if i < 0 {
			return false
		}
		f.after = slices.Delete(f.after, i, i+1)
		return true
	}
}

// String names the context type, as the standard contexts do.
func (f *frame) String() string { return "jsguard.frame" }

// cancel ends the frame with err unless it ended already.
func (f *frame) cancel(err error) {
	f.mu.Lock()
	if f.err != nil {
		f.mu.Unlock()
		return
	}
	f.err = err
	if d, ok := f.done.Load().(chan struct{}); ok {
		close(d)
	} else {
		f.done.Store(closedChan)
	}
	after := f.after
	f.after = nil
	f.mu.Unlock()
	for _, a := range after {
		go a.f()
	}
}

// armInline makes the frame end at its deadline or when parent is done, for
// a call that runs its function on the caller's goroutine. The returned
// function disarms both.
func (f *frame) armInline(parent context.Context, wait time.Duration) (disarm func()) {
	t := time.AfterFunc(wait, func() { f.cancel(context.DeadlineExceeded) })
	if parent.Done() == nil {
		return func() { t.Stop() }
	}
	stop := context.AfterFunc(parent, func() { f.cancel(parent.Err()) })
	return func() { t.Stop(); stop() }
}

// canPool reports whether a call that started at start may use the worker
// and timer pools. Not inside a testing/synctest bubble: goroutines,
// channels and timers there belong to the bubble, so a pooled worker or
// timer would cross bubbles (a fatal error) or keep a bubble from ending.
// Inside a bubble, time.Now carries no monotonic clock reading, which is how
// this tells.
func canPool(start time.Time) bool { return start != start.Round(0) }

var timers sync.Pool

// getTimer returns a stopped-and-reset timer firing after d. Timers are
// reused: since Go 1.23, Reset and Stop leave no stale tick in the channel.
func getTimer(d time.Duration) *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func putTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}

// The workers that run guarded functions. A guarded call hands its function
// to a parked worker instead of starting a goroutine: that saves the
// goroutine's start and, for functions that go deep into nats.go, growing a
// fresh stack each call. A worker running an abandoned function returns to
// the pool when the function finally returns. At most maxIdleWorkers wait
// parked; the others exit.
const maxIdleWorkers = 256

var idleWorkers = make(chan *worker, maxIdleWorkers)

type runner interface{ run() }

type worker struct{ work chan runner }

// dispatch runs r on a parked worker, or on a new one when none is idle.
func dispatch(r runner) {
	select {
	case w := <-idleWorkers:
		w.work <- r
	default:
		w := &worker{work: make(chan runner, 1)}
		w.work <- r
		go w.loop()
	}
}

func (w *worker) loop() {
	for r := range w.work {
		r.run()
		select {
		case idleWorkers <- w:
		default:
			return
		}
	}
}
