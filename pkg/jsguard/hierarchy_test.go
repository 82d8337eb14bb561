package jsguard_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// sleepFor returns a loader that takes d, or stops with ctx's error.
func sleepFor[T any](d time.Duration, v T) func(context.Context) (T, error) {
	return func(ctx context.Context) (T, error) {
		select {
		case <-time.After(d):
			return v, nil
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		}
	}
}

// levelCall runs one hierarchy level with a loader that takes slow (its
// parts too, except the first part of T3 and the core of T4, which are
// quick), and describes what it returned: degraded or not, and how.
type levelCall struct {
	level jsguard.Level
	run   func(ctx context.Context, g *jsguard.Guard, slow time.Duration, opts ...jsguard.CallOption) (string, error)
}

var levelCalls = []levelCall{
	{jsguard.T1, func(ctx context.Context, g *jsguard.Guard, slow time.Duration, opts ...jsguard.CallOption) (string, error) {
		r, err := jsguard.Cached(ctx, g, "cache get k",
			func(ctx context.Context) (string, bool, error) {
				v, err := sleepFor(slow, "cached")(ctx)
				return v, err == nil, err
			},
			func(context.Context) (string, error) { return "source", nil }, opts...)
		return fmt.Sprintf("%s degraded=%v", r.Value, r.Degraded), err
	}},
	{jsguard.T2, func(ctx context.Context, g *jsguard.Guard, slow time.Duration, opts ...jsguard.CallOption) (string, error) {
		r, err := jsguard.File(ctx, g, "read f", sleepFor(slow, "file"),
			func(context.Context, *jsguard.TimeoutError) (string, error) { return "fallback", nil }, opts...)
		return fmt.Sprintf("%s degraded=%v", r.Value, r.Degraded), err
	}},
	{jsguard.T3, func(ctx context.Context, g *jsguard.Guard, slow time.Duration, opts ...jsguard.CallOption) (string, error) {
		r, err := jsguard.Layer(ctx, g, "layer l", []jsguard.Part[string]{
			{Name: "a", Load: sleepFor(0, "A")}, {Name: "b", Load: sleepFor(slow, "B")},
		}, opts...)
		var got []string
		for _, p := range r.Parts {
			got = append(got, p.Value)
		}
		return fmt.Sprintf("%v partial=%v missing=%v", got, r.Partial, r.Missing), err
	}},
	{jsguard.T4, func(ctx context.Context, g *jsguard.Guard, slow time.Duration, opts ...jsguard.CallOption) (string, error) {
		r, err := jsguard.Full(ctx, g, "full", sleepFor(0, "core"), []jsguard.Part[string]{
			{Name: "x", Load: sleepFor(slow, "X")},
		}, opts...)
		return fmt.Sprintf("%s layers=%d core_only=%v missing=%v", r.Core, len(r.Layers), r.CoreOnly, r.Missing), err
	}},
	{jsguard.T5, func(ctx context.Context, g *jsguard.Guard, slow time.Duration, opts ...jsguard.CallOption) (string, error) {
		r, err := jsguard.Complex(ctx, g, "verify", func(ctx context.Context, progress func(int)) (int, error) {
			n := 0
			deadline := time.Now().Add(slow)
			for time.Now().Before(deadline) {
				if err := ctx.Err(); err != nil {
					return n, err
				}
				n++
				progress(n)
				time.Sleep(slow / 10)
			}
			return n, nil
		}, opts...)
		return fmt.Sprintf("%d aborted=%v", r.Value, r.Aborted), err
	}},
}

