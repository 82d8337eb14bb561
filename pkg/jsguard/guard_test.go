package jsguard_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

func TestDoSuccessAndFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, sink := newGuard(t)
		if err := g.Do(t.Context(), jsguard.KVGet, "get ok", func(context.Context) error {
			time.Sleep(time.Second)
			return nil
		}); err != nil {
			t.Fatalf("Do = %v, want nil", err)
		}
		boom := errors.New("boom")
		err := g.Do(t.Context(), jsguard.KVGet, "get fails", func(context.Context) error { return boom })
		if !errors.Is(err, boom) || errors.Is(err, jsguard.ErrTimeout) {
			t.Fatalf("Do = %v, want boom and no timeout", err)
		}
		v, err := jsguard.DoValue(t.Context(), g, jsguard.KVGet, "value", func(context.Context) (int, error) { return 7, nil })
		if err != nil || v != 7 {
			t.Fatalf("DoValue = %d, %v, want 7, nil", v, err)
		}
		v, err = jsguard.DoValue(t.Context(), g, jsguard.KVGet, "partial", func(context.Context) (int, error) { return 9, boom })
		if !errors.Is(err, boom) || v != 0 {
			t.Fatalf("DoValue = %d, %v, want the zero value with boom", v, err)
		}
		if n := len(sink.events()); n != 0 {
			t.Fatalf("%d events for calls that did not time out", n)
		}
		st := statsOf(g, jsguard.KVGet)
		if st.Calls != 4 || st.Failed != 2 || st.Timeouts != 0 || st.Events != 0 {
			t.Fatalf("stats = %+v, want 4 calls, 2 failed", st)
		}
	})
}

// TestDoTimeoutPerCategory checks, for seed categories and every level, that
// the call ends exactly at the category's budget with the category's code,
// and that the one event carries the same facts.
func TestDoTimeoutPerCategory(t *testing.T) {
	cases := []struct {
		c      jsguard.Category
		code   string
		budget time.Duration
		level  jsguard.Level
		source string
	}{
		{jsguard.NATSConnect, "TIMEOUT_NATS_CONNECT", 10 * time.Second, jsguard.LevelNone, jsguard.SourceCategory},
		{jsguard.KVGet, "TIMEOUT_KV_GET", 5 * time.Second, jsguard.LevelNone, jsguard.SourceCategory},
		{jsguard.NATSStreamCreate, "TIMEOUT_NATS_STREAM_CREATE", 15 * time.Second, jsguard.LevelNone, jsguard.SourceCategory},
		{jsguard.ReplayProcessing, "TIMEOUT_REPLAY_PROCESSING", 300 * time.Second, jsguard.LevelNone, jsguard.SourceCategory},
		{jsguard.T1Cache, "TIMEOUT_T1_CACHE", 100 * time.Millisecond, jsguard.T1, jsguard.SourceLevel},
		{jsguard.T2File, "TIMEOUT_T2_FILE", 500 * time.Millisecond, jsguard.T2, jsguard.SourceLevel},
		{jsguard.T3Layer, "TIMEOUT_T3_LAYER", 2 * time.Second, jsguard.T3, jsguard.SourceLevel},
		{jsguard.T4Full, "TIMEOUT_T4_FULL", 5 * time.Second, jsguard.T4, jsguard.SourceLevel},
		{jsguard.T5Complex, "TIMEOUT_T5_COMPLEX", 10 * time.Second, jsguard.T5, jsguard.SourceLevel},
	}
	for _, tc := range cases {
		t.Run(string(tc.c), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g, sink := newGuard(t)
				ctx := jsguard.WithTenant(t.Context(), "acme")
				ctx = jsguard.WithCorrelationID(ctx, "corr-1")
				ctx = jsguard.WithTraceID(ctx, "trace-1")
				start := time.Now()
				err := g.Do(ctx, tc.c, "op "+string(tc.c), honour, jsguard.WithDetail("k", "v"))
				if got := time.Since(start); got != tc.budget {
					t.Fatalf("Do returned after %s, want exactly the budget %s", got, tc.budget)
				}
				if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, jsguard.ErrTimeout) {
					t.Fatalf("err = %v, want DeadlineExceeded and ErrTimeout", err)
				}
				te := asTimeout(t, err)
				if te.Code != tc.code || te.Category != tc.c || te.Level != tc.level || te.Budget != tc.budget ||
					te.Elapsed != tc.budget || te.Operation != "op "+string(tc.c) || te.ParentBound || te.Abandoned {
					t.Fatalf("TimeoutError = %+v", te)
				}
				want := fmt.Sprintf("%s: op %s timed out after %s (budget %s)", tc.code, tc.c, tc.budget, tc.budget)
				if te.Error() != want {
					t.Fatalf("Error() = %q, want %q", te.Error(), want)
				}
				ev := sink.one(t)
				if ev.EventID != te.EventID || ev.EventType != "timeout_occurred" || ev.Code != tc.code ||
					ev.Operation != te.Operation || ev.TimeoutSeconds != tc.budget.Seconds() ||
					ev.ElapsedSeconds != tc.budget.Seconds() || ev.Level != tc.level.String() ||
					ev.BudgetSource != tc.source || ev.Abandoned || ev.FallbackUsed ||
					ev.TenantID != "acme" || ev.CorrelationID != "corr-1" || ev.TraceID != "trace-1" ||
					ev.AdditionalContext["k"] != "v" || !ev.StartedAt.Equal(start) ||
					!ev.Timestamp.Equal(start.Add(tc.budget)) || ev.Category() != tc.c {
					t.Fatalf("event = %+v", ev)
				}
				if ev.StartedAt.Location() != time.UTC {
					t.Fatalf("started_at %v is not UTC", ev.StartedAt)
				}
				if want := jsguard.EventID(ev.Code, ev.Operation, ev.TenantID, ev.CorrelationID, ev.TraceID, ev.StartedAt); ev.EventID != want {
					t.Fatalf("event_id %s is not EventID of the event's fields (%s)", ev.EventID, want)
				}
				st := statsOf(g, tc.c)
				if st.Calls != 1 || st.Timeouts != 1 || st.Events != 1 || st.Abandoned != 0 {
					t.Fatalf("stats = %+v", st)
				}
			})
		})
	}
}

