package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/nats-io/nats-server/v2/server/thw"
)

var (
	soakFlag = flag.Duration("e2e.soak", 0, "run TestSoak for this long (e.g. 1h) and fail when guardian's or nats-server's resources drift upward; "+
		"without it TestSoak is a 20 s smoke run that checks only correctness; also GUARDIAN_E2E_SOAK=1h")
	soakRate = flag.Int("e2e.soak.rate", 40, "approvals requested per second by TestSoak")
)

// soakDuration is how long TestSoak runs, and whether its drift checks
// apply (they need minutes of samples after the warm-up).
func soakDuration(t *testing.T) (d time.Duration, checkDrift bool) {
	d = *soakFlag
	if v := os.Getenv("GUARDIAN_E2E_SOAK"); v != "" && d == 0 {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("GUARDIAN_E2E_SOAK=%q: %v", v, err)
		}
	}
	if d == 0 {
		return 20 * time.Second, false
	}
	return d, d >= minSoakForDrift
}

// minSoakForDrift is the shortest soak whose drift is checked.
const minSoakForDrift = 3 * time.Minute

// soakSample is one reading of both processes' resources.
type soakSample struct {
	at  time.Duration // since the load started
	ops int64         // API calls answered so far (requests, decisions, reports)

	goroutines, heapInuse, guardianFDs, guardianCPU, guardianRSS float64 // guardian's /metrics
	natsCPU, natsRSS, natsFDs                                    float64 // nats-server's /proc
}

