package scenarios

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Figure is one value an end-to-end scenario measured, as test/e2e writes
// it with -e2e.figures. Unit is "s", "B" or "" (a count).
type Figure struct {
	Test  string  `json:"test"`
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
}

// E2EResult is what one run of end-to-end scenarios measured: per test,
// its figures by name, and whether the test passed.
type E2EResult struct {
	Tests   []string                      // the tests run, in order
	Figures map[string]map[string]float64 // test → name → value
	Failed  []string                      // tests that failed (their checks, not only the figures)
	Output  string                        // the tail of go test's output when a test failed
	Took    time.Duration
	Args    []string // the arguments given to the tests
}

// The end-to-end scenarios the report runs: scenario 8 (failover) and
// scenario 9 (soak).
var (
	FailoverTests = []string{"TestKillDuringExpiries", "TestReplicaKilled", "TestNATSRestart", "TestClusterLeaderKilled"}
	SoakTests     = []string{"TestSoak"}
)

// E2E runs tests of the guardian module's test/e2e (in root) with
// -e2e.figures and args, and returns what they recorded. A failed test is
// reported in Failed, with its figures; an error means no figures at all.
func E2E(ctx context.Context, root, workDir string, tests []string, timeout time.Duration, args ...string) (E2EResult, error) {
	res := E2EResult{Tests: tests, Figures: map[string]map[string]float64{}, Args: args}
	file := filepath.Join(workDir, "e2e-figures-"+tests[0]+".jsonl")
	_ = os.Remove(file)
	cmdArgs := append([]string{"test", "-count=1", "-timeout", timeout.String(), "-v", "-run", "^(" + strings.Join(tests, "|") + ")$",
		"./test/e2e/", "-args", "-e2e.figures=" + file}, args...)
	cmd := exec.CommandContext(ctx, "go", cmdArgs...)
	cmd.Dir = root
	start := time.Now()
	out, runErr := cmd.CombinedOutput()
	res.Took = time.Since(start)
	for _, line := range strings.Split(string(out), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "--- FAIL: "); ok {
			res.Failed = append(res.Failed, strings.Fields(name)[0])
		}
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return res, fmt.Errorf("go %s: no figures (%v): %v\n%s", strings.Join(cmdArgs, " "), err, runErr, tail(out, 40))
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var f Figure
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return res, fmt.Errorf("%s: %w", file, err)
		}
		if res.Figures[f.Test] == nil {
			res.Figures[f.Test] = map[string]float64{}
		}
		res.Figures[f.Test][f.Name] = f.Value
	}
	if runErr != nil || len(res.Failed) > 0 {
		res.Output = tail(out, 40)
	}
	if runErr != nil && len(res.Failed) == 0 {
		return res, fmt.Errorf("go test: %v\n%s", runErr, res.Output)
	}
	return res, nil
}

// tail returns the last n lines of out.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// get returns test's figure name and whether it was recorded.
func (r *E2EResult) get(test, name string) (float64, bool) {
	v, ok := r.Figures[test][name]
	return v, ok
}

func (r *E2EResult) failed(test string) bool {
	for _, f := range r.Failed {
		if f == test {
			return true
		}
	}
	return false
}

// onceRow is the exactly-once row of test: lost and duplicated must be 0,
// and the test itself must pass.
func (r *E2EResult) onceRow(sc, test, what string) Row {
	lost, ok1 := r.get(test, "lost")
	dup, ok2 := r.get(test, "duplicated")
	n, _ := r.get(test, "approvals")
	if !ok1 || !ok2 {
		return Row{sc, what + ": lost / duplicated", "not measured", "", "", "0 / 0", Miss}
	}
	g := fmt.Sprintf("%.0f / %.0f of %.0f approvals", lost, dup, n)
	if r.failed(test) {
		g += " (test failed)"
	}
	return Row{sc, what + ": lost / duplicated", g, "", "", "0 / 0", check(lost == 0 && dup == 0 && !r.failed(test))}
}

// latenessRow formats a lateness group's p50/p99/max; with limit > 0 the
// max must stay within it.
func (r *E2EResult) latenessRow(sc, test, prefix, what string, limit time.Duration) Row {
	n, ok := r.get(test, prefix+" n")
	if !ok {
		return Row{sc, what, "not measured", "", "", "", Miss}
	}
	p50, _ := r.get(test, prefix+" p50")
	p99, _ := r.get(test, prefix+" p99")
	mx, _ := r.get(test, prefix+" max")
	row := Row{sc, what, fmt.Sprintf("p50 %.3f s, p99 %.3f s, max %.3f s (%.0f expiries)", p50, p99, mx, n), "", "", "", Info}
	if limit > 0 {
		row.Target = "max ≤ " + secs(limit)
		row.Status = check(mx <= limit.Seconds())
	}
	return row
}

