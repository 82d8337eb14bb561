package jsguard_test

import (
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// TestLatencyBucket: every duration lands in the bucket whose bounds hold
// it.
func TestLatencyBucket(t *testing.T) {
	for d := time.Duration(1); d < 2*time.Hour; d = d*9/8 + 1 {
		i := jsguard.LatencyBucket(d)
		if d > jsguard.LatencyBound(i) && i != jsguard.LatencyBuckets-1 {
			t.Fatalf("%s in bucket %d with bound %s", d, i, jsguard.LatencyBound(i))
		}
		if i > 0 && d <= jsguard.LatencyBound(i-1) {
			t.Fatalf("%s in bucket %d above the bound %s of bucket %d", d, i, jsguard.LatencyBound(i-1), i-1)
		}
	}
}

// hist builds a histogram of n calls of each duration given.
func hist(c jsguard.Category, timeouts uint64, calls map[time.Duration]uint64) jsguard.Latency {
	l := jsguard.Latency{Category: c, Timeouts: timeouts}
	for d, n := range calls {
		l.Counts[jsguard.LatencyBucket(d)] += n
		l.MaxOK = max(l.MaxOK, d)
	}
	return l
}

// TestSuggest on synthetic histograms: the percentile times the margin,
// rounded up; never below the longest successful call unless asked;
// the timeout rates old and new; too few calls left out; the levels kept
// in order.
func TestSuggest(t *testing.T) {
	p := jsguard.DefaultPolicy()
	hists := []jsguard.Latency{
		// 10,000 KV gets: 9,990 at 10ms, 9 at 40ms, 1 at 900ms; 0 timeouts.
		hist(jsguard.KVGet, 0, map[time.Duration]uint64{10 * time.Millisecond: 9990, 40 * time.Millisecond: 9, 900 * time.Millisecond: 1}),
		// Publishes: 1,000 at 3s against the 5s budget, 10 timed out.
		hist(jsguard.NATSPublish, 10, map[time.Duration]uint64{3 * time.Second: 1000}),
		// Too few calls.
		hist(jsguard.KVPut, 0, map[time.Duration]uint64{time.Millisecond: 50}),
		// T1 would rise above T2.
		hist(jsguard.T1Cache, 0, map[time.Duration]uint64{time.Second: 500}),
	}
	got := jsguard.Suggest(p, hists, jsguard.SuggestOptions{})
	by := map[jsguard.Category]jsguard.Suggestion{}
	for _, s := range got {
		by[s.Category] = s
	}
	if _, ok := by[jsguard.KVPut]; ok || len(got) != 3 {
		t.Fatalf("suggestions %+v: want KVGet, NATSPublish, T1Cache", got)
	}
	kv := by[jsguard.KVGet]
	// p99.9 is the 9,990th of 10,000: 10ms's bucket (bound 10.1ms);
	// × 1.5 = 15.2ms; but the longest success took 900ms.
	if kv.New != 900*time.Millisecond || kv.Note == "" || kv.OldRate != 0 || kv.NewRate != 0 {
		t.Errorf("KV_GET: %+v, want 900ms (the longest success), rates 0", kv)
	}
	below := jsguard.Suggest(p, hists[:1], jsguard.SuggestOptions{BelowMax: true})[0]
	if below.Observed < 10*time.Millisecond || below.Observed > 12*time.Millisecond || below.New < below.Observed*3/2 || below.New > below.Observed*3/2*107/100 {
		t.Errorf("KV_GET below max: observed %s new %s", below.Observed, below.New)
	}
	if below.NewRate <= 0 || below.NewRate > 0.002 {
		t.Errorf("KV_GET below max: new rate %g, want the 10 slower calls of 10,000", below.NewRate)
	}
	// 10 of 1,010 timed out: the 99.9th percentile is beyond the old
	// budget, so the old budget times the margin.
	pub := by[jsguard.NATSPublish]
	if pub.OldRate != 10.0/1010 || pub.New != 7500*time.Millisecond || pub.Note == "" {
		t.Errorf("NATS_PUBLISH: %+v, want 5s × 1.5 and the old rate 10/1010", pub)
	}
	if t1 := by[jsguard.T1Cache]; t1.New != t1.Old || t1.Note == "" {
		t.Errorf("T1: %+v, want kept for the levels' order", t1)
	}
	// The result validates as a policy.
	for _, s := range got {
		p.Budgets[s.Category] = s.New
	}
	if err := p.Validate(); err != nil {
		t.Error(err)
	}
}