// TestHierarchyStrategies: each level under each strategy, in virtual
// time, with work slower than the level's budget. graceful degrades as
// the level promises and returns no error; strict returns the timeout and
// degrades nothing; none ignores the level's budget and lets the work
// finish, and is audited only when a parent's deadline cuts it short.
// Each timeout is one audit event with the level and fallback_used.
func TestHierarchyStrategies(t *testing.T) {
	want := map[jsguard.Level]string{
		jsguard.T1: "source degraded=true",
		jsguard.T2: "fallback degraded=true",
		jsguard.T3: "[A] partial=true missing=[b]",
		jsguard.T4: "core layers=0 core_only=true missing=[x]",
		jsguard.T5: "5 aborted=true",
	}
	wantDone := map[jsguard.Level]string{
		jsguard.T1: "cached degraded=false",
		jsguard.T2: "file degraded=false",
		jsguard.T3: "[A B] partial=false missing=[]",
		jsguard.T4: "core layers=1 core_only=false missing=[]",
		jsguard.T5: "10 aborted=false",
	}
	def := jsguard.DefaultPolicy()
	for _, lc := range levelCalls {
		budget := def.Budget(lc.level.Category())
		slow := 2 * budget
		t.Run(lc.level.String()+"/graceful", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g, sink := newGuard(t)
				got, err := lc.run(t.Context(), g, slow)
				if err != nil || got != want[lc.level] {
					t.Errorf("got %q, %v; want %q, nil", got, err, want[lc.level])
				}
				ev := sink.one(t)
				if ev.Code != lc.level.Category().Code() || ev.Level != lc.level.String() || !ev.FallbackUsed || ev.TimeoutSeconds != budget.Seconds() {
					t.Errorf("event %s level %q fallback_used %v budget %gs", ev.Code, ev.Level, ev.FallbackUsed, ev.TimeoutSeconds)
				}
			})
		})
		t.Run(lc.level.String()+"/strict", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g, sink := newGuard(t)
				got, err := lc.run(t.Context(), g, slow, jsguard.WithStrategy(jsguard.Strict))
				te := asTimeout(t, err)
				if te.Level != lc.level || strings.Contains(got, "degraded=true") || strings.Contains(got, "=true") {
					t.Errorf("got %q, level %s: want the timeout and nothing degraded", got, te.Level)
				}
				if ev := sink.one(t); ev.FallbackUsed || ev.Level != lc.level.String() {
					t.Errorf("event level %q fallback_used %v, want %s and false", ev.Level, ev.FallbackUsed, lc.level)
				}
			})
		})
		t.Run(lc.level.String()+"/none", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g, sink := newGuard(t)
				// Twice the budget and no parent deadline: finishes.
				got, err := lc.run(t.Context(), g, slow, jsguard.WithStrategy(jsguard.None))
				if err != nil || got != wantDone[lc.level] {
					t.Errorf("without a parent deadline: got %q, %v; want %q", got, err, wantDone[lc.level])
				}
				if evs := sink.events(); len(evs) != 0 {
					t.Errorf("%d events without a timeout", len(evs))
				}
				// A parent deadline shorter than the work: audited.
				ctx, cancel := context.WithTimeout(t.Context(), slow/2)
				defer cancel()
				_, err = lc.run(ctx, g, slow, jsguard.WithStrategy(jsguard.None))
				te := asTimeout(t, err)
				ev := sink.one(t)
				if !te.ParentBound || ev.Level != lc.level.String() || ev.FallbackUsed || ev.BudgetSource != jsguard.SourceParent {
					t.Errorf("parent-bound %v, event level %q fallback_used %v source %q", te.ParentBound, ev.Level, ev.FallbackUsed, ev.BudgetSource)
				}
			})
		})
	}
}

