package e2e

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// expiryEnv is the guardian configuration of the expiry scenarios: no
// grace, warnings 3 s before expiry (so approvals of more than 3 s get a
// warning revision), no pending cap, and short budgets. A message held by
// a killed process is redelivered after the consumers' AckWait (4 s),
// whatever the budgets: a handler that works longer sends InProgress.
func expiryEnv() map[string]string {
	return map[string]string{
		"GUARDIAN_APPROVAL_GRACE_PERIOD":    "0s",
		"GUARDIAN_APPROVAL_WARNING_BEFORE":  "3s",
		"GUARDIAN_APPROVAL_MIN_TIMEOUT":     "1s",
		"GUARDIAN_APPROVAL_MAX_PENDING":     "0",
		"GUARDIAN_TIMEOUT_APPROVAL_CHECK":   "2s",
		"GUARDIAN_TIMEOUT_APPROVAL_GRANT":   "2s",
		"GUARDIAN_TIMEOUT_NATS_PUBLISH":     "2s",
		"GUARDIAN_AUDIT_ALERT_THRESHOLD":    "0",
		"GUARDIAN_APPROVAL_DEFAULT_TIMEOUT": "30s",
	}
}

// workload requests n approvals through the API, spread over tenants, with
// timeouts of 1–10 s; one in ten each is approved, denied or cancelled right
// after it was requested. Requests and decisions are retried with the same
// id while guardian is unreachable.
type workload struct {
	n       int
	tenants []string
	clients []*kvapprovals.Client

	mu      sync.Mutex
	acked   []string                      // keys whose request succeeded
	decided map[string]kvapprovals.Status // the decision that succeeded
	refused map[string]kvapprovals.Status // decisions refused because the approval had expired
	created atomic.Int64
	retries atomic.Int64 // requests and decisions sent more than once
}

func newWorkload(n int, clients ...*kvapprovals.Client) *workload {
	return &workload{
		n: n, tenants: []string{"acme", "globex", "initech", "umbrella"}, clients: clients,
		decided: map[string]kvapprovals.Status{}, refused: map[string]kvapprovals.Status{},
	}
}

func (w *workload) spec(i int) (tenant, id string, timeout time.Duration, decision kvapprovals.Status) {
	tenant = w.tenants[i%len(w.tenants)]
	id = fmt.Sprintf("a%06d", i)
	timeout = time.Duration(1+(i/10)%10) * time.Second
	switch i % 10 {
	case 3:
		decision = kvapprovals.StatusApproved
	case 5:
		decision = kvapprovals.StatusDenied
	case 7:
		decision = kvapprovals.StatusCancelled
	}
	return
}

// run sends the workload with workers goroutines and returns when every
// approval was requested (and decided, where it is to be), or failed.
// Failures are reported with t.Errorf.
func (w *workload) run(ctx context.Context, t *testing.T, workers int) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= w.n || ctx.Err() != nil {
					return
				}
				w.one(ctx, t, i)
			}
		})
	}
	wg.Wait()
}

func (w *workload) one(ctx context.Context, t *testing.T, i int) {
	tenant, id, timeout, decision := w.spec(i)
	c := w.clients[i%len(w.clients)]
	until := time.Now().Add(time.Minute)
	in := kvapprovals.RequestInput{ID: id, SessionID: "s-" + id, RequestedBy: "alice", Timeout: kvapprovals.Duration(timeout)}
	_, attempts, err := requestRetry(ctx, c, tenant, in, until)
	if attempts > 1 {
		w.retries.Add(1)
	}
	if err != nil {
		if ctx.Err() == nil {
			t.Errorf("request %s.%s (%d attempts): %v", tenant, id, attempts, err)
		}
		return
	}
	key := tenant + "." + id
	w.mu.Lock()
	w.acked = append(w.acked, key)
	w.mu.Unlock()
	w.created.Add(1)
	if decision == "" {
		return
	}
	by := "bob"
	_, attempts, err = decideRetry(ctx, c, tenant, id, decision, by, until)
	if attempts > 1 {
		w.retries.Add(1)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err == nil:
		w.decided[key] = decision
	case errors.Is(err, kvapprovals.ErrExpired):
		w.refused[key] = decision // a 1 s approval may run out before its decision
	case ctx.Err() == nil:
		t.Errorf("%s %s (%d attempts): %v", decision, key, attempts, err)
	}
}

// assertOutcomes checks that every acknowledged approval ended as the
// workload decided it, or expired when nobody decided it.
func (w *workload) assertOutcomes(t *testing.T, l *ledger) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	wrong := 0
	for _, key := range w.acked {
		revs := l.revs[key]
		if len(revs) == 0 {
			continue // counted as missing by the tally
		}
		want := kvapprovals.StatusExpired
		if d, ok := w.decided[key]; ok {
			want = d
		}
		if got := revs[len(revs)-1].Status; got != want {
			if wrong < 5 {
				t.Errorf("%s ended %s, want %s", key, got, want)
			}
			wrong++
		}
	}
	if wrong > 0 {
		t.Errorf("%d of %d approvals ended in the wrong state", wrong, len(w.acked))
	}
}