// TestDeadlineIsEarliest checks that the deadline is the earliest of the
// parent's, the category's and a WithBudget override.
func TestDeadlineIsEarliest(t *testing.T) {
	cases := []struct {
		name        string
		parent      time.Duration // 0: none
		override    time.Duration // 0: none
		want        time.Duration
		source      string
		parentBound bool
	}{
		{"category", 0, 0, 5 * time.Second, jsguard.SourceCategory, false},
		{"override shorter", 0, time.Second, time.Second, jsguard.SourceOverride, false},
		{"override longer is ignored", 0, time.Minute, 5 * time.Second, jsguard.SourceCategory, false},
		{"parent shorter", 2 * time.Second, 0, 2 * time.Second, jsguard.SourceParent, true},
		{"parent longer", time.Minute, 0, 5 * time.Second, jsguard.SourceCategory, false},
		{"parent shorter than override", 500 * time.Millisecond, time.Second, 500 * time.Millisecond, jsguard.SourceParent, true},
		{"override shorter than parent", 3 * time.Second, time.Second, time.Second, jsguard.SourceOverride, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g, sink := newGuard(t)
				ctx := t.Context()
				if tc.parent > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tc.parent)
					defer cancel()
				}
				var opts []jsguard.CallOption
				if tc.override > 0 {
					opts = append(opts, jsguard.WithBudget(tc.override))
				}
				start := time.Now()
				var seen time.Time
				err := g.Do(ctx, jsguard.KVGet, "get", func(ctx context.Context) error {
					seen, _ = ctx.Deadline()
					return honour(ctx)
				}, opts...)
				if !seen.Equal(start.Add(tc.want)) {
					t.Fatalf("fn saw deadline +%s, want +%s", seen.Sub(start), tc.want)
				}
				te := asTimeout(t, err)
				if te.Elapsed != tc.want || te.ParentBound != tc.parentBound {
					t.Fatalf("TimeoutError = %+v, want elapsed %s parent-bound %v", te, tc.want, tc.parentBound)
				}
				if ev := sink.one(t); ev.BudgetSource != tc.source || ev.ElapsedSeconds != tc.want.Seconds() {
					t.Fatalf("event source %q elapsed %v, want %q %v", ev.BudgetSource, ev.ElapsedSeconds, tc.source, tc.want.Seconds())
				}
				if tc.parentBound && !strings.Contains(te.Error(), "bound by parent deadline") {
					t.Fatalf("Error() = %q does not say it was bound by the parent", te.Error())
				}
			})
		})
	}
}

func TestCancelIsNotATimeout(t *testing.T) {
	t.Run("cancelled during the call", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(time.Second, cancel)
			start := time.Now()
			err := g.Do(ctx, jsguard.KVGet, "get", honour)
			if err != context.Canceled {
				t.Fatalf("err = %v, want exactly context.Canceled", err)
			}
			if errors.Is(err, jsguard.ErrTimeout) {
				t.Fatal("a cancellation matches ErrTimeout")
			}
			if time.Since(start) != time.Second {
				t.Fatalf("returned after %s, want 1s (at the cancel)", time.Since(start))
			}
			if n := len(sink.events()); n != 0 {
				t.Fatalf("%d events for a cancellation, want 0", n)
			}
			if st := statsOf(g, jsguard.KVGet); st.Canceled != 1 || st.Timeouts != 0 || st.Events != 0 {
				t.Fatalf("stats = %+v", st)
			}
		})
	})
	t.Run("cancelled while fn ignores ctx", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(time.Second, cancel)
			unblock := make(chan struct{})
			err := g.Do(ctx, jsguard.KVGet, "get", func(context.Context) error { <-unblock; return nil })
			close(unblock)
			if err != context.Canceled || len(sink.events()) != 0 {
				t.Fatalf("err = %v with %d events, want Canceled and none", err, len(sink.events()))
			}
		})
	})
	t.Run("already cancelled", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			called := false
			err := g.Do(ctx, jsguard.KVGet, "get", func(context.Context) error { called = true; return nil })
			if err != context.Canceled || called || len(sink.events()) != 0 {
				t.Fatalf("err = %v called = %v events = %d, want Canceled, fn not called, no event", err, called, len(sink.events()))
			}
		})
	})
	t.Run("parent deadline already past", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			time.Sleep(2 * time.Second)
			called := false
			err := g.Do(ctx, jsguard.KVGet, "get", func(context.Context) error { called = true; return nil })
			if err != context.DeadlineExceeded || called || len(sink.events()) != 0 {
				t.Fatalf("err = %v called = %v events = %d, want DeadlineExceeded unaudited", err, called, len(sink.events()))
			}
		})
	})
}

func TestAbandonedWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var outcomes []jsguard.Outcome
		var mu sync.Mutex
		g, sink := newGuard(t, jsguard.WithAbandonGrace(20*time.Millisecond), jsguard.WithHooks(jsguard.Hooks{
			OnCall: func(ci jsguard.CallInfo) { mu.Lock(); outcomes = append(outcomes, ci.Outcome); mu.Unlock() },
		}))
		unblock := make(chan struct{})
		finished := make(chan struct{})
		start := time.Now()
		err := g.Do(t.Context(), jsguard.T3Layer, "render layer", func(context.Context) error {
			defer close(finished)
			<-unblock // ignores its context
			return nil
		})
		if got, want := time.Since(start), 2*time.Second+20*time.Millisecond; got != want {
			t.Fatalf("Do returned after %s, want deadline + grace = %s", got, want)
		}
		te := asTimeout(t, err)
		if !te.Abandoned || te.Code != "TIMEOUT_T3_LAYER" || !strings.Contains(te.Error(), "abandoned") {
			t.Fatalf("TimeoutError = %+v", te)
		}
		ev := sink.one(t)
		if !ev.Abandoned || ev.Code != "TIMEOUT_T3_LAYER" || ev.Level != "T3" {
			t.Fatalf("event = %+v, want abandoned T3", ev)
		}
		select {
		case <-finished:
			t.Fatal("fn finished although it was blocked: it was not abandoned but waited for")
		default:
		}
		close(unblock)
		<-finished
		st := statsOf(g, jsguard.T3Layer)
		if st.Timeouts != 1 || st.Abandoned != 1 {
			t.Fatalf("stats = %+v, want 1 timeout, 1 abandoned", st)
		}
		if len(outcomes) != 1 || outcomes[0] != jsguard.Abandoned || outcomes[0].String() != "abandoned" {
			t.Fatalf("OnCall outcomes = %v", outcomes)
		}
	})
}

// TestLateSuccessWithinGrace: a function that returns nil just after the
// deadline, within the grace, succeeded: no error, no event.
func TestLateSuccessWithinGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, sink := newGuard(t, jsguard.WithAbandonGrace(50*time.Millisecond))
		err := g.Do(t.Context(), jsguard.KVGet, "get", func(context.Context) error {
			time.Sleep(5*time.Second + 10*time.Millisecond)
			return nil
		})
		if err != nil || len(sink.events()) != 0 {
			t.Fatalf("err = %v, events = %d; want nil, 0", err, len(sink.events()))
		}
	})
}

func TestNestedCalls(t *testing.T) {
	t.Run("inner bound by outer deadline: one event, from the inner call", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			var outerDL, innerDL time.Time
			start := time.Now()
			err := g.Do(t.Context(), jsguard.APIRequest, "handle request", func(ctx context.Context) error {
				outerDL, _ = ctx.Deadline()
				return g.Do(ctx, jsguard.KVGet, "kv get b/k", func(ctx context.Context) error {
					innerDL, _ = ctx.Deadline()
					return honour(ctx)
				})
			}, jsguard.WithBudget(time.Second))
			if !innerDL.Equal(outerDL) || !outerDL.Equal(start.Add(time.Second)) {
				t.Fatalf("inner deadline +%s, outer +%s; the child must not outlive the parent's 1s", innerDL.Sub(start), outerDL.Sub(start))
			}
			if time.Since(start) != time.Second {
				t.Fatalf("returned after %s, want 1s", time.Since(start))
			}
			ev := sink.one(t)
			te := asTimeout(t, err)
			if ev.Code != "TIMEOUT_KV_GET" || ev.BudgetSource != jsguard.SourceParent || te.EventID != ev.EventID {
				t.Fatalf("event %+v, error %+v: want the inner KV_GET event, parent-bound, named by the error", ev, te)
			}
			if st := statsOf(g, jsguard.APIRequest); st.Timeouts != 1 || st.Events != 0 {
				t.Fatalf("outer stats = %+v, want a timeout and no event", st)
			}
		})
	})
	t.Run("inner ignores ctx: one event, outer returns on time", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t, jsguard.WithAbandonGrace(10*time.Millisecond))
			unblock := make(chan struct{})
			defer close(unblock)
			start := time.Now()
			err := g.Do(t.Context(), jsguard.APIRequest, "outer", func(ctx context.Context) error {
				return g.Do(ctx, jsguard.KVGet, "inner", func(context.Context) error { <-unblock; return nil })
			}, jsguard.WithBudget(time.Second))
			if got := time.Since(start); got > time.Second+20*time.Millisecond {
				t.Fatalf("outer returned after %s, want at most deadline + 2×grace", got)
			}
			ev := sink.one(t)
			te := asTimeout(t, err)
			if ev.Code != "TIMEOUT_KV_GET" || !ev.Abandoned || te.EventID != ev.EventID {
				t.Fatalf("event %+v, error %+v: want the inner abandoned KV_GET event, named by the error", ev, te)
			}
		})
	})
	t.Run("the inner event is out when the outer call returns, even with a slow sink", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			rec := &recSink{}
			slow := jsguard.SinkFunc(func(ctx context.Context, e jsguard.Event) error {
				time.Sleep(50 * time.Millisecond)
				return rec.Emit(ctx, e)
			})
			g, err := jsguard.New(jsguard.WithSink(slow))
			if err != nil {
				t.Fatal(err)
			}
			unblock := make(chan struct{})
			defer close(unblock)
			start := time.Now()
			err = g.Do(t.Context(), jsguard.APIRequest, "outer", func(ctx context.Context) error {
				return g.Do(ctx, jsguard.KVGet, "inner", func(context.Context) error { <-unblock; return nil })
			}, jsguard.WithBudget(time.Second))
			ev := rec.one(t)
			if ev.Operation != "inner" || asTimeout(t, err).EventID != ev.EventID {
				t.Fatalf("event %+v, err %v", ev, err)
			}
			if got := time.Since(start); got != time.Second+10*time.Millisecond+50*time.Millisecond {
				t.Fatalf("returned after %s, want deadline + grace + the sink's 50ms", got)
			}
		})
	})
	t.Run("three levels, all bound by the outermost deadline", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			unblock := make(chan struct{})
			defer close(unblock)
			err := g.Do(t.Context(), jsguard.T5Complex, "l1", func(ctx context.Context) error {
				_, err := jsguard.DoValue(ctx, g, jsguard.T4Full, "l2", func(ctx context.Context) (int, error) {
					return 0, g.Do(ctx, jsguard.T3Layer, "l3", func(context.Context) error { <-unblock; return nil })
				})
				return err
			}, jsguard.WithBudget(time.Second))
			ev := sink.one(t)
			if ev.Operation != "l3" || asTimeout(t, err).EventID != ev.EventID {
				t.Fatalf("event %+v for error %v, want the innermost call's", ev, err)
			}
		})
	})
	t.Run("siblings in goroutines under one deadline", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			err := g.Do(t.Context(), jsguard.APIRequest, "fan out", func(ctx context.Context) error {
				var wg sync.WaitGroup
				errs := make([]error, 3)
				for i := range errs {
					wg.Go(func() { errs[i] = g.Do(ctx, jsguard.KVGet, fmt.Sprint("part ", i), honour) })
				}
				wg.Wait()
				return errors.Join(errs...)
			}, jsguard.WithBudget(time.Second))
			ev := sink.one(t)
			if ev.Code != "TIMEOUT_KV_GET" || !errors.Is(err, jsguard.ErrTimeout) {
				t.Fatalf("event %+v, err %v", ev, err)
			}
		})
	})
	t.Run("inner with its own shorter budget: one event, outer fails with it", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			start := time.Now()
			err := g.Do(t.Context(), jsguard.APIRequest, "outer", func(ctx context.Context) error {
				return g.Do(ctx, jsguard.T1Cache, "cache", honour)
			})
			if time.Since(start) != 100*time.Millisecond {
				t.Fatalf("returned after %s, want the inner 100ms", time.Since(start))
			}
			ev := sink.one(t)
			if ev.Code != "TIMEOUT_T1_CACHE" || ev.BudgetSource != jsguard.SourceLevel || asTimeout(t, err).EventID != ev.EventID {
				t.Fatalf("event %+v, err %v", ev, err)
			}
			if st := statsOf(g, jsguard.APIRequest); st.Failed != 1 || st.Timeouts != 0 {
				t.Fatalf("outer stats = %+v, want it failed with the inner timeout, not timed out", st)
			}
		})
	})
	t.Run("two different deadlines give two events", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			err := g.Do(t.Context(), jsguard.APIRequest, "outer", func(ctx context.Context) error {
				_ = g.Do(ctx, jsguard.T1Cache, "cache", honour) // times out after 100ms, ignored
				return honour(ctx)                              // then the outer runs out at 1s
			}, jsguard.WithBudget(time.Second))
			evs := sink.events()
			if len(evs) != 2 || evs[0].Code != "TIMEOUT_T1_CACHE" || evs[1].Code != "TIMEOUT_API_REQUEST" {
				t.Fatalf("events = %+v, want T1_CACHE then API_REQUEST", evs)
			}
			if te := asTimeout(t, err); te.Code != "TIMEOUT_API_REQUEST" || te.EventID != evs[1].EventID {
				t.Fatalf("err = %+v", te)
			}
		})
	})
	t.Run("inner fallback under the outer deadline: one event, outer succeeds", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			v, err := jsguard.DoValue(t.Context(), g, jsguard.APIRequest, "outer", func(ctx context.Context) (string, error) {
				r, err := jsguard.DoFallback(ctx, g, jsguard.T2File, "read file", func(ctx context.Context) (string, error) {
					return "", honour(ctx)
				}, func(context.Context, *jsguard.TimeoutError) (string, error) { return "fallback", nil })
				return r.Value, err
			}, jsguard.WithBudget(100*time.Millisecond))
			if err != nil || v != "fallback" {
				t.Fatalf("DoValue = %q, %v, want the fallback", v, err)
			}
			if ev := sink.one(t); ev.Code != "TIMEOUT_T2_FILE" || !ev.FallbackUsed {
				t.Fatalf("event = %+v", ev)
			}
		})
	})
}