// TestHierarchyNesting: a T4 load runs two T3 layers, which run T2 file
// reads, which try a T1 cache. Each child's deadline is clamped to its
// parent's remaining time; one cache lookup and one file read are slow,
// and the second layer runs out of time. The top result lists every
// degradation beneath it, and there is one audit event per timeout, each
// with its level.
func TestHierarchyNesting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, sink := newGuard(t)
		var (
			mu        sync.Mutex
			clampedTo []time.Duration // remaining time each file read saw
		)
		file := func(name string, cache, read time.Duration) jsguard.Part[string] {
			return jsguard.Part[string]{Name: name, Load: func(ctx context.Context) (string, error) {
				r, err := jsguard.File(ctx, g, "read "+name, func(ctx context.Context) (string, error) {
					d, _ := ctx.Deadline()
					mu.Lock()
					clampedTo = append(clampedTo, time.Until(d))
					mu.Unlock()
					c, err := jsguard.Cached(ctx, g, "cache "+name,
						func(ctx context.Context) (string, bool, error) {
							_, err := sleepFor(cache, "")(ctx)
							return "", false, err // a miss
						},
						sleepFor(read, name))
					return c.Value, err
				}, func(context.Context, *jsguard.TimeoutError) (string, error) { return name + "(fallback)", nil })
				return r.Value, err
			}}
		}
		layer := func(name string, files ...jsguard.Part[string]) jsguard.Part[jsguard.Partial[string]] {
			return jsguard.Part[jsguard.Partial[string]]{Name: name, Load: func(ctx context.Context) (jsguard.Partial[string], error) {
				return jsguard.Layer(ctx, g, "layer "+name, files)
			}}
		}
		// Files of one layer load one after the other (each Part is
		// itself loaded in parallel, so chain them through one part).
		seq := func(name string, files ...jsguard.Part[string]) jsguard.Part[string] {
			return jsguard.Part[string]{Name: name, Load: func(ctx context.Context) (string, error) {
				var out []string
				for _, f := range files {
					v, err := f.Load(ctx)
					if err != nil {
						return strings.Join(out, "+"), err
					}
					out = append(out, v)
				}
				return strings.Join(out, "+"), nil
			}}
		}
		start := time.Now()
		w, err := jsguard.Full(t.Context(), g, "load kb", sleepFor(10*time.Millisecond, "core"), []jsguard.Part[jsguard.Partial[string]]{
			// a1's cache is slow (T1 skips it), a2's read is slow (T2
			// fallback): the layer completes, degraded beneath.
			layer("a", file("a1", time.Second, 10*time.Millisecond), file("a2", 0, time.Second)),
			// b's files take 450ms each, one after the other: the
			// layer's 2s run out in the fifth, whose read is clamped to
			// the 200ms the layer has left.
			layer("b", seq("b-all", file("b1", 0, 450*time.Millisecond), file("b2", 0, 450*time.Millisecond),
				file("b3", 0, 450*time.Millisecond), file("b4", 0, 450*time.Millisecond), file("b5", 0, 450*time.Millisecond))),
		})
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took != 2*time.Second {
			t.Errorf("took %s, want the slowest layer's 2s", took)
		}
		if w.Core != "core" || w.CoreOnly || len(w.Layers) != 2 {
			t.Fatalf("whole = %+v", w)
		}
		a, b := w.Layers[0].Value, w.Layers[1].Value
		if a.Partial || len(a.Parts) != 2 || a.Parts[0].Value != "a1" || a.Parts[1].Value != "a2(fallback)" {
			t.Errorf("layer a = %+v", a)
		}
		if !b.Partial || len(b.Parts) != 0 || !slices.Equal(b.Missing, []string{"b-all"}) {
			t.Errorf("layer b = %+v, want partial with b-all missing", b)
		}
		last := clampedTo[len(clampedTo)-1]
		if last != 200*time.Millisecond {
			t.Errorf("the last file read had %s, want the 200ms its layer had left (below T2's 500ms)", last)
		}
		var got []string
		for _, d := range w.Degraded {
			got = append(got, fmt.Sprintf("%s %s", d.Level, d.Operation))
		}
		slices.Sort(got)
		wantDeg := []string{"T1 cache a1", "T2 read a2", "T3 layer b"}
		if !slices.Equal(got, wantDeg) {
			t.Errorf("degraded = %v, want %v", got, wantDeg)
		}
		var evs []string
		for _, ev := range sink.events() {
			evs = append(evs, fmt.Sprintf("%s %s fallback_used=%v", ev.Level, ev.Operation, ev.FallbackUsed))
		}
		slices.Sort(evs)
		wantEvs := []string{"T1 cache a1 fallback_used=true", "T2 read a2 fallback_used=true", "T3 layer b fallback_used=true"}
		if !slices.Equal(evs, wantEvs) {
			t.Errorf("events = %v, want %v: one per timeout, by the level whose budget ran out", evs, wantEvs)
		}
	})
}

// TestHierarchyChildIgnoresContext: a layer part that ignores its context
// is left running; the layer returns at its deadline (plus the guard's
// abandon grace) with the other parts, and reports one event.
func TestHierarchyChildIgnoresContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, sink := newGuard(t)
		stubborn := func(context.Context) (string, error) { time.Sleep(time.Minute); return "late", nil }
		start := time.Now()
		r, err := jsguard.Layer(t.Context(), g, "layer", []jsguard.Part[string]{
			{Name: "quick", Load: sleepFor(0, "q")}, {Name: "stubborn", Load: stubborn},
		})
		if err != nil || !r.Partial || len(r.Parts) != 1 || !slices.Equal(r.Missing, []string{"stubborn"}) {
			t.Fatalf("got %+v, %v", r, err)
		}
		if took := time.Since(start); took > 2*time.Second+20*time.Millisecond {
			t.Errorf("took %s, want the 2s budget", took)
		}
		if ev := sink.one(t); ev.Level != "T3" || !ev.FallbackUsed {
			t.Errorf("event %+v", ev)
		}
		time.Sleep(time.Minute) // the stubborn part ends; its result is dropped, and nothing more is audited
		if n := len(sink.events()); n != 1 {
			t.Errorf("%d events after the stubborn part returned", n)
		}
	})
}

