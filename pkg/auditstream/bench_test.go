package auditstream

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkPublish measures Emit on the live path, acks included (the
// clock stops after Flush).
func BenchmarkPublish(b *testing.B) {
	_, _, js, cfg := startStream(b)
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ev := testEvent(0, "acme", "TIMEOUT_KV_GET")
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		ev.EventID = fmt.Sprintf("%032x", i)
		if err := p.Emit(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.StopTimer()
	if st := p.Stats(); st.Published != uint64(b.N) {
		b.Fatalf("stats %+v, want %d published", st, b.N)
	}
}

// BenchmarkDrain measures Run re-publishing a spool of b.N events.
func BenchmarkDrain(b *testing.B) {
	_, _, js, cfg := startStream(b)
	cfg.SpoolMaxBytes = 1 << 40
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ev := testEvent(0, "acme", "TIMEOUT_KV_GET")
	for i := range b.N {
		ev.EventID = fmt.Sprintf("%032x", i)
		line, _ := json.Marshal(ev)
		if err := p.spool.append(line); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ResetTimer()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	for p.Stats().Drained < uint64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.StopTimer()
	cancel()
	<-done
	if st := p.Stats(); st.Drained != uint64(b.N) || st.Dropped != 0 {
		b.Fatalf("stats %+v, want %d drained", st, b.N)
	}
}

// BenchmarkPublishRaw is the baseline for BenchmarkPublish: the same
// events published with bare PublishMsgAsync (1024 in flight, message
// ids set), no guard, no spool.
func BenchmarkPublishRaw(b *testing.B) {
	_, nc, _, cfg := startStream(b)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight))
	if err != nil {
		b.Fatal(err)
	}
	ev := testEvent(0, "acme", "TIMEOUT_KV_GET")
	subject, _ := cfg.Subject(ev.TenantID, ev.Code)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		ev.EventID = fmt.Sprintf("%032x", i)
		data, _ := json.Marshal(ev)
		if _, err := js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: data}, jetstream.WithMsgID(ev.EventID)); err != nil {
			b.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
