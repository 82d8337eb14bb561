package scenarios

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkKVGet is scenario 2: Gets of random keys out of 10,000 on an
// embedded server, raw and guarded, with 1 and 8 goroutines. Each
// iteration runs one block of every variant, the order rotating, and the
// benchmark reports each guarded throughput over raw's (target ≥ 0.97).
func BenchmarkKVGet(b *testing.B) {
	ctx := context.Background()
	e, err := NewKVGetEnv(ctx, 10_000)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	_, fns := e.Variants()
	for _, g := range []int{1, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			per := 200 / g
			var took [3]time.Duration
			turn := 0
			for b.Loop() {
				for k := range fns {
					i := (turn + k) % len(fns)
					el, err := e.Block(ctx, fns[i], g, per, uint64(turn))
					if err != nil {
						b.Fatal(err)
					}
					took[i] += el
				}
				turn++
			}
			b.ReportMetric(float64(took[0])/float64(took[1]), "guarded/raw")
			b.ReportMetric(float64(took[0])/float64(took[2]), "inline/raw")
			ops := float64(turn * per * g)
			b.ReportMetric(ops/took[0].Seconds(), "raw-gets/s")
			b.ReportMetric(ops/took[1].Seconds(), "guarded-gets/s")
		})
	}
}

func TestKVGetQuick(t *testing.T) {
	r, err := KVGet(t.Context(), KVGetConfig{Keys: 500, Goroutines: []int{1, 8}, Rounds: 2, BlockGets: 100})
	if err != nil {
		t.Fatal(err)
	}
	rows := r.Rows()
	if len(rows) != 8 {
		t.Fatalf("%d rows", len(rows))
	}
	for _, row := range rows {
		t.Log(row)
	}
}
