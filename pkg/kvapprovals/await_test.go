package kvapprovals

import (
	"context"
	"testing"
	"time"
)

// TestAwait: Await returns a decision made before the call at once, wakes
// on a decision made while it waits (well before its wait), returns the
// pending record when its wait runs out, and sees an expiry.
func TestAwait(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.GracePeriod = 0 })
	stop := startConsumers(t, e.svc)
	defer stop()
	ctx := t.Context()

	e.request("acme", req("before"))
	if _, err := e.svc.Approve(ctx, "acme", DecisionInput{ID: "before", DecidedBy: "bob"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, err := e.svc.Await(ctx, "acme", "before", 10*time.Second)
	if err != nil || r.Status != StatusApproved || time.Since(start) > time.Second {
		t.Fatalf("decided before: %s %v after %s", r.Status, err, time.Since(start))
	}

	in := req("during")
	in.Timeout = Duration(time.Minute)
	e.request("acme", in)
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = e.svc.Deny(context.Background(), "acme", DecisionInput{ID: "during", DecidedBy: "bob"})
	}()
	start = time.Now()
	r, err = e.svc.Await(ctx, "acme", "during", 20*time.Second)
	if took := time.Since(start); err != nil || r.Status != StatusDenied || took > 5*time.Second {
		t.Fatalf("decided while waiting: %s %v after %s", r.Status, err, took)
	}

	in = req("pending")
	in.Timeout = Duration(time.Minute)
	e.request("acme", in)
	r, err = e.svc.Await(ctx, "acme", "pending", 500*time.Millisecond)
	if err != nil || r.Status != StatusPending {
		t.Fatalf("nothing decided: %s %v", r.Status, err)
	}

	in = req("expires")
	in.Timeout = Duration(time.Second)
	e.request("acme", in)
	r, err = e.svc.Await(ctx, "acme", "expires", 20*time.Second)
	if err != nil || r.Status != StatusExpired {
		t.Fatalf("expiry: %s %v", r.Status, err)
	}
	if _, err := e.svc.Await(ctx, "acme", "nope", time.Second); err == nil {
		t.Fatal("await of an unknown id: no error")
	}
}
