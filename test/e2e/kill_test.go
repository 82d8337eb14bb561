package e2e

import (
	"testing"
	"time"
)

// TestKillDuringExpiries (scenario 1): approvals with timeouts of 1–10 s
// expire while the only guardian is killed with SIGKILL and started again
// on the same NATS. Every approval ends in exactly one terminal state,
// with exactly one lifecycle event per revision and one audit event per
// expiry.
func TestKillDuringExpiries(t *testing.T) {
	skipShort(t)
	n := scale(1000, 10000)
	down := 2 * time.Second
	ns := startNATS(t, nil)
	g := startGuardian(t, "g1", ns.url, expiryEnv())
	nc, js := connect(t, ns.url)
	w := newWorkload(n, newClient(t, nc, 5*time.Second))

	// Request in the background; kill it once about half of the
	// approvals that will expire have expired (in the full run, while
	// requests are still coming in: they are retried with the same id).
	done := make(chan struct{})
	start := time.Now()
	var took time.Duration
	go func() {
		defer close(done)
		w.run(t.Context(), t, 16)
		took = time.Since(start)
	}()
	t.Cleanup(func() { <-done }) // t.Context() ends first, so it stops

	expiring := n * 7 / 10 // three in ten are approved, denied or cancelled
	if !poll(2*time.Minute, 50*time.Millisecond, func() bool {
		_, expired, err := terminalEvents(t.Context(), js)
		return err == nil && expired >= expiring/2
	}) {
		t.Fatalf("half of %d expiries not seen within 2m", expiring)
	}
	_, before, _ := terminalEvents(t.Context(), js)
	atKill := w.created.Load()
	killed := time.Now()
	g.kill()
	time.Sleep(down) // guardian stays down while timers keep firing
	g.start()
	t.Logf("SIGKILL after %d of %d expiries and %d of %d requests, down %s, ready again after %s",
		before, expiring, atKill, n, down, ms(time.Since(killed)))
	<-done
	t.Logf("requested %d approvals in %s (%.0f/s), %d decided, %d requests or decisions retried",
		w.created.Load(), ms(took), float64(w.created.Load())/took.Seconds(), len(w.decided), w.retries.Load())

	settled := waitSettled(t, js, n, 2*time.Minute)
	settleTook := time.Since(killed)
	l := readLedger(t, js)
	c := l.tally(w.acked, 0)
	t.Logf("kill -9 during expiries: %s", &c)
	t.Logf("kill -9 during expiries: LOST %d / DUPLICATED %d; all settled %s after the kill", c.lost(), c.dup(), ms(settleTook))
	record(t, append(tallyFigures(&c), secs("down", down), secs("settled after the kill", settleTook))...)
	if !settled {
		t.Errorf("not settled within 2m of the kill")
	}
	if c.Approvals != n {
		t.Errorf("%d approvals in the bucket, want %d", c.Approvals, n)
	}
	assertExactlyOnce(t, &c)
	w.assertOutcomes(t, l)
	g.assertAlive()
}

// maxFailoverLateness bounds every expiry's lateness when one of two
// replicas is killed, or NATS restarts: the consumers' AckWait (4 s, the
// wait for a message the dead process had fetched) plus a second.
const maxFailoverLateness = 5 * time.Second

// TestReplicaKilled (scenario 2): two guardian replicas serve the same
// NATS; one is killed with SIGKILL while approvals expire (in the full
// run, while they are still being requested too), and started again.
// Clients retry with the same id. The same exactly-once counts hold, and
// no expiry is more than maxFailoverLateness late: the other replica takes
// over what the dead one had fetched.
func TestReplicaKilled(t *testing.T) {
	skipShort(t)
	n := scale(1000, 10000)
	ns := startNATS(t, nil)
	g1 := startGuardian(t, "g1", ns.url, expiryEnv())
	g2 := startGuardian(t, "g2", ns.url, expiryEnv())
	nc1, js := connect(t, ns.url)
	nc2, _ := connect(t, ns.url)
	w := newWorkload(n, newClient(t, nc1, 3*time.Second), newClient(t, nc2, 3*time.Second))

	ctx := t.Context()
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		w.run(ctx, t, 16)
	}()
	t.Cleanup(func() { <-done }) // ctx ends first, so it stops
	expiring := n * 7 / 10       // three in ten are approved, denied or cancelled
	if !poll(2*time.Minute, 20*time.Millisecond, func() bool {
		_, expired, err := terminalEvents(ctx, js)
		return err == nil && expired >= expiring/2
	}) {
		t.Fatalf("half of %d expiries not seen within 2m", expiring)
	}
	_, before, _ := terminalEvents(ctx, js)
	killed := time.Now()
	atKill := w.created.Load()
	g2.kill()
	time.Sleep(time.Second) // g1 alone meanwhile
	g2.start()
	t.Logf("g2 killed after %d of %d expiries and %d of %d requests (%s in), ready again after %s",
		before, expiring, atKill, n, ms(killed.Sub(start)), ms(time.Since(killed)))
	<-done
	took := time.Since(start)
	t.Logf("requested %d approvals in %s, %d decided, %d requests or decisions retried", w.created.Load(), ms(took), len(w.decided), w.retries.Load())

	settled := waitSettled(t, js, n, 2*time.Minute)
	l := readLedger(t, js)
	c := l.tally(w.acked, 0)
	t.Logf("replica killed: %s", &c)
	t.Logf("replica killed: LOST %d / DUPLICATED %d; all settled %s after the kill", c.lost(), c.dup(), ms(time.Since(killed)))
	record(t, append(tallyFigures(&c), secs("settled after the kill", time.Since(killed)))...)
	if !settled {
		t.Errorf("not settled within 2m")
	}
	if c.Approvals != n {
		t.Errorf("%d approvals in the bucket, want %d", c.Approvals, n)
	}
	assertExactlyOnce(t, &c)
	if _, _, mx := percentiles(c.Lateness); mx > maxFailoverLateness {
		t.Errorf("an expiry was %s late, want at most %s with one replica left", ms(mx), maxFailoverLateness)
	}
	w.assertOutcomes(t, l)
	g1.assertAlive()
	g2.assertAlive()
}
