// Command temporal measures Temporal as a peer of guardian for "wait for a
// person, with a timeout", and prints the results as one JSON document on
// stdout (progress goes to stderr).
//
// It embeds a one-node Temporal server in this process, configured as the
// Temporal CLI's `temporal server start-dev` configures its own: all four
// services, one history shard, SQLite persistence (here a temporary file,
// deleted at exit), the default namespace, loopback ports. A worker with
// default options runs the Approval workflow, which waits for whichever comes
// first: a "decision" signal or a timer due at an absolute time.
//
// It measures:
//   - starts/s: closed loops of N goroutines calling ExecuteWorkflow, for
//     each -inflight level N;
//   - decisions/s: the same loops sending the "decision" signal to those
//     workflows, and decisions closed/s, which also counts the time until
//     every signalled workflow has closed;
//   - timeout lateness: for each -timeouts size, workflows whose timers are
//     spread over [-min, -max] seconds; lateness is the workflow's close time
//     minus its due time;
//   - what Temporal persists per approval: history events and bytes, the
//     file's growth per workflow over the timeout runs, and the SQLite rows
//     written per approval, counted by triggers in a probe run after every
//     timed part (-probe).
//
// Versions: go.temporal.io/server v1.32.1 (v1.32.2 needs Go 1.26.10, hence
// this module's go 1.26.8 line, which v1.32.1 itself requires) and
// go.temporal.io/sdk v1.50.0 (v1.51.0 needs go.temporal.io/api v1.64, which
// the v1.32 server does not compile against).
//
// Run it with:
//
//	cd bench/temporal && go run . -h
//	cd bench/temporal && go run . > temporal.json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// taskQueue is the task queue of the Approval worker.
const taskQueue = "approvals"

// Result is the JSON document printed on stdout.
type Result struct {
	ServerVersion, SDKVersion string // module versions used
	Persistence               string
	Settings                  []string // worker options and server settings that matter
	Persists                  []string // what is written per approval
	Levels                    []Level
	Timeouts                  []Timeout
	// Mean history length (events) and size (bytes) of sampled workflows.
	HistoryEventsDecided, HistoryEventsExpired float64
	HistoryBytesDecided, HistoryBytesExpired   float64
	// DBBytesPerWorkflow is the growth of the SQLite file plus its WAL over
	// the timeout runs divided by the workflows they started; 0 if not
	// measured.
	DBBytesPerWorkflow float64
	Errors             int64
	FirstErr           string
	Elapsed            time.Duration
}

// Level is the throughput measured at one in-flight level.
type Level struct {
	InFlight                           int
	Starts, Decisions, DecisionsClosed float64 // per second, medians over rounds
	StartsRounds, DecisionsRounds      []float64
}

// Timeout is the timer lateness measured for one run of N workflows.
type Timeout struct {
	N                                       int
	DueSpan                                 time.Duration
	P50, P99, Max                           time.Duration
	Closed, NotExpired, DueBeforeAllStarted int
	Late                                    []time.Duration // nanoseconds, in item order
}

// config holds the parsed flags.
type config struct {
	inflight    []int
	duration    time.Duration
	rounds      int
	warmup      time.Duration
	timeouts    []int
	minDue      time.Duration
	maxDue      time.Duration
	leadPerItem time.Duration
	sample      int
	inMemory    bool
	journal     string
	probe       int
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "temporal-peer: %v\n", err)
		os.Exit(2)
	}
	res, err := run(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "temporal-peer: %v\n", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		fmt.Fprintf(os.Stderr, "temporal-peer: write JSON: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	var cfg config
	var inflight, timeouts string
	fs := flag.NewFlagSet("temporal-peer", flag.ContinueOnError)
	fs.StringVar(&inflight, "inflight", "8,64", "comma-separated in-flight levels: goroutines calling the client at once in the starts/s and decisions/s blocks")
	fs.DurationVar(&cfg.duration, "duration", 3*time.Second, "length of each start block and each decision block")
	fs.IntVar(&cfg.rounds, "rounds", 2, "start blocks and decision blocks per in-flight level; the medians are reported")
	fs.DurationVar(&cfg.warmup, "warmup", 500*time.Millisecond, "length of the uncounted warm-up start block and decision block")
	fs.StringVar(&timeouts, "timeouts", "1000,10000", "comma-separated sizes of the timeout-lateness runs (workflows that nobody decides)")
	fs.DurationVar(&cfg.minDue, "min", time.Second, "earliest due time in a timeout run, after the lead (whole seconds)")
	fs.DurationVar(&cfg.maxDue, "max", 10*time.Second, "latest due time in a timeout run, after the lead (whole seconds)")
	fs.DurationVar(&cfg.leadPerItem, "lead-per-item", 250*time.Microsecond, "lead before the first due time, per workflow of the run (rounded up to whole seconds), so all start before the first fires")
	fs.IntVar(&cfg.sample, "sample", 50, "decided and expired workflows described to measure history length and size")
	fs.BoolVar(&cfg.inMemory, "memory", false, "keep SQLite in memory instead of a temporary file (no file size measured)")
	fs.StringVar(&cfg.journal, "journal", "wal", `SQLite journal_mode pragma; "" keeps SQLite's default, as start-dev does (-count-writes needs wal)`)
	fs.IntVar(&cfg.probe, "probe", 200, "after all timed parts, count the SQLite rows written per approval with triggers, over this many decided and this many expired approvals (0: off; not in memory)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run . [flags] > result.json\n\n"+
			"Embeds a one-node Temporal server (SQLite) and measures starts/s, decisions/s and\n"+
			"timer lateness of an approval workflow; prints one JSON document on stdout.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var err error
	if cfg.inflight, err = parseInts("-inflight", inflight); err != nil {
		return cfg, err
	}
	if cfg.timeouts, err = parseInts("-timeouts", timeouts); err != nil {
		return cfg, err
	}
	return cfg, cfg.validate()
}

// parseInts parses a comma-separated list of positive integers.
func parseInts(name, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s: %q is not a positive integer", name, f)
		}
		out = append(out, n)
	}
	return out, nil
}

