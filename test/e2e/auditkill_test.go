package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// TestAuditReportKilled: clients send 10,000 guardian.v1.audit.report
// requests, 24 at a time, and the only guardian is killed with SIGKILL
// six times while they run, each time started again on the same data
// directory (its audit spool) and NATS. A failed request is sent again with the same body
// (so the same event id) until it gets a reply. Once the restarted
// guardian's spool is empty, every event whose request got an event_id
// reply is in GUARDIAN_AUDIT exactly once, and no event is in it twice.
func TestAuditReportKilled(t *testing.T) {
	skipShort(t)
	const n, workers = 10_000, 24
	ns := startNATS(t, nil)
	g := startGuardian(t, "g1", ns.url, map[string]string{"GUARDIAN_HTTP_ADDR": "127.0.0.1:0"})
	nc, js := connect(t, ns.url)
	c := newClient(t, nc, 2*time.Second)
	ctx := t.Context()

	// Each event has its own times, set once, so that a retry reports the
	// same event and gets the same id.
	base := time.Now().UTC()
	event := func(i int) jsguard.Event {
		ts := base.Add(time.Duration(i) * time.Microsecond)
		return jsguard.Event{
			Code: "TIMEOUT_KV_GET", Operation: fmt.Sprintf("kv get orders/o%05d", i), TimeoutSeconds: 5,
			ElapsedSeconds: 5, TenantID: "kill", CorrelationID: fmt.Sprintf("kill-%05d", i),
			Timestamp: ts, StartedAt: ts.Add(-5 * time.Second),
		}
	}
	var (
		mu      sync.Mutex
		acked   = map[string]int{} // event id -> request index
		latency []time.Duration    // of the replies that succeeded at once
		replies atomic.Int64
		retries atomic.Int64
		next    atomic.Int64
	)
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				ev := event(i)
				for attempt := 1; ctx.Err() == nil; attempt++ {
					sent := time.Now()
					id, err := c.Report(ctx, ev)
					if err == nil {
						mu.Lock()
						acked[id] = i
						if attempt == 1 {
							latency = append(latency, time.Since(sent))
						}
						mu.Unlock()
						replies.Add(1)
						break
					}
					if !retryable(err) {
						t.Errorf("report %d: %v", i, err)
						return
					}
					retries.Add(1)
					time.Sleep(50 * time.Millisecond) // pacing between attempts
				}
			}
		})
	}
	t.Cleanup(wg.Wait) // t.Context() ends first, so the workers stop

	// Kills after each seventh of the replies: each catches the replies
	// whose events are not yet durable, if any.
	const kills = 6
	var atKill []int64
	var restarted []string
	var firstRate float64 // replies per second before the first kill
	for k := int64(1); k <= kills; k++ {
		if !poll(time.Minute, time.Millisecond, func() bool { return replies.Load() >= k*n/(kills+1) }) {
			t.Fatalf("%d of %d reports not answered within 1m", k*n/(kills+1), n)
		}
		atKill = append(atKill, replies.Load())
		if k == 1 {
			firstRate = float64(atKill[0]) / time.Since(start).Seconds()
		}
		killed := time.Now()
		g.kill()
		g.start()
		restarted = append(restarted, ms(time.Since(killed)))
	}
	wg.Wait()
	took := time.Since(start)
	if replies.Load() != n {
		t.Fatalf("%d of %d reports answered", replies.Load(), n)
	}

	// The restarted guardian's spool drains; then every acknowledged event
	// must be stored once.
	metricsURL := "http://" + g.httpAddr(g.run()) + "/metrics"
	var spool float64
	if !poll(30*time.Second, 50*time.Millisecond, func() bool {
		var ok bool
		spool, ok = scrapeGauge(metricsURL, "guardian_audit_spool_bytes")
		return ok && spool == 0
	}) {
		t.Fatalf("the audit spool still holds %v bytes 30s after the restart", spool)
	}
	stored := map[string]int{}
	readStream(t, js, "GUARDIAN_AUDIT", "guardian.v1.audit.kill.*", func(m jetstream.Msg) {
		stored[m.Headers().Get(jetstream.MsgIDHeader)]++
	})
	var lost, dup int
	for id := range acked {
		if stored[id] == 0 {
			lost++
		}
	}
	for _, k := range stored {
		if k > 1 {
			dup++
		}
	}
	sort.Slice(latency, func(a, b int) bool { return latency[a] < latency[b] })
	q := func(p float64) time.Duration { return latency[int(p*float64(len(latency)-1))] }
	t.Logf("audit.report: %d reports (%d workers) in %s with the kills; %.0f/s before the first kill; latency of first attempts p50 %s, p99 %s, max %s",
		n, workers, ms(took), firstRate, ms(q(0.5)), ms(q(0.99)), ms(q(1)))
	t.Logf("SIGKILL after %v replies, ready again after %v; %d attempts retried", atKill, restarted, retries.Load())
	t.Logf("audit.report killed: %d acknowledged, %d distinct events stored; LOST %d / DUPLICATED %d", len(acked), len(stored), lost, dup)
	if len(acked) != n {
		t.Errorf("%d distinct event ids acknowledged, want %d", len(acked), n)
	}
	if lost != 0 || dup != 0 {
		t.Errorf("lost %d acknowledged events, %d events stored more than once; want 0 and 0", lost, dup)
	}
	g.assertAlive()
}

