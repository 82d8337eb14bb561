package kvapprovals

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// hook is a webhook receiver that fails its first `fail` calls per event.
type hook struct {
	mu       sync.Mutex
	fail     int
	calls    map[string]int // by Idempotency-Key
	received []Event
}

func (h *hook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var ev Event
	if err := json.NewDecoder(r.Body).Decode(&ev); err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls[key]++
	if h.fail < 0 || h.calls[key] <= h.fail {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	h.received = append(h.received, ev)
}

func (h *hook) snapshot() ([]Event, map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	calls := map[string]int{}
	for k, v := range h.calls {
		calls[k] = v
	}
	return append([]Event(nil), h.received...), calls
}

func TestWebhookRetries(t *testing.T) {
	t.Parallel()
	h := &hook{fail: 2, calls: map[string]int{}}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e := newEnv(t, func(c *Config) { c.DefaultTimeout = time.Hour })
	run(t, e.svc.Notifier(WithWebhook(Webhook{URL: srv.URL, Backoff: []time.Duration{50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond}})).Run)
	e.request("acme", req("h1"))
	if _, err := e.svc.Approve(t.Context(), "acme", DecisionInput{ID: "h1", DecidedBy: "bob"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "2 delivered notifications", func() bool { got, _ := h.snapshot(); return len(got) == 2 })
	got, calls := h.snapshot()
	if got[0].Kind != KindRequested || got[1].Kind != KindApproved || got[1].Record.DecidedBy != "bob" {
		t.Errorf("delivered %+v", got)
	}
	for k, n := range calls {
		if n != 3 {
			t.Errorf("%s: %d calls, want 3 (2 failures, 1 success)", k, n)
		}
	}
	// Redeliveries re-published each event: JetStream kept one of each.
	if n := e.countEvents("guardian.v1.events.acme.>"); n != 2 {
		t.Errorf("%d events on the stream, want 2", n)
	}
	if s := e.svc.Stats(); s.WebhookDelivered != 2 || s.WebhookFailed != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestWebhookGivesUp(t *testing.T) {
	t.Parallel()
	h := &hook{fail: -1, calls: map[string]int{}}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	failed := make(chan Event, 4)
	e := newEnv(t, func(c *Config) { c.DefaultTimeout = time.Hour },
		WithHooks(Hooks{OnNotificationFailed: func(ev Event, err error) { failed <- ev }}))
	run(t, e.svc.Notifier(WithWebhook(Webhook{URL: srv.URL, Backoff: []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}})).Run)
	r := e.request("acme", req("f1"))

	waitFor(t, 10*time.Second, "notification_failed event", func() bool {
		return e.countEvents("guardian.v1.events.acme.notification_failed") == 1
	})
	evs := e.events("guardian.v1.events.acme.notification_failed")
	f := evs[0]
	if f.Kind != KindNotificationFailed || f.ID != "f1" || f.Revision != r.Revision || f.Failure == nil ||
		f.Failure.Kind != KindRequested || f.Failure.Sink != "webhook" || f.Failure.Attempts != 3 || f.Failure.Error == "" {
		t.Errorf("failure event = %+v, failure %+v", f, f.Failure)
	}
	if _, calls := h.snapshot(); len(calls) != 1 || calls[fmt.Sprintf("acme.f1.%d", r.Revision)] != 3 {
		t.Errorf("webhook calls = %v, want 3 attempts", calls)
	}
	select {
	case ev := <-failed:
		if ev.Kind != KindRequested {
			t.Errorf("OnNotificationFailed(%+v)", ev)
		}
	case <-time.After(5 * time.Second):
		t.Error("OnNotificationFailed not called")
	}
	if n := e.countEvents("guardian.v1.events.acme.requested"); n != 1 {
		t.Errorf("%d requested events, want 1", n)
	}
	if s := e.svc.Stats(); s.WebhookFailed != 1 {
		t.Errorf("stats = %+v", s)
	}
}
