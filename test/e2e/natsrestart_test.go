package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// TestNATSRestart (scenario 4): the nats-server (file storage) is shut
// down in the middle of a run and started again on the same port and
// store while guardian keeps running. Pending approvals and their timers
// survive; expiries that fell due while it was down are processed after it
// comes back; approvals due later expire on time; a decision after the
// restart is accepted.
func TestNATSRestart(t *testing.T) {
	skipShort(t)
	n := scale(300, 3000)
	down := scale(3*time.Second, 10*time.Second)
	const decidedLater = 10
	ns := startNATS(t, nil)
	g := startGuardian(t, "g1", ns.url, expiryEnv())
	nc, js := connect(t, ns.url)
	c := newClient(t, nc, 5*time.Second)
	ctx := t.Context()

	// Timeouts of 1 s to down+5 s: some fall due before the stop, many
	// while NATS is down, the rest after it is back.
	spread := int((down + 5*time.Second) / time.Second)
	var mu sync.Mutex
	var acked []string
	recs := map[string]kvapprovals.Record{}
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				timeout := time.Duration(1+i%spread) * time.Second
				id := fmt.Sprintf("n%05d", i)
				if i >= n {
					timeout = time.Minute // decided after the restart
				}
				in := kvapprovals.RequestInput{ID: id, SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(timeout)}
				r, _, err := requestRetry(ctx, c, "acme", in, time.Now().Add(30*time.Second))
				if err != nil {
					t.Errorf("request %s: %v", id, err)
					continue
				}
				mu.Lock()
				acked = append(acked, r.Key())
				recs[r.Key()] = r
				mu.Unlock()
			}
		})
	}
	for i := range n + decidedLater {
		next <- i
	}
	close(next)
	wg.Wait()

	stopped := time.Now()
	ns.stop()
	time.Sleep(down) // NATS stays down while deadlines pass
	ns.start()
	restarted := time.Now()
	t.Logf("nats-server down for %s", ms(restarted.Sub(stopped)))

	// Records written before the stop are all there, and the long ones
	// still accept a decision.
	for i := n; i < n+decidedLater; i++ {
		id := fmt.Sprintf("n%05d", i)
		if _, _, err := decideRetry(ctx, c, "acme", id, kvapprovals.StatusApproved, "bob", time.Now().Add(30*time.Second)); err != nil {
			t.Errorf("approve %s after the restart: %v", id, err)
		}
	}
	decidedAt := time.Since(restarted)

	settled := waitSettled(t, js, n+decidedLater, time.Minute)
	l := readLedger(t, js)
	tl := l.tally(acked, 0)
	t.Logf("nats restart: %s", &tl)

	var before, during, after []time.Duration // lateness per group
	var duringEarly int
	for key, r := range recs {
		revs := l.revs[key]
		if len(revs) == 0 || r.Timeout == kvapprovals.Duration(time.Minute) {
			continue
		}
		final := revs[len(revs)-1]
		if final.Status != kvapprovals.StatusExpired || final.DecidedAt == nil {
			t.Errorf("%s ended %s, want expired", key, final.Status)
			continue
		}
		deadline := r.Deadline(0)
		switch {
		case deadline.Before(stopped) && final.DecidedAt.Before(stopped):
			before = append(before, final.DecidedAt.Sub(deadline))
		case deadline.Before(stopped):
			// Due before the stop but not yet written: like those due
			// during the outage, counted from the restart.
			during = append(during, final.DecidedAt.Sub(restarted))
		case deadline.Before(restarted):
			// Due while NATS was down: processed after it came back.
			if final.DecidedAt.Before(restarted) {
				duringEarly++
			}
			during = append(during, final.DecidedAt.Sub(restarted))
		default:
			after = append(after, final.DecidedAt.Sub(deadline))
		}
	}
	figs := []figure{count("approvals", tl.Approvals), count("lost", tl.lost()), count("duplicated", tl.dup()), secs("down", restarted.Sub(stopped))}
	for _, grp := range []struct {
		name, key string
		ds        []time.Duration
		rel       string
	}{{"due and written before the stop", "before", before, "deadline"}, {"due while NATS was down (or due before, not yet written)", "during", during, "restart"}, {"due after the restart", "after", after, "deadline"}} {
		p50, p99, mx := percentiles(grp.ds)
		t.Logf("nats restart: %4d expiries %s: expired after %s p50 %s p99 %s max %s", len(grp.ds), grp.name, grp.rel, ms(p50), ms(p99), ms(mx))
		figs = append(figs, latenessFigures("lateness "+grp.key, grp.ds)...)
	}
	record(t, figs...)
	t.Logf("nats restart: %d approvals decided after the restart within %s; LOST %d / DUPLICATED %d", decidedLater, ms(decidedAt), tl.lost(), tl.dup())
	if !settled {
		t.Errorf("not settled within 1m of the restart")
	}
	if len(during) == 0 || len(after) == 0 {
		t.Errorf("%d expiries fell due during the outage and %d after it: the scenario did not cover both", len(during), len(after))
	}
	if duringEarly > 0 {
		t.Errorf("%d expiries due during the outage were written before NATS came back", duringEarly)
	}
	if _, _, mx := percentiles(during); mx > maxFailoverLateness {
		t.Errorf("expiries due during the outage were written up to %s after NATS was back, want at most %s", ms(mx), maxFailoverLateness)
	}
	if _, _, mx := percentiles(after); mx > maxFailoverLateness {
		t.Errorf("expiries due after the restart were up to %s late, want at most %s", ms(mx), maxFailoverLateness)
	}
	if tl.Approvals != n+decidedLater {
		t.Errorf("%d approvals in the bucket, want %d", tl.Approvals, n+decidedLater)
	}
	assertExactlyOnce(t, &tl)
	g.assertAlive()
}
