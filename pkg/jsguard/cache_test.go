package jsguard_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// loader counts its calls and either returns value or hangs until its
// context ends.
type loader struct {
	mu    sync.Mutex
	calls int
	value string
	hang  bool
	err   error
}

func (l *loader) load(ctx context.Context) (string, error) {
	l.mu.Lock()
	l.calls++
	v, hang, err := l.value, l.hang, l.err
	l.mu.Unlock()
	if hang {
		return "", honour(ctx)
	}
	return v, err
}

func (l *loader) set(value string, hang bool, err error) {
	l.mu.Lock()
	l.value, l.hang, l.err = value, hang, err
	l.mu.Unlock()
}

func TestCache(t *testing.T) {
	newCache := func(t *testing.T, s jsguard.Strategy) (*jsguard.Cache[string, string], *recSink) {
		p := jsguard.DefaultPolicy()
		p.Strategy = s
		p.MaxStaleAge = time.Minute
		g, sink := newGuard(t, jsguard.WithPolicy(p))
		return jsguard.NewCache[string, string](g, jsguard.T1Cache, 10*time.Second), sink
	}
	t.Run("fresh hit does not load", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, sink := newCache(t, jsguard.Graceful)
			l := &loader{value: "v1"}
			for range 3 {
				r, err := c.Get(t.Context(), "k", l.load)
				if err != nil || r.Value != "v1" || r.Degraded {
					t.Fatalf("Get = %+v, %v", r, err)
				}
				time.Sleep(4 * time.Second) // the third Get is at 8s: still fresh
			}
			if l.calls != 1 || len(sink.events()) != 0 {
				t.Fatalf("loaded %d times, want 1", l.calls)
			}
			time.Sleep(5 * time.Second) // 17s after the load: no longer fresh
			l.set("v2", false, nil)
			if r, err := c.Get(t.Context(), "k", l.load); err != nil || r.Value != "v2" || l.calls != 2 {
				t.Fatalf("Get = %+v, %v after %d loads, want a reload to v2", r, err, l.calls)
			}
		})
	})
	t.Run("stale value served within MaxStaleAge", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, sink := newCache(t, jsguard.Graceful)
			l := &loader{value: "v1"}
			if _, err := c.Get(t.Context(), "k", l.load); err != nil {
				t.Fatal(err)
			}
			time.Sleep(30 * time.Second)
			l.set("", true, nil)
			start := time.Now()
			r, err := c.Get(t.Context(), "k", l.load)
			if err != nil || r.Value != "v1" || !r.Degraded || r.Cause == nil || r.Cause.Code != "TIMEOUT_T1_CACHE" || r.Level() != jsguard.T1 {
				t.Fatalf("Get = %+v, %v; want stale v1, degraded, caused by TIMEOUT_T1_CACHE", r, err)
			}
			if time.Since(start) != 100*time.Millisecond {
				t.Fatalf("Get took %s, want the T1 budget 100ms", time.Since(start))
			}
			if ev := sink.one(t); !ev.FallbackUsed || ev.EventID != r.Cause.EventID {
				t.Fatalf("event = %+v, want fallback_used", ev)
			}
		})
	})
	t.Run("too stale is an error", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, sink := newCache(t, jsguard.Graceful)
			l := &loader{value: "v1"}
			if _, err := c.Get(t.Context(), "k", l.load); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Minute) // the timeout ends 100ms later, past MaxStaleAge
			l.set("", true, nil)
			r, err := c.Get(t.Context(), "k", l.load)
			if asTimeout(t, err).Code != "TIMEOUT_T1_CACHE" || r.Degraded || r.Value != "" {
				t.Fatalf("Get = %+v, %v; want the timeout", r, err)
			}
			if sink.one(t).FallbackUsed {
				t.Fatal("event says fallback_used for an error")
			}
		})
	})
	t.Run("nothing cached is an error", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, _ := newCache(t, jsguard.Graceful)
			_, err := c.Get(t.Context(), "k", (&loader{hang: true}).load)
			asTimeout(t, err)
		})
	})
	for _, s := range []jsguard.Strategy{jsguard.Strict, jsguard.None} {
		t.Run(fmt.Sprintf("%s never serves stale", s), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, sink := newCache(t, s)
				l := &loader{value: "v1"}
				if _, err := c.Get(t.Context(), "k", l.load); err != nil {
					t.Fatal(err)
				}
				time.Sleep(11 * time.Second)
				l.set("", true, nil)
				r, err := c.Get(t.Context(), "k", l.load)
				if asTimeout(t, err) == nil || r.Degraded || sink.one(t).FallbackUsed {
					t.Fatalf("Get = %+v, %v", r, err)
				}
			})
		})
	}
	t.Run("WithStrategy per call", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, _ := newCache(t, jsguard.Graceful)
			c.Put("k", "v0")
			time.Sleep(11 * time.Second)
			_, err := c.Get(t.Context(), "k", (&loader{hang: true}).load, jsguard.WithStrategy(jsguard.Strict))
			asTimeout(t, err)
		})
	})
	t.Run("load errors are not papered over", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, sink := newCache(t, jsguard.Graceful)
			c.Put("k", "v0")
			time.Sleep(11 * time.Second)
			boom := errors.New("boom")
			r, err := c.Get(t.Context(), "k", (&loader{err: boom}).load)
			if !errors.Is(err, boom) || r.Degraded || len(sink.events()) != 0 {
				t.Fatalf("Get = %+v, %v", r, err)
			}
			if r, err := c.Get(t.Context(), "k", (&loader{value: "v1"}).load); err != nil || r.Value != "v1" {
				t.Fatalf("after a failed load, Get = %+v, %v", r, err)
			}
		})
	})
	t.Run("bounded size evicts the oldest", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g, _ := newGuard(t)
			c := jsguard.NewCache[int, int](g, jsguard.T1Cache, time.Hour, jsguard.WithMaxEntries(2))
			loads := 0
			get := func(k int) {
				if _, err := c.Get(t.Context(), k, func(context.Context) (int, error) { loads++; return k, nil }); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Second)
			}
			get(1)
			get(2)
			get(3) // evicts 1
			if c.Len() != 2 {
				t.Fatalf("Len = %d, want 2", c.Len())
			}
			get(2) // still cached
			get(1) // reloaded
			if loads != 4 {
				t.Fatalf("%d loads, want 4: key 2 cached, key 1 evicted", loads)
			}
			c.Forget(2)
			get(2)
			if loads != 5 {
				t.Fatalf("%d loads after Forget, want 5", loads)
			}
		})
	})
	t.Run("concurrent use", func(t *testing.T) {
		g, _ := newGuard(t)
		c := jsguard.NewCache[int, int](g, jsguard.T1Cache, time.Millisecond, jsguard.WithMaxEntries(8))
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := range 200 {
					k := (w + i) % 16
					r, err := c.Get(t.Context(), k, func(context.Context) (int, error) { return k * 10, nil })
					if err != nil || r.Value != k*10 {
						t.Errorf("Get(%d) = %+v, %v", k, r, err)
						return
					}
				}
			})
		}
		wg.Wait()
		if c.Len() > 8 {
			t.Fatalf("Len = %d exceeds the bound 8", c.Len())
		}
	})
}
