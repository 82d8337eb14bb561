package kvapprovals

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
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

// TestWebhookFailingAuditOnce: the webhook fails on every attempt of an
// expiry's notification, with redeliveries further apart than the audit
// stream's duplicate window (1 s): the TIMEOUT_APPROVAL_EXPIRED event is
// still stored once. The guard's sink publishes to a real stream with the
// event id as message id, as a plain publisher would.
func TestWebhookFailingAuditOnce(t *testing.T) {
	t.Parallel()
	h := &hook{fail: -1, calls: map[string]int{}}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e := newEnv(t, nil)
	ctx := t.Context()
	acfg := auditstream.DefaultConfig()
	acfg.Stream, acfg.SubjectPrefix, acfg.Duplicates, acfg.SpoolDir = "AUDIT_T", "audit.t", time.Second, t.TempDir()
	if _, err := auditstream.Ensure(ctx, nil, e.js, acfg); err != nil {
		t.Fatal(err)
	}
	pub, err := auditstream.NewPublisher(nil, e.js, acfg, auditstream.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	run(t, pub.Run)
	sink := &countingSink{Publisher: pub}
	e.g.SetSink(sink)
	backoff := 1500 * time.Millisecond
	run(t, e.svc.Expirer().Run)
	run(t, e.svc.Notifier(WithWebhook(Webhook{URL: srv.URL, Backoff: []time.Duration{backoff, backoff, backoff}})).Run)
	r := e.request("acme", req("x1"))

	var failed Event
	waitFor(t, 30*time.Second, "the expiry's notification given up", func() bool {
		for _, f := range e.events("guardian.v1.events.acme.notification_failed") {
			if f.Failure != nil && f.Failure.Kind == KindExpired {
				failed = f
				return true
			}
		}
		return false
	})
	if _, calls := h.snapshot(); failed.Revision <= r.Revision || calls[fmt.Sprintf("acme.x1.%d", failed.Revision)] != 4 {
		t.Errorf("webhook calls %v, want 4 attempts for the expiry (revision %d)", calls, failed.Revision)
	}
	str, err := e.js.Stream(ctx, "AUDIT_T")
	if err != nil {
		t.Fatal(err)
	}
	// Every delivery hands the audit event over; the sink stores it once.
	waitFor(t, 10*time.Second, "the spooled copies drained", func() bool {
		st := pub.Stats()
		return st.SpoolBytes == 0 && sink.n.Load() >= 4
	})
	info, err := str.Info(ctx, jetstream.WithSubjectFilter("audit.t.*."+jsguard.ApprovalExpired.Code()))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Msgs; n != 1 {
		t.Errorf("%d TIMEOUT_APPROVAL_EXPIRED events stored, want 1 (%d handed to the sink)", n, sink.n.Load())
	}
}

// countingSink is an auditstream Publisher that counts the events handed
// to it durably.
type countingSink struct {
	*auditstream.Publisher
	n atomic.Int32
}

func (c *countingSink) EmitDurable(ctx context.Context, ev jsguard.Event) error {
	c.n.Add(1)
	return c.Publisher.EmitDurable(ctx, ev)
}

// TestExpiryAuditRetriedUntilStored: when the sink cannot store the expiry
// audit, the revision is not acknowledged and is delivered again until it
// is, so a lost audit event is retried, not dropped.
func TestExpiryAuditRetriedUntilStored(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var calls, stored atomic.Int32
	e.g.SetSink(jsguard.SinkFunc(func(_ context.Context, ev jsguard.Event) error {
		if ev.Code != jsguard.ApprovalExpired.Code() {
			return nil
		}
		if calls.Add(1) <= 2 {
			return fmt.Errorf("audit stream unavailable")
		}
		stored.Add(1)
		return nil
	}))
	run(t, e.svc.Expirer().Run)
	run(t, e.svc.Notifier().Run)
	e.request("acme", req("r1"))
	waitFor(t, 60*time.Second, "the expiry audit stored after two failures", func() bool { return stored.Load() >= 1 })
	if c := calls.Load(); c < 3 {
		t.Errorf("%d attempts, want at least 3", c)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// TestWebhookURLNotLeaked: the webhook URL's user info, path and query
// (where tokens live) appear neither in notification_failed events, which
// tenants read, nor in logs or hooks, whether the webhook answers with an
// error status or cannot be reached at all.
func TestWebhookURLNotLeaked(t *testing.T) {
	t.Parallel()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	t.Cleanup(failing.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close() // nothing listens there: the POST fails to connect
	const secrets = "s3cr3t|T0KEN|Q5ECRET"
	for i, base := range []string{failing.URL, closed} {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			u, _ := url.Parse(base)
			u.User = url.UserPassword("user", "s3cr3t")
			u.Path, u.RawQuery = "/hooks/T0KEN", "key=Q5ECRET"
			var logs lockedBuffer
			var hooked []string
			var mu sync.Mutex
			e := newEnv(t, nil, WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
				WithHooks(Hooks{OnNotificationFailed: func(_ Event, err error) { mu.Lock(); hooked = append(hooked, err.Error()); mu.Unlock() }}))
			run(t, e.svc.Notifier(WithWebhook(Webhook{URL: u.String(), Backoff: []time.Duration{10 * time.Millisecond}})).Run)
			e.request("acme", req("w1"))
			var f Event
			waitFor(t, 20*time.Second, "notification_failed", func() bool {
				evs := e.events("guardian.v1.events.acme.notification_failed")
				if len(evs) > 0 {
					f = evs[0]
				}
				return len(evs) > 0
			})
			mu.Lock()
			defer mu.Unlock()
			for what, text := range map[string]string{"event": f.Failure.Error, "logs": logs.String(), "hook": strings.Join(hooked, "\n")} {
				for _, s := range strings.Split(secrets, "|") {
					if strings.Contains(text, s) {
						t.Errorf("%s shows %q: %s", what, s, text)
					}
				}
			}
			if !strings.Contains(f.Failure.Error, u.Host) {
				t.Errorf("failure %q does not name the webhook's host %s", f.Failure.Error, u.Host)
			}
		})
	}
}

// TestNotifierFailoverWithinAckWait: a replica dies (its connection is
// gone, as after kill -9) while its webhook calls hang; the messages it
// had fetched reach the other replica within the consumers' AckWait, not
// after the processing budget.
func TestNotifierFailoverWithinAckWait(t *testing.T) {
	t.Parallel()
	hang := make(chan struct{})
	var hung atomic.Int32
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hung.Add(1)
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(hang); slow.Close() })
	good := &hook{calls: map[string]int{}}
	goodSrv := httptest.NewServer(good)
	t.Cleanup(goodSrv.Close)

	e := newEnv(t, nil)
	a := e.open() // the replica that dies
	go func() { _ = a.Notifier(WithWebhook(Webhook{URL: slow.URL})).Run(t.Context()) }()
	const n = 5
	for i := range n {
		e.request("acme", req(fmt.Sprint("f", i)))
	}
	waitFor(t, 10*time.Second, "the dying replica's webhook calls", func() bool { return hung.Load() >= 1 })
	a.js.Conn().Close() // no drain, no Nak: as a killed process
	killed := time.Now()
	run(t, e.svc.Notifier(WithWebhook(Webhook{URL: goodSrv.URL})).Run)
	waitFor(t, 30*time.Second, "every requested event delivered by the other replica", func() bool {
		_, calls := good.snapshot()
		return len(calls) == n
	})
	if took := time.Since(killed); took > consumerAckWait+3*time.Second {
		t.Errorf("the other replica delivered %s after the kill, want within AckWait (%s) and a moment", took, consumerAckWait)
	}
}

// TestSlowWebhookNotRedelivered: a webhook that answers after more than
// the consumers' AckWait is called once: the handler keeps its message
// with InProgress.
func TestSlowWebhookNotRedelivered(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		time.Sleep(consumerAckWait + 2*time.Second)
	}))
	t.Cleanup(srv.Close)
	e := newEnv(t, nil)
	run(t, e.svc.Notifier(WithWebhook(Webhook{URL: srv.URL})).Run)
	e.request("acme", req("slow"))
	waitFor(t, 30*time.Second, "the slow delivery", func() bool { return e.svc.Stats().WebhookDelivered == 1 })
	time.Sleep(consumerAckWait)
	if c := calls.Load(); c != 1 {
		t.Errorf("webhook called %d times, want 1", c)
	}
}
