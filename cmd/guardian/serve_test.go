package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// TestShutdownLosesNoAcceptedRequest sends a stream of requests from
// several clients while SIGTERM arrives: guardian exits 0 within its
// shutdown timeout, and after a restart on the same data directory every
// request that got a success reply is there, still pending, and a timer
// that fell due around the restart still fires.
func TestShutdownLosesNoAcceptedRequest(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGuardian(t, dir, "GUARDIAN_SHUTDOWN_TIMEOUT=10s")
	nc := g.connect(t)

	var tick kvapprovals.Record
	request(t, nc, subj("load", "request"), map[string]string{"id": "tick", "session_id": "s-tick", "requested_by": "r", "timeout": "3s"}, nil).ok(t, &tick)

	res := loadUntilSIGTERM(t, g, nc, "load")
	if res.code != 0 {
		t.Fatalf("guardian exited %d after SIGTERM", res.code)
	}
	if res.took > 15*time.Second {
		t.Errorf("shutdown took %s with GUARDIAN_SHUTDOWN_TIMEOUT=10s", res.took)
	}
	g.waitLog(t, "guardian stopped", time.Second)
	accepted := res.accepted

	g2 := startGuardian(t, dir)
	nc2 := g2.connect(t)
	have := map[string]kvapprovals.Status{}
	cursor := ""
	for {
		var page kvapprovals.ListResult
		request(t, nc2, subj("load", "list"), map[string]any{"limit": 1000, "cursor": cursor}, nil).ok(t, &page)
		if page.Partial {
			t.Fatalf("list is partial")
		}
		for _, r := range page.Items {
			have[r.ID] = r.Status
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	lost := 0
	for id := range accepted {
		if st, ok := have[id]; !ok || st != kvapprovals.StatusPending {
			lost++
			if lost <= 10 {
				t.Errorf("accepted request %s after restart: present %v, status %q", id, ok, st)
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d accepted requests lost or changed by the restart", lost, len(accepted))
	}

	// The 3s timer fell due around the restart; it still fires, once.
	eventually(t, 30*time.Second, func() (bool, string) {
		var r kvapprovals.Record
		request(t, nc2, subj("load", "get"), `{"id":"tick"}`, nil).ok(t, &r)
		return r.Status == kvapprovals.StatusExpired, "tick is " + string(r.Status)
	})
	findAudit(t, nc2, "expiry of load/tick", func(e auditEntry) bool {
		return e.Code == "TIMEOUT_APPROVAL_EXPIRED" && e.AdditionalContext["approval_id"] == "tick"
	})
}

// TestDegradedReads runs guardian with an APPROVAL_CHECK budget no read can
// meet: list degrades to a partial answer within its budget, reads and
// decisions fail with 503 and the TIMEOUT_* code, and the timeout's audit
// event carries the tenant of the subject and the request's correlation
// and trace ids.
func TestDegradedReads(t *testing.T) {
	t.Parallel()
	g := startGuardian(t, "", "GUARDIAN_TIMEOUT_APPROVAL_CHECK=1ns", "GUARDIAN_APPROVAL_MAX_PENDING=0")
	nc := g.connect(t)
	const tenant = "degr"
	request(t, nc, subj(tenant, "request"), map[string]string{"id": "d1", "session_id": "s", "requested_by": "alice"}, nil).ok(t, nil)

	start := time.Now()
	var l kvapprovals.ListResult
	hdr := map[string]string{kvapprovals.CorrelationHeader: "corr-degraded", "traceparent": testTraceparent}
	request(t, nc, subj(tenant, "list"), "", hdr).ok(t, &l)
	if took := time.Since(start); !l.Partial || took > 5*time.Second {
		t.Fatalf("list = %+v after %s, want partial at once", l, took)
	}

	for op, body := range map[string]string{
		"get":     `{"id":"d1"}`,
		"approve": `{"id":"d1","decided_by":"bob"}`,
		"deny":    `{"id":"d1","decided_by":"bob"}`,
	} {
		r := request(t, nc, subj(tenant, op), body, nil)
		r.wantError(t, 503, kvapprovals.APITimeout, "")
		if r.Err.TimeoutCode != "TIMEOUT_APPROVAL_CHECK" {
			t.Errorf("%s: timeout_code %q, want TIMEOUT_APPROVAL_CHECK", op, r.Err.TimeoutCode)
		}
	}

	ev := findAudit(t, nc, "TIMEOUT_APPROVAL_CHECK of the list", func(e auditEntry) bool {
		return e.Code == "TIMEOUT_APPROVAL_CHECK" && e.CorrelationID == "corr-degraded"
	})
	if ev.TenantID != tenant || ev.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || !ev.FallbackUsed ||
		ev.Subject != "guardian.v1.audit.degr.TIMEOUT_APPROVAL_CHECK" || !strings.Contains(ev.Operation, "approval list") {
		t.Errorf("list timeout event %+v", ev)
	}

	stdout, stderr, code := g.cli(t, "approval", "list", "--tenant", tenant)
	if code != 0 || !strings.Contains(stdout, "(partial: the listing ran out of time") {
		t.Errorf("CLI list: exit %d\n%s%s", code, stdout, stderr)
	}
	_, stderr, code = g.cli(t, "approval", "approve", "--tenant", tenant, "--id", "d1", "--by", "bob")
	if code != 1 || !strings.Contains(stderr, "guardian: 503 timeout:") || !strings.Contains(stderr, "[TIMEOUT_APPROVAL_CHECK]") {
		t.Errorf("CLI approve: exit %d, stderr %q", code, stderr)
	}

	if v, ok := metricValue(scrape(t, g), "guardian_timeouts_total", map[string]string{"code": "TIMEOUT_APPROVAL_CHECK"}); v < 5 {
		t.Errorf("guardian_timeouts_total{code=TIMEOUT_APPROVAL_CHECK} = %v (present %v), want >= 5", v, ok)
	}

	// A part that fails stops guardian, in order and with its error: here
	// someone deletes the expirer's durable consumer.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(t.Context(), "GUARDIAN_TIMERS", "guardian-expirer"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("guardian still runs 30s after its expirer lost its consumer")
	}
	if code := g.stop(); code != 1 {
		t.Errorf("exit code %d after a part failed, want 1", code)
	}
	var stopped map[string]any
	for _, line := range g.logLines() {
		if line["msg"] == "guardian stopped" && line["level"] == "ERROR" {
			stopped = line
		}
	}
	if !strings.HasPrefix(fmt.Sprint(stopped["err"]), "expirer: ") {
		t.Errorf("guardian stopped with %v: want an error naming the expirer", stopped)
	}
}

// TestExternalNATS runs guardian against a NATS server of its own
// (GUARDIAN_NATS_URL): /readyz and the consumer metrics report the server
// going away, and guardian recovers when it is back.
func TestExternalNATS(t *testing.T) {
	t.Parallel()
	ns := natstest.Run(t)
	g := startGuardian(t, "", "GUARDIAN_NATS_URL="+ns.ClientURL())
	if strings.Contains(g.logs.String(), "embedded nats-server started") {
		t.Fatal("guardian started an embedded server although GUARDIAN_NATS_URL is set")
	}

	ns.Shutdown()
	ns.WaitForShutdown()
	eventually(t, 20*time.Second, func() (bool, string) {
		code, body := httpGet(t, g.httpURL+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "not ready: nats:"), fmt.Sprintf("/readyz %d %q", code, body)
	})
	labels := map[string]string{"consumer": "expirer", "stream": "GUARDIAN_TIMERS", "durable": "guardian-expirer"}
	start := time.Now()
	if v, ok := metricValue(scrape(t, g), "guardian_consumer_up", labels); !ok || v != 0 {
		t.Errorf("guardian_consumer_up with NATS down = %v (present %v), want 0", v, ok)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a scrape with NATS down took %s", took)
	}

	natstest.Restart(t, ns) // same port and store
	eventually(t, 30*time.Second, func() (bool, string) {
		code, body := httpGet(t, g.httpURL+"/readyz")
		return code == http.StatusOK, fmt.Sprintf("/readyz %d %q", code, body)
	})
	if v, _ := metricValue(scrape(t, g), "guardian_consumer_up", labels); v != 1 {
		t.Errorf("guardian_consumer_up after NATS is back = %v, want 1", v)
	}
	nc := g.connect(t)
	var r kvapprovals.Record
	request(t, nc, subj("ext", "request"), map[string]string{"id": "x1", "session_id": "s", "requested_by": "r"}, nil).ok(t, &r)
	if r.Status != kvapprovals.StatusPending {
		t.Fatalf("request after NATS came back: %+v", r)
	}

	// SIGTERM under load, NATS staying up: every request that reached
	// guardian is answered (none times out), and every accepted one is in
	// the records bucket. This also stops guardian before the server's
	// cleanup shuts the server down.
	res := loadUntilSIGTERM(t, g, nc, "ext")
	if res.code != 0 {
		t.Errorf("guardian exited %d after SIGTERM", res.code)
	}
	if res.noReply > 0 {
		t.Errorf("%d requests got no reply at all: the shutdown dropped requests in flight", res.noReply)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), "GUARDIAN_APPROVALS")
	if err != nil {
		t.Fatal(err)
	}
	for id := range res.accepted {
		if _, err := kv.Get(t.Context(), "ext."+id); err != nil {
			t.Fatalf("accepted request %s: %v", id, err)
		}
	}
}

func TestReadiness(t *testing.T) {
	var r readiness
	if got := r.failing(); len(got) != 1 || got[0] != "starting" {
		t.Fatalf("no checks: %v", got)
	}
	var up atomic.Bool
	r.add("b", func() error { return nil })
	r.add("c", func() error { return errors.New("c down") })
	r.add("a", func() error {
		if up.Load() {
			return nil
		}
		return errors.New("a down")
	})
	if got := strings.Join(r.failing(), "|"); got != "a: a down|c: c down" {
		t.Fatalf("failing = %q", got)
	}
	up.Store(true)
	r.add("c", func() error { return nil })
	if got := r.failing(); len(got) != 0 {
		t.Fatalf("failing = %v", got)
	}
}

// loadResult is what loadUntilSIGTERM saw.
type loadResult struct {
	accepted    map[string]bool // ids of requests with a success reply
	afterSignal int64           // of them, replies that came after SIGTERM
	noReply     int64           // requests that timed out without any reply
	refused     map[string]int  // error replies by code
	code        int             // guardian's exit code
	took        time.Duration   // from SIGTERM to exit
}

// loadUntilSIGTERM sends approval requests for tenant from 8 clients until
// at least 150 are accepted, then sends g SIGTERM while they go on, and
// returns once g has exited.
func loadUntilSIGTERM(t *testing.T, g *guardian, nc *nats.Conn, tenant string) loadResult {
	t.Helper()
	var (
		mu        sync.Mutex
		res       = loadResult{accepted: map[string]bool{}, refused: map[string]int{}}
		after     atomic.Int64
		noReply   atomic.Int64
		signalled atomic.Bool
	)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				msg := nats.NewMsg(subj(tenant, "request"))
				msg.Data = fmt.Appendf(nil, `{"id":%q,"session_id":"s","requested_by":"r","timeout":"1h"}`, id)
				m, err := nc.RequestMsg(msg, 5*time.Second)
				switch {
				case err != nil && nc.IsClosed():
					return
				case errors.Is(err, nats.ErrTimeout):
					// The request reached no one who answered it.
					noReply.Add(1)
					continue
				case err != nil:
					// No responders once the service stopped: allowed.
					time.Sleep(5 * time.Millisecond)
					continue
				case m.Header.Get(micro.ErrorCodeHeader) != "":
					mu.Lock()
					res.refused[m.Header.Get(micro.ErrorCodeHeader)]++
					mu.Unlock()
					continue
				}
				mu.Lock()
				res.accepted[id] = true
				mu.Unlock()
				if signalled.Load() {
					after.Add(1)
				}
			}
		})
	}
	eventually(t, 60*time.Second, func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(res.accepted) >= 150, fmt.Sprintf("%d requests accepted", len(res.accepted))
	})
	signalled.Store(true)
	start := time.Now()
	res.code = g.stop()
	res.took = time.Since(start)
	cancel() // requests still out run into their answer or their timeout
	wg.Wait()
	res.afterSignal, res.noReply = after.Load(), noReply.Load()
	t.Logf("%d accepted (%d after SIGTERM), %d without reply, refused %v, shutdown took %s",
		len(res.accepted), res.afterSignal, res.noReply, res.refused, res.took.Round(time.Millisecond))
	for code := range res.refused {
		if !strings.HasPrefix(code, "5") {
			t.Errorf("requests refused with %s during the shutdown: %v", code, res.refused)
		}
	}
	return res
}

