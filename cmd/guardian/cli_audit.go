package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

const auditUsage = `audit <command> [flags]

Commands (they read the GUARDIAN_AUDIT stream directly over JetStream):
  tail     print audit events: history with --since or --seq, then live unless --follow=false
  stats    count events per minute, tenant and code over a window
  verify   check the seals (tamper evidence) of the live stream or of an export file
  export   write the stream as JSON lines, for archiving or offline verify

Every command also takes --server, --request-timeout and --json.`

// auditHelp describes each audit command for its --help.
var auditHelp = map[string]string{
	"tail": `audit tail [flags]

Prints audit events as they arrive: with --since or --seq first the history
from there, then live; with --follow=false it stops once the history is
printed (the whole stream when neither --since nor --seq is given).

Example:
  guardian audit tail --since 1h --follow=false --code TIMEOUT_KV_GET`,
	"stats": `audit stats [flags]

Counts the events stored in the last --window per minute, tenant and code.
Counting is T5 work: when --max-time runs out it prints the counts so far,
says up to when they go, and exits with status 3.`,
	"verify": `audit verify --public-key KEY [flags]

Checks the seals (signed hashes over ranges of events) of the live stream, or
of an export with --file, and exits with status 1 when anything was altered,
removed, inserted or stored twice, when the head is gone while younger than
the retention, when the latest seal is older than one seal interval plus
slack (a cut tail, or no sealer running), or when the retention was
shortened. KEY is the sealer's public key, logged by 'guardian serve' at
start when GUARDIAN_AUDIT_SEAL_SEED is set.

It reads the trail once, in bounded memory, and shows its progress on a
terminal. --json prints the report as JSON. Verifying the live stream is T5
work: when --max-time runs out it prints what it verified so far (problems
found in it included) and exits with status 3, or 1 when it found a problem.

Examples:
  guardian audit verify --public-key U...
  guardian audit verify --public-key U... --file audit.jsonl --chain-head 4711:3f5a...`,
	"export": `audit export [flags]

Writes the whole audit stream, events and seals, as JSON lines: a header
with the export's anchors (time, first and last sequence, limits, chain
head), then every message, for archiving and for 'guardian audit verify
--file' offline. It prints the chain head (SEQ:HASH) on standard error:
keep it apart from the file and give it to verify --chain-head.`,
}

func auditCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	op, fs, cf, err := subcommand("audit", auditUsage, auditHelp, args, stderr)
	if err != nil {
		return err
	}
	acfg := auditstream.DefaultConfig()
	fs.StringVar(&acfg.Stream, "stream", acfg.Stream, "audit stream name")
	var (
		tenant, code, file, key, out, head *string
		since, window, retention, maxTime  *time.Duration
		progress                           *bool
		seq                                *uint64
		follow                             *bool
	)
	switch op {
	case "tail":
		tenant = fs.String("tenant", "", "only this tenant ("+auditstream.NoTenant+" for events without one)")
		code = fs.String("code", "", "only this code, e.g. TIMEOUT_KV_GET")
		since = fs.Duration("since", 0, "start this far back, e.g. 1h (default: only new events)")
		seq = fs.Uint64("seq", 0, "start at this stream sequence")
		follow = fs.Bool("follow", true, "keep printing new events; false stops once the history is printed")
	case "stats":
		tenant = fs.String("tenant", "", "only this tenant")
		code = fs.String("code", "", "only this code")
		window = fs.Duration("window", time.Hour, "how far back to count")
		maxTime = fs.Duration("max-time", time.Minute, "give up after this long and print the counts so far (a T5 budget)")
	case "verify":
		file = fs.String("file", "", "verify this export (from 'guardian audit export') instead of the live stream")
		key = fs.String("public-key", os.Getenv("GUARDIAN_AUDIT_SEAL_PUBLIC_KEY"), "the sealer's public key (logged by 'guardian serve' at start; GUARDIAN_AUDIT_SEAL_PUBLIC_KEY)")
		retention = fs.Duration("retention", 0, "the retention the trail must keep at least, e.g. 2160h; a shorter MaxAge is reported (default: not checked)")
		head = fs.String("chain-head", "", "SEQ:HASH printed by 'guardian audit export': the trail must contain this seal")
		progress = fs.Bool("progress", isTerminal(stderr), "show progress on standard error (default: when it is a terminal)")
		maxTime = fs.Duration("max-time", 10*time.Minute, "give up on the live stream after this long and print what was verified (a T5 budget)")
	case "export":
		out = fs.String("out", "-", "file to write, - for standard output")
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "guardian: unexpected argument %q; see 'guardian audit %s --help'\n", fs.Arg(0), op)
		return exitError{2}
	}
	var lg *jsguard.Guard
	if maxTime != nil {
		if *maxTime < time.Microsecond || *maxTime > jsguard.MaxBudget {
			fmt.Fprintf(stderr, "guardian: --max-time %s is out of range: must be >= 1µs and <= %s\n", *maxTime, jsguard.MaxBudget)
			return exitError{2}
		}
		lg = levelGuard(*maxTime, stderr)
	}
	if op == "verify" && *key == "" {
		fmt.Fprintln(stderr, "guardian: --public-key is required (the sealer's public key, printed by 'guardian serve' at start)")
		return exitError{2}
	}
	var vopts []auditstream.VerifyOption
	if op == "verify" {
		if *head != "" {
			h, err := auditstream.ParseChainHead(*head)
			if err != nil {
				fmt.Fprintf(stderr, "guardian: --chain-head: %v\n", err)
				return exitError{2}
			}
			vopts = append(vopts, auditstream.WithChainHead(h))
		}
		vopts = append(vopts, auditstream.WithGuard(lg))
		if *retention < 0 {
			fmt.Fprintln(stderr, "guardian: --retention must not be negative")
			return exitError{2}
		}
		if *retention > 0 {
			vopts = append(vopts, auditstream.WithRetention(*retention))
		}
		if *progress {
			vopts = append(vopts, auditstream.WithProgress(progressPrinter(stderr)))
		}
	}
	if op == "verify" && *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		rep, err := auditstream.VerifyExportConfig(f, acfg, *key, vopts...)
		if *progress {
			fmt.Fprintln(stderr)
		}
		if err != nil {
			return err
		}
		return printReport(stdout, &rep, cf.json)
	}
	s, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer s.close()

	switch op {
	case "tail":
		opts := auditstream.TailOptions{Tenant: *tenant, Code: *code, StartSeq: *seq}
		if *since > 0 {
			opts.StartTime = time.Now().Add(-*since)
		}
		if !*follow && opts.StartSeq == 0 && opts.StartTime.IsZero() {
			opts.StartSeq = 1
		}
		return tail(ctx, s, acfg, opts, *follow, cf.json, stdout, stderr)
	case "stats":
		c, err := auditstream.Stats(ctx, s.js, acfg, auditstream.StatsOptions{Window: *window, Tenant: *tenant, Code: *code, Guard: lg})
		if err != nil {
			return err
		}
		if cf.json {
			if err := printJSON(stdout, c); err != nil {
				return err
			}
			if c.Aborted {
				return exitError{3}
			}
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MINUTE\tTENANT\tCODE\tCOUNT")
		for _, b := range c.Buckets {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", b.Minute.Format("2006-01-02 15:04"), orDash(b.Tenant), b.Code, b.Count)
		}
		tw.Flush()
		fmt.Fprintf(stdout, "total %d events from %s to %s\n", c.Total, c.From.Format(time.RFC3339), c.To.Format(time.RFC3339))
		if c.Aborted {
			fmt.Fprintf(stdout, "ABORTED after --max-time %s: the counts go up to %s only\n", *maxTime, c.To.Format(time.RFC3339Nano))
			return exitError{3}
		}
		return nil
	case "verify":
		rep, err := auditstream.Verify(ctx, s.js, acfg, *key, vopts...)
		if *progress {
			fmt.Fprintln(stderr)
		}
		if err != nil {
			return err
		}
		return printReport(stdout, &rep, cf.json)
	case "export":
		w := stdout
		if *out != "-" {
			f, err := os.Create(*out)
			if err != nil {
				return err
			}
			defer f.Close()
			w = f
		}
		head, err := auditstream.Export(ctx, s.js, acfg, w)
		if err != nil {
			return err
		}
		if head.Seq != 0 {
			fmt.Fprintf(stderr, "chain head %s (keep it apart from the export; verify --file with --chain-head %s)\n", head, head)
		}
		return nil
	}
	return nil
}