// FailoverRows returns scenario 8's rows. The limits are the tests' own:
// every expiry within 5 s (AckWait 4 s + 1 s) when one of two replicas is
// killed, and requests served again within 10 s of a stream leader's loss.
func (r E2EResult) FailoverRows() []Row {
	const sc = "8 Failover"
	var rows []Row
	kd := "TestKillDuringExpiries"
	down, _ := r.get(kd, "down")
	rows = append(rows, r.onceRow(sc, kd, fmt.Sprintf("the only guardian killed (SIGKILL) during expiries, down %.0f s", down)),
		r.latenessRow(sc, kd, "lateness", "  its expiry lateness, expires_at → expired", 0))
	rk := "TestReplicaKilled"
	rows = append(rows, r.onceRow(sc, rk, "one of two replicas killed during expiries"),
		r.latenessRow(sc, rk, "lateness", "  expiry lateness with a replica killed", 5*time.Second))
	nr := "TestNATSRestart"
	down, _ = r.get(nr, "down")
	rows = append(rows, r.onceRow(sc, nr, fmt.Sprintf("nats-server down %.1f s", down)),
		r.latenessRow(sc, nr, "lateness during", "  due while NATS was down: restart → expired", 0),
		r.latenessRow(sc, nr, "lateness after", "  due after the restart: expires_at → expired", 0))
	cl := "TestClusterLeaderKilled"
	if rec, ok := r.get(cl, "requests succeed again after"); ok {
		el, _ := r.get(cl, "leader elected after")
		lost, _ := r.get(cl, "lost")
		acked, _ := r.get(cl, "acknowledged")
		rows = append(rows,
			Row{sc, "3-node cluster, records stream leader shut down: requests succeed again after", fmt.Sprintf("%.3f s", rec), fmt.Sprintf("new leader after %.3f s", el), "", "≤ 10 s", check(rec >= 0 && rec <= 10 && !r.failed(cl))},
			Row{sc, "  acknowledged approvals lost", fmt.Sprintf("%.0f of %.0f", lost, acked), "", "", "0", check(lost == 0)})
	} else {
		rows = append(rows, Row{sc, "3-node cluster, leader shut down", "not measured", "", "", "", Miss})
	}
	return rows
}

// SoakRows returns scenario 9's rows: exactly once, lateness, and each
// resource's drift between the first and the last third of the samples
// after the warm-up (when the soak was long enough to check it).
func (r E2EResult) SoakRows() []Row {
	const sc = "9 Soak"
	t := "TestSoak"
	d, _ := r.get(t, "duration")
	n, _ := r.get(t, "approvals requested")
	calls, _ := r.get(t, "API calls")
	rows := []Row{{sc, "load", fmt.Sprintf("%.0f approvals and %.0f API calls in %s", n, calls, time.Duration(d*float64(time.Second)).Round(time.Second)), "", "", "", Info},
		r.onceRow(sc, t, "every approval ended once"),
		r.latenessRow(sc, t, "lateness", "  expiry lateness, expires_at → expired", 0)}
	drifted := false
	for _, name := range []string{"guardian goroutines", "guardian heap in use", "guardian RSS", "guardian open files", "guardian CPU per call",
		"nats-server memory", "nats-server open files", "nats-server CPU per call"} {
		first, ok := r.get(t, name+" first third")
		if !ok {
			continue
		}
		drifted = true
		last, _ := r.get(t, name+" last third")
		allowed, _ := r.get(t, name+" allowed")
		rows = append(rows, Row{sc, "drift: " + name + ", last third of the samples after the warm-up vs the first", soakValue(name, last), soakValue(name, first),
			changePct(last, first), "≤ " + soakValue(name, allowed), check(last <= allowed)})
	}
	if !drifted {
		rows = append(rows, Row{sc, "drift", "not checked: the soak was shorter than 3 min (report -soak)", "", "", "", Info})
	}
	for name, v := range r.Figures[t] {
		stream, ok := strings.CutPrefix(name, "timer entries ")
		if !ok || stream != "GUARDIAN_TIMERS" {
			continue
		}
		msgs := r.Figures[t]["messages "+stream]
		rows = append(rows, Row{sc, "timers' schedule state at the end (no stale entries, as in nats-io/nats-server#8594)", fmt.Sprintf("%.0f entries", v), fmt.Sprintf("%.0f messages", msgs), "", "≤ messages", check(v <= msgs)})
	}
	return rows
}

func soakValue(name string, v float64) string {
	switch {
	case strings.Contains(name, "CPU"):
		return fmt.Sprintf("%.0f µs", v*1e6)
	case strings.Contains(name, "heap"), strings.Contains(name, "RSS"), strings.Contains(name, "memory"):
		return mib(v)
	}
	return fmt.Sprintf("%.0f", v)
}

func changePct(now, was float64) string {
	if was == 0 {
		return "-"
	}
	return fmt.Sprintf("%+.1f %%", 100*(now/was-1))
}