func TestGroup(t *testing.T) {
	blocker := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	boom := errors.New("boom")
	for name, tt := range map[string]struct {
		part func(context.Context) error
		want error
	}{
		"a part fails":          {func(context.Context) error { return boom }, boom},
		"a part returns early":  {func(context.Context) error { return nil }, errStoppedEarly},
		"the parent is stopped": {blocker, nil},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			var g group
			g.add("blocker", blocker)
			g.add("part", tt.part)
			done := make(chan error, 1)
			go func() { done <- g.run(ctx) }()
			if tt.want == nil {
				cancel()
			}
			defer cancel()
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) || (err != nil && !strings.HasPrefix(err.Error(), "part: ")) {
					t.Fatalf("run = %v, want %v from part", err, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the group did not stop the other part")
			}
		})
	}
}

// TestSpoolLocationSaid: with an external NATS and no GUARDIAN_DATA_DIR,
// serve says at start that the audit spool is in the working directory,
// with its absolute path.
func TestSpoolLocationSaid(t *testing.T) {
	t.Parallel()
	ns := natstest.Run(t)
	wd := t.TempDir()
	var logs lockedBuffer
	cmd := exec.Command(serveBin, "serve")
	cmd.Dir = wd
	cmd.Env = append(append(baseEnv(), testEnv...), "GUARDIAN_NATS_URL="+ns.ClientURL(), "GUARDIAN_HTTP_ADDR=")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	want := filepath.Join(wd, "guardian-data", "audit-spool")
	eventually(t, 60*time.Second, func() (bool, string) {
		s := logs.String()
		return strings.Contains(s, "audit spool in the working directory") && strings.Contains(s, want), s
	})
}
