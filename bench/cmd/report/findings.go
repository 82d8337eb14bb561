package main

import (
	"fmt"
	"strings"

	"github.com/jsguardian/guardian/bench/scenarios"
)

// findings writes what this run's figures say beyond the table: the misses,
// and for the paths with targets, where the time or the CPU went. Every
// number in it is computed from r.
func findings(rows []scenarios.Row, r *results) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	var misses []scenarios.Row
	for _, row := range rows {
		if row.Status == scenarios.Miss {
			misses = append(misses, row)
		}
	}
	if len(misses) == 0 {
		w("No figure missed its target in this run.\n\n")
	} else {
		w("Missed in this run:\n\n")
		for _, m := range misses {
			w("- %s, %s: %s against %s (target %s).\n", m.Scenario, m.Measure, dash(m.Guardian), dash(m.Baseline), dash(m.Target))
		}
		w("\n")
	}
	if e := r.Expiry; e != nil && len(e.Runs) > 0 {
		w("**Expiry (scenario 4).**")
		for _, run := range e.Runs {
			window := run.DueSpan + run.Guardian.Max - run.Guardian.Min
			w(" %s: deadlines spread over %.1f s, expired events over %.1f s (%s on average);",
				countLabel(run.N), run.DueSpan.Seconds(), window.Seconds(), fmtRate(float64(run.N)/window.Seconds()))
			if run.Written.N > 0 {
				w(" at p99 the expirer's write came %.3f s after the deadline and the event %.3f s after it (the notifier's hop %+.3f s), the raw marker %.3f s",
					run.Written.P99.Seconds(), run.Guardian.P99.Seconds(), (run.Guardian.P99 - run.Written.P99).Seconds(), run.Raw.P99.Seconds())
				if run.Sched.N > 0 {
					w(" and the raw message schedule, guardian's timer, %.3f s", run.Sched.P99.Seconds())
				}
				w(". Timers are scheduled a second ahead of their instant; the expirer held %d that came early until the instant itself", run.Held)
				w(".")
			}
		}
		w("\n\n")
	}
	if a := r.Approvals; a != nil && len(a.Levels) > 0 {
		w("**Approvals (scenario 3).**")
		for _, lv := range a.Levels {
			w(" %d in flight: %s approvals against %s for the design floor (%.2f) and %s raw creates; one approval took %.0f µs of CPU, a raw create %.0f µs (%.1f×).",
				lv.InFlight, fmtRate(lv.Approvals), fmtRate(lv.Floor), lv.Approvals/lv.Floor, fmtRate(lv.Raw),
				float64(lv.AppCPU)/1e3, float64(lv.RawCPU)/1e3, float64(lv.AppCPU)/float64(max(lv.RawCPU, 1)))
		}
		w("\n\n")
	}
	if p := r.Profile; p != nil {
		w("**Approval path, in process** (an in-process replica of guardian's request path: embedded server, `kvapprovals` with the default configuration, Expirer and Notifier, a micro endpoint calling `Service.Request`; %d in flight; `go run ./cmd/report -only 3 -profile DIR` keeps the CPU profile):\n\n", p.InFlight)
		w("| per operation | approval | raw sync kv.Create | ratio |\n|---|---|---|---|\n")
		w("| CPU time (server + client + service) | %.0f µs | %.0f µs | %.1f× |\n", float64(p.AppCPU)/1e3, float64(p.RawCPU)/1e3, float64(p.AppCPU)/float64(p.RawCPU))
		w("| messages into the server | %.1f | %.1f | %.1f× |\n", p.AppIn, p.RawIn, p.AppIn/p.RawIn)
		w("| messages out of the server | %.1f | %.1f | %.1f× |\n", p.AppOut, p.RawOut, p.AppOut/p.RawOut)
		w("| messages stored in streams | %.1f | %.1f | %.1f× |\n", p.AppStored, p.RawStored, p.AppStored/max(p.RawStored, 1e-9))
		w("| throughput | %s | %s | %.2f |\n\n", fmtRate(p.Approvals), fmtRate(p.Raw), p.Approvals/p.Raw)
	}
	if k := r.KVGet; k != nil {
		for _, lv := range k.Levels {
			if len(lv.CPUPerOp) > 1 && lv.Goroutines == 8 {
				w("**Guarded KV Get (scenario 2), 8 goroutines:** %.3f of raw (median of %d interleaved rounds); CPU per get %.1f µs guarded against %.1f µs raw.\n\n",
					lv.VsRaw[1], k.Rounds, float64(lv.CPUPerOp[1])/1e3, float64(lv.CPUPerOp[0])/1e3)
			}
		}
	}
	if t, a := r.Temporal, r.Approvals; t != nil && a != nil {
		for _, tl := range t.Levels {
			for _, g := range a.Levels {
				if g.InFlight == tl.InFlight && tl.Starts > 0 {
					w("**Temporal, %d in flight:** guardian answered %.0f× as many approval requests per second as Temporal started workflows, and %.0f× as many decisions as Temporal accepted signals.\n\n",
						tl.InFlight, g.Approvals/tl.Starts, g.Decisions/max(tl.Decisions, 1e-9))
				}
			}
		}
	}
	return b.String()
}
