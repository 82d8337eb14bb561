package scenarios

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/bench/internal/natsrv"
	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// AuditEnv is an embedded server with the audit stream and a plain stream
// for the raw baseline.
type AuditEnv struct {
	srv   *server.Server
	nc    *nats.Conn
	dir   string
	js    jetstream.JetStream
	raw   jetstream.JetStream // PublishAsync, MaxInFlight pending
	cfg   auditstream.Config
	g     *jsguard.Guard
	spool int // spool directories made so far
	batch int // event batches made so far
}

// NewAuditEnv starts a server in a temporary directory, ensures the audit
// stream (auditstream defaults) and a plain stream RAW_AUDIT on raw.audit.>
// with the same storage and duplicate window.
func NewAuditEnv(ctx context.Context) (*AuditEnv, error) {
	dir, err := os.MkdirTemp("", "guardian-bench-audit-")
	if err != nil {
		return nil, err
	}
	e := &AuditEnv{dir: dir, cfg: auditstream.DefaultConfig()}
	if e.srv, err = natsrv.Start(filepath.Join(dir, "nats"), -1); err != nil {
		e.Close()
		return nil, err
	}
	if e.nc, e.js, err = natsrv.Connect(e.srv.ClientURL()); err != nil {
		e.Close()
		return nil, err
	}
	if e.g, err = jsguard.New(jsguard.WithLogger(quiet)); err != nil {
		e.Close()
		return nil, err
	}
	if _, err := auditstream.Ensure(ctx, e.g, e.js, e.cfg); err != nil {
		e.Close()
		return nil, err
	}
	if _, err := e.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: "RAW_AUDIT", Subjects: []string{"raw.audit.>"}, Storage: jetstream.FileStorage,
		Duplicates: e.cfg.Duplicates, MaxAge: e.cfg.MaxAge,
	}); err != nil {
		e.Close()
		return nil, err
	}
	if e.raw, err = jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(e.cfg.MaxInFlight)); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// Close stops the server and removes its directory.
func (e *AuditEnv) Close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.srv != nil {
		natsrv.Stop(e.srv)
	}
	os.RemoveAll(e.dir)
}

// Events returns n distinct timeout events like those guardian emits.
func (e *AuditEnv) Events(n int) []jsguard.Event {
	e.batch++
	start := time.Now().UTC()
	evs := make([]jsguard.Event, n)
	for i := range evs {
		ev := jsguard.Event{
			EventType:      jsguard.EventType,
			Code:           jsguard.KVGet.Code(),
			Operation:      fmt.Sprintf("kv get GUARDIAN_APPROVALS/acme.b%d-%07d", e.batch, i),
			TimeoutSeconds: 5,
			TenantID:       "acme",
			CorrelationID:  fmt.Sprintf("corr-%d-%07d", e.batch, i),
			StartedAt:      start.Add(time.Duration(i) * time.Microsecond),
			ElapsedSeconds: 5.001,
			BudgetSource:   jsguard.SourceCategory,
		}
		ev.Timestamp = ev.StartedAt.Add(5 * time.Second)
		ev.EventID = jsguard.EventID(ev.Code, ev.Operation, ev.TenantID, ev.CorrelationID, ev.TraceID, ev.StartedAt)
		evs[i] = ev
	}
	return evs
}

// Raw publishes evs as JSON with PublishMsgAsync (MaxInFlight pending,
// message ids set) to the plain stream, waits for every ack and returns
// the events per second.
func (e *AuditEnv) Raw(evs []jsguard.Event) (float64, error) {
	start := time.Now()
	for i := range evs {
		data, err := json.Marshal(&evs[i])
		if err != nil {
			return 0, err
		}
		if _, err := e.raw.PublishMsgAsync(&nats.Msg{Subject: "raw.audit.acme." + evs[i].Code, Data: data}, jetstream.WithMsgID(evs[i].EventID)); err != nil {
			return 0, err
		}
	}
	select {
	case <-e.raw.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return 0, errors.New("raw publishes not acknowledged within 1m")
	}
	return float64(len(evs)) / time.Since(start).Seconds(), nil
}

func (e *AuditEnv) spoolDir() string {
	e.spool++
	return filepath.Join(e.dir, fmt.Sprintf("spool-%d", e.spool))
}

// Publish emits evs through an auditstream.Publisher on the live path,
// flushes (every ack received) and returns the events per second.
func (e *AuditEnv) Publish(ctx context.Context, evs []jsguard.Event) (float64, error) {
	cfg := e.cfg
	cfg.SpoolDir = e.spoolDir()
	p, err := auditstream.NewPublisher(e.g, e.js, cfg, auditstream.WithLogger(quiet))
	if err != nil {
		return 0, err
	}
	defer p.Close()
	start := time.Now()
	for i := range evs {
		if err := p.Emit(ctx, evs[i]); err != nil {
			return 0, err
		}
	}
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := p.Flush(fctx); err != nil {
		return 0, err
	}
	el := time.Since(start)
	if st := p.Stats(); st.Published != uint64(len(evs)) {
		return 0, fmt.Errorf("publisher stats %+v, want %d published", st, len(evs))
	}
	return float64(len(evs)) / el.Seconds(), nil
}

