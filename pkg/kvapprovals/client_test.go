package kvapprovals

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// TestClient drives the client against a responder on a real server that
// answers as guardian's API does, and checks headers and error mapping.
func TestClient(t *testing.T) {
	s := natstest.Run(t)
	nc, _ := natstest.Connect(t, s)
	headers := make(chan nats.Header, 4)
	_, err := nc.Subscribe("guardian.v1.acme.approvals.>", func(m *nats.Msg) {
		headers <- m.Header
		reply := nats.NewMsg(m.Reply)
		switch {
		case strings.HasSuffix(m.Subject, ".get"):
			reply.Header.Set(micro.ErrorCodeHeader, "404")
			reply.Header.Set(micro.ErrorHeader, "get acme.x: approval not found")
			reply.Data = []byte(`{"error":{"code":404,"status":"not_found","message":"get acme.x: approval not found"}}`)
		case strings.HasSuffix(m.Subject, ".approve"):
			reply.Header.Set(micro.ErrorCodeHeader, "409")
			reply.Header.Set(micro.ErrorHeader, "already decided")
			reply.Data = []byte(`{"error":{"code":409,"status":"already_decided","message":"already decided","final_status":"expired"}}`)
		case strings.HasSuffix(m.Subject, ".deny"):
			reply.Header.Set(micro.ErrorCodeHeader, "503")
			reply.Header.Set(micro.ErrorHeader, "TIMEOUT_KV_GET: ...")
			reply.Data = []byte(`{"error":{"code":503,"status":"timeout","message":"TIMEOUT_KV_GET: ...","timeout_code":"TIMEOUT_KV_GET"}}`)
		default:
			reply.Data = []byte(`{"id":"x","tenant":"acme","status":"pending","revision":1}`)
		}
		_ = m.RespondMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c := NewClient(nc)
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	ctx := jsguard.WithTraceID(jsguard.WithCorrelationID(t.Context(), "corr-1"), trace)

	r, err := c.Request(ctx, "acme", RequestInput{SessionID: "s", RequestedBy: "a"})
	if err != nil || r.ID != "x" || r.Status != StatusPending {
		t.Fatalf("Request = %+v, %v", r, err)
	}
	h := <-headers
	if h.Get(CorrelationHeader) != "corr-1" {
		t.Errorf("correlation header = %q", h.Get(CorrelationHeader))
	}
	if tp := h.Get("traceparent"); !strings.HasPrefix(tp, "00-"+trace+"-") || len(tp) != 55 {
		t.Errorf("traceparent = %q", tp)
	}

	tests := []struct {
		name string
		call func() error
		want []error
		code int
	}{
		{"not found", func() error { _, err := c.Get(ctx, "acme", "x"); return err }, []error{ErrNotFound}, 404},
		{"expired", func() error {
			_, err := c.Approve(ctx, "acme", DecisionInput{ID: "x", DecidedBy: "b"})
			return err
		}, []error{ErrAlreadyDecided, ErrExpired}, 409},
		{"timeout", func() error {
			_, err := c.Deny(ctx, "acme", DecisionInput{ID: "x", DecidedBy: "b"})
			return err
		}, []error{ErrUnavailable, jsguard.ErrTimeout}, 503},
		{"bad tenant", func() error { _, err := c.Get(ctx, "a.b", "x"); return err }, []error{ErrInvalidRequest}, 0},
		{"reserved tenant", func() error { _, err := c.Get(ctx, "audit", "x"); return err }, []error{ErrInvalidRequest}, 0},
		{"no responders", func() error { _, err := c.Get(ctx, "other", "x"); return err }, []error{ErrUnavailable}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("err = %v, want errors.Is %v", err, w)
				}
			}
			var ae *APIError
			if tt.code != 0 && (!errors.As(err, &ae) || ae.Code != tt.code) {
				t.Errorf("err = %#v, want *APIError with code %d", err, tt.code)
			}
		})
	}
	// Draining what the error cases sent keeps the channel from blocking.
	for len(headers) > 0 {
		<-headers
	}
	var te *jsguard.TimeoutError
	sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = nc.Subscribe("guardian.v1.slow.approvals.get", func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(sctx, "slow", "x"); !errors.As(err, &te) {
		t.Errorf("a request nobody answers in time = %v, want *jsguard.TimeoutError", err)
	}
}

// TestClientRetriesNoResponders: a request that finds no responder (a
// guardian that is starting, interest not yet across a cluster) is sent
// again and answered once the service is there; with nobody at all it
// ends with ErrUnavailable after a bounded time.
func TestClientRetriesNoResponders(t *testing.T) {
	s := natstest.Run(t)
	nc, _ := natstest.Connect(t, s)
	c := NewClient(nc)
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = nc.Subscribe("guardian.v1.late.approvals.get", func(m *nats.Msg) {
			_ = m.Respond([]byte(`{"id":"x","tenant":"late","status":"pending","revision":1}`))
		})
	}()
	r, err := c.Get(t.Context(), "late", "x")
	if err != nil || r.ID != "x" {
		t.Fatalf("Get while the service starts: %+v, %v", r, err)
	}
	start := time.Now()
	if _, err := c.Get(t.Context(), "nobody", "x"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get without a service: %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > noRespondersGrace+time.Second {
		t.Errorf("gave up after %s, want about %s", took, noRespondersGrace)
	}
}