func (c config) validate() error {
	switch {
	case c.duration <= 0:
		return errors.New("-duration must be positive")
	case c.rounds < 1:
		return errors.New("-rounds must be at least 1")
	case c.warmup < 0:
		return errors.New("-warmup must not be negative")
	case c.minDue < 0 || c.minDue%time.Second != 0 || c.maxDue%time.Second != 0:
		return errors.New("-min and -max must be whole, non-negative seconds")
	case c.maxDue < c.minDue:
		return errors.New("-max must not be less than -min")
	case c.leadPerItem < 0:
		return errors.New("-lead-per-item must not be negative")
	case c.probe < 0:
		return errors.New("-probe must not be negative")
	case c.sample < 1:
		return errors.New("-sample must be at least 1")
	case len(c.inflight) == 0 && len(c.timeouts) == 0:
		return errors.New("nothing to measure: -inflight and -timeouts are both empty")
	}
	return nil
}

// run starts the server and the worker, measures, and stops them.
func run(cfg config) (*Result, error) {
	began := time.Now()
	srv, err := startServer(serverOptions{inMemory: cfg.inMemory, journal: cfg.journal, busyTimeout: cfg.probe > 0})
	if err != nil {
		return nil, fmt.Errorf("embedded Temporal server cannot start: %w", err)
	}
	defer srv.stop()
	load, err := dial(srv.hostPort)
	if err != nil {
		return nil, err
	}
	defer load.Close()
	stopWorker, err := startWorker(srv.hostPort)
	if err != nil {
		return nil, err
	}
	defer stopWorker()

	b := &bench{c: load, cfg: cfg}
	res := &Result{Persistence: srv.persistenceLabel(), Settings: settings(cfg)}
	res.ServerVersion, res.SDKVersion = moduleVersions()
	b.measure(res, srv)
	res.Persists = b.persistsSentences(res)
	res.Errors, res.FirstErr = b.errors.Load(), b.firstErr
	res.Elapsed = time.Since(began)
	return res, nil
}

// dial connects a client to the default namespace, logging SDK errors only.
func dial(hostPort string) (client.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	handler := slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})
	c, err := client.DialContext(ctx, client.Options{
		HostPort:  hostPort,
		Namespace: namespace,
		Logger:    sdklog.NewStructuredLogger(slog.New(handler)),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to the embedded server at %s: %w", hostPort, err)
	}
	return c, nil
}

// startWorker runs the Approval worker, with default options, on its own
// client (its own connection, as a separate worker process would have).
func startWorker(hostPort string) (stop func(), err error) {
	c, err := dial(hostPort)
	if err != nil {
		return nil, err
	}
	w := worker.New(c, taskQueue, worker.Options{})
	w.RegisterWorkflowWithOptions(approval, workflow.RegisterOptions{Name: workflowName})
	if err := w.Start(); err != nil {
		c.Close()
		return nil, fmt.Errorf("start worker: %w", err)
	}
	return func() { w.Stop(); c.Close() }, nil
}

// moduleVersions reads the Temporal server and SDK versions built in.
func moduleVersions() (server, sdk string) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown", "unknown"
	}
	for _, m := range info.Deps {
		switch m.Path {
		case "go.temporal.io/server":
			server = m.Version
		case "go.temporal.io/sdk":
			sdk = m.Version
		}
	}
	return server, sdk
}

// settings describes the settings that shape the numbers.
func settings(cfg config) []string {
	return []string{
		"Worker: worker.New(client, taskQueue, worker.Options{}) with SDK defaults: 2 workflow task pollers, 1000 workflow task slots, " +
			"sticky workflow cache of 10000, sticky schedule-to-start timeout 5s; its own client connection; no activities.",
		"Load: one SDK client (one gRPC connection) shared by the load goroutines; eager workflow start off (SDK default).",
		fmt.Sprintf("Server: Temporal embedded in this process as `temporal server start-dev` embeds it: frontend, history, matching and worker services, "+
			"static hosts on 127.0.0.1, %d history shard, dynamic config history.hostLevelCacheMaxSize=%d and frontend.namespaceRPS.visibility=%d "+
			"(the dev server's), every other setting default (e.g. frontend.rps 2400, frontend.namespaceRPS 2400, history.rps 3000).",
			historyShards, hostCacheSize, visibilityRPS),
		fmt.Sprintf("SQLite: the server's sqlite plugin with its default pool of one connection (single writer); journal_mode=%q; "+
			"synchronous left at SQLite's default; the same file holds the visibility store.", cfg.journal),
		fmt.Sprintf("Row-write probe: %d decided and %d expired approvals after every timed part, with AFTER INSERT/UPDATE/DELETE triggers "+
			"added only then (in one comparison the triggers cost about 20%% more CPU, so they are kept out of the timed parts); for it the server's SQLite connection gets "+
			"busy_timeout=%dms, which only matters while the probe holds a lock.", cfg.probe, cfg.probe, busyTimeoutMS),
		"Namespace: \"default\", registered before start as the dev server does, retention 24h (so nothing is deleted during the run).",
		fmt.Sprintf("Timeout runs: %d goroutines start the workflows; due times spread over %v..%v after a lead of n×%v rounded up to whole seconds.",
			timeoutStarters, cfg.minDue, cfg.maxDue, cfg.leadPerItem),
	}
}
