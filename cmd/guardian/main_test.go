package main

// The tests build the guardian binary once (TestMain) and drive it as a user
// would: `guardian serve` on a temporary data directory with an embedded
// nats-server and HTTP on ports the kernel picks (127.0.0.1:0, read back from
// the logs, so parallel test runs on one machine never collide), requests
// over plain NATS, and the CLI as a subprocess.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// bin is the guardian binary TestMain built, for the CLI; serveBin is the
// one `guardian serve` runs from: built with the race detector when the
// tests run with it, so that the service's own races fail the tests. (A
// race-enabled binary starts several times slower, too slow for dozens of
// CLI runs on a loaded machine.)
var bin, serveBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "guardian-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "guardian tests:", err)
		os.Exit(1)
	}
	bin, serveBin = filepath.Join(dir, "guardian"), filepath.Join(dir, "guardian")
	builds := [][]string{{"build", "-o", bin, "."}}
	if raceEnabled {
		serveBin = filepath.Join(dir, "guardian-race")
		builds = append(builds, []string{"build", "-race", "-o", serveBin, "."})
	}
	errs := make([]error, len(builds))
	var wg sync.WaitGroup
	for i, args := range builds {
		wg.Go(func() {
			if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "guardian tests:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// baseEnv is the test process's environment without GUARDIAN_* variables,
// so that a developer's settings never leak into a test.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GUARDIAN_") {
			env = append(env, kv)
		}
	}
	return env
}

// lockedBuffer is a bytes.Buffer safe for one writer and many readers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// guardian is a `guardian serve` process.
type guardian struct {
	t       *testing.T
	dir     string
	env     []string
	cmd     *exec.Cmd
	logs    *lockedBuffer
	exited  chan struct{}
	waitErr error
	natsURL string
	httpURL string
}

// testEnv is the configuration every test server starts with: short
// approval timeouts and a short shutdown bound. Tests add or override
// variables (the last value of a variable wins).
var testEnv = []string{
	"GUARDIAN_LOG_FORMAT=json",
	"GUARDIAN_LOG_LEVEL=info",
	"GUARDIAN_APPROVAL_MIN_TIMEOUT=1s",
	"GUARDIAN_APPROVAL_GRACE_PERIOD=0s",
	"GUARDIAN_APPROVAL_WARNING_BEFORE=1s",
	"GUARDIAN_SHUTDOWN_TIMEOUT=10s",
}

// startGuardian runs `guardian serve` on data directory dir (a new one when
// empty) and waits until /readyz answers 200. The process is stopped with
// SIGTERM when the test ends, and the test fails if its logs report a data
// race.
func startGuardian(t *testing.T, dir string, env ...string) *guardian {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	g := &guardian{t: t, dir: dir, logs: &lockedBuffer{}, exited: make(chan struct{})}
	g.env = append(append(append(baseEnv(), testEnv...),
		"GUARDIAN_DATA_DIR="+dir,
		"GUARDIAN_EMBEDDED_LISTEN=127.0.0.1:0",
		"GUARDIAN_HTTP_ADDR=127.0.0.1:0",
	), env...)
	g.cmd = exec.Command(serveBin, "serve")
	g.cmd.Env = g.env
	g.cmd.Stdout = g.logs
	g.cmd.Stderr = g.logs
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start guardian serve: %v", err)
	}
	go func() {
		g.waitErr = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(func() {
		g.stop()
		if strings.Contains(g.logs.String(), "DATA RACE") {
			t.Errorf("guardian serve reported a data race:\n%s", g.logs.String())
		}
		if t.Failed() {
			t.Logf("guardian serve logs (%s):\n%s", dir, tailLines(g.logs.String(), 60))
		}
	})

	g.httpURL = "http://" + g.waitLog(t, "http listening", 90*time.Second)["addr"].(string)
	for _, kv := range g.env {
		if u, ok := strings.CutPrefix(kv, "GUARDIAN_NATS_URL="); ok {
			g.natsURL = u // the last one wins, as in the process
		}
	}
	if g.natsURL == "" {
		g.natsURL = g.waitLog(t, "embedded nats-server started", 90*time.Second)["url"].(string)
	}
	g.waitLog(t, "guardian ready", 90*time.Second)
	eventually(t, 30*time.Second, func() (bool, string) {
		code, body := httpGet(t, g.httpURL+"/readyz")
		return code == http.StatusOK && body == "ready\n", fmt.Sprintf("/readyz: %d %q", code, body)
	})
	return g
}

// stop sends SIGTERM and waits for the process, at most 30s, then kills it.
// It returns the exit code (-1 when killed).
func (g *guardian) stop() int {
	select {
	case <-g.exited:
	default:
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.exited:
		case <-time.After(30 * time.Second):
			g.t.Errorf("guardian serve did not stop within 30s of SIGTERM; killing it")
			_ = g.cmd.Process.Kill()
			<-g.exited
			return -1
		}
	}
	var ee *exec.ExitError
	if errors.As(g.waitErr, &ee) {
		return ee.ExitCode()
	}
	return 0
}

