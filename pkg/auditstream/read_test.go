package auditstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// emitAll publishes events and waits for their acks.
func emitAll(t *testing.T, p *Publisher, events ...eventSpec) {
	t.Helper()
	for _, e := range events {
		if err := p.Emit(t.Context(), testEvent(e.i, e.tenant, e.code)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
}

type eventSpec struct {
	i            int
	tenant, code string
}

// collect takes n entries from Tail, or fails after d.
func collect(t *testing.T, js jetstream.JetStream, cfg Config, opts TailOptions, n int, d time.Duration) []Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	var out []Entry
	for e, err := range Tail(ctx, js, cfg, opts) {
		if err != nil {
			t.Fatalf("Tail: %v", err)
		}
		out = append(out, e)
		if len(out) == n {
			return out
		}
	}
	t.Fatalf("Tail %+v: got %d entries in %s, want %d", opts, len(out), d, n)
	return nil
}

func TestTail(t *testing.T) {
	_, nc, js, cfg := startStream(t)
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	emitAll(t, p,
		eventSpec{1, "acme", "TIMEOUT_KV_GET"},
		eventSpec{2, "acme", "TIMEOUT_KV_PUT"},
		eventSpec{3, "globex", "TIMEOUT_KV_GET"},
		eventSpec{4, "", "TIMEOUT_KV_GET"},
	)
	// A seal in the middle of the stream is never yielded.
	if _, err := js.Publish(t.Context(), cfg.SealSubject(), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	mid := time.Now()
	time.Sleep(10 * time.Millisecond)
	emitAll(t, p, eventSpec{5, "acme", "TIMEOUT_KV_GET"})

	ops := func(es []Entry) []string {
		var out []string
		for _, e := range es {
			out = append(out, fmt.Sprintf("%s/%s#%d", e.Event.TenantID, e.Event.Code, e.Seq))
		}
		return out
	}
	tests := []struct {
		name string
		opts TailOptions
		want []string
	}{
		{"all from start", TailOptions{StartSeq: 1}, []string{"acme/TIMEOUT_KV_GET#1", "acme/TIMEOUT_KV_PUT#2", "globex/TIMEOUT_KV_GET#3", "/TIMEOUT_KV_GET#4", "acme/TIMEOUT_KV_GET#6"}},
		{"tenant", TailOptions{StartSeq: 1, Tenant: "acme"}, []string{"acme/TIMEOUT_KV_GET#1", "acme/TIMEOUT_KV_PUT#2", "acme/TIMEOUT_KV_GET#6"}},
		{"code", TailOptions{StartSeq: 1, Code: "TIMEOUT_KV_PUT"}, []string{"acme/TIMEOUT_KV_PUT#2"}},
		{"tenant and code", TailOptions{StartSeq: 1, Tenant: "globex", Code: "TIMEOUT_KV_GET"}, []string{"globex/TIMEOUT_KV_GET#3"}},
		{"no tenant", TailOptions{StartSeq: 1, Tenant: NoTenant}, []string{"/TIMEOUT_KV_GET#4"}},
		{"from sequence", TailOptions{StartSeq: 3}, []string{"globex/TIMEOUT_KV_GET#3", "/TIMEOUT_KV_GET#4", "acme/TIMEOUT_KV_GET#6"}},
		{"from time", TailOptions{StartTime: mid}, []string{"acme/TIMEOUT_KV_GET#6"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ops(collect(t, js, cfg, tt.opts, len(tt.want), 5*time.Second))
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}

	t.Run("live", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		got := make(chan Entry, 1)
		go func() {
			for e, err := range Tail(ctx, js, cfg, TailOptions{Code: "TIMEOUT_API_REQUEST"}) {
				if err == nil {
					got <- e
				}
				return
			}
		}()
		// The consumer starts asynchronously: emit until one arrives.
		for i := 100; ; i++ {
			emitAll(t, p, eventSpec{i, "acme", "TIMEOUT_API_REQUEST"})
			select {
			case e := <-got:
				if e.Event.Code != "TIMEOUT_API_REQUEST" || e.Seq < 7 {
					t.Errorf("live entry %+v", e)
				}
				return
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				t.Fatal("no live entry")
			}
		}
	})

	t.Run("malformed event", func(t *testing.T) {
		if _, err := js.Publish(t.Context(), cfg.SubjectPrefix+".acme.TIMEOUT_BAD", []byte("not json")); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		for e, err := range Tail(ctx, js, cfg, TailOptions{StartSeq: 1, Code: "TIMEOUT_BAD"}) {
			if !errors.Is(err, ErrMalformedEvent) || e.Seq == 0 || e.Subject != "guardian.v1.audit.acme.TIMEOUT_BAD" {
				t.Errorf("got %+v, %v; want ErrMalformedEvent with the message's seq", e, err)
			}
			break
		}
	})

	t.Run("bad options", func(t *testing.T) {
		for _, opts := range []TailOptions{{Code: "KV_GET"}, {StartSeq: 1, StartTime: time.Now()}} {
			for _, err := range Tail(t.Context(), js, cfg, opts) {
				if !errors.Is(err, ErrInvalidFilter) {
					t.Errorf("Tail(%+v) = %v, want ErrInvalidFilter", opts, err)
				}
			}
		}
	})

	t.Run("ends with ctx", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(100*time.Millisecond, cancel)
		for _, err := range Tail(ctx, js, cfg, TailOptions{Code: "TIMEOUT_NEVER"}) {
			t.Errorf("unexpected yield: %v", err)
		}
	})
	_ = nc
}

func TestStats(t *testing.T) {
	_, _, js, cfg := startStream(t)
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	before := time.Now()
	time.Sleep(5 * time.Millisecond)
	var evs []eventSpec
	for i := range 7 {
		evs = append(evs, eventSpec{i, "acme", "TIMEOUT_KV_GET"})
	}
	for i := range 3 {
		evs = append(evs, eventSpec{10 + i, "globex", "TIMEOUT_KV_GET"})
	}
	evs = append(evs, eventSpec{20, "acme", "TIMEOUT_KV_PUT"}, eventSpec{21, "", "TIMEOUT_KV_PUT"})
	emitAll(t, p, evs...)
	if _, err := js.Publish(t.Context(), cfg.SealSubject(), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	after := time.Now().Add(time.Millisecond)

	tests := []struct {
		name   string
		opts   StatsOptions
		total  int
		byCode map[string]int
	}{
		{"all", StatsOptions{Window: time.Hour}, 12, map[string]int{"TIMEOUT_KV_GET": 10, "TIMEOUT_KV_PUT": 2}},
		{"tenant", StatsOptions{Window: time.Hour, Tenant: "acme"}, 8, map[string]int{"TIMEOUT_KV_GET": 7, "TIMEOUT_KV_PUT": 1}},
		{"no tenant", StatsOptions{Window: time.Hour, Tenant: NoTenant}, 1, map[string]int{"TIMEOUT_KV_PUT": 1}},
		{"code", StatsOptions{Window: time.Hour, Code: "TIMEOUT_KV_GET"}, 10, map[string]int{"TIMEOUT_KV_GET": 10}},
		{"window before the events", StatsOptions{Window: time.Hour, End: before}, 0, map[string]int{}},
		{"window after the events", StatsOptions{Window: time.Minute, End: after.Add(time.Minute + time.Second)}, 0, map[string]int{}},
		{"window just covering them", StatsOptions{Window: after.Sub(before), End: after}, 12, map[string]int{"TIMEOUT_KV_GET": 10, "TIMEOUT_KV_PUT": 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Stats(t.Context(), js, cfg, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if c.Total != tt.total || !mapsEqual(c.ByCode(), tt.byCode) {
				t.Errorf("total %d by code %v; want %d %v", c.Total, c.ByCode(), tt.total, tt.byCode)
			}
			sum := 0
			for _, b := range c.Buckets {
				sum += b.Count
				if !b.Minute.Equal(b.Minute.Truncate(time.Minute)) || b.Minute.Before(c.From.Truncate(time.Minute)) || !b.Minute.Before(c.To) {
					t.Errorf("bucket %+v outside [%s, %s)", b, c.From, c.To)
				}
			}
			if sum != c.Total {
				t.Errorf("buckets sum to %d, total %d", sum, c.Total)
			}
		})
	}
	c, _ := Stats(t.Context(), js, cfg, StatsOptions{Window: time.Hour})
	per := map[string]int{}
	for _, b := range c.Buckets {
		per[b.Tenant+"/"+b.Code] += b.Count
	}
	if want := map[string]int{"acme/TIMEOUT_KV_GET": 7, "globex/TIMEOUT_KV_GET": 3, "acme/TIMEOUT_KV_PUT": 1, "/TIMEOUT_KV_PUT": 1}; !mapsEqual(per, want) {
		t.Errorf("per tenant and code %v, want %v", per, want)
	}
	if _, err := Stats(t.Context(), js, cfg, StatsOptions{}); !errors.Is(err, ErrInvalidFilter) {
		t.Errorf("Stats without window = %v, want ErrInvalidFilter", err)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
