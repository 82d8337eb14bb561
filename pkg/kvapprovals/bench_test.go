package kvapprovals

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkRequest measures Request throughput (record + two timers) next to
// raw kv.Create with a TTL, both with 64 concurrent callers, on the same
// embedded server. Run with -bench Request -benchtime 20000x.
func BenchmarkRequest(b *testing.B) {
	for _, pending := range []int{0, 1_000_000} {
		b.Run(fmt.Sprintf("approval/maxpending=%d", pending), func(b *testing.B) {
			e := newEnv(b, func(c *Config) { c.DefaultTimeout = time.Hour; c.MaxPending = pending })
			var n atomic.Int64
			b.SetParallelism(8) // 8 x GOMAXPROCS callers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					if _, err := e.svc.Request(context.Background(), "bench", RequestInput{ID: fmt.Sprint("b", i), SessionID: "s", RequestedBy: "u"}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "approvals/s")
		})
	}
	b.Run("raw kv.Create with TTL", func(b *testing.B) {
		e := newEnv(b, nil)
		kv := e.svc.timers.Raw()
		var n atomic.Int64
		b.SetParallelism(8)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)
				if _, err := kv.Create(context.Background(), fmt.Sprint("k", i), nil, jetstream.KeyTTL(time.Hour)); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
	})
}