// tail prints entries; without follow it stops once nothing new arrives for
// a moment. A table is aligned per page of history and then line by line.
func tail(ctx context.Context, s *session, acfg auditstream.Config, opts auditstream.TailOptions, follow, asJSON bool, w, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var idle *time.Timer
	if !follow {
		idle = time.AfterFunc(time.Second, cancel)
		defer idle.Stop()
	}
	const row = "%-8v  %-20v  %-16v  %-28v  %-8v  %-8v  %-32v  %v\n"
	if !asJSON {
		fmt.Fprintf(w, row, "SEQ", "TIME", "TENANT", "CODE", "BUDGET", "ELAPSED", "EVENT ID", "OPERATION")
	}
	for e, err := range auditstream.Tail(ctx, s.js, acfg, opts) {
		if idle != nil {
			idle.Reset(time.Second)
		}
		if err != nil {
			if errors.Is(err, auditstream.ErrMalformedEvent) {
				fmt.Fprintf(stderr, "guardian: seq %d: %v\n", e.Seq, err)
				continue
			}
			return err
		}
		if asJSON {
			if err := printJSONLine(w, e.Event); err != nil {
				return err
			}
			continue
		}
		ev := e.Event
		fmt.Fprintf(w, row, e.Seq, ev.Timestamp.Format(time.RFC3339), orDash(ev.TenantID), ev.Code,
			secs(ev.TimeoutSeconds), secs(ev.ElapsedSeconds), ev.EventID, ev.Operation)
	}
	return nil
}

func secs(f float64) string {
	return time.Duration(f * float64(time.Second)).Round(time.Millisecond).String()
}

