package auditstream

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

var quiet = WithLogger(slog.New(slog.DiscardHandler))

func TestEnsure(t *testing.T) {
	s := natstest.Run(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	cfg := DefaultConfig()

	st, err := Ensure(ctx, nil, js, cfg)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	got := st.CachedInfo().Config
	if got.Storage != jetstream.FileStorage || !got.DenyDelete || !got.DenyPurge || got.MaxAge != cfg.MaxAge ||
		got.Duplicates != cfg.Duplicates || !slices.Equal(got.Subjects, []string{"guardian.v1.audit.*.*", "guardian.v1.audit.seal"}) {
		t.Errorf("stream config = %+v", got)
	}
	cfg.MaxAge = 180 * 24 * time.Hour // longer: raised (a shorter one is kept, see stream_test.go)
	if st, err = Ensure(ctx, nil, js, cfg); err != nil {
		t.Fatalf("Ensure update: %v", err)
	} else if st.CachedInfo().Config.MaxAge != cfg.MaxAge {
		t.Errorf("MaxAge not updated: %s", st.CachedInfo().Config.MaxAge)
	}

	tests := []struct {
		name    string
		stream  jetstream.StreamConfig
		cfgEdit func(*Config)
		setting string
	}{
		{"other subjects", jetstream.StreamConfig{Name: "S1", Subjects: []string{"other.>"}}, nil, "Subjects"},
		{"whole prefix", jetstream.StreamConfig{Name: "S5", Subjects: []string{"s5.>"}}, nil, "Subjects"},
		{"memory storage", jetstream.StreamConfig{Name: "S2", Subjects: []string{"s2.*.*", "s2.seal"}, Storage: jetstream.MemoryStorage}, nil, "Storage"},
		{"work queue", jetstream.StreamConfig{Name: "S3", Subjects: []string{"s3.*.*", "s3.seal"}, Retention: jetstream.WorkQueuePolicy}, nil, "Retention"},
		{"server refuses replicas", jetstream.StreamConfig{Name: "S4", Subjects: []string{"s4.*.*", "s4.seal"}}, func(c *Config) { c.Replicas = 3 }, "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := js.CreateStream(ctx, tt.stream); err != nil {
				t.Fatal(err)
			}
			c := DefaultConfig()
			c.Stream, c.SubjectPrefix = tt.stream.Name, strings.SplitN(tt.stream.Subjects[0], ".", 2)[0]
			if tt.name == "other subjects" {
				c.SubjectPrefix = "mine"
			}
			if tt.cfgEdit != nil {
				tt.cfgEdit(&c)
			}
			_, err := Ensure(ctx, nil, js, c)
			if !errors.Is(err, ErrIncompatibleStream) {
				t.Fatalf("Ensure = %v, want ErrIncompatibleStream", err)
			}
			if !strings.Contains(err.Error(), tt.setting) {
				t.Errorf("error %q does not name %s", err, tt.setting)
			}
		})
	}
	if _, err := Ensure(ctx, nil, js, Config{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Ensure(zero Config) = %v, want ErrInvalidConfig", err)
	}
}

