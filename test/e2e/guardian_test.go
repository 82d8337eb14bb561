package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// guardian is one guardian process ("guardian serve") pointed at a
// test-owned NATS through GUARDIAN_NATS_URL. It can be killed and started
// again with the same environment and data directory (the audit spool).
// Every process it starts is killed when the test ends.
type guardian struct {
	t       *testing.T
	name    string
	env     []string
	dataDir string

	mu     sync.Mutex
	runs   int
	cmd    *exec.Cmd
	exited chan struct{} // of the current run
	lines  []logLine
}

// logLine is one JSON log line of a guardian process.
type logLine struct {
	Run    int
	Raw    string
	Level  string
	Msg    string
	Fields map[string]any
}

// startGuardian starts guardian serve with GUARDIAN_NATS_URL=natsURL, its
// own data directory, JSON logs and HTTP off, plus env, and waits until it
// logs "guardian ready".
func startGuardian(t *testing.T, name, natsURL string, env map[string]string) *guardian {
	t.Helper()
	g := &guardian{t: t, name: name, dataDir: t.TempDir()}
	vars := map[string]string{
		"GUARDIAN_NATS_URL":         natsURL,
		"GUARDIAN_DATA_DIR":         g.dataDir,
		"GUARDIAN_HTTP_ADDR":        "",
		"GUARDIAN_LOG_FORMAT":       "json",
		"GUARDIAN_LOG_LEVEL":        "info",
		"GUARDIAN_INSTANCE_ID":      name,
		"GUARDIAN_SHUTDOWN_TIMEOUT": "2s",
	}
	for k, v := range env {
		vars[k] = v
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GUARDIAN_") {
			g.env = append(g.env, kv)
		}
	}
	for k, v := range vars {
		g.env = append(g.env, k+"="+v)
	}
	t.Cleanup(func() {
		g.kill()
		if t.Failed() {
			t.Logf("last log lines of %s:\n%s", g.name, g.tail(40))
		}
	})
	g.start()
	return g
}

// start starts a new run and waits for "guardian ready".
func (g *guardian) start() {
	g.t.Helper()
	bin := guardianBinary(g.t)
	cmd := exec.Command(bin, "serve")
	cmd.Env = g.env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		g.t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		g.t.Fatalf("start %s: %v", g.name, err)
	}
	exited := make(chan struct{})
	g.mu.Lock()
	g.runs++
	run := g.runs
	g.cmd, g.exited = cmd, exited
	g.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			g.addLine(run, sc.Text())
		}
		err := cmd.Wait()
		g.addLine(run, fmt.Sprintf(`{"level":"EXIT","msg":"process exited","err":%q}`, fmt.Sprint(err)))
		close(exited)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if g.find(run, func(l logLine) bool { return l.Msg == "guardian ready" }) != nil {
			return
		}
		select {
		case <-exited:
			g.t.Fatalf("%s exited before it was ready:\n%s", g.name, g.tail(30))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s not ready within 60s:\n%s", g.name, g.tail(30))
		}
	}
}

func (g *guardian) addLine(run int, raw string) {
	l := logLine{Run: run, Raw: raw}
	if json.Unmarshal([]byte(raw), &l.Fields) == nil {
		l.Level, _ = l.Fields["level"].(string)
		l.Msg, _ = l.Fields["msg"].(string)
	}
	g.mu.Lock()
	g.lines = append(g.lines, l)
	g.mu.Unlock()
}

// find returns the first line of run (0: any run) that matches.
func (g *guardian) find(run int, match func(logLine) bool) *logLine {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := range g.lines {
		if (run == 0 || g.lines[i].Run == run) && match(g.lines[i]) {
			l := g.lines[i]
			return &l
		}
	}
	return nil
}

// count returns how many lines of any run match.
func (g *guardian) count(match func(logLine) bool) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, l := range g.lines {
		if match(l) {
			n++
		}
	}
	return n
}

func (g *guardian) tail(n int) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var b strings.Builder
	for _, l := range g.lines[max(0, len(g.lines)-n):] {
		fmt.Fprintf(&b, "  [%s run %d] %s\n", g.name, l.Run, l.Raw)
	}
	return b.String()
}

// run returns the number of the current run.
func (g *guardian) run() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.runs
}

// running reports whether the current run's process is alive.
func (g *guardian) running() bool {
	g.mu.Lock()
	exited := g.exited
	g.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to the current run and waits until it is gone.
func (g *guardian) kill() { g.signal(syscall.SIGKILL) }

func (g *guardian) signal(sig syscall.Signal) {
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// assertAlive fails the test when the guardian process exited by itself.
func (g *guardian) assertAlive() {
	g.t.Helper()
	if !g.running() {
		g.t.Errorf("%s exited by itself:\n%s", g.name, g.tail(30))
	}
}
