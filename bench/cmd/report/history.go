package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jsguardian/guardian/bench/plots"
	"github.com/jsguardian/guardian/bench/scenarios"
)

// pastRun is what the history keeps of a run: its table and headline
// figures, without the samples (a 100k expiry run has millions).
type pastRun struct {
	Finished time.Time
	Mode     string
	Cmdline  string
	Machine  machine
	Rows     []scenarios.Row
	Headline map[string]float64
}

// headline is one figure followed across runs.
type headline struct {
	name   string
	target float64 // 0: none
	ratio  bool    // plotted on the ratio plot
	value  func(r *results) (float64, bool)
}

var headlines = []headline{
	{"KV Get, 8 goroutines: guarded / raw", 0.97, true, func(r *results) (float64, bool) {
		if r.KVGet != nil {
			for _, lv := range r.KVGet.Levels {
				if lv.Goroutines == 8 && len(lv.VsRaw) > 1 {
					return lv.VsRaw[1], true
				}
			}
		}
		return 0, false
	}},
	{"approvals / design floor, 8 in flight", scenarios.ApprovalsTarget, true, approvalsVsFloor(8)},
	{"approvals / design floor, 64 in flight", scenarios.ApprovalsTarget, true, approvalsVsFloor(64)},
	{"audit publish / raw PublishAsync", 0, true, func(r *results) (float64, bool) {
		if r.Audit != nil && r.Audit.Raw > 0 {
			return r.Audit.Publish / r.Audit.Raw, true
		}
		return 0, false
	}},
	{"audit verify / decode only", 0.8, true, func(r *results) (float64, bool) {
		if r.Verify != nil && r.Verify.Raw > 0 {
			return r.Verify.Rate / r.Verify.Raw, true
		}
		return 0, false
	}},
	{"expiry p99 − raw marker p99 at 100k (s)", scenarios.ExpiryP99Slack.Seconds(), false, func(r *results) (float64, bool) {
		if r.Expiry != nil {
			for _, run := range r.Expiry.Runs {
				if run.N == 100_000 {
					return (run.Guardian.P99 - run.Raw.P99).Seconds(), true
				}
			}
		}
		return 0, false
	}},
}

func approvalsVsFloor(inFlight int) func(r *results) (float64, bool) {
	return func(r *results) (float64, bool) {
		if r.Approvals != nil {
			for _, lv := range r.Approvals.Levels {
				if lv.InFlight == inFlight && lv.Floor > 0 {
					return lv.Approvals / lv.Floor, true
				}
			}
		}
		return 0, false
	}
}

// summarize returns what the history keeps of snap.
func summarize(snap *snapshot) pastRun {
	p := pastRun{Finished: snap.Finished, Mode: snap.Mode, Cmdline: snap.Cmdline, Machine: snap.Machine,
		Rows: snap.Results.rows(), Headline: map[string]float64{}}
	for _, h := range headlines {
		if v, ok := h.value(&snap.Results); ok {
			p.Headline[h.name] = v
		}
	}
	return p
}

// keepHistory writes snap's summary into dir, named by when it finished.
func keepHistory(dir string, snap *snapshot) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(summarize(snap), "", "  ")
	if err != nil {
		return err
	}
	name := filepath.Join(dir, snap.Finished.UTC().Format("20060102-1504")+"-"+snap.Mode+".json")
	if err := os.WriteFile(name, b, 0o644); err != nil {
		return err
	}
	logf("kept %s", name)
	return nil
}

// loadHistory reads the runs kept in dir, oldest first; a missing dir is
// an empty history.
func loadHistory(dir string) ([]pastRun, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var runs []pastRun
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var p pastRun
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		runs = append(runs, p)
	}
	slices.SortFunc(runs, func(a, b pastRun) int { return a.Finished.Compare(b.Finished) })
	return runs, nil
}

func runLabel(p pastRun) string { return p.Finished.UTC().Format("01-02 15:04") + " " + p.Mode }

// writeHistoryPlot plots the ratio headlines of runs; it returns the file
// name and caption, or empty names with fewer than two runs.
func writeHistoryPlot(dir string, runs []pastRun) ([2]string, error) {
	if len(runs) < 2 {
		return [2]string{}, nil
	}
	labels := make([]string, len(runs))
	for i, r := range runs {
		labels[i] = runLabel(r)
	}
	var lines []plots.Line
	for _, h := range headlines {
		if !h.ratio {
			continue
		}
		l := plots.Line{Name: h.name, Target: h.target}
		for _, r := range runs {
			v, ok := r.Headline[h.name]
			if !ok {
				v = math.NaN()
			}
			l.Values = append(l.Values, v)
		}
		lines = append(lines, l)
	}
	name := "perf-history.png"
	if err := plots.History(filepath.Join(dir, name), "Headline ratios of the runs kept in bench/history (dashed: targets)", "ratio, same run", labels, lines); err != nil {
		return [2]string{}, err
	}
	return [2]string{name, "Headline ratios of every run kept in bench/history"}, nil
}

// historyTable is the markdown table of every headline across runs.
func historyTable(runs []pastRun) string {
	if len(runs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("| run (UTC) | load at start |")
	for _, h := range headlines {
		b.WriteString(" " + mdEscape(h.name) + " |")
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---|", len(headlines)) + "\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "| %s | %s |", runLabel(r), r.Machine.LoadStart)
		for _, h := range headlines {
			if v, ok := r.Headline[h.name]; ok {
				fmt.Fprintf(&b, " %.3f |", v)
			} else {
				b.WriteString(" - |")
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