func TestNewPublisherErrors(t *testing.T) {
	s := natstest.Run(t)
	_, js := natstest.Connect(t, s)
	cfg := DefaultConfig()
	if _, err := NewPublisher(nil, js, cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("no SpoolDir: %v, want ErrInvalidConfig", err)
	}
	cfg.SpoolDir = t.TempDir()
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewPublisher(nil, js, cfg, quiet); !errors.Is(err, ErrSpoolLocked) {
		t.Errorf("second publisher on the same spool: %v, want ErrSpoolLocked", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Emit(t.Context(), testEvent(1, "a", "TIMEOUT_X")); !errors.Is(err, ErrClosed) {
		t.Errorf("Emit after Close = %v, want ErrClosed", err)
	}
	p2, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatalf("publisher after Close: %v", err)
	}
	p2.Close()
}

// TestGuardTimeoutEvent runs a real guarded call that times out with the
// publisher as the guard's sink.
func TestGuardTimeoutEvent(t *testing.T) {
	_, _, js, cfg := startStream(t)
	var timeouts atomic.Int32
	g, err := jsguard.New(jsguard.WithHooks(jsguard.Hooks{OnTimeout: func(jsguard.Event) { timeouts.Add(1) }}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(g, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	g.SetSink(p)

	ctx := jsguard.WithCorrelationID(jsguard.WithTenant(t.Context(), "acme.eu"), "c-1")
	err = g.Do(ctx, jsguard.KVGet, "kv get B/k", func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}, jsguard.WithBudget(20*time.Millisecond), jsguard.WithDetail("key", "k"))
	te, ok := errors.AsType[*jsguard.TimeoutError](err)
	if !ok {
		t.Fatalf("Do = %v, want a *TimeoutError", err)
	}
	if err := p.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if g.SinkErrors() != 0 {
		t.Errorf("sink errors = %d", g.SinkErrors())
	}

	recs := readStream(t, js, cfg)
	if len(recs) != 1 {
		t.Fatalf("stream holds %d messages, want 1", len(recs))
	}
	r := recs[0]
	if r.Subject != "guardian.v1.audit.acme%2Eeu.TIMEOUT_KV_GET" || r.MsgID != te.EventID {
		t.Errorf("subject %q, msg id %q; want guardian.v1.audit.acme%%2Eeu.TIMEOUT_KV_GET, %q", r.Subject, r.MsgID, te.EventID)
	}
	var got map[string]any
	if err := json.Unmarshal(r.Data, &got); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"event_id": te.EventID, "event_type": "timeout_occurred", "timeout_category": "TIMEOUT_KV_GET",
		"operation": "kv get B/k", "timeout_seconds": 0.02, "tenant_id": "acme.eu", "correlation_id": "c-1",
		"trace_id": "", "budget_source": "override", "abandoned": false, "fallback_used": false,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	if ac, _ := got["additional_context"].(map[string]any); ac["key"] != "k" {
		t.Errorf("additional_context = %v", got["additional_context"])
	}
	for _, k := range []string{"timestamp", "started_at", "elapsed_seconds"} {
		if got[k] == nil {
			t.Errorf("%s missing", k)
		}
	}

	// The same event again is stored once.
	var ev jsguard.Event
	if err := json.Unmarshal(r.Data, &ev); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := p.Emit(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := len(readStream(t, js, cfg)); n != 1 {
		t.Errorf("after re-sending, stream holds %d messages, want 1", n)
	}
	if st := p.Stats(); st.Published != 4 || st.Spooled != 0 || st.Dropped != 0 {
		t.Errorf("stats = %+v, want 4 published", st)
	}
	if n := timeouts.Load(); n != 1 {
		t.Errorf("guard saw %d timeouts, want 1", n)
	}
}

// TestNoRecursion: when the stream is missing, the publisher's failures go
// to the spool and never back into the guard that uses it as its sink.
func TestNoRecursion(t *testing.T) {
	s := natstest.Run(t)
	_, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	var timeouts, sinkErrs atomic.Int32
	pol := jsguard.DefaultPolicy()
	pol.Budgets[jsguard.NATSPublish] = 300 * time.Millisecond
	g, err := jsguard.New(jsguard.WithPolicy(pol), jsguard.WithHooks(jsguard.Hooks{
		OnTimeout:   func(jsguard.Event) { timeouts.Add(1) },
		OnSinkError: func(jsguard.Event, error) { sinkErrs.Add(1) },
	}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(g, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	g.SetSink(p)

	_ = g.Do(t.Context(), jsguard.APIRequest, "slow api", func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}, jsguard.WithBudget(10*time.Millisecond))
	// No stream: the async publish fails (no responders) and is spooled.
	eventually(t, 5*time.Second, func() bool { return p.Stats().Spooled == 1 }, "event spooled, stats %+v", p.Stats())
	if err := p.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n, e := timeouts.Load(), sinkErrs.Load(); n != 1 || e != 0 {
		t.Fatalf("guard saw %d timeouts and %d sink errors, want 1 and 0", n, e)
	}

	if _, err := Ensure(t.Context(), nil, js, cfg); err != nil {
		t.Fatal(err)
	}
	runInBackground(t, p.Run)
	eventually(t, 5*time.Second, func() bool { return p.Stats().Drained == 1 }, "drained, stats %+v", p.Stats())
	if recs := readStream(t, js, cfg); len(recs) != 1 || recs[0].Subject != "guardian.v1.audit._none.TIMEOUT_API_REQUEST" {
		t.Errorf("stream = %+v", recs)
	}
	if n := timeouts.Load(); n != 1 {
		t.Errorf("guard saw %d timeouts, want 1", n)
	}
}

// TestOutage: events emitted while the server is down, by this publisher
// and by a new publisher on the same spool, all arrive exactly once.
func TestOutage(t *testing.T) {
	opts := natstest.Options(t.TempDir())
	s := natstest.Start(t, opts)
	nc, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	ctx := t.Context()
	if _, err := Ensure(ctx, nil, js, cfg); err != nil {
		t.Fatal(err)
	}
	base := time.Now()
	emit := func(p *Publisher, from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if err := p.Emit(ctx, freshEvent(base, i, "acme", "TIMEOUT_KV_PUT")); err != nil {
				t.Fatalf("Emit %d: %v", i, err)
			}
		}
	}

	p1, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	emit(p1, 0, 20)
	if err := p1.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	// Outage. (natstest.Restart needs a running server, so stop and start
	// by hand on the same port and store.)
	port := s.Addr().(*net.TCPAddr).Port
	s.Shutdown()
	s.WaitForShutdown()
	eventually(t, 5*time.Second, func() bool { return !nc.IsConnected() }, "client noticed the outage")
	emit(p1, 20, 50)
	if st := p1.Stats(); st.Spooled != 30 || st.Published != 20 {
		t.Fatalf("during outage: %+v, want 20 published, 30 spooled", st)
	}
	// The publisher process goes away and another starts on the same spool.
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}
	p2, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	emit(p2, 50, 80)
	// Re-sending some events already spooled or stored must not duplicate.
	emit(p2, 10, 30)
	if st := p2.Stats(); st.Spooled != 50 || st.SpoolBytes == 0 {
		t.Fatalf("second publisher: %+v, want 50 spooled", st)
	}

	restarted := natstest.Options(opts.StoreDir)
	restarted.Port = port
	natstest.Start(t, restarted)
	runInBackground(t, p2.Run)
	eventually(t, 10*time.Second, func() bool { return p2.Stats().SpoolBytes == 0 }, "spool drained: %+v", p2.Stats())

	assertEventsOnce(t, js, cfg, 80)
	// 80 spooled lines: 30+30 new, 10 re-sent that were stored before the
	// outage (the stream drops them), 10 re-sent that the first segment
	// drained (skipped).
	if st := p2.Stats(); st.Drained != 70 || st.Skipped != 10 || st.Dropped != 0 {
		t.Errorf("stats %+v, want 70 drained, 10 skipped, none dropped", st)
	}
	if _, err := os.Stat(filepath.Join(cfg.SpoolDir, "00000000000000000001.jsonl")); !os.IsNotExist(err) {
		t.Errorf("drained segment still on disk: %v", err)
	}
}

// TestOutageUnderLoad restarts the server while events keep coming: every
// event Emit accepted arrives exactly once.
func TestOutageUnderLoad(t *testing.T) {
	opts := natstest.Options(t.TempDir())
	s := natstest.Start(t, opts)
	_, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	cfg.MaxInFlight = 64
	ctx := t.Context()
	if _, err := Ensure(ctx, nil, js, cfg); err != nil {
		t.Fatal(err)
	}
	pol := jsguard.DefaultPolicy()
	pol.Budgets[jsguard.NATSPublish] = time.Second // ack timeout
	g, err := jsguard.New(jsguard.WithPolicy(pol))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(g, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	runInBackground(t, p.Run)

	const total = 1500
	var wg sync.WaitGroup
	var sent atomic.Int32
	errs := make(chan error, 1)
	base := time.Now()
	wg.Go(func() {
		for i := range total {
			ectx, cancel := context.WithTimeout(ctx, 100*time.Millisecond) // the guard's emit bound
			err := p.Emit(ectx, freshEvent(base, i, "t", "TIMEOUT_NATS_PUBLISH"))
			cancel()
			if err != nil {
				errs <- err
				return
			}
			sent.Add(1)
			if i%10 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	eventually(t, 10*time.Second, func() bool { return sent.Load() > total/4 }, "a quarter sent")
	port := s.Addr().(*net.TCPAddr).Port
	s.Shutdown()
	s.WaitForShutdown()
	time.Sleep(200 * time.Millisecond) // the outage
	restarted := natstest.Options(opts.StoreDir)
	restarted.Port = port
	natstest.Start(t, restarted)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("Emit: %v", err)
	default:
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() bool { return p.Stats().SpoolBytes == 0 && p.Stats().InFlight == 0 }, "spool drained: %+v", p.Stats())
	assertEventsOnce(t, js, cfg, total)
	st := p.Stats()
	t.Logf("stats: %+v", st)
	if st.Dropped != 0 || st.Spooled == 0 {
		t.Errorf("stats %+v: want some spooled, none dropped", st)
	}
}

// assertEventsOnce checks the stream holds exactly n events with n
// distinct ids.
func assertEventsOnce(t *testing.T, js jetstream.JetStream, cfg Config, n int) {
	t.Helper()
	recs := eventRecords(cfg, readStream(t, js, cfg))
	ids := map[string]int{}
	for _, r := range recs {
		ids[r.MsgID]++
	}
	if len(recs) != n || len(ids) != n {
		t.Fatalf("stream holds %d events with %d distinct ids, want %d of each", len(recs), len(ids), n)
	}
}

// TestSpoolFull: with the connection gone and a tiny spool, exactly the
// events that do not fit are dropped, counted, and logged once.
func TestSpoolFull(t *testing.T) {
	s := natstest.Run(t)
	nc, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	cfg.SpoolMaxBytes = 4096
	var errorLogs atomic.Int32
	log := slog.New(countingHandler{level: slog.LevelError, n: &errorLogs})
	p, err := NewPublisher(nil, js, cfg, WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	nc.Close()

	line, _ := json.Marshal(testEvent(0, "acme", "TIMEOUT_KV_GET"))
	fit := int(cfg.SpoolMaxBytes) / (len(line) + 1)
	const n = 25
	full := 0
	for i := range n {
		err := p.Emit(t.Context(), testEvent(i, "acme", "TIMEOUT_KV_GET"))
		switch {
		case errors.Is(err, ErrSpoolFull):
			full++
		case err != nil:
			t.Fatalf("Emit %d: %v", i, err)
		}
	}
	st := p.Stats()
	if st.Spooled != uint64(fit) || st.Dropped != uint64(n-fit) || full != n-fit {
		t.Errorf("spooled %d, dropped %d, ErrSpoolFull %d; want %d, %d, %d", st.Spooled, st.Dropped, full, fit, n-fit, n-fit)
	}
	if st.SpoolBytes != int64(fit*(len(line)+1)) {
		t.Errorf("spool bytes %d, want %d", st.SpoolBytes, fit*(len(line)+1))
	}
	if got := errorLogs.Load(); got != 1 {
		t.Errorf("error logs = %d, want 1 for the burst", got)
	}
	if err := p.Emit(t.Context(), jsguard.Event{Code: "bad code"}); !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("Emit(bad code) = %v, want ErrInvalidEvent", err)
	}
	if got := p.Stats().Dropped; got != uint64(n-fit+1) {
		t.Errorf("dropped %d after an invalid event, want %d", got, n-fit+1)
	}
}

type countingHandler struct {
	level slog.Level
	n     *atomic.Int32
}

func (h countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }
func (h countingHandler) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// TestSpoolTornLine: a line torn by a crash is dropped and counted; the
// events before it are drained.
func TestSpoolTornLine(t *testing.T) {
	_, _, js, cfg := startStream(t)
	a, _ := json.Marshal(testEvent(1, "a", "TIMEOUT_X"))
	b, _ := json.Marshal(testEvent(2, "a", "TIMEOUT_X"))
	seg := append(append(append(a, '\n'), b...), '\n')
	seg = append(seg, `{"event_id":"torn`...)
	if err := os.WriteFile(filepath.Join(cfg.SpoolDir, "00000000000000000007.jsonl"), seg, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.spool.next != 8 {
		t.Errorf("next segment %d, want 8: after the highest found", p.spool.next)
	}
	runInBackground(t, p.Run)
	eventually(t, 5*time.Second, func() bool { return p.Stats().SpoolBytes == 0 }, "drained: %+v", p.Stats())
	if st := p.Stats(); st.Drained != 2 || st.Dropped != 1 {
		t.Errorf("stats %+v, want 2 drained and 1 dropped", st)
	}
	assertEventsOnce(t, js, cfg, 2)
}

// TestCircuitEventsStored: a circuit breaker's state changes reach the
// audit stream as AUDIT_CIRCUIT_* events, one per change, without a
// tenant; the calls that failed fast add none.
func TestCircuitEventsStored(t *testing.T) {
	_, _, js, cfg := startStream(t)
	pol := jsguard.DefaultPolicy()
	pol.Budgets[jsguard.KVGet] = 20 * time.Millisecond
	pol.Breakers = map[jsguard.Category]jsguard.BreakerConfig{jsguard.KVGet: {
		Window: time.Minute, MinCalls: 2, TimeoutRate: 1, Cooldown: time.Hour, Probes: 1,
	}}
	g, err := jsguard.New(jsguard.WithPolicy(pol))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(g, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	g.SetSink(p)
	ctx := jsguard.WithTenant(t.Context(), "acme")
	for range 5 {
		_ = g.Do(ctx, jsguard.KVGet, "kv get B/k", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	}
	if err := p.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	var subjects []string
	for _, r := range readStream(t, js, cfg) {
		subjects = append(subjects, r.Subject)
	}
	want := []string{"guardian.v1.audit.acme.TIMEOUT_KV_GET", "guardian.v1.audit.acme.TIMEOUT_KV_GET", "guardian.v1.audit._none.AUDIT_CIRCUIT_OPEN"}
	if !slices.Equal(subjects, want) {
		t.Errorf("stored %v, want %v", subjects, want)
	}
}
