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

// Two approvals from operators whose identity the NATS server proved: the
// caller's identity (in guardian, parsed from the Nats-Request-Info header
// with IdentityFromRequestInfo) travels in the context, and the tenant's
// approver rules say who may decide and how many must.
func ExampleService_Approve_nOfM() {
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
	rules, err := jsguard.EnsurePolicyBucket(ctx, nil, js, 1)
	if err != nil {
		log.Fatal(err)
	}
	cfg := kvapprovals.DefaultConfig()
	cfg.Identity = kvapprovals.IdentityRequired
	svc, err := kvapprovals.Open(ctx, nil, js, cfg, kvapprovals.WithRules(rules))
	if err != nil {
		log.Fatal(err)
	}
	if err := svc.SetTenantRules(ctx, "acme", kvapprovals.Rules{Approvers: []string{"account:OPS"}, RequiredApprovals: 2}); err != nil {
		log.Fatal(err)
	}
	as := func(account, user string) context.Context {
		id, err := kvapprovals.IdentityFromRequestInfo(fmt.Sprintf(`{"acc":%q,"user":%q}`, account, user), "GUARDIAN")
		if err != nil {
			log.Fatal(err)
		}
		return kvapprovals.WithIdentity(ctx, id)
	}

	_, err = svc.Request(ctx, "acme", kvapprovals.RequestInput{ID: "deploy-46", SessionID: "s"})
	fmt.Println("without an identity:", errors.Is(err, kvapprovals.ErrUnauthenticated))
	rec, err := svc.Request(as("ACME", "alice"), "acme", kvapprovals.RequestInput{ID: "deploy-46", SessionID: "s"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("requested by", rec.Requester, "needs", rec.RequiredApprovals)

	_, err = svc.Approve(as("ACME", "mallory"), "acme", kvapprovals.DecisionInput{ID: "deploy-46"})
	fmt.Println("outside the rules:", errors.Is(err, kvapprovals.ErrNotEligible))
	_, err = svc.Approve(as("OPS", "bob"), "acme", kvapprovals.DecisionInput{ID: "deploy-46", DecidedBy: "carol"})
	fmt.Println("naming someone else:", errors.Is(err, kvapprovals.ErrIdentityMismatch))

	rec, _ = svc.Approve(as("OPS", "bob"), "acme", kvapprovals.DecisionInput{ID: "deploy-46", Reason: "diff reviewed"})
	fmt.Println(rec.Status, len(rec.Approvals), "of", rec.RequiredApprovals)
	rec, _ = svc.Approve(as("OPS", "bob"), "acme", kvapprovals.DecisionInput{ID: "deploy-46"})
	fmt.Println("bob again:", rec.Status, len(rec.Approvals), "of", rec.RequiredApprovals)

	rec, err = svc.Extend(as("OPS", "carol"), "acme", kvapprovals.ExtendInput{ID: "deploy-46", ExtendBy: kvapprovals.Duration(30 * time.Minute), Reason: "waiting for the board"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("extended by", rec.Extensions[0].By, "for", rec.Extensions[0].To.Sub(rec.Extensions[0].From))

	rec, _ = svc.Approve(as("OPS", "carol"), "acme", kvapprovals.DecisionInput{ID: "deploy-46"})
	fmt.Println(rec.Status, "by", rec.Decider)
	// Output:
	// without an identity: true
	// requested by ACME/alice needs 2
	// outside the rules: true
	// naming someone else: true
	// pending 1 of 2
	// bob again: pending 1 of 2
	// extended by carol for 30m0s
	// approved by OPS/carol
}
