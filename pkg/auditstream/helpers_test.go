package auditstream

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// testConfig is DefaultConfig with a fresh spool and quick seals.
func testConfig(t testing.TB) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.SpoolDir = t.TempDir()
	cfg.SealInterval = 100 * time.Millisecond
	return cfg
}

// startStream starts a server, connects and ensures the audit stream.
func startStream(t testing.TB) (*server.Server, *nats.Conn, jetstream.JetStream, Config) {
	t.Helper()
	s := natstest.Run(t)
	nc, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	if _, err := Ensure(context.Background(), nil, js, cfg); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return s, nc, js, cfg
}

// testSeed returns a fixed account seed, so that keys are stable.
func testSeed(t testing.TB) (seed, pub string) {
	t.Helper()
	kp, err := nkeys.FromRawSeed(nkeys.PrefixByteAccount, bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := kp.Seed()
	p, _ := kp.PublicKey()
	return string(s), p
}

// testEvent returns event i. For i below 1,000,000 and a given tenant and
// code, all events have the same JSON length (times keep 9 fractional
// digits).
func testEvent(i int, tenant, code string) jsguard.Event {
	start := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC).Add(time.Duration(i)*time.Millisecond + time.Nanosecond)
	e := jsguard.Event{
		EventType:      jsguard.EventType,
		Code:           code,
		Operation:      fmt.Sprintf("test op %06d", i),
		TimeoutSeconds: 5,
		TenantID:       tenant,
		CorrelationID:  fmt.Sprintf("corr-%06d", i),
		Timestamp:      start.Add(5 * time.Second),
		StartedAt:      start,
		ElapsedSeconds: 5,
		BudgetSource:   jsguard.SourceCategory,
	}
	e.EventID = jsguard.EventID(e.Code, e.Operation, e.TenantID, e.CorrelationID, e.TraceID, e.StartedAt)
	return e
}

// eventually polls cond every 20ms until it holds or d passes.
func eventually(t testing.TB, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: "+format, append([]any{d}, args...)...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readStream returns every message of the audit stream in order.
func readStream(t testing.TB, js jetstream.JetStream, cfg Config) []record {
	t.Helper()
	var out []record
	if _, _, err := readAll(context.Background(), js, &cfg, func(r record) error { out = append(out, r); return nil }); err != nil {
		t.Fatalf("read stream: %v", err)
	}
	return out
}

// eventRecords returns the messages that are not seals.
func eventRecords(cfg Config, recs []record) []record {
	var out []record
	for _, r := range recs {
		if r.Subject != cfg.SealSubject() {
			out = append(out, r)
		}
	}
	return out
}

// runInBackground runs fn until the test ends and reports its error then.
func runInBackground(t testing.TB, fn func(context.Context) error) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("background Run: %v", err)
		}
	})
	return cancel
}
