package kvapprovals_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// exampleServer starts an embedded JetStream server in a temporary
// directory; in production, connect to your NATS cluster instead.
func exampleServer() (*server.Server, func()) {
	dir, err := os.MkdirTemp("", "kvapprovals-example")
	if err != nil {
		log.Fatal(err)
	}
	s, err := server.NewServer(natstest.Options(dir))
	if err != nil {
		log.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats-server not ready")
	}
	return s, func() { s.Shutdown(); s.WaitForShutdown(); os.RemoveAll(dir) }
}

// Request an approval and approve it; decisions that break the rules come
// back as typed errors.
func Example() {
	srv, stop := exampleServer()
	defer stop()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	svc, err := kvapprovals.Open(ctx, nil, js, kvapprovals.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	rec, err := svc.Request(ctx, "acme", kvapprovals.RequestInput{
		ID:          "deploy-42",
		SessionID:   "sess-1",
		RequestedBy: "alice",
		Details:     json.RawMessage(`{"action": "deploy", "env": "prod"}`),
		Timeout:     kvapprovals.Duration(15 * time.Minute),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(rec.ID, rec.Status, time.Duration(rec.Timeout), string(rec.Details))

	_, err = svc.Approve(ctx, "acme", kvapprovals.DecisionInput{ID: "deploy-42", DecidedBy: "alice"})
	fmt.Println("self-approval refused:", errors.Is(err, kvapprovals.ErrSelfApproval))

	rec, err = svc.Approve(ctx, "acme", kvapprovals.DecisionInput{ID: "deploy-42", DecidedBy: "bob", Reason: "reviewed"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(rec.Status, "by", rec.DecidedBy)

	_, err = svc.Deny(ctx, "acme", kvapprovals.DecisionInput{ID: "deploy-42", DecidedBy: "carol"})
	var se *kvapprovals.StateError
	if errors.As(err, &se) {
		fmt.Println("deny refused:", errors.Is(err, kvapprovals.ErrAlreadyDecided), se.Record.Status)
	}
	// Output:
	// deploy-42 pending 15m0s {"action":"deploy","env":"prod"}
	// self-approval refused: true
	// approved by bob
	// deny refused: true approved
}

// Run the expirer and the notifier, and watch an approval expire: the
// lifecycle events arrive on guardian.v1.events.<tenant>.<kind>, and the
// expiry is also reported to the guard's audit sink.
func Example_expiry() {
	srv, stop := exampleServer()
	defer stop()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait() // Run returns once ctx is cancelled
	defer cancel()

	audit := make(chan jsguard.Event, 1)
	g, err := jsguard.New(jsguard.WithSink(jsguard.SinkFunc(func(_ context.Context, ev jsguard.Event) error {
		select {
		case audit <- ev:
		default: // a redelivered duplicate
		}
		return nil
	})))
	if err != nil {
		log.Fatal(err)
	}
	cfg := kvapprovals.DefaultConfig()
	cfg.GracePeriod = 0
	svc, err := kvapprovals.Open(ctx, g, js, cfg)
	if err != nil {
		log.Fatal(err)
	}
	events := make(chan *nats.Msg, 8)
	sub, err := nc.ChanSubscribe(cfg.EventsSubjectPrefix+".acme.>", events)
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Unsubscribe()
	wg.Go(func() { _ = svc.Expirer().Run(ctx) })
	wg.Go(func() { _ = svc.Notifier().Run(ctx) })

	if _, err := svc.Request(ctx, "acme", kvapprovals.RequestInput{
		ID: "db-restore", SessionID: "sess-2", RequestedBy: "alice", Timeout: kvapprovals.Duration(time.Second),
	}); err != nil {
		log.Fatal(err)
	}
	for range 2 {
		m := <-events
		var ev kvapprovals.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			log.Fatal(err)
		}
		fmt.Println(m.Subject, ev.Record.Status)
	}
	ev := <-audit
	fmt.Println(ev.Code, ev.AdditionalContext["approval_id"])
	// Output:
	// guardian.v1.events.acme.requested pending
	// guardian.v1.events.acme.expired expired
	// TIMEOUT_APPROVAL_EXPIRED db-restore
}

// DecodeRequest is the strict decoder for the request/reply API: unknown
// fields and bad values are refused with the field named.
func ExampleDecodeRequest() {
	_, err := kvapprovals.DecodeRequest([]byte(`{"session_id": "s", "requested_by": "alice", "timeout": "soon"}`))
	var fe *kvapprovals.FieldError
	fmt.Println(errors.Is(err, kvapprovals.ErrInvalidRequest), errors.As(err, &fe), fe.Field)

	_, err = kvapprovals.DecodeRequest([]byte(`{"session_id": "s", "requestedBy": "alice"}`))
	fmt.Println(err)
	// Output:
	// true true timeout
	// invalid request: requestedBy: unknown field
}