func TestDoFallbackStrategies(t *testing.T) {
	fallbackErr := errors.New("no fallback content")
	for l := jsguard.T1; l <= jsguard.T5; l++ {
		for _, s := range []jsguard.Strategy{jsguard.Graceful, jsguard.Strict, jsguard.None} {
			for _, how := range []string{"policy", "call option"} {
				t.Run(fmt.Sprintf("%s/%s/%s", l, s, how), func(t *testing.T) {
					synctest.Test(t, func(t *testing.T) {
						p := jsguard.DefaultPolicy()
						var opts []jsguard.CallOption
						if how == "policy" {
							p.Strategy = s
						} else {
							p.Strategy = jsguard.Strict // overridden per call
							if s == jsguard.Strict {
								p.Strategy = jsguard.Graceful
							}
							opts = append(opts, jsguard.WithStrategy(s))
						}
						g, sink := newGuard(t, jsguard.WithPolicy(p))
						called := 0
						start := time.Now()
						r, err := jsguard.DoFallback(t.Context(), g, l.Category(), "work", func(ctx context.Context) (string, error) {
							return "", honour(ctx)
						}, func(_ context.Context, cause *jsguard.TimeoutError) (string, error) {
							called++
							return l.DefaultFallback() + " after " + cause.Code, nil
						}, opts...)
						budget := map[jsguard.Level]time.Duration{jsguard.T1: 100 * time.Millisecond, jsguard.T2: 500 * time.Millisecond,
							jsguard.T3: 2 * time.Second, jsguard.T4: 5 * time.Second, jsguard.T5: 10 * time.Second}[l]
						if time.Since(start) != budget {
							t.Fatalf("returned after %s, want %s", time.Since(start), budget)
						}
						ev := sink.one(t)
						if ev.Level != l.String() || ev.Code != "TIMEOUT_"+string(l.Category()) {
							t.Fatalf("event = %+v", ev)
						}
						if s == jsguard.Graceful {
							want := l.DefaultFallback() + " after TIMEOUT_" + string(l.Category())
							if err != nil || !r.Degraded || r.Value != want || r.Level() != l || called != 1 || !ev.FallbackUsed {
								t.Fatalf("result %+v err %v called %d event %+v: want degraded %q", r, err, called, ev, want)
							}
							return
						}
						if te := asTimeout(t, err); te.Level != l || r.Degraded || called != 0 || ev.FallbackUsed || r.Level() != jsguard.LevelNone {
							t.Fatalf("result %+v err %v called %d event %+v: want the timeout error, fallback unused", r, err, called, ev)
						}
					})
				})
			}
		}
	}
	t.Run("nil fallback behaves as strict", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			_, err := jsguard.DoFallback[int](t.Context(), g, jsguard.T1Cache, "x", func(ctx context.Context) (int, error) { return 0, honour(ctx) }, nil)
			if asTimeout(t, err).Code != "TIMEOUT_T1_CACHE" || sink.one(t).FallbackUsed {
				t.Fatalf("err = %v", err)
			}
		})
	})
	t.Run("fallback error is joined with the timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, _ := newGuard(t)
			_, err := jsguard.DoFallback(t.Context(), g, jsguard.T2File, "x", func(ctx context.Context) (int, error) { return 0, honour(ctx) },
				func(context.Context, *jsguard.TimeoutError) (int, error) { return 0, fallbackErr })
			if !errors.Is(err, jsguard.ErrTimeout) || !errors.Is(err, fallbackErr) {
				t.Fatalf("err = %v, want both the timeout and the fallback's error", err)
			}
		})
	})
	t.Run("success and plain errors do not use the fallback", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			fb := func(context.Context, *jsguard.TimeoutError) (int, error) { t.Error("fallback called"); return 0, nil }
			r, err := jsguard.DoFallback(t.Context(), g, jsguard.T2File, "ok", func(context.Context) (int, error) { return 3, nil }, fb)
			if err != nil || r.Value != 3 || r.Degraded || r.Cause != nil {
				t.Fatalf("DoFallback = %+v, %v", r, err)
			}
			_, err = jsguard.DoFallback(t.Context(), g, jsguard.T2File, "fails", func(context.Context) (int, error) { return 0, fallbackErr }, fb)
			if !errors.Is(err, fallbackErr) || errors.Is(err, jsguard.ErrTimeout) || len(sink.events()) != 0 {
				t.Fatalf("err = %v, events = %d", err, len(sink.events()))
			}
		})
	})
}

