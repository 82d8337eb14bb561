package scenarios

import (
	"testing"
	"time"
)

// BenchmarkGuardOverhead is scenario 1: a no-op called bare, through
// jsguard.Do (default and WithInline) and through failsafe-go's Timeout.
// The "ratio" sub-benchmark interleaves blocks of all variants and reports
// jsguard's ns/op over failsafe-go's (target ≤ 1).
func BenchmarkGuardOverhead(b *testing.B) {
	vs, err := GuardVariants()
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range vs {
		b.Run(v.Name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				v.Fn()
			}
		})
	}
	b.Run("ratio", func(b *testing.B) {
		const block = 1000
		var took [5]time.Duration
		turn := 0
		for b.Loop() {
			for k := range vs {
				i := (turn + k) % len(vs)
				start := time.Now()
				for range block {
					vs[i].Fn()
				}
				took[i] += time.Since(start)
			}
			turn++
		}
		b.ReportMetric(float64(took[1])/float64(took[3]), "jsguard/failsafe")
		b.ReportMetric(float64(took[2])/float64(took[3]), "inline/failsafe")
		n := float64(turn * block)
		b.ReportMetric(float64(took[1].Nanoseconds())/n, "jsguard-ns/op")
		b.ReportMetric(float64(took[3].Nanoseconds())/n, "failsafe-ns/op")
	})
}

func TestGuardQuick(t *testing.T) {
	r, err := Guard(3, 2000)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rows()) != 4 {
		t.Fatalf("rows %v", r.Rows())
	}
	for _, row := range r.Rows() {
		t.Log(row)
	}
}