// TestHierarchyChildrenShareEvent: when a layer's deadline fires while a
// file read and a plain guarded call inside it are running (their
// deadlines clamped to the layer's), the layer reports the timeout once,
// as T3; the children's errors name that event.
func TestHierarchyChildrenShareEvent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, sink := newGuard(t)
		var (
			mu        sync.Mutex
			childErrs []error
		)
		note := func(err error) { mu.Lock(); childErrs = append(childErrs, err); mu.Unlock() }
		part := func(ctx context.Context) (string, error) {
			_, err := jsguard.File(ctx, g, "read slow", func(ctx context.Context) (string, error) {
				err := g.Do(ctx, jsguard.KVGet, "kv get slow", honour)
				note(err)
				return "", err
			}, func(context.Context, *jsguard.TimeoutError) (string, error) { return "fallback", nil })
			note(err)
			return "", err
		}
		// A plain parent deadline, shorter than T2's 500ms: every call
		// below shares it.
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		r, err := jsguard.Layer(ctx, g, "layer", []jsguard.Part[string]{{Name: "slow", Load: part}})
		if err != nil || !r.Partial {
			t.Fatalf("got %+v, %v", r, err)
		}
		ev := sink.one(t)
		if ev.Level != "T3" || !ev.FallbackUsed || ev.BudgetSource != jsguard.SourceParent {
			t.Errorf("event level %q fallback_used %v source %q, want T3, true, parent", ev.Level, ev.FallbackUsed, ev.BudgetSource)
		}
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(childErrs) != 2 {
			t.Fatalf("child errors %v", childErrs)
		}
		for _, err := range childErrs {
			if te := asTimeout(t, err); te.EventID != ev.EventID {
				t.Errorf("child error names event %s, want the layer's %s", te.EventID, ev.EventID)
			}
		}
	})
}

// TestHierarchyInheritsStrategy: WithStrategy on the outermost call
// applies to the hierarchy calls beneath it.
func TestHierarchyInheritsStrategy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, sink := newGuard(t)
		fellBack := false
		r, err := jsguard.Layer(t.Context(), g, "layer", []jsguard.Part[string]{{Name: "f", Load: func(ctx context.Context) (string, error) {
			r, err := jsguard.File(ctx, g, "read f", sleepFor(time.Second, "f"),
				func(context.Context, *jsguard.TimeoutError) (string, error) { fellBack = true; return "fb", nil })
			return r.Value, err
		}}}, jsguard.WithStrategy(jsguard.Strict))
		if te := asTimeout(t, err); te.Level != jsguard.T2 || fellBack || len(r.Parts) != 0 {
			t.Errorf("got %+v, %v, fell back %v: want T2's timeout through the strict layer", r, err, fellBack)
		}
		if ev := sink.one(t); ev.Level != "T2" || ev.FallbackUsed {
			t.Errorf("event %+v", ev)
		}
	})
}

// TestPolicyHierarchyOrder: a policy whose level budgets are out of order
// is refused, naming both entries.
func TestPolicyHierarchyOrder(t *testing.T) {
	p := jsguard.DefaultPolicy()
	p.Budgets[jsguard.T3Layer] = 400 * time.Millisecond // below T2's 500ms
	err := p.Validate()
	if !errors.Is(err, jsguard.ErrInvalidPolicy) || !strings.Contains(err.Error(), "TIMEOUT_T2_FILE 500ms must be below TIMEOUT_T3_LAYER 400ms") {
		t.Errorf("err = %v", err)
	}
	p.Budgets[jsguard.T3Layer] = 500 * time.Millisecond // equal is out of order too
	if err := p.Validate(); err == nil {
		t.Error("equal budgets accepted")
	}
	p = jsguard.DefaultPolicy()
	p.Budgets[jsguard.T5Complex] = time.Minute
	p.Budgets[jsguard.T1Cache] = 50 * time.Millisecond
	if err := p.Validate(); err != nil {
		t.Errorf("ordered budgets refused: %v", err)
	}
	if _, err := jsguard.New(jsguard.WithPolicy(policyWith(map[jsguard.Category]time.Duration{jsguard.T1Cache: time.Second}))); err == nil {
		t.Error("New accepted T1 1s above T2 500ms")
	}
}