func TestLevels(t *testing.T) {
	cases := []struct {
		l        jsguard.Level
		name     string
		c        jsguard.Category
		code     string
		budget   time.Duration
		fallback string
	}{
		{jsguard.T1, "T1", jsguard.T1Cache, "TIMEOUT_T1_CACHE", 100 * time.Millisecond, "skip cache"},
		{jsguard.T2, "T2", jsguard.T2File, "TIMEOUT_T2_FILE", 500 * time.Millisecond, "fallback content"},
		{jsguard.T3, "T3", jsguard.T3Layer, "TIMEOUT_T3_LAYER", 2 * time.Second, "partial result"},
		{jsguard.T4, "T4", jsguard.T4Full, "TIMEOUT_T4_FULL", 5 * time.Second, "core only"},
		{jsguard.T5, "T5", jsguard.T5Complex, "TIMEOUT_T5_COMPLEX", 10 * time.Second, "abort with summary"},
	}
	g, _ := newGuard(t)
	for _, tc := range cases {
		if tc.l.String() != tc.name || tc.l.Category() != tc.c || tc.c.Code() != tc.code || tc.c.Level() != tc.l ||
			g.Budget(tc.c) != tc.budget || tc.l.DefaultFallback() != tc.fallback {
			t.Errorf("%s: got %q %q %q %v %v %q", tc.name, tc.l, tc.l.Category(), tc.c.Code(), tc.c.Level(), g.Budget(tc.c), tc.l.DefaultFallback())
		}
	}
	if jsguard.LevelNone.String() != "" || jsguard.LevelNone.Category() != "" || jsguard.KVGet.Level() != jsguard.LevelNone ||
		jsguard.Level(9).String() != "Level(9)" || jsguard.Level(9).DefaultFallback() != "" {
		t.Error("LevelNone or out-of-range levels misreport")
	}
}