// TestSoak (scenario 8) drives steady load through one guardian on a
// nats-server of its own (a separate process, so that its CPU and memory
// can be read): approvals requested at a fixed rate, three in ten
// approved, denied or cancelled (each decision purges the approval's
// timer), the rest expiring after 1–10 s, and an audit.report for every
// fifth. It samples guardian's goroutines, heap, open files and CPU, and
// nats-server's memory, open files and CPU, and fails when one of them
// drifts upward: the mean of the last third of the samples after the
// warm-up against the first third, CPU per API call for CPU. (A timer
// removed before it fired once left a stale entry in nats-server's TTL
// wheel that every later pass walked again, nats-io/nats-server#8594; the
// timers are message schedules now, and the end of the test checks the
// scheduler's state for stale entries.) At the end every approval must
// have ended exactly once.
//
//	go test -v -run TestSoak -timeout 2h ./test/e2e/ -e2e.soak 1h
func TestSoak(t *testing.T) {
	skipShort(t)
	if runtime.GOOS != "linux" {
		t.Skip("reads nats-server's resources from /proc")
	}
	d, checkDrift := soakDuration(t)
	rate := *soakRate
	interval := min(max(d/30, 5*time.Second), time.Minute)
	warmup := max(time.Minute, d/5)
	ns := startNATSProcess(t)
	env := expiryEnv()
	env["GUARDIAN_HTTP_ADDR"] = "127.0.0.1:0"
	// Records are kept their shortest allowed time, so that what the
	// server holds reaches its steady state within the warm-up; with
	// the default (7 days) its memory grows through any soak shorter
	// than that, by design.
	env["GUARDIAN_APPROVAL_MAX_TIMEOUT"] = "1m"
	env["GUARDIAN_APPROVAL_RETENTION"] = "11m"
	g := startGuardian(t, "g1", ns.url, env)
	metricsURL := "http://" + g.httpAddr(g.run()) + "/metrics"
	nc, js := connect(t, ns.url)
	// Records and events are gone 11 minutes after their last change: the
	// ledger is collected as they are stored.
	live := collectLedger(t, js)
	c := newClient(t, nc, 5*time.Second)
	w := newWorkload(0, c)
	t.Logf("soak: %s at %d approvals/s, sampled every %s; drift checked: %v (needs -e2e.soak >= %s), after a warm-up of %s",
		d, rate, interval, checkDrift, minSoakForDrift, warmup)

	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	var (
		ops, reports, behind atomic.Int64
		reportErrs           atomic.Int64
		wg                   sync.WaitGroup
	)
	jobs := make(chan int, 4*rate)
	for range 16 {
		wg.Go(func() {
			for i := range jobs {
				w.one(ctx, t, i)
				ops.Add(1)
				if i%10 == 3 || i%10 == 5 || i%10 == 7 {
					ops.Add(1) // the decision
				}
				if i%5 != 0 {
					continue
				}
				now := time.Now().UTC()
				ev := jsguard.Event{
					Code: "TIMEOUT_KV_GET", Operation: fmt.Sprintf("kv get soak/k%07d", i), TimeoutSeconds: 1,
					ElapsedSeconds: 1, TenantID: "soak", CorrelationID: fmt.Sprintf("soak-%07d", i),
					Timestamp: now, StartedAt: now.Add(-time.Second),
				}
				if _, err := c.Report(ctx, ev); err != nil {
					if ctx.Err() == nil {
						reportErrs.Add(1)
						t.Errorf("report %d: %v", i, err)
					}
					continue
				}
				reports.Add(1)
				ops.Add(1)
			}
		})
	}
	start := time.Now()
	go func() {
		defer close(jobs)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if time.Since(start) >= d {
				return
			}
			select {
			case jobs <- i:
			default:
				behind.Add(1) // the workers fell behind: wait for them
				select {
				case jobs <- i:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	var samples []soakSample
	take := func() {
		s := soakSample{at: time.Since(start), ops: ops.Load()}
		m, err := scrapeMetrics(metricsURL)
		if err != nil {
			t.Errorf("scrape %s: %v", metricsURL, err)
			return
		}
		s.goroutines, s.heapInuse, s.guardianFDs = m["go_goroutines"], m["go_memstats_heap_inuse_bytes"], m["process_open_fds"]
		s.guardianCPU, s.guardianRSS = m["process_cpu_seconds_total"], m["process_resident_memory_bytes"]
		if s.natsCPU, s.natsRSS, s.natsFDs, err = procStats(ns.cmd.Process.Pid); err != nil {
			t.Errorf("nats-server: %v", err)
			return
		}
		samples = append(samples, s)
	}
	take()
	tick := time.NewTicker(interval)
	for time.Since(start) < d && ctx.Err() == nil {
		<-tick.C
		take()
	}
	tick.Stop()
	wg.Wait()
	took := time.Since(start)
	n := int(w.created.Load())
	t.Logf("soak: %d approvals requested in %s (%.1f/s), %d decided, %d reports, %d API calls; the load generator waited for the workers %d times",
		n, ms(took), float64(n)/took.Seconds(), len(w.decided), reports.Load(), ops.Load(), behind.Load())
	logSoakSamples(t, samples)

	figs := []figure{secs("duration", took), count("approvals requested", n), count("API calls", int(ops.Load())), count("load generator waited", int(behind.Load()))}
	if checkDrift {
		drift, err := soakDrift(samples, warmup)
		if err != nil {
			t.Errorf("drift: %v", err)
		}
		for _, c := range drift {
			if !c.ok() {
				t.Errorf("drift: %s", &c)
			}
			figs = append(figs, figure{Name: c.name + " first third", Value: c.first, Unit: c.unit},
				figure{Name: c.name + " last third", Value: c.last, Unit: c.unit},
				figure{Name: c.name + " allowed", Value: c.allowed(), Unit: c.unit})
		}
	}

	// Correctness: every approval ended once, as decided or expired, with
	// its events and audit; every acknowledged report is stored once.
	settled := live.waitSettled(js, n, 2*time.Minute)
	l := live.ledger(t, js)
	tl := l.tally(w.acked, 0)
	t.Logf("soak: %s", &tl)
	if !settled {
		t.Errorf("not settled within 2m of the end of the load")
	}
	assertExactlyOnce(t, &tl)
	w.assertOutcomes(t, l)
	record(t, append(figs, tallyFigures(&tl)...)...)
	counts, err := subjectCounts(t.Context(), js, auditStream, auditPrefix+"soak.TIMEOUT_KV_GET")
	if err != nil {
		t.Fatal(err)
	}
	if got := sum(counts); int64(got) != reports.Load() {
		t.Errorf("%d reports stored, %d acknowledged", got, reports.Load())
	}
	g.assertAlive()

	// No stale entries in nats-server's timer state (the kind of #8594):
	// once guardian is stopped and the instant of every schedule has
	// passed, the message scheduler's state of the timers stream, written
	// to sched.db when nats-server stops, holds at most one entry per
	// message the stream still has, although every decision removed a
	// schedule (nats-server drops a removed schedule's entry when its
	// instant comes, not at the removal); each TTL wheel (thw.db) at most
	// one per message of its stream.
	var lastInstant time.Time
	for _, revs := range l.revs {
		for _, r := range revs {
			if r.ExpiresAt.After(lastInstant) {
				lastInstant = r.ExpiresAt // grace 0: no timer is later
			}
		}
	}
	time.Sleep(time.Until(lastInstant.Add(time.Second)))
	g.kill()
	msgs := map[string]uint64{}
	for _, name := range []string{timersStream, recordsStream, eventsStream, auditStream} {
		msgs[name] = streamState(t, js, name).Msgs
	}
	ns.stop(t)
	schedules := 0
	_ = filepath.WalkDir(ns.dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || (e.Name() != "thw.db" && e.Name() != "sched.db") {
			return nil
		}
		stream := filepath.Base(filepath.Dir(filepath.Dir(path)))
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			return nil
		}
		var entries uint64
		if e.Name() == "sched.db" {
			// Version byte, entry count (uint64, little endian), ...
			if len(b) < 9 || b[0] != 1 {
				t.Errorf("%s: not a version 1 schedule state (%d bytes)", path, len(b))
				return nil
			}
			entries = binary.LittleEndian.Uint64(b[1:9])
			if stream == timersStream {
				schedules++
			}
		} else {
			hw := thw.NewHashWheel()
			if _, err := hw.Decode(b); err != nil {
				t.Errorf("%s: %v", path, err)
				return nil
			}
			entries = hw.Count()
		}
		t.Logf("soak: %s %s: %d entries, %d messages in the stream", stream, e.Name(), entries, msgs[stream])
		record(t, count("timer entries "+stream, int(entries)), count("messages "+stream, int(msgs[stream])))
		if n, ok := msgs[stream]; ok && entries > n {
			t.Errorf("%s: %d %s entries for %d messages: stale entries stay", stream, entries, e.Name(), n)
		}
		return nil
	})
	if schedules == 0 {
		t.Errorf("no sched.db of %s written under %s", timersStream, ns.dir)
	}
}

// driftCheck is one resource's drift over a soak: the means of the first
// and the last third of the samples after the warm-up, and the growth
// allowed (last <= first*(1+rel) + abs).
type driftCheck struct {
	name        string
	first, last float64
	rel, abs    float64
	unit        string // "B", "s" or "" (a count)
}

func (c *driftCheck) allowed() float64 { return c.first*(1+c.rel) + c.abs }
func (c *driftCheck) ok() bool         { return c.last <= c.allowed() }

func (c *driftCheck) String() string {
	return fmt.Sprintf("%s grew from %s to %s (allowed: +%.0f%% + %s)",
		c.name, soakUnit(c.first, c.unit), soakUnit(c.last, c.unit), 100*c.rel, soakUnit(c.abs, c.unit))
}

// soakDrift compares, for each resource, the mean of the last third of the
// samples taken after warmup with the mean of the first third. CPU is
// compared per API call, over the windows between samples. It returns an
// error when fewer than 7 samples follow the warm-up.
func soakDrift(samples []soakSample, warmup time.Duration) ([]driftCheck, error) {
	var s []soakSample
	for _, x := range samples {
		if x.at >= warmup {
			s = append(s, x)
		}
	}
	if len(s) < 7 {
		return nil, fmt.Errorf("only %d samples after the warm-up of %s; need 7", len(s), warmup)
	}
	perOp := func(cpu func(soakSample) float64) []float64 {
		var out []float64
		for i := 1; i < len(s); i++ {
			if dOps := s[i].ops - s[i-1].ops; dOps > 0 {
				out = append(out, (cpu(s[i])-cpu(s[i-1]))/float64(dOps))
			}
		}
		return out
	}
	col := func(f func(soakSample) float64) []float64 {
		out := make([]float64, len(s))
		for i, x := range s {
			out[i] = f(x)
		}
		return out
	}
	const mib = 1 << 20
	checks := []struct {
		name     string
		vals     []float64
		rel, abs float64 // allowed growth: last <= first*(1+rel) + abs
		unit     string
	}{
		{"guardian goroutines", col(func(x soakSample) float64 { return x.goroutines }), 0.10, 10, ""},
		{"guardian heap in use", col(func(x soakSample) float64 { return x.heapInuse }), 0.50, 16 * mib, "B"},
		{"guardian open files", col(func(x soakSample) float64 { return x.guardianFDs }), 0, 10, ""},
		{"guardian RSS", col(func(x soakSample) float64 { return x.guardianRSS }), 0.50, 64 * mib, "B"},
		{"guardian CPU per call", perOp(func(x soakSample) float64 { return x.guardianCPU }), 0.50, 0, "s"},
		{"nats-server open files", col(func(x soakSample) float64 { return x.natsFDs }), 0, 10, ""},
		// The server's memory also follows what the streams keep: the
		// records and events (GUARDIAN_APPROVAL_RETENTION, 11m here)
		// and the audit trail, which grows by design.
		{"nats-server memory", col(func(x soakSample) float64 { return x.natsRSS }), 0.50, 64 * mib, "B"},
		{"nats-server CPU per call", perOp(func(x soakSample) float64 { return x.natsCPU }), 0.50, 0, "s"},
	}
	out := make([]driftCheck, 0, len(checks))
	for _, c := range checks {
		first, last := thirds(c.vals)
		out = append(out, driftCheck{name: c.name, first: first, last: last, rel: c.rel, abs: c.abs, unit: c.unit})
	}
	return out, nil
}

// thirds returns the means of the first and the last third of vs.
func thirds(vs []float64) (first, last float64) {
	k := max(1, len(vs)/3)
	mean := func(xs []float64) float64 {
		t := 0.0
		for _, x := range xs {
			t += x
		}
		return t / float64(len(xs))
	}
	return mean(vs[:k]), mean(vs[len(vs)-k:])
}

func soakUnit(v float64, unit string) string {
	switch unit {
	case "B":
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case "s":
		return fmt.Sprintf("%.1f µs", v*1e6)
	}
	return fmt.Sprintf("%.0f", v)
}

// logSoakSamples prints the samples as a table.
func logSoakSamples(t *testing.T, s []soakSample) {
	var b strings.Builder
	fmt.Fprintf(&b, "%8s %9s | %6s %9s %4s %11s %9s | %9s %4s %11s\n",
		"t", "calls", "gorout", "heap MiB", "fds", "cpu µs/call", "rss MiB", "nats MiB", "fds", "cpu µs/call")
	for i, x := range s {
		gc, nc := "-", "-"
		if i > 0 && x.ops > s[i-1].ops {
			dOps := float64(x.ops - s[i-1].ops)
			gc = fmt.Sprintf("%.1f", (x.guardianCPU-s[i-1].guardianCPU)/dOps*1e6)
			nc = fmt.Sprintf("%.1f", (x.natsCPU-s[i-1].natsCPU)/dOps*1e6)
		}
		fmt.Fprintf(&b, "%8s %9d | %6.0f %9.1f %4.0f %11s %9.1f | %9.1f %4.0f %11s\n",
			x.at.Round(time.Second), x.ops, x.goroutines, x.heapInuse/(1<<20), x.guardianFDs, gc, x.guardianRSS/(1<<20),
			x.natsRSS/(1<<20), x.natsFDs, nc)
	}
	t.Logf("soak samples (guardian | nats-server):\n%s", b.String())
}

// scrapeMetrics returns the unlabelled samples of a Prometheus text
// exposition at url.
func scrapeMetrics(url string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

// procStats reads a process's CPU time (user + system, seconds), resident
// memory (bytes) and open files from /proc.
func procStats(pid int) (cpu, rss, fds float64, err error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	// Fields after the command name, which is in parentheses: state is
	// the first, utime the 12th and stime the 13th.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(f) < 13 {
		return 0, 0, 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	const clkTck = 100 // USER_HZ on Linux
	cpu = (ut + st) / clkTck
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			rss = kb * 1024
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	return cpu, rss, float64(len(ents)), nil
}

// natsProcess is a nats-server run as a process of its own.
type natsProcess struct {
	cmd *exec.Cmd
	url string
	dir string
}

// stop stops the server gracefully (it writes its stores' state) and
// waits for it to exit.
func (p *natsProcess) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("nats-server did not stop within 30s of SIGTERM")
	}
}

var natsBuild struct {
	once sync.Once
	path string
	err  error
}

// startNATSProcess builds nats-server (the version in go.mod) once per run
// and starts it with JetStream on a free loopback port; it is killed when
// the test ends.
func startNATSProcess(t *testing.T) *natsProcess {
	t.Helper()
	natsBuild.once.Do(func() {
		path := filepath.Join(binDir, "nats-server")
		out, err := exec.Command(goTool(), "build", "-o", path, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			natsBuild.err = fmt.Errorf("go build nats-server: %v\n%s", err, out)
			return
		}
		natsBuild.path = path
	})
	if natsBuild.err != nil {
		t.Fatal(natsBuild.err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	p := &natsProcess{dir: t.TempDir(), url: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	p.cmd = exec.Command(natsBuild.path, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", p.dir)
	p.cmd.Stdout, p.cmd.Stderr = io.Discard, io.Discard
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	if !poll(30*time.Second, 50*time.Millisecond, func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatalf("nats-server did not listen on %d within 30s", port)
	}
	return p
}
