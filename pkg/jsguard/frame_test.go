package jsguard_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// The context a guarded function receives behaves like one from
// context.WithDeadline, by default and WithInline, on the pooled workers
// (real time) and inside a synctest bubble.
func TestFunctionContext(t *testing.T) {
	for _, inline := range []bool{false, true} {
		var opts []jsguard.CallOption
		name := "worker"
		if inline {
			opts, name = []jsguard.CallOption{jsguard.WithInline()}, "inline"
		}
		t.Run(name, func(t *testing.T) {
			t.Run("deadline and children", func(t *testing.T) { checkChildren(t, opts) })
			t.Run("synctest", func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) { checkChildren(t, opts) })
			})
			t.Run("parent cancel", func(t *testing.T) {
				g, sink := newGuard(t)
				parent, cancel := context.WithCancel(context.Background())
				seen := make(chan error, 1)
				go func() { time.Sleep(20 * time.Millisecond); cancel() }()
				err := g.Do(parent, jsguard.KVGet, "cancelled", func(ctx context.Context) error {
					<-ctx.Done()
					seen <- ctx.Err()
					return ctx.Err()
				}, opts...)
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Do = %v, want context.Canceled", err)
				}
				if got := <-seen; got != context.Canceled {
					t.Errorf("function saw ctx.Err() = %v, want context.Canceled", got)
				}
				if n := len(sink.events()); n != 0 {
					t.Errorf("%d audit events for a cancellation, want 0", n)
				}
			})
			t.Run("done after return", func(t *testing.T) {
				g, _ := newGuard(t)
				var kept context.Context
				if err := g.Do(context.Background(), jsguard.KVGet, "keep", func(ctx context.Context) error {
					if ctx.Err() != nil {
						t.Errorf("ctx.Err() = %v while the call runs", ctx.Err())
					}
					kept = ctx
					return nil
				}, opts...); err != nil {
					t.Fatal(err)
				}
				select {
				case <-kept.Done():
				default:
					t.Fatal("the function's context is not done after the call returned")
				}
				if kept.Err() != context.Canceled {
					t.Errorf("Err after return = %v, want context.Canceled", kept.Err())
				}
				fired := make(chan struct{})
				context.AfterFunc(kept, func() { close(fired) })
				<-fired // AfterFunc on a done context runs at once
			})
		})
	}
}

// checkChildren runs a call that times out while child contexts and
// context.AfterFunc registrations of its context wait, and checks that all
// of them end with it.
func checkChildren(t *testing.T, opts []jsguard.CallOption) {
	g, sink := newGuard(t, jsguard.WithPolicy(policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 50 * time.Millisecond})))
	start := time.Now()
	var childErr, timeoutChildErr, cause error
	var afterRan, stoppedRan bool
	var stopped bool
	var dl time.Time
	err := g.Do(context.Background(), jsguard.KVGet, "children", func(ctx context.Context) error {
		dl, _ = ctx.Deadline()
		child, cancel := context.WithCancel(ctx)
		defer cancel()
		tchild, tcancel := context.WithTimeout(ctx, time.Hour)
		defer tcancel()
		ran := make(chan struct{})
		context.AfterFunc(ctx, func() { close(ran) })
		stop := context.AfterFunc(ctx, func() { stoppedRan = true })
		stopped = stop()
		<-child.Done()
		<-tchild.Done()
		<-ran
		afterRan = true
		childErr, timeoutChildErr, cause = child.Err(), tchild.Err(), context.Cause(child)
		return ctx.Err()
	}, opts...)
	te := asTimeout(t, err)
	if te.Abandoned {
		t.Errorf("the call was abandoned, but its function honoured the context")
	}
	if want := start.Add(50 * time.Millisecond); dl.Sub(want).Abs() > 5*time.Millisecond {
		t.Errorf("Deadline() = %v, want about %v", dl, want)
	}
	for name, e := range map[string]error{"WithCancel child": childErr, "WithTimeout child": timeoutChildErr, "Cause": cause} {
		if e != context.DeadlineExceeded {
			t.Errorf("%s: %v, want context.DeadlineExceeded", name, e)
		}
	}
	if !afterRan || !stopped || stoppedRan {
		t.Errorf("AfterFunc ran=%v; stop()=%v, stopped func ran=%v; want true, true, false", afterRan, stopped, stoppedRan)
	}
	sink.one(t)
}

// A function that ignores its context is abandoned on its worker; when it
// finally returns, later calls still run normally.
func TestAbandonedWorkerReturns(t *testing.T) {
	g, sink := newGuard(t, jsguard.WithPolicy(policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 20 * time.Millisecond})))
	release := make(chan struct{})
	returned := make(chan struct{})
	err := g.Do(context.Background(), jsguard.KVGet, "stuck", func(context.Context) error {
		<-release
		close(returned)
		return nil
	})
	if te := asTimeout(t, err); !te.Abandoned {
		t.Fatalf("Abandoned = false, want true: %v", te)
	}
	close(release)
	<-returned
	for i := range 100 {
		v, err := jsguard.DoValue(context.Background(), g, jsguard.KVGet, "after", func(context.Context) (int, error) { return i, nil })
		if err != nil || v != i {
			t.Fatalf("call %d after an abandoned one: %d, %v", i, v, err)
		}
	}
	sink.one(t)
}

// After many calls that return at once, a call of the same category that
// blocks still times out on time and is abandoned: the quick path only
// changes how the caller first waits.
func TestQuickCategoryStillTimesOut(t *testing.T) {
	g, sink := newGuard(t, jsguard.WithPolicy(policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 30 * time.Millisecond})))
	for range 1000 {
		if err := g.Do(context.Background(), jsguard.KVGet, "hit", func(context.Context) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	release := make(chan struct{})
	defer close(release)
	start := time.Now()
	err := g.Do(context.Background(), jsguard.KVGet, "miss", func(context.Context) error { <-release; return nil })
	if te := asTimeout(t, err); !te.Abandoned {
		t.Errorf("Abandoned = false: %v", te)
	}
	if el := time.Since(start); el < 30*time.Millisecond || el > 2*time.Second {
		t.Errorf("returned after %s, want about 30ms", el)
	}
	sink.one(t)
}