func TestLivePolicySwap(t *testing.T) {
	t.Run("calls in flight keep their budget", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, _ := newGuard(t)
			ends := make(chan time.Duration, 2)
			start := time.Now()
			call := func() {
				_ = g.Do(t.Context(), jsguard.KVGet, "get", honour)
				ends <- time.Since(start)
			}
			go call() // starts under the 5s budget
			synctest.Wait()
			if err := g.SetPolicy(policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: time.Second})); err != nil {
				t.Fatal(err)
			}
			go call() // starts under the 1s budget
			first, second := <-ends, <-ends
			if first != time.Second || second != 5*time.Second {
				t.Fatalf("calls ended at %s and %s, want 1s (new policy) and 5s (old policy, in flight)", first, second)
			}
		})
	})
	t.Run("invalid policy is refused and the old one kept", func(t *testing.T) {
		g, _ := newGuard(t)
		err := g.SetPolicy(policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 0}))
		if !errors.Is(err, jsguard.ErrInvalidPolicy) || g.Budget(jsguard.KVGet) != 5*time.Second {
			t.Fatalf("SetPolicy = %v, budget %s", err, g.Budget(jsguard.KVGet))
		}
	})
	t.Run("the guard's copy is not shared with the caller", func(t *testing.T) {
		p := policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: time.Second})
		g, _ := newGuard(t, jsguard.WithPolicy(p))
		p.Budgets[jsguard.KVGet] = time.Minute
		got := g.Policy()
		got.Budgets[jsguard.KVGet] = time.Hour
		if g.Budget(jsguard.KVGet) != time.Second {
			t.Fatalf("budget = %s, want 1s: the guard's policy was changed from outside", g.Budget(jsguard.KVGet))
		}
	})
	t.Run("concurrent swaps under load", func(t *testing.T) {
		// Real time, for the race detector: every call sees one policy or
		// the other, never a mix or a torn value.
		a := policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: time.Second, jsguard.KVPut: 2 * time.Second})
		b := policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 3 * time.Second, jsguard.KVPut: 4 * time.Second})
		var bad sync.Map
		g, _ := newGuard(t, jsguard.WithPolicy(a), jsguard.WithHooks(jsguard.Hooks{OnCall: func(ci jsguard.CallInfo) {
			if ci.Budget != time.Second && ci.Budget != 3*time.Second {
				bad.Store(ci.Budget, true)
			}
		}}))
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for ctx.Err() == nil {
					_ = g.Do(ctx, jsguard.KVGet, "get", func(context.Context) error { return nil })
					if p := g.Policy(); !(p.Budgets[jsguard.KVGet] == time.Second && p.Budgets[jsguard.KVPut] == 2*time.Second) &&
						!(p.Budgets[jsguard.KVGet] == 3*time.Second && p.Budgets[jsguard.KVPut] == 4*time.Second) {
						bad.Store("torn policy", true)
					}
				}
			})
		}
		swaps := 0
		for ctx.Err() == nil {
			p := a
			if swaps%2 == 0 {
				p = b
			}
			if err := g.SetPolicy(p); err != nil {
				t.Fatal(err)
			}
			swaps++
		}
		wg.Wait()
		bad.Range(func(k, _ any) bool { t.Errorf("observed %v", k); return true })
		if swaps < 10 || statsOf(g, jsguard.KVGet).Calls == 0 {
			t.Fatalf("%d swaps, %d calls: the test did not exercise anything", swaps, statsOf(g, jsguard.KVGet).Calls)
		}
	})
}

func TestSinkErrors(t *testing.T) {
	t.Run("error is counted and hooked, not returned", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			sinkErr := errors.New("audit stream unavailable")
			var hooked []error
			g, err := jsguard.New(
				jsguard.WithSink(jsguard.SinkFunc(func(context.Context, jsguard.Event) error { return sinkErr })),
				jsguard.WithHooks(jsguard.Hooks{OnSinkError: func(e jsguard.Event, err error) {
					if e.Code != "TIMEOUT_KV_GET" {
						t.Errorf("hook got event %+v", e)
					}
					hooked = append(hooked, err)
				}}))
			if err != nil {
				t.Fatal(err)
			}
			err = g.Do(t.Context(), jsguard.KVGet, "get", honour)
			if asTimeout(t, err).Code != "TIMEOUT_KV_GET" || errors.Is(err, sinkErr) {
				t.Fatalf("err = %v, want the timeout, not the sink's error", err)
			}
			if g.SinkErrors() != 1 || len(hooked) != 1 || !errors.Is(hooked[0], sinkErr) {
				t.Fatalf("SinkErrors = %d, hooked = %v", g.SinkErrors(), hooked)
			}
		})
	})
	t.Run("slow sink is bounded by the emit bound", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var hooked error
			unblock := make(chan struct{})
			g, err := jsguard.New(
				jsguard.WithEmitBound(250*time.Millisecond),
				jsguard.WithSink(jsguard.SinkFunc(func(context.Context, jsguard.Event) error { <-unblock; return nil })),
				jsguard.WithHooks(jsguard.Hooks{OnSinkError: func(_ jsguard.Event, err error) { hooked = err }}))
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err = g.Do(t.Context(), jsguard.T1Cache, "get", honour)
			if got := time.Since(start); got != 350*time.Millisecond {
				t.Fatalf("Do returned after %s, want budget 100ms + emit bound 250ms", got)
			}
			close(unblock)
			if asTimeout(t, err) == nil || g.SinkErrors() != 1 || !errors.Is(hooked, jsguard.ErrEmitTimeout) {
				t.Fatalf("err = %v, SinkErrors = %d, hooked = %v", err, g.SinkErrors(), hooked)
			}
		})
	})
	t.Run("no sink: hook still sees the event", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var seen []jsguard.Event
			g, _ := jsguard.New(jsguard.WithHooks(jsguard.Hooks{OnTimeout: func(e jsguard.Event) { seen = append(seen, e) }}))
			_ = g.Do(t.Context(), jsguard.T1Cache, "get", honour)
			if len(seen) != 1 || g.SinkErrors() != 0 || statsOf(g, jsguard.T1Cache).Events != 1 {
				t.Fatalf("seen %d events, %d sink errors", len(seen), g.SinkErrors())
			}
		})
	})
	t.Run("SetSink swaps and removes the sink", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, first := newGuard(t)
			second := &recSink{}
			g.SetSink(second)
			_ = g.Do(t.Context(), jsguard.T1Cache, "a", honour)
			g.SetSink(nil)
			_ = g.Do(t.Context(), jsguard.T1Cache, "b", honour)
			if len(first.events()) != 0 || len(second.events()) != 1 || second.events()[0].Operation != "a" {
				t.Fatalf("first %d, second %+v", len(first.events()), second.events())
			}
		})
	})
}

func TestEmitFillsIDAndType(t *testing.T) {
	g, sink := newGuard(t)
	start := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	ev := jsguard.Event{Code: jsguard.ApprovalExpired.Code(), Operation: "approval acme.a1", TenantID: "acme", StartedAt: start}
	g.Emit(t.Context(), ev)
	got := sink.one(t)
	if got.EventType != jsguard.EventType || got.EventID != jsguard.EventID(ev.Code, ev.Operation, "acme", "", "", start) {
		t.Fatalf("Emit sent %+v", got)
	}
	ev.EventID = "given"
	g.Emit(t.Context(), ev)
	if evs := sink.events(); evs[1].EventID != "given" {
		t.Fatalf("Emit replaced a given id: %+v", evs[1])
	}
}

