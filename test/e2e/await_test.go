package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// TestAwaitRestarts: a client waiting for a decision (Client.Await) keeps
// waiting while guardian is killed with SIGKILL and started again, and
// while nats-server restarts, and returns the decision made after each;
// a decision made before the wait is returned at once.
func TestAwaitRestarts(t *testing.T) {
	skipShort(t)
	ns := startNATS(t, nil)
	env := expiryEnv()
	env["GUARDIAN_TIMEOUT_API_REQUEST"] = "3s" // short awaits, so each restart falls in one
	g := startGuardian(t, "g1", ns.url, env)
	nc, _ := connect(t, ns.url)
	c := newClient(t, nc, 3*time.Second)
	ctx := t.Context()

	await := func(id string) <-chan kvapprovals.Record {
		out := make(chan kvapprovals.Record, 1)
		go func() {
			actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			r, err := c.Await(actx, "acme", id)
			if err != nil {
				t.Errorf("await %s: %v", id, err)
			}
			out <- r
		}()
		return out
	}
	request := func(id string) {
		t.Helper()
		if _, _, err := requestRetry(ctx, c, "acme", kvapprovals.RequestInput{ID: id, SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(10 * time.Minute)}, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	decide := func(id string, to kvapprovals.Status) time.Time {
		t.Helper()
		if _, _, err := decideRetry(ctx, c, "acme", id, to, "bob", time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	got := func(ch <-chan kvapprovals.Record, want kvapprovals.Status, decided time.Time, what string) {
		t.Helper()
		select {
		case r := <-ch:
			if r.Status != want {
				t.Errorf("%s: await returned %s, want %s", what, r.Status, want)
			}
			t.Logf("%s: await returned %s %s after the decision", what, r.Status, ms(time.Since(decided)))
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: await did not return within 30s of the decision", what)
		}
	}

	// Decided before the wait: at once.
	request("before")
	decided := decide("before", kvapprovals.StatusApproved)
	got(await("before"), kvapprovals.StatusApproved, decided, "decided before")

	// guardian killed and started again while the client waits.
	request("g-restart")
	ch := await("g-restart")
	time.Sleep(500 * time.Millisecond)
	g.kill()
	time.Sleep(time.Second)
	g.start()
	decided = decide("g-restart", kvapprovals.StatusDenied)
	got(ch, kvapprovals.StatusDenied, decided, "guardian restarted")

	// nats-server restarted while the client waits (the client reconnects).
	request("n-restart")
	ch = await("n-restart")
	time.Sleep(500 * time.Millisecond)
	ns.stop()
	time.Sleep(2 * time.Second)
	ns.start()
	decided = decide("n-restart", kvapprovals.StatusApproved)
	got(ch, kvapprovals.StatusApproved, decided, "nats-server restarted")

	// An expiry ends the wait too.
	if _, _, err := requestRetry(ctx, c, "acme", kvapprovals.RequestInput{ID: "expires", SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(2 * time.Second)}, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got(await("expires"), kvapprovals.StatusExpired, time.Now().Add(2*time.Second), "expiry")
	g.assertAlive()
}