// logLines returns the decoded JSON log lines.
func (g *guardian) logLines() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(g.logs.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// waitLog waits for a log line with msg and returns it.
func (g *guardian) waitLog(t *testing.T, msg string, d time.Duration) map[string]any {
	t.Helper()
	var found map[string]any
	deadline := time.Now().Add(d)
	for found == nil {
		for _, l := range g.logLines() {
			if l["msg"] == msg {
				found = l
				break
			}
		}
		if found != nil {
			break
		}
		select {
		case <-g.exited:
			t.Fatalf("guardian serve exited (%v) before logging %q:\n%s", g.waitErr, msg, g.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("guardian serve did not log %q within %s:\n%s", msg, d, g.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return found
}

// connect returns a NATS connection to g, closed when the test ends.
func (g *guardian) connect(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(g.natsURL, nats.MaxReconnects(0))
	if err != nil {
		t.Fatalf("connect to %s: %v", g.natsURL, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// cli runs `guardian args...` against g and returns its output and exit code.
func (g *guardian) cli(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runGuardian(t, append(slicesClone(g.env), "GUARDIAN_NATS_URL="+g.natsURL), args...)
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// runGuardian runs the binary with env and args, at most a minute.
func runGuardian(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("guardian %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("guardian %s did not finish within a minute\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), o.String(), e.String())
	}
	if strings.Contains(e.String(), "DATA RACE") {
		t.Errorf("guardian %s reported a data race:\n%s", strings.Join(args, " "), e.String())
	}
	return o.String(), e.String(), code
}

// reply is a decoded answer of the request/reply API.
type reply struct {
	Code   string // micro error code, "" on success
	Desc   string // micro error description
	Header nats.Header
	Data   []byte
	Err    kvapprovals.APIError // the error body, when Code is set
}

// request sends body (raw []byte/string, or anything JSON-encodable) to
// subject with headers hdr and decodes the reply.
func request(t *testing.T, nc *nats.Conn, subject string, body any, hdr map[string]string) reply {
	t.Helper()
	msg := nats.NewMsg(subject)
	switch b := body.(type) {
	case []byte:
		msg.Data = b
	case string:
		msg.Data = []byte(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		msg.Data = data
	}
	for k, v := range hdr {
		msg.Header.Set(k, v)
	}
	m, err := nc.RequestMsg(msg, 20*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	r := reply{Header: m.Header, Data: m.Data, Code: m.Header.Get(micro.ErrorCodeHeader), Desc: m.Header.Get(micro.ErrorHeader)}
	if r.Code != "" {
		var body struct {
			Error kvapprovals.APIError `json:"error"`
		}
		if err := json.Unmarshal(m.Data, &body); err != nil {
			t.Fatalf("request %s: error reply %s %q with a body that is not {\"error\":...}: %q", subject, r.Code, r.Desc, m.Data)
		}
		r.Err = body.Error
	}
	return r
}

// ok fails the test unless r is a success, and decodes it into out.
func (r reply) ok(t *testing.T, out any) {
	t.Helper()
	if r.Code != "" {
		t.Fatalf("want success, got %s %q: %s", r.Code, r.Desc, r.Data)
	}
	if out != nil {
		if err := json.Unmarshal(r.Data, out); err != nil {
			t.Fatalf("decode reply %q: %v", r.Data, err)
		}
	}
}

// wantError fails the test unless r is an error with code, status and (when
// not empty) field.
func (r reply) wantError(t *testing.T, code int, status, field string) {
	t.Helper()
	if r.Code != fmt.Sprint(code) || r.Err.Code != code || r.Err.Status != status {
		t.Fatalf("want %d %s, got header code %q (%q), body %s", code, status, r.Code, r.Desc, r.Data)
	}
	if r.Err.Field != field {
		t.Fatalf("want field %q, got %q in %s", field, r.Err.Field, r.Data)
	}
	if r.Desc == "" || r.Err.Message == "" {
		t.Fatalf("error reply without a message: %q, %s", r.Desc, r.Data)
	}
}

func subj(tenant, op string) string { return "guardian.v1." + tenant + ".approvals." + op }

// eventually polls cond until it holds, at most d, then fails with its
// last message.
func eventually(t *testing.T, d time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// auditEvents reads every event of the audit stream through JetStream.
func auditEvents(t *testing.T, nc *nats.Conn) []auditEntry {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, "GUARDIAN_AUDIT", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"guardian.v1.audit.*.*"}})
	if err != nil {
		t.Fatalf("audit consumer: %v", err)
	}
	var out []auditEntry
	for {
		batch, err := cons.FetchNoWait(500)
		if err != nil {
			t.Fatalf("fetch audit events: %v", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var e auditEntry
			if err := json.Unmarshal(m.Data(), &e); err != nil {
				t.Fatalf("audit event %s: %v", m.Subject(), err)
			}
			e.Subject = m.Subject()
			out = append(out, e)
		}
		if batch.Error() != nil {
			t.Fatalf("fetch audit events: %v", batch.Error())
		}
		if n == 0 {
			return out
		}
	}
}

// auditEntry is an audit event as stored, with its subject.
type auditEntry struct {
	Subject           string            `json:"-"`
	EventID           string            `json:"event_id"`
	Code              string            `json:"timeout_category"`
	Operation         string            `json:"operation"`
	TenantID          string            `json:"tenant_id"`
	CorrelationID     string            `json:"correlation_id"`
	TraceID           string            `json:"trace_id"`
	AdditionalContext map[string]string `json:"additional_context"`
	FallbackUsed      bool              `json:"fallback_used"`
	BudgetSource      string            `json:"budget_source"`
}

// findAudit waits for an audit event that match selects.
func findAudit(t *testing.T, nc *nats.Conn, what string, match func(auditEntry) bool) auditEntry {
	t.Helper()
	var found auditEntry
	eventually(t, 20*time.Second, func() (bool, string) {
		evs := auditEvents(t, nc)
		for _, e := range evs {
			if match(e) {
				found = e
				return true, ""
			}
		}
		return false, fmt.Sprintf("no audit event %s among %d", what, len(evs))
	})
	return found
}
