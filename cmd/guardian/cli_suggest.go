package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// suggestFlags are the flags of 'guardian policy suggest'.
type suggestFlags struct {
	window             time.Duration
	percentile, margin float64
	minCalls           uint64
	apply, belowMax    bool
	maxTime            time.Duration
	codes              string
}

func (s *suggestFlags) define(fs *flag.FlagSet) {
	fs.DurationVar(&s.window, "window", 24*time.Hour, "how far back to take the measurements (at most 192h, what GUARDIAN_LATENCY keeps)")
	fs.Float64Var(&s.percentile, "percentile", 99.9, "the percentile of the calls' durations a budget must cover (0-100]")
	fs.Float64Var(&s.margin, "margin", 1.5, "multiply the percentile by this (1-1000)")
	fs.Uint64Var(&s.minCalls, "min-calls", 100, "leave out categories with fewer calls in the window")
	fs.BoolVar(&s.belowMax, "below-max", false, "allow budgets below the longest call that succeeded")
	fs.BoolVar(&s.apply, "apply", false, "store the new budgets in the GUARDIAN_POLICY bucket (revision-checked, like 'policy set')")
	fs.StringVar(&s.codes, "codes", "", "only these audit codes, comma-separated, e.g. TIMEOUT_KV_GET,TIMEOUT_KV_PUT (default: all)")
	fs.DurationVar(&s.maxTime, "max-time", time.Minute, "give up reading the measurements after this long and suggest from what was read (a T5 budget)")
}

// suggestCmd runs 'guardian policy suggest'.
func suggestCmd(ctx context.Context, fs *flag.FlagSet, cf *clientFlags, so *suggestFlags, stdout, stderr io.Writer) error {
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "guardian: unexpected argument %q; see 'guardian policy suggest --help'\n", fs.Arg(0))
		return exitError{2}
	}
	switch {
	case so.window <= 0 || so.window > latencyKeep:
		fmt.Fprintf(stderr, "guardian: --window %s is out of range: must be > 0 and <= %s\n", so.window, latencyKeep)
		return exitError{2}
	case so.percentile <= 0 || so.percentile > 100:
		fmt.Fprintf(stderr, "guardian: --percentile %g is out of range: must be > 0 and <= 100\n", so.percentile)
		return exitError{2}
	case so.margin < 1 || so.margin > 1000:
		fmt.Fprintf(stderr, "guardian: --margin %g is out of range: must be >= 1 and <= 1000\n", so.margin)
		return exitError{2}
	case so.minCalls == 0:
		fmt.Fprintln(stderr, "guardian: --min-calls must be at least 1")
		return exitError{2}
	case so.maxTime < time.Microsecond || so.maxTime > jsguard.MaxBudget:
		fmt.Fprintf(stderr, "guardian: --max-time %s is out of range: must be >= 1µs and <= %s\n", so.maxTime, jsguard.MaxBudget)
		return exitError{2}
	}
	only := map[jsguard.Category]bool{}
	if so.codes != "" {
		for _, code := range strings.Split(so.codes, ",") {
			c, err := jsguard.ParseCode(strings.TrimSpace(code))
			if err != nil {
				fmt.Fprintf(stderr, "guardian: --codes: %v\n", err)
				return exitError{2}
			}
			only[c] = true
		}
	}
	s, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer s.close()
	hists, reports, aborted, err := readLatency(ctx, levelGuard(so.maxTime, stderr), s.js, so.window)
	if err != nil {
		return err
	}
	if len(only) > 0 {
		hists = slices.DeleteFunc(hists, func(l jsguard.Latency) bool { return !only[l.Category] })
	}
	if aborted {
		fmt.Fprintf(stderr, "guardian: --max-time %s ran out: suggesting from the %d reports read\n", so.maxTime, reports)
	}
	rctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	p, err := s.client.Policy(rctx)
	if err != nil {
		return apiFailure(stderr, err)
	}
	sugg := jsguard.Suggest(p, hists, jsguard.SuggestOptions{Percentile: so.percentile, Margin: so.margin, MinCalls: so.minCalls, BelowMax: so.belowMax})
	if cf.json {
		if err := printJSON(stdout, struct {
			Reports     int                  `json:"reports"`
			Aborted     bool                 `json:"aborted,omitempty"`
			Suggestions []jsguard.Suggestion `json:"suggestions"`
		}{reports, aborted, sugg}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "from %d latency reports of the last %s; p%g x %g\n", reports, so.window, so.percentile, so.margin)
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "CODE\tCALLS\tTIMEOUTS\tP%g\tMAX_OK\tOLD\tOLD_RATE\tNEW\tNEW_RATE\tNOTE\n", so.percentile)
		for _, x := range sugg {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.Category.Code(), x.Calls, x.Timeouts,
				x.Observed.Round(time.Microsecond), x.MaxOK.Round(time.Microsecond), x.Old, pct(x.OldRate), x.New, pct(x.NewRate), x.Note)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(sugg) == 0 {
			fmt.Fprintf(stdout, "no category has %d calls in the window: nothing to suggest\n", so.minCalls)
		}
	}
	if !so.apply {
		return nil
	}
	if aborted {
		fmt.Fprintln(stderr, "guardian: not applied: the measurements were read only in part (raise --max-time)")
		return exitError{3}
	}
	changed := 0
	for _, x := range sugg {
		if x.New != x.Old {
			changed++
		}
	}
	if changed == 0 {
		fmt.Fprintln(stderr, "nothing to apply: every suggested budget is the one in force")
		return nil
	}
	kv, err := openPolicyBucket(rctx, s.g, s.js)
	if err != nil {
		return err
	}
	_, err = jsguard.NewPolicyStore(s.g, kv).Update(rctx, p, func(q *jsguard.Policy) error {
		for _, x := range sugg {
			if x.New != x.Old {
				q.Budgets[x.Category] = x.New
			}
		}
		return nil
	})
	if errors.Is(err, jsguard.ErrInvalidPolicy) {
		fmt.Fprintln(stderr, "guardian:", err)
		return exitError{2}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "%d budgets stored in %s; running guardians apply them now\n", changed, kv.Bucket())
	return nil
}

func pct(f float64) string { return fmt.Sprintf("%.3f%%", 100*f) }