func printJSONLine(w io.Writer, v any) error {
	b, err := jsonMarshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// progressPrinter returns a progress callback that rewrites one line on w:
// messages read, their rate and, when the total is known, the time left.
func progressPrinter(w io.Writer) func(auditstream.Progress) {
	return func(p auditstream.Progress) {
		rate := float64(p.Done) / max(p.Elapsed.Seconds(), 1e-3)
		line := fmt.Sprintf("verify: %d messages, %.0f msg/s", p.Done, rate)
		if p.Total > 0 {
			left := time.Duration(float64(p.Total-min(p.Done, p.Total)) / max(rate, 1) * float64(time.Second))
			line = fmt.Sprintf("verify: %d of %d messages (%.0f%%), %.0f msg/s, ETA %s", p.Done, p.Total,
				100*float64(p.Done)/float64(p.Total), rate, left.Round(time.Second))
		}
		fmt.Fprintf(w, "\r%-78s", line)
	}
}

func printReport(w io.Writer, rep *auditstream.Report, asJSON bool) error {
	if asJSON {
		if err := printJSON(w, rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(w, "events %d, seals %d, sequences %d-%d\n", rep.Events, rep.Seals, rep.FirstSeq, rep.LastSeq)
		fmt.Fprintf(w, "sealed ranges verified: %d of %d\n", rep.RangesVerified, len(rep.Ranges))
		if rep.Head.Seq != 0 {
			fmt.Fprintf(w, "chain head: %s (sealed %s)\n", rep.Head, rep.Head.Time.Format(time.RFC3339))
		}
		if rep.Unsealed.Events > 0 {
			fmt.Fprintf(w, "unsealed tail: %d events (not verifiable until the next seal)\n", rep.Unsealed.Events)
		}
		for _, p := range rep.Problems {
			fmt.Fprintf(w, "PROBLEM %s at seq %d: %s\n", p.Kind, p.Seq, p.Detail)
		}
		if rep.Omitted > 0 {
			fmt.Fprintf(w, "... and %d more problems\n", rep.Omitted)
		}
	}
	switch {
	case len(rep.Problems) > 0 || rep.Omitted > 0:
		fmt.Fprintln(w, "FAILED: the audit trail does not verify")
		return exitError{1}
	case rep.Aborted:
		if !asJSON {
			fmt.Fprintf(w, "ABORTED: the time ran out after seq %d; no problem up to there, the rest is not verified\n", rep.LastSeq)
		}
		return exitError{3}
	}
	fmt.Fprintln(w, "OK")
	return nil
}

// levelGuard returns the guard for a CLI command's T5 work: T5 is maxTime,
// the levels below it keep their defaults or halve, so that they stay in
// order. Its one audit event (when the time runs out) is printed on
// stderr; the CLI does not write to the audit stream.
func levelGuard(maxTime time.Duration, stderr io.Writer) *jsguard.Guard {
	p := jsguard.DefaultPolicy()
	d := maxTime
	for l := jsguard.T5; l >= jsguard.T1; l-- {
		d = min(d, p.Budgets[l.Category()])
		if l == jsguard.T5 {
			d = maxTime
		}
		p.Budgets[l.Category()] = d
		d /= 2
	}
	g, err := jsguard.New(jsguard.WithPolicy(p), jsguard.WithSink(jsguard.SinkFunc(func(_ context.Context, e jsguard.Event) error {
		fmt.Fprintf(stderr, "guardian: %s %s after %s\n", e.Code, e.Operation, secs(e.ElapsedSeconds))
		return nil
	})))
	if err != nil {
		panic(err) // the budgets are in order by construction
	}
	return g
}

const policyUsage = `policy <command> [flags]

Commands:
  get                      print the timeout policy in force (asks the running service)
  set NAME=VALUE ...       change entries and store the policy in the GUARDIAN_POLICY bucket;
                           every guardian applies it at once. NAME is an audit code
                           (TIMEOUT_KV_GET=3s), default, strategy (graceful|strict|none),
                           max_stale_age, or breaker.CODE for a category's circuit
                           breaker: FIELD:VALUE pairs (window, min_calls, timeout_rate,
                           slow_call, slow_rate, cooldown, probes) or off, e.g.
                           breaker.TIMEOUT_KV_GET=timeout_rate:0.5,cooldown:10s
  suggest [--window 24h] [--percentile 99.9] [--margin 1.5] [--apply]
                           propose budgets from the latencies every guardian measured
                           (GUARDIAN_LATENCY), old and new side by side; --apply stores them

Every command also takes --server, --request-timeout and --json.`

// policyHelp describes each policy command for its --help.
var policyHelp = map[string]string{
	"get": `policy get [flags]

Prints the timeout policy the running guardian applies: the strategy, the
default budget, the oldest stale value served and every category's budget.`,
	"set": `policy set [flags] NAME=VALUE ...

Changes entries of the policy in force and stores the result in the
GUARDIAN_POLICY bucket; every running guardian applies it at once, and it
wins over GUARDIAN_TIMEOUT_* at the next start. NAME is an audit code
(TIMEOUT_KV_GET=3s), default, strategy (graceful, strict or none) or
max_stale_age. Budgets are > 0 and <= 1h. Flags go before the assignments.

Example:
  guardian policy set TIMEOUT_KV_GET=3s strategy=strict`,
	"suggest": `policy suggest [flags]

Proposes a budget per category from what the guardians measured: every
guardian publishes its calls' latency histograms to the GUARDIAN_LATENCY
stream (GUARDIAN_LATENCY_INTERVAL, 1m), and suggest sums those of the last
--window over all of them. The proposal is the --percentile of the calls'
durations times --margin, rounded up to two significant digits, within
1ms-1h, and never below the longest call that succeeded (since that
guardian started) unless --below-max. Timeouts caused by a caller's own
shorter deadline are not counted. Categories with fewer than --min-calls calls are left out, and
proposals that would break T1 < T2 < T3 < T4 < T5 keep the old budget.

It prints old and new budgets side by side with the share of calls that
timed out under the old one and would have under the new one (estimated
from the histograms; the calls that timed out count as timeouts under any
budget). --apply stores the new budgets through the revision-checked
policy update, as 'policy set' does, unless the measurements were read
only in part; the running guardians audit the change (AUDIT_POLICY_CHANGED).

Example:
  guardian policy suggest --window 24h --percentile 99.9 --margin 1.5
  guardian policy suggest --apply`,
}

func policyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	op, fs, cf, err := subcommand("policy", policyUsage, policyHelp, args, stderr)
	if err != nil {
		return err
	}
	var so suggestFlags
	if op == "suggest" {
		so.define(fs)
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if op == "suggest" {
		return suggestCmd(ctx, fs, cf, &so, stdout, stderr)
	}
	if op == "get" && fs.NArg() > 0 {
		fmt.Fprintf(stderr, "guardian: unexpected argument %q; to change the policy use 'guardian policy set'\n", fs.Arg(0))
		return exitError{2}
	}
	var changes map[string]string
	if op == "set" {
		var err error
		if changes, err = splitAssignments(fs.Args()); err != nil || len(changes) == 0 {
			if err == nil {
				err = errors.New("nothing to set: give NAME=VALUE arguments, e.g. TIMEOUT_KV_GET=3s")
			}
			fmt.Fprintln(stderr, "guardian:", err)
			return exitError{2}
		}
		// Every entry is checked on its own, so bad values are refused
		// before anything is read or written.
		probe := jsguard.DefaultPolicy()
		if err = applyPolicyChanges(&probe, changes); err == nil {
			err = probe.Validate()
		}
		if err != nil {
			fmt.Fprintln(stderr, "guardian:", err)
			return exitError{2}
		}
	}
	s, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer s.close()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	p, err := s.client.Policy(ctx)
	if err != nil {
		return apiFailure(stderr, err)
	}
	if op == "set" {
		kv, err := openPolicyBucket(ctx, s.g, s.js)
		if err != nil {
			return err
		}
		// The changes go onto the stored policy (the one in force when
		// none is stored yet), checked by revision, so two concurrent
		// sets both take effect.
		p, err = jsguard.NewPolicyStore(s.g, kv).Update(ctx, p, func(q *jsguard.Policy) error { return applyPolicyChanges(q, changes) })
		if errors.Is(err, jsguard.ErrInvalidPolicy) {
			fmt.Fprintln(stderr, "guardian:", err)
			return exitError{2}
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "policy stored in %s; running guardians apply it now\n", kv.Bucket())
	}
	if cf.json {
		return printJSON(stdout, p)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "strategy\t%s\n", p.Strategy)
	fmt.Fprintf(tw, "default\t%s\n", p.Default)
	fmt.Fprintf(tw, "max_stale_age\t%s\n", p.MaxStaleAge)
	for _, c := range jsguard.Categories() {
		fmt.Fprintf(tw, "%s\t%s\n", c.Code(), p.Budget(c))
	}
	for _, c := range slices.Sorted(maps.Keys(p.Breakers)) {
		b := p.Breakers[c]
		fmt.Fprintf(tw, "breaker.%s\twindow:%s,min_calls:%d,timeout_rate:%g,slow_call:%s,slow_rate:%g,cooldown:%s,probes:%d\n",
			c.Code(), b.Window, b.MinCalls, b.TimeoutRate, b.SlowCall, b.SlowRate, b.Cooldown, b.Probes)
	}
	return tw.Flush()
}

// openPolicyBucket opens the policy bucket as it is, so that a client never
// reconfigures a bucket 'guardian serve' provisioned (its replicas, say). Only
// when the bucket does not exist yet does it create it, with one replica.
func openPolicyBucket(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream) (*jsguard.KV, error) {
	kv, err := jsguard.DoValue(ctx, g, jsguard.KVGet, "open kv "+jsguard.PolicyBucket,
		func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, jsguard.PolicyBucket) })
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return jsguard.EnsurePolicyBucket(ctx, g, js, 1)
	}
	if err != nil {
		return nil, fmt.Errorf("open policy bucket %s: %w", jsguard.PolicyBucket, err)
	}
	return g.KV(kv), nil
}

