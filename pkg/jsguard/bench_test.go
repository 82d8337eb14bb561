package jsguard_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

var sinkErr error

func noop(context.Context) error { return nil }

// BenchmarkDo compares a guarded no-op with calling it bare: the guard's
// fixed cost per call.
func BenchmarkDo(b *testing.B) {
	g, err := jsguard.New()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.Run("bare", func(b *testing.B) {
		b.ReportAllocs()
		fn := noop
		for b.Loop() {
			sinkErr = fn(ctx)
		}
	})
	b.Run("guarded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sinkErr = g.Do(ctx, jsguard.KVGet, "noop", noop)
		}
	})
	b.Run("guarded-value", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, sinkErr = jsguard.DoValue(ctx, g, jsguard.KVGet, "noop", func(context.Context) (int, error) { return 1, nil })
		}
	})
	b.Run("guarded-nested", func(b *testing.B) {
		b.ReportAllocs()
		pctx, cancel := context.WithTimeout(ctx, time.Hour)
		defer cancel()
		for b.Loop() {
			sinkErr = g.Do(pctx, jsguard.APIRequest, "outer", func(ctx context.Context) error {
				return g.Do(ctx, jsguard.KVGet, "inner", noop)
			}, jsguard.WithBudget(time.Second))
		}
	})
}

// BenchmarkKVGet compares a guarded KV Get, by default and WithInline, with
// a raw one on an embedded server. "ratio" interleaves the three in blocks
// so that machine noise hits them alike, and reports each guarded
// throughput over the raw throughput.
func BenchmarkKVGet(b *testing.B) {
	s := natstest.Run(b)
	_, js := natstest.Connect(b, s)
	ctx := context.Background()
	raw, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "BENCH"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := raw.Put(ctx, "k", []byte("value")); err != nil {
		b.Fatal(err)
	}
	g, err := jsguard.New()
	if err != nil {
		b.Fatal(err)
	}
	kv := g.KV(raw)
	rawGet := func() {
		if _, err := raw.Get(ctx, "k"); err != nil {
			b.Fatal(err)
		}
	}
	guardedGet := func() {
		if _, err := kv.Get(ctx, "k"); err != nil {
			b.Fatal(err)
		}
	}
	inlineGet := func() {
		if _, err := kv.Get(ctx, "k", jsguard.WithInline()); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rawGet()
		}
	})
	b.Run("guarded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			guardedGet()
		}
	})
	b.Run("guarded-inline", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			inlineGet()
		}
	})
	b.Run("ratio", func(b *testing.B) {
		// Blocks of each variant in turn, the order rotating, so that
		// noise from other processes and GC falls on all three alike.
		const block = 20
		variants := []func(){rawGet, guardedGet, inlineGet}
		var took [3]time.Duration
		n, turn := 0, 0
		for b.Loop() {
			for k := range variants {
				i := (turn + k) % len(variants)
				start := time.Now()
				for range block {
					variants[i]()
				}
				took[i] += time.Since(start)
			}
			turn++
			n += block
		}
		b.ReportMetric(float64(took[0])/float64(took[1]), "guarded/raw")
		b.ReportMetric(float64(took[0])/float64(took[2]), "inline/raw")
		b.ReportMetric(float64(took[0].Nanoseconds())/float64(n), "raw-ns/get")
		b.ReportMetric(float64(took[1].Nanoseconds())/float64(n), "guarded-ns/get")
		b.ReportMetric(float64(took[2].Nanoseconds())/float64(n), "inline-ns/get")
	})
}
