// Package scenarios implements guardian's benchmark scenarios. Each one
// measures guardian next to a baseline taken in the same run, on the same
// embedded nats-server and the same machine, and returns rows for the
// report table. cmd/report runs them all; the Benchmark functions of this
// package expose scenarios 1, 2 and 6 to go test -bench.
package scenarios

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"time"

	"github.com/jsguardian/guardian/bench/internal/stats"
)

// Status is how a measured figure compares with its target.
type Status string

// The statuses; Info rows have no target.
const (
	Pass Status = "pass"
	Miss Status = "MISS"
	Info Status = ""
)

// Row is one line of the report table.
type Row struct {
	Scenario string
	Measure  string
	Guardian string
	Baseline string
	Ratio    string
	Target   string
	Status   Status
}

// quiet discards the logs of the packages under test.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// check returns Pass when ok, else Miss.
func check(ok bool) Status {
	if ok {
		return Pass
	}
	return Miss
}

// rate formats an operations-per-second figure, e.g. "14.3k/s".
func rate(perSec float64) string {
	switch {
	case perSec >= 1e6:
		return fmt.Sprintf("%.2fM/s", perSec/1e6)
	case perSec >= 1e4:
		return fmt.Sprintf("%.1fk/s", perSec/1e3)
	case perSec >= 1e3:
		return fmt.Sprintf("%.2fk/s", perSec/1e3)
	}
	return fmt.Sprintf("%.0f/s", perSec)
}

// secs formats a duration in seconds with millisecond precision.
func secs(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }

// mib formats bytes as MiB.
func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

// ratio formats a/b, "-" when b is 0.
func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a/b) {
		return "-"
	}
	return fmt.Sprintf("%.3f", a/b)
}

func medianF(xs []float64) float64 { return stats.Median(xs) }
