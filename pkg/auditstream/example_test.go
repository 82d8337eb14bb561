package auditstream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// embedded starts a throwaway JetStream server and connects to it.
func embedded() (jetstream.JetStream, func()) {
	dir, err := os.MkdirTemp("", "auditstream-example")
	if err != nil {
		panic(err)
	}
	s, err := server.NewServer(natstest.Options(dir))
	if err != nil {
		panic(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		panic("nats-server not ready")
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		panic(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	return js, func() { nc.Close(); s.Shutdown(); s.WaitForShutdown(); os.RemoveAll(dir) }
}

func ExamplePublisher() {
	js, stop := embedded()
	defer stop()
	ctx := context.Background()

	cfg := auditstream.DefaultConfig()
	cfg.SpoolDir, _ = os.MkdirTemp("", "audit-spool")
	defer os.RemoveAll(cfg.SpoolDir)

	g, _ := jsguard.New()
	if _, err := auditstream.Ensure(ctx, g, js, cfg); err != nil {
		fmt.Println(err)
		return
	}
	p, err := auditstream.NewPublisher(g, js, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	g.SetSink(p) // every timeout of g is now audited

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go p.Run(runCtx) // re-publishes the spool whenever NATS is back

	err = g.Do(jsguard.WithTenant(ctx, "acme"), jsguard.KVGet, "kv get B/k", func(ctx context.Context) error {
		<-ctx.Done() // too slow
		return ctx.Err()
	}, jsguard.WithBudget(10*time.Millisecond))
	fmt.Println("timed out:", errors.Is(err, context.DeadlineExceeded))
	_ = p.Flush(ctx) // at shutdown: wait for the acks

	tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
	defer tcancel()
	for e, err := range auditstream.Tail(tctx, js, cfg, auditstream.TailOptions{StartSeq: 1}) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(e.Subject, e.Event.Operation)
		break
	}
	// Output:
	// timed out: true
	// guardian.v1.audit.acme.TIMEOUT_KV_GET kv get B/k
}

func ExampleVerify() {
	js, stop := embedded()
	defer stop()
	ctx := context.Background()

	kp, _ := nkeys.CreateAccount()
	seed, _ := kp.Seed()
	cfg := auditstream.DefaultConfig()
	cfg.SpoolDir, _ = os.MkdirTemp("", "audit-spool")
	defer os.RemoveAll(cfg.SpoolDir)
	cfg.SealSeed = string(seed)
	cfg.SealEvery = 3

	if _, err := auditstream.Ensure(ctx, nil, js, cfg); err != nil {
		fmt.Println(err)
		return
	}
	sealer, err := auditstream.NewSealer(nil, js, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go sealer.Run(runCtx)

	p, _ := auditstream.NewPublisher(nil, js, cfg)
	defer p.Close()
	for i := range 3 {
		_ = p.Emit(ctx, jsguard.Event{Code: "TIMEOUT_KV_PUT", Operation: fmt.Sprint("put ", i), TenantID: "acme"})
	}
	_ = p.Flush(ctx)

	// Operators verify with the sealer's public key only.
	var r auditstream.Report
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if r, err = auditstream.Verify(ctx, js, cfg, sealer.PublicKey()); err == nil && r.Unsealed.Events == 0 {
			break
		}
	}
	fmt.Println("ok:", r.OK(), "ranges verified:", r.RangesVerified, "events:", r.Events)

	// The same check offline, from an export.
	var export bytes.Buffer
	head, err := auditstream.Export(ctx, js, cfg, &export)
	if err != nil {
		fmt.Println(err)
		return
	}
	// head (SEQ:HASH) is worth keeping apart from the file: with it, a
	// later check also catches a cut tail whose header was rewritten.
	r, err = auditstream.VerifyExport(&export, sealer.PublicKey(), auditstream.WithChainHead(head))
	fmt.Println("export ok:", err == nil && r.OK())
	// Output:
	// ok: true ranges verified: 1 events: 3
	// export ok: true
}

func ExampleTenantToken() {
	cfg := auditstream.DefaultConfig()
	for _, tenant := range []string{"acme", "", "acme.eu", "a*b"} {
		subject, _ := cfg.Subject(tenant, "TIMEOUT_KV_GET")
		fmt.Println(subject)
	}
	fmt.Println(auditstream.TenantFromToken("acme%2Eeu"))
	// Output:
	// guardian.v1.audit.acme.TIMEOUT_KV_GET
	// guardian.v1.audit._none.TIMEOUT_KV_GET
	// guardian.v1.audit.acme%2Eeu.TIMEOUT_KV_GET
	// guardian.v1.audit.a%2Ab.TIMEOUT_KV_GET
	// acme.eu
}

func ExampleConfig_Validate() {
	cfg := auditstream.DefaultConfig()
	cfg.MaxInFlight = 0
	err := cfg.Validate()
	fmt.Println(errors.Is(err, auditstream.ErrInvalidConfig))
	fmt.Println(err)
	// Output:
	// true
	// auditstream: invalid config: MaxInFlight 0 out of range: must be 1..65536
}