// applyPolicyChanges sets NAME=VALUE entries on p.
func applyPolicyChanges(p *jsguard.Policy, changes map[string]string) error {
	for k, v := range changes {
		switch {
		case k == "strategy":
			p.Strategy = jsguard.Strategy(v)
			continue
		case strings.HasPrefix(k, "breaker."):
			if err := applyBreaker(p, strings.TrimPrefix(k, "breaker."), v); err != nil {
				return fmt.Errorf("%s=%s: %w", k, v, err)
			}
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%s=%s: not a duration like 3s", k, v)
		}
		switch k {
		case "default":
			p.Default = d
		case "max_stale_age":
			p.MaxStaleAge = d
		default:
			c, err := jsguard.ParseCode(k)
			if err != nil {
				return fmt.Errorf("%s: not an audit code like TIMEOUT_KV_GET, nor default, strategy, max_stale_age or breaker.CODE", k)
			}
			p.Budgets[c] = d
		}
	}
	return nil
}

// applyBreaker sets the circuit breaker of the category with code from v:
// "off" removes it; otherwise comma-separated FIELD:VALUE pairs change the
// breaker in force (or DefaultBreaker's values), e.g.
// "timeout_rate:0.5,window:30s,cooldown:10s".
func applyBreaker(p *jsguard.Policy, code, v string) error {
	c, err := jsguard.ParseCode(code)
	if err != nil {
		return err
	}
	if v == "off" {
		delete(p.Breakers, c)
		return nil
	}
	b, ok := p.Breakers[c]
	if !ok {
		b = jsguard.DefaultBreaker()
	}
	for _, pair := range strings.Split(v, ",") {
		field, val, ok := strings.Cut(strings.TrimSpace(pair), ":")
		if !ok {
			return fmt.Errorf("%q is not FIELD:VALUE (fields: window, min_calls, timeout_rate, slow_call, slow_rate, cooldown, probes; or off)", pair)
		}
		var perr error
		switch field {
		case "window", "slow_call", "cooldown":
			var d time.Duration
			d, perr = time.ParseDuration(val)
			switch field {
			case "window":
				b.Window = d
			case "slow_call":
				b.SlowCall = d
			default:
				b.Cooldown = d
			}
		case "min_calls", "probes":
			var n int
			n, perr = strconv.Atoi(val)
			if field == "min_calls" {
				b.MinCalls = n
			} else {
				b.Probes = n
			}
		case "timeout_rate", "slow_rate":
			var f float64
			f, perr = strconv.ParseFloat(val, 64)
			if field == "timeout_rate" {
				b.TimeoutRate = f
			} else {
				b.SlowRate = f
			}
		default:
			return fmt.Errorf("unknown breaker field %q (fields: window, min_calls, timeout_rate, slow_call, slow_rate, cooldown, probes)", field)
		}
		if perr != nil {
			return fmt.Errorf("%s: %q does not parse", field, val)
		}
	}
	if p.Breakers == nil {
		p.Breakers = map[jsguard.Category]jsguard.BreakerConfig{}
	}
	p.Breakers[c] = b
	return nil
}
