package e2e

import (
	"encoding/json"
	"flag"
	"os"
	"sync"
	"testing"
	"time"
)

var figuresFile = flag.String("e2e.figures", "",
	"append what the failover and soak scenarios measured to this file, one JSON object per line (bench/cmd/report reads it)")

// figure is one measured value of a scenario: the line format of
// -e2e.figures. Unit is "s" (seconds), "B" (bytes) or "" (a count).
type figure struct {
	Test  string  `json:"test"`
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
}

var figuresMu sync.Mutex

// record appends figures of t to -e2e.figures, when it is set. A write
// error fails the test: a report would miss the figures.
func record(t *testing.T, figs ...figure) {
	t.Helper()
	if *figuresFile == "" {
		return
	}
	figuresMu.Lock()
	defer figuresMu.Unlock()
	f, err := os.OpenFile(*figuresFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("-e2e.figures: %v", err)
		return
	}
	defer f.Close()
	enc := json.NewEncoder(f)
	for _, fg := range figs {
		fg.Test = t.Name()
		if err := enc.Encode(fg); err != nil {
			t.Errorf("-e2e.figures: %v", err)
			return
		}
	}
}

// secs and count make figures of a duration and of a count.
func secs(name string, d time.Duration) figure {
	return figure{Name: name, Value: d.Seconds(), Unit: "s"}
}
func count(name string, n int) figure { return figure{Name: name, Value: float64(n)} }

// latenessFigures are a group's lateness percentiles and size.
func latenessFigures(prefix string, ds []time.Duration) []figure {
	p50, p99, mx := percentiles(ds)
	return []figure{count(prefix+" n", len(ds)), secs(prefix+" p50", p50), secs(prefix+" p99", p99), secs(prefix+" max", mx)}
}

// tallyFigures are the exactly-once counts and the expiry lateness of c.
func tallyFigures(c *tally) []figure {
	return append([]figure{count("approvals", c.Approvals), count("lost", c.lost()), count("duplicated", c.dup())},
		latenessFigures("lateness", c.Lateness)...)
}
