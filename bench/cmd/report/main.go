// Command report runs guardian's benchmark scenarios, prints a table of
// the results next to baselines measured in the same run, and writes
// docs/PERFORMANCE.md and PNG plots under docs/.
//
//	cd bench && go run ./cmd/report          # quick mode, about 20 minutes
//	cd bench && go run ./cmd/report -full    # full sizes (1M approvals, 1 h soak; long)
//	cd bench && go run ./cmd/report -peers   # and Temporal, the peer, in the same run
//
// -only 1,2,6 runs a subset and writes nothing (for development). Each run
// that writes the docs also keeps its results in bench/history, and the
// docs plot the headline ratios of every run kept there.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jsguardian/guardian/bench/scenarios"
)

type sizes struct {
	GuardRounds, GuardN      int
	KVRounds, KVBlock        int
	ApprovalConc             []int
	ApprovalDur              time.Duration
	ApprovalRounds           int
	ExpirySizes              []int
	TickerPhases             int
	MemLevels                []int
	AuditEvents, AuditRounds int
	VerifyEvents             int
	Soak                     time.Duration
}

var quickSizes = sizes{
	GuardRounds: 15, GuardN: 100_000,
	KVRounds: 15, KVBlock: 6000,
	ApprovalConc: []int{8, 64}, ApprovalDur: 3 * time.Second, ApprovalRounds: 3,
	ExpirySizes: []int{1000, 10_000, 100_000}, TickerPhases: 20,
	MemLevels:   []int{0, 10_000, 100_000},
	AuditEvents: 50_000, AuditRounds: 3,
	VerifyEvents: 100_000,
	Soak:         4 * time.Minute,
}

var fullSizes = sizes{
	GuardRounds: 31, GuardN: 300_000,
	KVRounds: 31, KVBlock: 12000,
	ApprovalConc: []int{8, 32, 64}, ApprovalDur: 10 * time.Second, ApprovalRounds: 3,
	ExpirySizes: []int{1000, 10_000, 100_000}, TickerPhases: 20,
	MemLevels:   []int{0, 100_000, 1_000_000},
	AuditEvents: 200_000, AuditRounds: 5,
	VerifyEvents: 1_000_000,
	Soak:         time.Hour,
}

