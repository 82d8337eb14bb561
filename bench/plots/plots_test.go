package plots

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPlots(t *testing.T) {
	dir := t.TempDir()
	if d := os.Getenv("PLOTS_DIR"); d != "" {
		dir = d
	}
	r := rand.New(rand.NewPCG(1, 2))
	sample := func(base, spread time.Duration, n int) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			out[i] = base + time.Duration(r.Float64()*float64(spread))
		}
		return out
	}
	err := LatenessCDF(filepath.Join(dir, "cdf.png"), "Expiry lateness", []Series{
		{Name: "guardian, 10k pending", Samples: sample(50*time.Millisecond, 300*time.Millisecond, 10000)},
		{Name: "raw KV TTL markers, 10k keys", Samples: sample(30*time.Millisecond, 260*time.Millisecond, 10000)},
		{Name: "in-memory map, 1m0s ticker", Samples: sample(0, 60*time.Second, 10000)},
		{Name: "in-memory map, 10s ticker", Samples: sample(0, 10*time.Second, 10000)},
		{Name: "guardian, 1k pending", Samples: sample(40*time.Millisecond, 250*time.Millisecond, 1000), Dashed: true},
	}, map[string]float64{"target p99 0.40 s": 0.4, "target max 0.60 s": 0.6})
	if err != nil {
		t.Fatal(err)
	}
	err = Bars(filepath.Join(dir, "bars.png"), "Throughput", "thousand operations per second", []string{"baseline", "guardian"}, []Group{
		{Label: "KV Get ×1\n(0.99×)", Values: []float64{15000, 14800}},
		{Label: "KV Get ×8\n(0.93×)", Values: []float64{33000, 30500}},
		{Label: "approvals, 8 in flight\nvs kv.Create (0.17×)", Values: []float64{17500, 3100}},
		{Label: "approvals, 64 in flight\nvs kv.Create (0.13×)", Values: []float64{35900, 4710}},
		{Label: "audit publish\n(0.83×)", Values: []float64{60200, 50100}},
		{Label: "audit spool drain\n(0.76×)", Values: []float64{60200, 46000}},
	}, 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cdf.png", "bars.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() < 1000 {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

func TestBarsTarget(t *testing.T) {
	dir := t.TempDir()
	if d := os.Getenv("PLOTS_DIR"); d != "" {
		dir = d
	}
	err := Bars(filepath.Join(dir, "mem.png"), "Memory", "MiB", []string{"guardian RSS", "guardian Go heap", "in-memory RSS", "in-memory heap"}, []Group{
		{Label: "0 pending", Values: []float64{17.6, 1.2, 17.4, 0.6}},
		{Label: "10k pending", Values: []float64{24.7, 1.9, 23, 5.5}},
		{Label: "100k pending", Values: []float64{25.2, 2.2, 69.9, 48.3}},
	}, 1, 64)
	if err != nil {
		t.Fatal(err)
	}
}
