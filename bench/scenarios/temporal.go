package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// TemporalConfig sizes scenario 10, the Temporal peer; the same workloads
// as scenarios 3 and 4.
type TemporalConfig struct {
	Dir         string // bench/temporal, the peer's own module
	WorkDir     string // where its binary is built
	InFlight    []int
	Duration    time.Duration
	Rounds      int
	Timeouts    []int
	MinTimeout  time.Duration
	MaxTimeout  time.Duration
	LeadPerItem time.Duration
}

// TemporalLevel is the peer's outcome at one number in flight.
type TemporalLevel struct {
	InFlight                           int
	Starts, Decisions, DecisionsClosed float64
	StartsRounds, DecisionsRounds      []float64
}

// TemporalTimeout is the peer's timeout lateness at one size.
type TemporalTimeout struct {
	N                                       int
	DueSpan                                 time.Duration
	P50, P99, Max                           time.Duration
	Closed, NotExpired, DueBeforeAllStarted int
	Late                                    []time.Duration
}

// TemporalResult is what bench/temporal printed.
type TemporalResult struct {
	ServerVersion, SDKVersion                  string
	Persistence                                string
	Settings, Persists                         []string
	Levels                                     []TemporalLevel
	Timeouts                                   []TemporalTimeout
	HistoryEventsDecided, HistoryEventsExpired float64
	HistoryBytesDecided, HistoryBytesExpired   float64
	DBBytesPerWorkflow                         float64
	Errors                                     int64
	FirstErr                                   string
	Elapsed                                    time.Duration
	Build                                      time.Duration // go build of the peer
}

// Temporal builds bench/temporal (a module of its own, so that Temporal's
// dependencies stay out of this one) and runs it: an embedded Temporal
// server with SQLite persistence and a worker with default settings.
func Temporal(ctx context.Context, cfg TemporalConfig, progress func(string)) (TemporalResult, error) {
	var res TemporalResult
	bin := filepath.Join(cfg.WorkDir, "temporal-peer")
	progress("temporal: go build (the first build downloads and compiles Temporal's server)")
	start := time.Now()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Dir = cfg.Dir
	if out, err := build.CombinedOutput(); err != nil {
		return res, fmt.Errorf("go build in %s: %w\n%s", cfg.Dir, err, tail(out, 30))
	}
	res.Build = time.Since(start)
	ints := func(xs []int) string {
		s := make([]string, len(xs))
		for i, x := range xs {
			s[i] = strconv.Itoa(x)
		}
		return strings.Join(s, ",")
	}
	cmd := exec.CommandContext(ctx, bin, "-inflight", ints(cfg.InFlight), "-duration", cfg.Duration.String(), "-rounds", strconv.Itoa(cfg.Rounds),
		"-timeouts", ints(cfg.Timeouts), "-min", cfg.MinTimeout.String(), "-max", cfg.MaxTimeout.String(), "-lead-per-item", cfg.LeadPerItem.String())
	logFile, err := os.Create(filepath.Join(cfg.WorkDir, "temporal-peer.log"))
	if err != nil {
		return res, err
	}
	defer logFile.Close()
	cmd.Stderr = logFile
	progress("temporal: running (log: " + logFile.Name() + ")")
	out, err := cmd.Output()
	if err != nil {
		b, _ := os.ReadFile(logFile.Name())
		return res, fmt.Errorf("%s: %w\n%s", bin, err, tail(b, 30))
	}
	build0 := res.Build
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("%s printed no result: %w", bin, err)
	}
	res.Build = build0
	return res, nil
}

// TemporalRows returns scenario 10's rows: the peer's figures beside
// guardian's from scenarios 3 and 4 of the same run, and the ratio
// guardian / Temporal (higher is better for guardian on rates, lower on
// lateness).
func TemporalRows(t *TemporalResult, a *ApprovalsResult, e *ExpiryResult) []Row {
	const sc = "10 Peer: Temporal"
	var rows []Row
	for _, tl := range t.Levels {
		var g *ApprovalsLevel
		if a != nil {
			for i := range a.Levels {
				if a.Levels[i].InFlight == tl.InFlight {
					g = &a.Levels[i]
				}
			}
		}
		gs, gd := "-", "-"
		rs, rd := "", ""
		if g != nil {
			gs, gd = rate(g.Approvals), rate(g.Decisions)
			rs, rd = fmt.Sprintf("guardian %.1f×", g.Approvals/tl.Starts), fmt.Sprintf("guardian %.1f×", g.Decisions/tl.Decisions)
		}
		rows = append(rows,
			Row{sc, fmt.Sprintf("%d in flight: approval requests (guardian) / workflow starts (Temporal)", tl.InFlight), gs, rate(tl.Starts) + " Temporal", rs, "", Info},
			Row{sc, fmt.Sprintf("%d in flight: decisions, approve request / signal accepted", tl.InFlight), gd, rate(tl.Decisions) + " Temporal", rd, "", Info},
			Row{sc, fmt.Sprintf("%d in flight: Temporal signals until their workflows closed", tl.InFlight), "-", rate(tl.DecisionsClosed) + " Temporal", "", "", Info})
	}
	for _, tt := range t.Timeouts {
		var g *ExpiryRun
		if e != nil {
			for i := range e.Runs {
				if e.Runs[i].N == tt.N {
					g = &e.Runs[i]
				}
			}
		}
		tv := fmt.Sprintf("p50 %s, p99 %s, max %s Temporal", secs(tt.P50), secs(tt.P99), secs(tt.Max))
		if tt.Closed < tt.N || tt.NotExpired > 0 {
			tv += fmt.Sprintf(" (%d of %d closed, %d not by the timer)", tt.Closed, tt.N, tt.NotExpired)
		}
		if tt.DueBeforeAllStarted > 0 {
			tv += fmt.Sprintf("; %d fell due before all were started", tt.DueBeforeAllStarted)
		}
		gv, r := "-", ""
		if g != nil {
			gv = fmt.Sprintf("p50 %s, p99 %s, max %s", secs(g.Guardian.P50), secs(g.Guardian.P99), secs(g.Guardian.Max))
			r = fmt.Sprintf("Temporal's p99 %.0f× guardian's", tt.P99.Seconds()/max(g.Guardian.P99.Seconds(), 1e-3))
		}
		rows = append(rows, Row{sc, fmt.Sprintf("timeout lateness, %s pending: due → expired event / workflow closed", count(tt.N)), gv, tv, r, "", Info})
	}
	stored := "-"
	if a != nil && a.StoredMsgs > 0 {
		stored = fmt.Sprintf("%.1f messages (%.0f B) in guardian's streams", a.StoredMsgs, a.StoredBytes)
	}
	rows = append(rows, Row{sc, "stored per approval (scenario 3's approvals, half of them decided)", stored,
		fmt.Sprintf("%.0f history events (%.0f B) decided, %.0f (%.0f B) expired", t.HistoryEventsDecided, t.HistoryBytesDecided, t.HistoryEventsExpired, t.HistoryBytesExpired), "", "", Info})
	if t.Errors > 0 {
		rows = append(rows, Row{sc, "Temporal calls that failed", fmt.Sprint(t.Errors), t.FirstErr, "", "", Info})
	}
	return rows
}