func TestEventID(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	base := jsguard.EventID("TIMEOUT_KV_GET", "kv get b/k", "acme", "c1", "t1", t0)
	if len(base) != 32 || strings.Trim(base, "0123456789abcdef") != "" {
		t.Fatalf("id %q is not 32 lowercase hex characters", base)
	}
	if again := jsguard.EventID("TIMEOUT_KV_GET", "kv get b/k", "acme", "c1", "t1", t0.In(time.FixedZone("x", 3600))); again != base {
		t.Fatalf("same timeout gives %s and %s", base, again)
	}
	others := map[string]string{
		"start":       jsguard.EventID("TIMEOUT_KV_GET", "kv get b/k", "acme", "c1", "t1", t0.Add(time.Nanosecond)),
		"operation":   jsguard.EventID("TIMEOUT_KV_GET", "kv get b/j", "acme", "c1", "t1", t0),
		"tenant":      jsguard.EventID("TIMEOUT_KV_GET", "kv get b/k", "other", "c1", "t1", t0),
		"code":        jsguard.EventID("TIMEOUT_KV_PUT", "kv get b/k", "acme", "c1", "t1", t0),
		"correlation": jsguard.EventID("TIMEOUT_KV_GET", "kv get b/k", "acme", "c2", "t1", t0),
		"trace":       jsguard.EventID("TIMEOUT_KV_GET", "kv get b/k", "acme", "c1", "t2", t0),
		// Field boundaries matter: "ab"+"c" is not "a"+"bc".
		"boundaries": jsguard.EventID("TIMEOUT_KV_GET", "kv get b/k", "acm", "ec1", "t1", t0),
	}
	for what, id := range others {
		if id == base {
			t.Errorf("a different %s gives the same id", what)
		}
	}
	// The id of a guarded call's event is the same when the same timeout
	// happens again at the same instant (synctest's clock starts at the
	// same instant in every bubble).
	var ids []string
	for range 2 {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			_ = g.Do(jsguard.WithTenant(t.Context(), "acme"), jsguard.KVGet, "get", honour)
			ids = append(ids, sink.one(t).EventID)
		})
	}
	if ids[0] != ids[1] {
		t.Fatalf("the same timeout gave ids %s and %s", ids[0], ids[1])
	}
}

func TestStats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls []jsguard.CallInfo
		g, _ := newGuard(t, jsguard.WithPolicy(policyWith(map[jsguard.Category]time.Duration{jsguard.KVPut: time.Hour})),
			jsguard.WithHooks(jsguard.Hooks{OnCall: func(ci jsguard.CallInfo) { calls = append(calls, ci) }}))
		ctx := t.Context()
		sleep := func(d time.Duration) func(context.Context) error {
			return func(context.Context) error { time.Sleep(d); return nil }
		}
		_ = g.Do(ctx, jsguard.KVGet, "fast", sleep(0))                                               // bucket <=1ms
		_ = g.Do(ctx, jsguard.KVGet, "30ms", sleep(30*time.Millisecond))                             // <=50ms
		_ = g.Do(ctx, jsguard.KVGet, "2s", sleep(2*time.Second))                                     // <=2.5s
		_ = g.Do(ctx, jsguard.KVGet, "fail", func(context.Context) error { return errors.New("x") }) // <=1ms
		_ = g.Do(ctx, jsguard.KVGet, "timeout", honour)                                              // 5s: <=5s
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(time.Second, cancel)
		_ = g.Do(cctx, jsguard.KVGet, "cancel", honour)            // <=1s
		_ = g.Do(ctx, jsguard.KVPut, "put", sleep(10*time.Minute)) // beyond the last bound

		st := statsOf(g, jsguard.KVGet)
		want := jsguard.CategoryStats{Category: jsguard.KVGet, Calls: 6, Failed: 1, Timeouts: 1, Canceled: 1, Events: 1,
			Sum: 30*time.Millisecond + 2*time.Second + 5*time.Second + time.Second}
		if st.Calls != want.Calls || st.Failed != want.Failed || st.Timeouts != want.Timeouts || st.Canceled != want.Canceled ||
			st.Events != want.Events || st.Sum != want.Sum || st.Abandoned != 0 {
			t.Fatalf("stats = %+v, want %+v", st, want)
		}
		if len(st.Buckets) != len(jsguard.DurationBuckets)+1 {
			t.Fatalf("%d buckets, want %d", len(st.Buckets), len(jsguard.DurationBuckets)+1)
		}
		bucket := func(d time.Duration) int {
			for i, b := range jsguard.DurationBuckets {
				if d <= b {
					return i
				}
			}
			return len(jsguard.DurationBuckets)
		}
		wantBuckets := make([]uint64, len(st.Buckets))
		for _, d := range []time.Duration{0, 30 * time.Millisecond, 2 * time.Second, 0, 5 * time.Second, time.Second} {
			wantBuckets[bucket(d)]++
		}
		for i := range wantBuckets {
			if st.Buckets[i] != wantBuckets[i] {
				t.Fatalf("buckets = %v, want %v", st.Buckets, wantBuckets)
			}
		}
		if put := statsOf(g, jsguard.KVPut); put.Buckets[len(put.Buckets)-1] != 1 {
			t.Fatalf("a 10m call is not in the overflow bucket: %v", put.Buckets)
		}
		all := g.Stats()
		if len(all) != 2 || all[0].Category != jsguard.KVGet || all[1].Category != jsguard.KVPut {
			t.Fatalf("Stats() = %+v, want KV_GET then KV_PUT", all)
		}
		wantOutcomes := []jsguard.Outcome{jsguard.OK, jsguard.OK, jsguard.OK, jsguard.Failed, jsguard.TimedOut, jsguard.Canceled, jsguard.OK}
		if len(calls) != len(wantOutcomes) {
			t.Fatalf("OnCall saw %d calls, want %d", len(calls), len(wantOutcomes))
		}
		for i, ci := range calls {
			if ci.Outcome != wantOutcomes[i] {
				t.Errorf("call %d (%s) outcome %v, want %v", i, ci.Operation, ci.Outcome, wantOutcomes[i])
			}
		}
		if calls[2].Duration != 2*time.Second || calls[2].Budget != 5*time.Second || calls[2].Category != jsguard.KVGet {
			t.Fatalf("CallInfo = %+v", calls[2])
		}
		names := []string{jsguard.OK.String(), jsguard.Failed.String(), jsguard.TimedOut.String(), jsguard.Canceled.String(), jsguard.Outcome(42).String()}
		if strings.Join(names, ",") != "ok,error,timeout,canceled,Outcome(42)" {
			t.Fatalf("outcome names %v", names)
		}
	})
}