func main() {
	var (
		quick   = flag.Bool("quick", true, "quick mode: smaller sizes and a 4 min soak, about 20 minutes on 2 cores")
		full    = flag.Bool("full", false, "full mode: 1M pending approvals, 10k-approval failover runs, a 1 h soak (overrides -quick)")
		only    = flag.String("only", "", "comma-separated scenarios to run (1-10); writes no docs")
		soak    = flag.Duration("soak", 0, "how long scenario 9 soaks (default: 4m quick, 1h full; drift is checked from 3m)")
		peers   = flag.Bool("peers", false, "also run scenario 10, Temporal as a peer (bench/temporal; the first build downloads and compiles Temporal's server)")
		history = flag.String("history", "history", "where each run that writes the docs keeps its results.json, and whose runs the history plot shows")
		root    = flag.String("root", "..", "guardian's repository root (for go build ./cmd/guardian)")
		docs    = flag.String("docs", "../docs", "where PERFORMANCE.md and the plots go")
		workDir = flag.String("work", "", "scratch directory (default: a new temporary directory)")
		profDir = flag.String("profile", "", "keep the CPU profile of the approval-path diagnosis here (default: discarded)")
		quietL  = flag.Float64("quiet-load", 0, "before each scenario, wait until the 1-minute load average is below this (0: don't wait)")
		quietW  = flag.Duration("quiet-wait", 3*time.Minute, "longest wait for -quiet-load before each scenario")
		role    = flag.String("role", "", "internal: run as natsd or memseed")
		port    = flag.Int("port", 0, "internal: natsd port")
		store   = flag.String("store", "", "internal: natsd store directory")
		n       = flag.Int("n", 0, "internal: memseed approvals")
		render  = flag.String("render", "", "write the docs again from the results.json a run left in its -work directory, with this build's text, without measuring")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch *role {
	case "natsd":
		exit(scenarios.RunNatsd(ctx, *port, *store))
	case "memseed":
		exit(scenarios.RunMemSeed(*n))
	case "":
	default:
		exit(fmt.Errorf("unknown role %q", *role))
	}
	if *render != "" {
		exit(renderSaved(*render, *docs, *history))
	}
	mode, sz := "quick", quickSizes
	if *full || !*quick {
		mode, sz = "full", fullSizes
	}
	want := map[int]bool{}
	if *only != "" {
		for _, s := range strings.Split(*only, ",") {
			i, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || i < 1 || i > lastScenario {
				exit(fmt.Errorf("-only %q: want numbers 1-%d", *only, lastScenario))
			}
			want[i] = true
		}
	}
	if *soak > 0 {
		sz.Soak = *soak
	}
	if want[10] && !*peers {
		exit(errors.New("-only 10 runs the Temporal peer: add -peers"))
	}
	quietLoad, quietWait = *quietL, *quietW
	cmdline = strings.Join(os.Args[1:], " ")
	exit(run(ctx, options{mode: mode, sz: sz, want: want, root: *root, docs: *docs, workDir: *workDir, profDir: *profDir, peers: *peers, history: *history}))
}

// lastScenario is the number of the last scenario.
const lastScenario = 10

// options are one run's settings.
type options struct {
	mode                                  string
	sz                                    sizes
	want                                  map[int]bool
	root, docs, workDir, profDir, history string
	peers                                 bool
}

var (
	quietLoad float64
	quietWait time.Duration
	waited    time.Duration // spent in waitQuiet
	cmdline   string        // the flags this run was given
)

// waitQuiet waits, at most quietWait, until the machine's 1-minute load
// average drops below quietLoad: other work on a shared machine distorts
// every figure.
func waitQuiet(ctx context.Context) {
	if quietLoad <= 0 {
		return
	}
	start := time.Now()
	defer func() { waited += time.Since(start) }()
	deadline := start.Add(quietWait)
	logged := false
	for load1() >= quietLoad && time.Now().Before(deadline) && ctx.Err() == nil {
		if !logged {
			logf("load %s: waiting up to %s for it to fall below %.1f", loadavg(), quietWait, quietLoad)
			logged = true
		}
		time.Sleep(5 * time.Second)
	}
}

func exit(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// results collects what the scenarios returned.
type results struct {
	Guard     *scenarios.GuardResult
	KVGet     *scenarios.KVGetResult
	Approvals *scenarios.ApprovalsResult
	Expiry    *scenarios.ExpiryResult
	Memory    *scenarios.MemoryResult
	Audit     *scenarios.AuditResult
	Verify    *scenarios.VerifyResult
	Failover  *scenarios.E2EResult
	Soak      *scenarios.E2EResult
	Temporal  *scenarios.TemporalResult
	Profile   *scenarios.ApprovalsProfile
	Failures  []string // scenarios that could not run, and why
	Durations map[int]time.Duration
	Load      map[int]string // load average when each scenario started
}

func run(ctx context.Context, o options) error {
	mode, sz, want, root, docs, workDir, profDir := o.mode, o.sz, o.want, o.root, o.docs, o.workDir, o.profDir
	started := time.Now()
	mach := describeMachine()
	if workDir == "" {
		d, err := os.MkdirTemp("", "guardian-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		workDir = d
	}
	root, _ = filepath.Abs(root)
	docs, _ = filepath.Abs(docs)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	sel := func(i int) bool { return len(want) == 0 || want[i] }
	if !o.peers {
		defer func() {
			fmt.Println("\nTemporal, the peer (scenario 10), was not run: add -peers to run it in the same run.")
		}()
	}
	res := results{Durations: map[int]time.Duration{}, Load: map[int]string{}}
	fail := func(i int, err error) {
		msg := fmt.Sprintf("scenario %d: %v", i, err)
		logf("%s", msg)
		res.Failures = append(res.Failures, msg)
	}
	timed := func(i int, f func() error) {
		if !sel(i) || ctx.Err() != nil {
			return
		}
		waitQuiet(ctx)
		t := time.Now()
		res.Load[i] = loadavg()
		logf("scenario %d (load %s)", i, res.Load[i])
		if err := f(); err != nil {
			fail(i, err)
		}
		res.Durations[i] = time.Since(t)
		logf("scenario %d done in %s", i, res.Durations[i].Round(time.Second))
	}
	logf("mode %s; %d cores, load %s; work dir %s", mode, mach.Cores, mach.LoadStart, workDir)

	// The guardian binary, for scenarios 3 and 5. Someone may be changing
	// it while this runs: the other scenarios go first, and a failed
	// build is retried once before those two are reported as not run.
	var guardianBin string
	var buildErr error
	build := func() {
		if guardianBin != "" {
			return
		}
		logf("go build ./cmd/guardian")
		guardianBin, buildErr = scenarios.BuildGuardian(ctx, root, workDir)
	}

	timed(1, func() error {
		r, err := scenarios.Guard(sz.GuardRounds, sz.GuardN)
		res.Guard = &r
		return err
	})
	timed(2, func() error {
		r, err := scenarios.KVGet(ctx, scenarios.KVGetConfig{Keys: 10_000, Goroutines: []int{1, 8}, Rounds: sz.KVRounds, BlockGets: sz.KVBlock})
		res.KVGet = &r
		return err
	})
	timed(6, func() error {
		r, err := scenarios.Audit(ctx, scenarios.AuditConfig{Events: sz.AuditEvents, Rounds: sz.AuditRounds})
		res.Audit = &r
		return err
	})
	timed(7, func() error {
		r, err := scenarios.Verify(ctx, root, sz.VerifyEvents)
		res.Verify = &r
		return err
	})
	timed(4, func() error {
		r, err := scenarios.Expiry(ctx, scenarios.ExpiryConfig{
			Sizes: sz.ExpirySizes, MinTimeout: time.Second, MaxTimeout: 10 * time.Second, LeadPerItem: 250 * time.Microsecond, Creators: 8,
			TickerPeriods: []time.Duration{60 * time.Second, 10 * time.Second}, TickerPhases: sz.TickerPhases,
		}, func(s string) { logf("%s", s) })
		res.Expiry = &r
		return err
	})
	if sel(3) || sel(5) {
		build()
		if buildErr != nil {
			logf("build failed, retrying in 30s: %v", buildErr)
			time.Sleep(30 * time.Second)
			build()
		}
	}
	timed(3, func() error {
		if buildErr != nil {
			return buildErr
		}
		r, err := scenarios.Approvals(ctx, scenarios.ApprovalsConfig{
			Guardian: guardianBin, WorkDir: workDir, Concurrency: sz.ApprovalConc,
			Duration: sz.ApprovalDur, Rounds: sz.ApprovalRounds, PerTenant: 2000,
		}, func(s string) { logf("%s", s) })
		res.Approvals = &r
		return err
	})
	timed(5, func() error {
		if buildErr != nil {
			return buildErr
		}
		r, err := scenarios.Memory(ctx, scenarios.MemoryConfig{
			Guardian: guardianBin, Self: self, WorkDir: workDir, Levels: sz.MemLevels, InFlight: 64,
		}, func(s string) { logf("%s", s) })
		res.Memory = &r
		return err
	})
	failoverArgs := []string{}
	if mode == "full" {
		failoverArgs = append(failoverArgs, "-e2e.full")
	}
	timed(8, func() error {
		r, err := scenarios.E2E(ctx, root, workDir, scenarios.FailoverTests, 30*time.Minute, failoverArgs...)
		res.Failover = &r
		return err
	})
	timed(9, func() error {
		r, err := scenarios.E2E(ctx, root, workDir, scenarios.SoakTests, sz.Soak+20*time.Minute, "-e2e.soak="+sz.Soak.String())
		res.Soak = &r
		return err
	})
	if o.peers {
		timed(10, func() error {
			r, err := scenarios.Temporal(ctx, scenarios.TemporalConfig{
				Dir: filepath.Join(root, "bench", "temporal"), WorkDir: workDir,
				InFlight: sz.ApprovalConc, Duration: sz.ApprovalDur, Rounds: sz.ApprovalRounds,
				Timeouts: temporalSizes(sz.ExpirySizes), MinTimeout: time.Second, MaxTimeout: 10 * time.Second, LeadPerItem: 250 * time.Microsecond,
			}, func(s string) { logf("%s", s) })
			res.Temporal = &r
			return err
		})
	}
	if sel(3) && ctx.Err() == nil {
		// Diagnosis of scenario 3: what one approval costs, in process.
		dir := profDir
		if dir == "" {
			dir = workDir
		}
		logf("approval path diagnosis (in-process replica, CPU profile)")
		p, err := scenarios.ProfileApprovals(ctx, dir, 64, sz.ApprovalDur+time.Second)
		if err != nil {
			fail(3, fmt.Errorf("diagnosis: %w", err))
		} else {
			res.Profile = &p
			logf("%s", p)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	mach.LoadEnd = loadavg()
	elapsed := time.Since(started)

	rows := res.rows()
	printTable(rows)
	for _, f := range res.Failures {
		fmt.Println("NOT RUN:", f)
	}
	fmt.Printf("\n%s mode took %s\n", mode, elapsed.Round(time.Second))
	if len(want) > 0 {
		return nil
	}
	snap := snapshot{Mode: mode, Machine: mach, Elapsed: elapsed, Finished: time.Now(), Results: res, Cmdline: cmdline, Waited: waited}
	if b, err := json.Marshal(&snap); err == nil {
		saved := filepath.Join(workDir, "results.json")
		if err := os.WriteFile(saved, b, 0o644); err == nil {
			logf("saved %s (re-render with -render while it exists)", saved)
		}
	}
	if err := keepHistory(o.history, &snap); err != nil {
		return err
	}
	if err := writeDocs(docs, o.history, &snap); err != nil {
		return err
	}
	if len(res.Failures) > 0 {
		return errors.New(strings.Join(res.Failures, "; "))
	}
	return nil
}

// snapshot is a finished run: what its docs are written from.
type snapshot struct {
	Mode     string
	Machine  machine
	Elapsed  time.Duration
	Finished time.Time
	Results  results
	Cmdline  string
	Waited   time.Duration
}

// writeDocs writes PERFORMANCE.md and the plots of snap, and the history
// plot of the runs kept in history, into docs.
func writeDocs(docs, history string, snap *snapshot) error {
	if err := os.MkdirAll(docs, 0o755); err != nil {
		return err
	}
	plotsMade, err := writePlots(docs, &snap.Results)
	if err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	hist, err := loadHistory(history)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if p, err := writeHistoryPlot(docs, hist); err != nil {
		return fmt.Errorf("history plot: %w", err)
	} else if p[0] != "" {
		plotsMade = append(plotsMade, p)
	}
	cmdline, waited = snap.Cmdline, snap.Waited
	path := filepath.Join(docs, "PERFORMANCE.md")
	md := markdown(snap.Mode, snap.Machine, snap.Finished, snap.Elapsed, snap.Results.rows(), &snap.Results, plotsMade, hist)
	if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
		return err
	}
	logf("wrote %s and %d plots", path, len(plotsMade))
	return nil
}

// renderSaved writes the docs of the run saved in file.
func renderSaved(file, docs, history string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var snap snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return writeDocs(docs, history, &snap)
}

func (r *results) rows() []scenarios.Row {
	var rows []scenarios.Row
	if r.Guard != nil && len(r.Guard.Costs) > 0 {
		rows = append(rows, r.Guard.Rows()...)
	}
	if r.KVGet != nil {
		rows = append(rows, r.KVGet.Rows()...)
	}
	if r.Approvals != nil && len(r.Approvals.Levels) > 0 {
		rows = append(rows, r.Approvals.Rows()...)
	}
	if r.Expiry != nil {
		rows = append(rows, r.Expiry.Rows()...)
	}
	if r.Memory != nil {
		rows = append(rows, r.Memory.Rows()...)
	}
	if r.Audit != nil && r.Audit.Raw > 0 {
		rows = append(rows, r.Audit.Rows()...)
	}
	if r.Verify != nil && r.Verify.Raw > 0 {
		rows = append(rows, r.Verify.Rows()...)
	}
	if r.Failover != nil && len(r.Failover.Figures) > 0 {
		rows = append(rows, r.Failover.FailoverRows()...)
	}
	if r.Soak != nil && len(r.Soak.Figures) > 0 {
		rows = append(rows, r.Soak.SoakRows()...)
	}
	if r.Temporal != nil && (len(r.Temporal.Levels) > 0 || len(r.Temporal.Timeouts) > 0) {
		rows = append(rows, scenarios.TemporalRows(r.Temporal, r.Approvals, r.Expiry)...)
	}
	slices.SortStableFunc(rows, func(a, b scenarios.Row) int { return scenarioNumber(a.Scenario) - scenarioNumber(b.Scenario) })
	return rows
}

func printTable(rows []scenarios.Row) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tMEASURE\tGUARDIAN\tBASELINE\tRATIO\tTARGET\tRESULT")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Scenario, r.Measure, dash(r.Guardian), dash(r.Baseline), dash(r.Ratio), dash(r.Target), dash(string(r.Status)))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// scenarioNumber is the number a row's scenario name starts with.
func scenarioNumber(name string) int {
	n, _ := strconv.Atoi(strings.Fields(name)[0])
	return n
}

// temporalSizes are the expiry sizes the peer runs: Temporal's SQLite dev
// server drains timers at a few hundred per second, so sizes above 10k
// would take it many minutes and say nothing more.
func temporalSizes(sizes []int) []int {
	var out []int
	for _, n := range sizes {
		if n <= 10_000 {
			out = append(out, n)
		}
	}
	return out
}