// Drain spools evs with a Publisher whose connection is closed (so Emit
// writes the spool, as during an outage), closes it, then opens a
// Publisher on the live connection over the same spool directory, as a
// restarted process would, and times its Run until every event is
// drained. It returns the spool write rate and the drain rate, events per
// second.
func (e *AuditEnv) Drain(ctx context.Context, evs []jsguard.Event) (spooled, drained float64, err error) {
	cfg := e.cfg
	cfg.SpoolDir = e.spoolDir()
	cfg.SpoolMaxBytes = 1 << 40
	down, djs, err := natsrv.Connect(e.srv.ClientURL())
	if err != nil {
		return 0, 0, err
	}
	down.Close()
	p, err := auditstream.NewPublisher(e.g, djs, cfg, auditstream.WithLogger(quiet))
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	for i := range evs {
		if err := p.Emit(ctx, evs[i]); err != nil {
			p.Close()
			return 0, 0, err
		}
	}
	spooled = float64(len(evs)) / time.Since(start).Seconds()
	if st := p.Stats(); st.Spooled != uint64(len(evs)) {
		p.Close()
		return 0, 0, fmt.Errorf("spooling publisher stats %+v, want %d spooled", st, len(evs))
	}
	if err := p.Close(); err != nil {
		return 0, 0, err
	}

	p, err = auditstream.NewPublisher(e.g, e.js, cfg, auditstream.WithLogger(quiet))
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- p.Run(rctx) }()
	deadline := start.Add(2 * time.Minute)
	for p.Stats().Drained < uint64(len(evs)) {
		if time.Now().After(deadline) {
			cancel()
			<-done
			return 0, 0, fmt.Errorf("drain: %+v after 2m, want %d drained", p.Stats(), len(evs))
		}
		time.Sleep(500 * time.Microsecond)
	}
	drained = float64(len(evs)) / time.Since(start).Seconds()
	cancel()
	if err := <-done; err != nil {
		return 0, 0, err
	}
	if st := p.Stats(); st.Dropped != 0 {
		return 0, 0, fmt.Errorf("drain dropped events: %+v", st)
	}
	return spooled, drained, nil
}

// AuditConfig sizes scenario 6.
type AuditConfig struct {
	Events int // events per run
	Rounds int // interleaved rounds (raw, publish, raw, drain, ...)
}

// AuditResult is scenario 6's outcome: medians over the rounds.
type AuditResult struct {
	Raw, Publish, Spool, Drain float64 // events per second
	Events                     int
}

// Audit measures scenario 6: live publishing through the Publisher and
// draining its spool, each next to raw PublishAsync in the same run.
func Audit(ctx context.Context, cfg AuditConfig) (AuditResult, error) {
	e, err := NewAuditEnv(ctx)
	if err != nil {
		return AuditResult{}, err
	}
	defer e.Close()
	// Warm up both paths.
	if _, err := e.Raw(e.Events(2000)); err != nil {
		return AuditResult{}, err
	}
	if _, err := e.Publish(ctx, e.Events(2000)); err != nil {
		return AuditResult{}, err
	}
	var raw, pub, spool, drain []float64
	for range cfg.Rounds {
		r, err := e.Raw(e.Events(cfg.Events))
		if err != nil {
			return AuditResult{}, fmt.Errorf("raw: %w", err)
		}
		raw = append(raw, r)
		p, err := e.Publish(ctx, e.Events(cfg.Events))
		if err != nil {
			return AuditResult{}, fmt.Errorf("publish: %w", err)
		}
		pub = append(pub, p)
		r, err = e.Raw(e.Events(cfg.Events))
		if err != nil {
			return AuditResult{}, fmt.Errorf("raw: %w", err)
		}
		raw = append(raw, r)
		s, d, err := e.Drain(ctx, e.Events(cfg.Events))
		if err != nil {
			return AuditResult{}, fmt.Errorf("drain: %w", err)
		}
		spool, drain = append(spool, s), append(drain, d)
	}
	return AuditResult{Raw: medianF(raw), Publish: medianF(pub), Spool: medianF(spool), Drain: medianF(drain), Events: cfg.Events}, nil
}

// Rows returns scenario 6's rows.
func (r AuditResult) Rows() []Row {
	const sc = "6 Audit"
	return []Row{
		{sc, fmt.Sprintf("Publisher.Emit, live path, acks included (%d events)", r.Events), rate(r.Publish), rate(r.Raw) + " raw PublishAsync",
			ratio(r.Publish, r.Raw), "≥ 50k/s", check(r.Publish >= 50_000)},
		{sc, "spool drain (Run after an outage)", rate(r.Drain), rate(r.Raw) + " raw PublishAsync",
			ratio(r.Drain, r.Raw), "≥ 20k/s", check(r.Drain >= 20_000)},
		{sc, "spool write while NATS is down (Emit)", rate(r.Spool), "", "", "", Info},
	}
}
