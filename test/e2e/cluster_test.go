package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// TestClusterLeaderKilled (scenario 5): guardian with GUARDIAN_REPLICAS=3
// on a 3-node cluster; the leader of the records stream is shut down in
// the middle of a steady request load. No acknowledged approval is lost,
// and requests succeed again within 10 s (printed; a hard failure above
// 30 s, where the machine's load cannot explain it).
func TestClusterLeaderKilled(t *testing.T) {
	skipShort(t)
	warmup := scale(2*time.Second, 5*time.Second)
	after := scale(8*time.Second, 25*time.Second)
	const workers = 8
	cl := natstest.RunCluster(t)
	urls := cl.URLs()
	g := startGuardian(t, "g1", urls, map[string]string{
		"GUARDIAN_REPLICAS":              "3",
		"GUARDIAN_AUDIT_ALERT_THRESHOLD": "0",
		"GUARDIAN_TIMEOUT_NATS_PUBLISH":  "3s",
		// Every request is a new pending approval of one tenant: no cap,
		// however many the run manages.
		"GUARDIAN_APPROVAL_MAX_PENDING": "0",
	})
	nc, js := connect(t, urls)
	c := newClient(t, nc, 2*time.Second)
	ctx := t.Context()

	var leader *server.Server
	if !poll(20*time.Second, 50*time.Millisecond, func() bool { leader = cl.StreamLeader(recordsStream); return leader != nil }) {
		t.Fatalf("no leader for %s", recordsStream)
	}

	type attempt struct {
		key        string
		sent, done time.Time
		err        error
	}
	var mu sync.Mutex
	var attempts []attempt
	var killedAt time.Time
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for k := 0; ; k++ {
				id := fmt.Sprintf("w%d-%06d", w, k)
				in := kvapprovals.RequestInput{ID: id, SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(10 * time.Minute)}
				// Retry the same id until it is acknowledged, as a client would.
				for {
					select {
					case <-stop:
						return
					default:
					}
					sent := time.Now()
					r, err := c.Request(ctx, "acme", in)
					mu.Lock()
					attempts = append(attempts, attempt{key: "acme." + id, sent: sent, done: time.Now(), err: err})
					mu.Unlock()
					if err == nil && r.ID == id {
						break
					}
					if err != nil && !retryable(err) {
						t.Errorf("request %s: %v", id, err)
					}
					time.Sleep(20 * time.Millisecond) // pacing between attempts
				}
			}
		})
	}
	time.Sleep(warmup) // steady load before the kill
	old := leader.Name()
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	leader.Shutdown()
	leader.WaitForShutdown()
	var newLeader *server.Server
	elected := poll(30*time.Second, 20*time.Millisecond, func() bool {
		newLeader = cl.StreamLeader(recordsStream)
		return newLeader != nil
	})
	electedAfter := time.Since(killedAt)
	time.Sleep(after) // keep the load going after the kill
	close(stop)
	wg.Wait()

	// Recovery: the first success of a request sent after the kill.
	var acked []string
	var okBefore, okAfter, failed int
	recovered := time.Duration(-1)
	var slowest time.Duration
	for _, a := range attempts {
		if a.err != nil {
			failed++
			continue
		}
		acked = append(acked, a.key)
		slowest = max(slowest, a.done.Sub(a.sent))
		if a.sent.Before(killedAt) {
			okBefore++
			continue
		}
		okAfter++
		if d := a.done.Sub(killedAt); recovered < 0 || d < recovered {
			recovered = d
		}
	}
	leaderName := "none"
	if newLeader != nil {
		leaderName = newLeader.Name()
	}
	t.Logf("cluster: killed %s (leader of %s); new leader %s elected after %s (%v)", old, recordsStream, leaderName, ms(electedAfter), elected)
	t.Logf("cluster: %d acknowledged before the kill, %d after; %d attempts failed; slowest successful request %s", okBefore, okAfter, failed, ms(slowest))
	target := "MET"
	if recovered < 0 || recovered > 10*time.Second {
		target = "MISSED"
	}
	t.Logf("cluster: requests succeed again %s after the leader was killed (target <= 10s: %s)", ms(recovered), target)

	l := readLedger(t, js)
	tl := l.tally(acked, 0)
	t.Logf("cluster: %d acknowledged approvals, %d in the bucket, LOST %d", len(acked), tl.Approvals, tl.Missing)
	record(t, secs("leader elected after", electedAfter), secs("requests succeed again after", recovered), secs("slowest successful request", slowest),
		count("acknowledged", len(acked)), count("attempts failed", failed), count("lost", tl.Missing))
	if tl.Missing != 0 {
		t.Errorf("%d acknowledged approvals are missing from the bucket", tl.Missing)
	}
	for key, revs := range l.revs {
		if st := revs[len(revs)-1].Status; st != kvapprovals.StatusPending {
			t.Errorf("%s is %s, want pending", key, st)
		}
	}
	if !elected {
		t.Errorf("no new leader for %s within 30s", recordsStream)
	}
	if recovered < 0 || recovered > 30*time.Second {
		t.Errorf("requests did not succeed again within 30s of the kill (recovered %s)", recovered)
	}
	if okAfter == 0 || okBefore == 0 {
		t.Errorf("%d requests acknowledged before the kill and %d after: the load did not span it", okBefore, okAfter)
	}
	g.assertAlive()
}
