package jsguard_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// TestDeadlinePropagation: across two hops, a caller with 300ms left never
// makes the services behind it work longer. A asks B with 300ms; B's
// handler (MicroHandler) spends 100ms, then asks C through Guard.Request
// with its own context; C's handler sees about 200ms in the header and
// its context ends when A stops waiting, not after its own 5s budget; C's
// timeout is audited once, bound by the parent.
func TestDeadlinePropagation(t *testing.T) {
	srv := natstest.Run(t)
	nc, _ := natstest.Connect(t, srv)
	g, sink := newGuard(t)

	var (
		mu           sync.Mutex
		cHeader      string
		cStart, cEnd time.Time
	)
	c, err := micro.AddService(nc, micro.Config{Name: "hop-c", Version: "1.0.0", Endpoint: &micro.EndpointConfig{
		Subject: "hop.c",
		Handler: jsguard.MicroHandler(func(ctx context.Context, req micro.Request) {
			mu.Lock()
			cHeader, cStart = req.Headers().Get(jsguard.TimeoutHeader), time.Now()
			mu.Unlock()
			err := g.Do(ctx, jsguard.KVGet, "c work", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
			mu.Lock()
			cEnd = time.Now()
			mu.Unlock()
			_ = req.Error("504", err.Error(), nil)
		}),
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	b, err := micro.AddService(nc, micro.Config{Name: "hop-b", Version: "1.0.0", Endpoint: &micro.EndpointConfig{
		Subject: "hop.b",
		Handler: jsguard.MicroHandler(func(ctx context.Context, req micro.Request) {
			time.Sleep(100 * time.Millisecond)
			m, err := g.Request(ctx, nc, nats.NewMsg("hop.c"))
			if err != nil {
				_ = req.Error("504", err.Error(), nil)
				return
			}
			if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
				_ = req.Error(code, m.Header.Get(micro.ErrorHeader), nil)
				return
			}
			_ = req.Respond([]byte("late"))
		}),
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()

	start := time.Now()
	actx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	// A gets B's error reply just before its deadline, or times out.
	if m, err := g.Request(actx, nc, nats.NewMsg("hop.b")); err == nil && m.Header.Get(micro.ErrorCodeHeader) == "" {
		t.Fatalf("A got a reply: %q", m.Data)
	}
	deadline := start.Add(300 * time.Millisecond)
	waitUntil(t, time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return !cEnd.IsZero() })
	mu.Lock()
	defer mu.Unlock()
	ms, _ := strconv.Atoi(cHeader)
	if ms < 100 || ms > 200 {
		t.Errorf("C saw %s=%q, want the about 200ms A had left after B's 100ms", jsguard.TimeoutHeader, cHeader)
	}
	if late := cEnd.Sub(deadline); late > 50*time.Millisecond {
		t.Errorf("C worked until %s after A stopped waiting", late)
	}
	if cStart.IsZero() || cEnd.Sub(start) > time.Second {
		t.Errorf("C ran from %s to %s after A's start", cStart.Sub(start), cEnd.Sub(start))
	}
	// C's work is audited once, bound by its parent: the caller's time,
	// not its own 5s budget.
	var cEvents []jsguard.Event
	waitUntil(t, time.Second, func() bool {
		cEvents = nil
		for _, e := range sink.events() {
			if e.Operation == "c work" {
				cEvents = append(cEvents, e)
			}
		}
		return len(cEvents) > 0
	})
	if len(cEvents) != 1 || cEvents[0].BudgetSource != jsguard.SourceParent || cEvents[0].ElapsedSeconds > 0.25 {
		t.Errorf("C's events %+v, want one bound by the parent's 200ms or less", cEvents)
	}
}

// TestRequestTimeoutHeader: the header parses as positive whole
// milliseconds up to MaxBudget; anything else is ignored.
func TestRequestTimeoutHeader(t *testing.T) {
	for v, want := range map[string]time.Duration{"250": 250 * time.Millisecond, "1": time.Millisecond,
		"0": 0, "-5": 0, "1.5": 0, "abc": 0, "": 0, "3600001": 0} {
		h := nats.Header{}
		if v != "" {
			h.Set(jsguard.TimeoutHeader, v)
		}
		d, ok := jsguard.RequestTimeout(h)
		if d != want || ok != (want > 0) {
			t.Errorf("%q: %s %v, want %s", v, d, ok, want)
		}
		ctx, cancel := jsguard.WithRequestTimeout(t.Context(), h)
		_, has := ctx.Deadline()
		cancel()
		if _, parent := t.Context().Deadline(); has != (want > 0 || parent) {
			t.Errorf("%q: context deadline %v", v, has)
		}
	}
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