func TestDefaultGuard(t *testing.T) {
	orig := jsguard.Default()
	defer jsguard.SetDefault(orig)
	g, sink := newGuard(t, jsguard.WithPolicy(policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 20 * time.Millisecond})))
	jsguard.SetDefault(g)
	jsguard.SetDefault(nil) // ignored
	if jsguard.Default() != g {
		t.Fatal("SetDefault did not replace the default guard")
	}
	err := jsguard.Do(t.Context(), jsguard.KVGet, "pkg-level", honour)
	if asTimeout(t, err).Budget != 20*time.Millisecond || sink.one(t).Operation != "pkg-level" {
		t.Fatalf("package-level Do did not use the default guard: %v", err)
	}
	var nilGuard *jsguard.Guard
	if _, err := jsguard.DoValue(t.Context(), nilGuard, jsguard.KVGet, "nil guard", func(ctx context.Context) (int, error) { return 0, honour(ctx) }); err == nil ||
		len(sink.events()) != 2 {
		t.Fatalf("a nil *Guard did not use the default guard: %v", err)
	}
}

func TestNewRejectsInvalidPolicy(t *testing.T) {
	_, err := jsguard.New(jsguard.WithPolicy(jsguard.Policy{Default: time.Second, Strategy: "lenient"}))
	if !errors.Is(err, jsguard.ErrInvalidPolicy) || !strings.Contains(err.Error(), `"lenient"`) {
		t.Fatalf("New = %v, want the strategy named", err)
	}
}

func TestInline(t *testing.T) {
	t.Run("honours the deadline like a normal call", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			start := time.Now()
			err := g.Do(t.Context(), jsguard.T1Cache, "inline", honour, jsguard.WithInline())
			te := asTimeout(t, err)
			if time.Since(start) != 100*time.Millisecond || te.Abandoned || sink.one(t).Code != "TIMEOUT_T1_CACHE" {
				t.Fatalf("err %+v after %s", te, time.Since(start))
			}
		})
	})
	t.Run("runs on the caller's goroutine and so cannot abandon", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			start := time.Now()
			err := g.Do(t.Context(), jsguard.T1Cache, "inline", func(context.Context) error {
				time.Sleep(time.Second)
				return errors.New("late")
			}, jsguard.WithInline())
			te := asTimeout(t, err)
			if time.Since(start) != time.Second || te.Abandoned || te.Elapsed != time.Second || sink.one(t).Abandoned {
				t.Fatalf("err %+v after %s, want a timeout reported when fn returned at 1s", te, time.Since(start))
			}
		})
	})
	t.Run("success and cancel", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, sink := newGuard(t)
			v, err := jsguard.DoValue(t.Context(), g, jsguard.KVGet, "ok", func(context.Context) (int, error) { return 5, nil }, jsguard.WithInline())
			if v != 5 || err != nil {
				t.Fatalf("DoValue = %d, %v", v, err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(time.Second, cancel)
			if err := g.Do(ctx, jsguard.KVGet, "cancel", honour, jsguard.WithInline()); err != context.Canceled {
				t.Fatalf("Do = %v, want Canceled", err)
			}
			if len(sink.events()) != 0 {
				t.Fatal("events without a timeout")
			}
		})
	})
}

// durableSink records which of its methods was called.
type durableSink struct {
	emits, durable int
	err            error
}

func (d *durableSink) Emit(context.Context, jsguard.Event) error { d.emits++; return d.err }
func (d *durableSink) EmitDurable(context.Context, jsguard.Event) error {
	d.durable++
	return d.err
}

// TestEmitDurable: EmitDurable uses a DurableSink's EmitDurable, a plain
// sink's Emit, and returns and counts the sink's error.
func TestEmitDurable(t *testing.T) {
	ev := jsguard.Event{Code: "TIMEOUT_KV_GET", Operation: "x"}
	d := &durableSink{}
	g, err := jsguard.New(jsguard.WithSink(d))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.EmitDurable(t.Context(), ev); err != nil || d.durable != 1 || d.emits != 0 {
		t.Fatalf("durable sink: err %v, durable %d, emits %d", err, d.durable, d.emits)
	}
	var plain []jsguard.Event
	g.SetSink(jsguard.SinkFunc(func(_ context.Context, e jsguard.Event) error { plain = append(plain, e); return nil }))
	if err := g.EmitDurable(t.Context(), ev); err != nil || len(plain) != 1 || plain[0].EventID == "" {
		t.Fatalf("plain sink: err %v, events %+v", err, plain)
	}
	failing := &durableSink{err: errors.New("disk full")}
	g.SetSink(failing)
	if err := g.EmitDurable(t.Context(), ev); !errors.Is(err, failing.err) || g.SinkErrors() != 1 {
		t.Fatalf("failing sink: err %v, SinkErrors %d", err, g.SinkErrors())
	}
	g.SetSink(nil)
	if err := g.EmitDurable(t.Context(), ev); err != nil {
		t.Fatalf("no sink: %v", err)
	}
}