// httpAddr returns the address a run of g logged as "http listening".
func (g *guardian) httpAddr(run int) string {
	g.t.Helper()
	l := g.find(run, func(l logLine) bool { return l.Msg == "http listening" })
	if l == nil {
		g.t.Fatalf("%s run %d logged no http address", g.name, run)
	}
	addr, _ := l.Fields["addr"].(string)
	return addr
}

// scrapeGauge returns the value of an unlabelled metric from a Prometheus
// text exposition at url.
func scrapeGauge(url, name string) (float64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v, true
			}
		}
	}
	return 0, false
}

// TestAuditShutdownSpools: audit events whose ack has not arrived when
// guardian shuts down gracefully (SIGTERM) are spooled, and the next start
// on the same data directory stores each once. The acks are held back by
// taking the event subjects out of GUARDIAN_AUDIT and answering them with a
// subscriber that never replies; the events are the TIMEOUT_APPROVAL_EXPIRED
// audits of approvals that expire meanwhile.
func TestAuditShutdownSpools(t *testing.T) {
	skipShort(t)
	const n = 10
	ns := startNATS(t, nil)
	env := map[string]string{
		"GUARDIAN_APPROVAL_GRACE_PERIOD":  "0s",
		"GUARDIAN_APPROVAL_MIN_TIMEOUT":   "1s",
		"GUARDIAN_APPROVAL_SEND_WARNINGS": "false",
		"GUARDIAN_TIMEOUT_NATS_PUBLISH":   "30s", // no ack times out during the test
		"GUARDIAN_AUDIT_ALERT_THRESHOLD":  "0",
		"GUARDIAN_SHUTDOWN_TIMEOUT":       "1s",
	}
	g := startGuardian(t, "g1", ns.url, env)
	nc, js := connect(t, ns.url)
	ctx := t.Context()

	st, err := js.Stream(ctx, "GUARDIAN_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	orig := st.CachedInfo().Config
	held := orig
	held.Subjects = []string{"guardian.v1.audit.seal"}
	if _, err := js.UpdateStream(ctx, held); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	unacked := map[string]bool{}
	sub, err := nc.Subscribe("guardian.v1.audit.*.*", func(m *nats.Msg) {
		mu.Lock()
		unacked[m.Header.Get(jetstream.MsgIDHeader)] = true
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, nc, 5*time.Second)
	for i := range n {
		in := kvapprovals.RequestInput{ID: fmt.Sprintf("s%d", i), SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(time.Second)}
		if _, err := c.Request(ctx, "down", in); err != nil {
			t.Fatal(err)
		}
	}
	if !poll(30*time.Second, 20*time.Millisecond, func() bool { mu.Lock(); defer mu.Unlock(); return len(unacked) == n }) {
		t.Fatalf("%d of %d expiry audits published", len(unacked), n)
	}

	g.signal(syscall.SIGTERM)
	if g.find(1, func(l logLine) bool { return l.Msg == "guardian stopped" }) == nil {
		t.Fatalf("no graceful stop:\n%s", g.tail(20))
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if _, err := js.UpdateStream(ctx, orig); err != nil {
		t.Fatal(err)
	}
	g.start()
	stored := map[string]int{}
	if !poll(30*time.Second, 50*time.Millisecond, func() bool {
		clear(stored)
		readStream(t, js, "GUARDIAN_AUDIT", "guardian.v1.audit.down.TIMEOUT_APPROVAL_EXPIRED", func(m jetstream.Msg) {
			stored[m.Headers().Get(jetstream.MsgIDHeader)]++
		})
		return len(stored) == n
	}) {
		t.Fatalf("%d of the %d audits unacknowledged at shutdown reached the stream after the restart", len(stored), n)
	}
	for id := range unacked {
		if stored[id] != 1 {
			t.Errorf("audit %s stored %d times, want 1", id, stored[id])
		}
	}
	t.Logf("%d audits unacknowledged at SIGTERM: spooled, and stored once after the restart", n)
	g.assertAlive()
}
