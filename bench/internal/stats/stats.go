// Package stats has the small statistics the benchmarks report.
package stats

import (
	"math"
	"slices"
	"time"
)

// Latency summarises a set of durations.
type Latency struct {
	N             int
	P50, P99, Max time.Duration
	Min           time.Duration
}

// Summarize returns the count, p50, p99, min and max of ds (nearest rank).
func Summarize(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return Latency{N: len(s), P50: Quantile(s, 0.50), P99: Quantile(s, 0.99), Min: s[0], Max: s[len(s)-1]}
}

// Quantile returns the q-quantile of sorted (nearest rank).
func Quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Median returns the median of xs (0 for none).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
