package auditstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// Option configures a Publisher, Sealer or Alerter.
type Option func(*options)

type options struct {
	log *slog.Logger
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

func buildOptions(opts []Option) options {
	o := options{log: slog.Default()}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Publisher writes audit events to the audit stream. It implements
// jsguard.Sink, so a Guard can use it directly (jsguard.WithSink).
//
// Emit hands each event to an asynchronous JetStream publish with the event
// id as Nats-Msg-Id, so a re-sent event is stored once; at most
// Config.MaxInFlight publishes await their ack. When NATS cannot take an
// event (not connected, publish error, ack error or ack timeout) the event
// goes to an on-disk spool instead, and Run publishes the spool again, in
// order, once NATS is back. Only a full spool, a closed publisher or an
// invalid event loses an event, and each loss is counted (Stats.Dropped)
// and logged once per burst.
//
// The publisher's own NATS calls run under a Guard without a sink, so a
// failed audit publish never produces another audit event.
//
// A Publisher is safe for concurrent use.
type Publisher struct {
	cfg   Config
	nc    *nats.Conn
	live  jetstream.JetStream // Emit's publishes; acks and errors arrive in onAck and onErr
	drain jetstream.JetStream // the drainer's publishes, awaited through their futures
	g     *jsguard.Guard      // the caller's guard: its policy is followed
	guard *jsguard.Guard      // no sink: the publisher's own calls
	spool *spool
	log   *slog.Logger

	mu     sync.RWMutex // shared by Emit, exclusive by Close
	closed bool
	done   chan struct{} // closed by Close

	published, spooled, drained, dropped atomic.Uint64
	dropping                             atomic.Bool
	burst                                atomic.Uint64

	drainMu  sync.Mutex // one drain at a time
	drainSeg uint64     // the segment being drained and how far it got
	drainPos int
}

// NewPublisher returns a Publisher on the connection of js, with the spool
// in cfg.SpoolDir. The publisher follows g's policy (g may be nil for
// jsguard.Default()): acks time out after its NATS_PUBLISH budget as it is
// when NewPublisher runs, and the drainer picks up later changes. g may
// have this publisher as its sink. It does not
// create the stream: call Ensure first. Events that an earlier process
// spooled in the same directory are published by Run.
//
// It returns an error wrapping ErrInvalidConfig for a bad cfg or an empty
// SpoolDir, ErrSpoolLocked when another Publisher holds the directory, or
// the file system error.
func NewPublisher(g *jsguard.Guard, js jetstream.JetStream, cfg Config, opts ...Option) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.SpoolDir == "" {
		return nil, invalid("SpoolDir is empty: the publisher needs a directory for its spool")
	}
	if g == nil {
		g = jsguard.Default()
	}
	guard, err := jsguard.New(jsguard.WithPolicy(g.Policy()))
	if err != nil {
		return nil, fmt.Errorf("publisher guard: %w", err)
	}
	o := buildOptions(opts)
	p := &Publisher{cfg: cfg, nc: js.Conn(), g: g, guard: guard, log: o.log, done: make(chan struct{})}
	ackWait := guard.Budget(jsguard.NATSPublish)
	p.live, err = jetstream.New(p.nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight),
		jetstream.WithPublishAsyncTimeout(ackWait),
		jetstream.WithPublishAsyncAckHandler(p.onAck),
		jetstream.WithPublishAsyncErrHandler(p.onErr))
	if err != nil {
		return nil, fmt.Errorf("publisher jetstream: %w", err)
	}
	p.drain, err = jetstream.New(p.nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight),
		jetstream.WithPublishAsyncTimeout(ackWait))
	if err != nil {
		return nil, fmt.Errorf("publisher jetstream: %w", err)
	}
	if p.spool, err = openSpool(cfg.SpoolDir, cfg.SpoolMaxBytes); err != nil {
		return nil, err
	}
	return p, nil
}

// Emit publishes e to SubjectPrefix.<tenant>.<code> with Nats-Msg-Id set to
// e.EventID (derived with jsguard.EventID when empty). It returns once the
// publish is handed to NATS or the event is spooled, whichever ctx allows;
// the ack is awaited in the background and a failure spools the event then.
//
// It returns nil when the event was published or spooled; an error wrapping
// ErrInvalidEvent for a malformed code, ErrSpoolFull when NATS could not
// take the event and the spool had no room, or ErrClosed after Close. Every
// non-nil return means the event was dropped and counted.
func (p *Publisher) Emit(ctx context.Context, e jsguard.Event) error {
	if e.EventID == "" {
		e.EventID = jsguard.EventID(e.Code, e.Operation, e.TenantID, e.CorrelationID, e.TraceID, e.StartedAt)
	}
	subject, err := p.cfg.Subject(e.TenantID, e.Code)
	if err != nil {
		p.drop(err)
		return fmt.Errorf("emit %s: %w", e.EventID, err)
	}
	data, err := json.Marshal(e)
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrInvalidEvent, err)
		p.drop(err)
		return fmt.Errorf("emit %s: %w", e.EventID, err)
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		p.drop(ErrClosed)
		return fmt.Errorf("emit %s: %w", e.EventID, ErrClosed)
	}
	if !p.nc.IsConnected() {
		return p.toSpool(data)
	}
	err = p.guard.Do(ctx, jsguard.NATSPublish, "audit publish "+subject, func(ctx context.Context) error {
		wait := time.Until(deadline(ctx))
		if wait <= 0 {
			return context.DeadlineExceeded
		}
		_, err := p.live.PublishMsgAsync(&nats.Msg{Subject: subject, Data: data},
			jetstream.WithMsgID(e.EventID), jetstream.WithStallWait(wait))
		return err
	})
	if err != nil {
		p.log.Debug("audit publish failed, spooling", "event_id", e.EventID, "err", err)
		return p.toSpool(data)
	}
	return nil
}

// deadline returns ctx's deadline; guarded calls always have one.
func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

func (p *Publisher) onAck(_ jetstream.JetStream, _ *nats.Msg, _ *jetstream.PubAck) {
	p.published.Add(1)
	p.endBurst()
}

func (p *Publisher) onErr(_ jetstream.JetStream, m *nats.Msg, err error) {
	p.log.Debug("audit publish not acknowledged, spooling", "subject", m.Subject, "err", err)
	_ = p.toSpool(m.Data)
}

// toSpool appends an event; it returns nil or the reason it was dropped.
func (p *Publisher) toSpool(data []byte) error {
	if err := p.spool.append(data); err != nil {
		p.drop(err)
		return fmt.Errorf("spool event: %w", err)
	}
	p.spooled.Add(1)
	p.endBurst()
	return nil
}

// drop counts a lost event and logs the first loss of a burst.
func (p *Publisher) drop(err error) {
	p.dropped.Add(1)
	p.burst.Add(1)
	if p.dropping.CompareAndSwap(false, true) {
		p.log.Error("audit events are being dropped", "err", err, "spool_dir", p.cfg.SpoolDir,
			"spool_bytes", p.spool.size(), "spool_max_bytes", p.cfg.SpoolMaxBytes)
	}
}

func (p *Publisher) endBurst() {
	if p.dropping.Load() && p.dropping.CompareAndSwap(true, false) {
		p.log.Warn("audit events are accepted again", "dropped", p.burst.Swap(0))
	}
}

// PublisherStats is a snapshot of a Publisher's counters.
type PublisherStats struct {
	// Published counts events the stream acknowledged on first sending
	// (re-sent duplicates included).
	Published uint64
	// Spooled counts events written to the spool.
	Spooled uint64
	// Drained counts spooled events the stream acknowledged later.
	Drained uint64
	// Dropped counts lost events: spool full, publisher closed, invalid
	// event, or a spool line that could not be read back.
	Dropped uint64
	// SpoolBytes is the size of the spool on disk.
	SpoolBytes int64
	// InFlight is the number of live publishes awaiting their ack.
	InFlight int
}

// Stats returns the publisher's counters. It is safe for concurrent use.
func (p *Publisher) Stats() PublisherStats {
	return PublisherStats{
		Published:  p.published.Load(),
		Spooled:    p.spooled.Load(),
		Drained:    p.drained.Load(),
		Dropped:    p.dropped.Load(),
		SpoolBytes: p.spool.size(),
		InFlight:   p.live.PublishAsyncPending(),
	}
}

// Flush waits until every live publish has its ack or, on failure, is in
// the spool, then syncs the spool to disk. Call it at shutdown before
// draining the connection. It returns an error wrapping ctx.Err() when ctx
// ends first, or the spool's sync error. Safe for concurrent use.
func (p *Publisher) Flush(ctx context.Context) error {
	select {
	case <-p.live.PublishAsyncComplete():
	case <-ctx.Done():
		return fmt.Errorf("flush audit publishes (%d in flight): %w", p.live.PublishAsyncPending(), ctx.Err())
	}
	return p.spool.sync()
}

// Close stops the publisher: publishes still awaiting their ack are
// spooled (call Flush first to let them finish), Run returns, and the
// spool is synced and its directory released for another Publisher. Emit
// returns ErrClosed afterwards. It returns the spool's file error, if any; a second Close
// returns nil. Safe for concurrent use.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	p.live.CleanupPublisher() // pending publishes fail into onErr, which spools them
	p.drain.CleanupPublisher()
	p.drainMu.Lock()
	defer p.drainMu.Unlock()
	return p.spool.close()
}

// Run drains the spool until ctx ends: whenever the spool holds events and
// the connection is up, it publishes them again in their order, with their
// event ids as Nats-Msg-Id, and removes each segment once the stream has
// acknowledged all of it. A segment interrupted by a crash is published
// again from its start, and the stream drops what it already holds within
// the Duplicates window. Failures are retried with a growing pause (100ms
// to 5s) and logged at debug level. Run also syncs the spool to disk about
// once a second. It returns nil when ctx ends or the Publisher is closed.
// Run one Run per Publisher.
func (p *Publisher) Run(ctx context.Context) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var backoff time.Duration
	var retryAt time.Time
	for {
		if p.spool.size() > 0 && p.nc.IsConnected() && !time.Now().Before(retryAt) {
			err := p.drainOne(ctx)
			switch {
			case ctx.Err() != nil, errors.Is(err, ErrClosed):
				return nil
			case err != nil:
				backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
				retryAt = time.Now().Add(backoff)
				p.log.Debug("audit spool drain failed", "err", err, "retry_in", backoff)
			default:
				backoff = 0
				continue
			}
		}
		select {
		case <-ctx.Done():
			_ = p.spool.sync()
			return nil
		case <-p.done:
			return nil
		case <-p.spool.notify:
		case <-tick.C:
			if err := p.spool.sync(); err != nil {
				p.log.Warn("audit spool sync", "err", err)
			}
		}
	}
}

// drainMsg is one spooled event ready to publish.
type drainMsg struct {
	subject, id string
	data        []byte
}

// drainOne publishes the oldest spool segment and removes it.
func (p *Publisher) drainOne(ctx context.Context) error {
	p.drainMu.Lock()
	defer p.drainMu.Unlock()
	_ = p.guard.SetPolicy(p.g.Policy()) // follow the caller's policy; it validated already
	seg, ok, err := p.spool.oldest()
	if err != nil || !ok {
		return err
	}
	data, err := os.ReadFile(p.spool.path(seg.n))
	if err != nil {
		return fmt.Errorf("read spool segment: %w", err)
	}
	msgs, bad := p.decodeSegment(data)
	if p.drainSeg != seg.n {
		p.drainSeg, p.drainPos = seg.n, 0
		for _, err := range bad {
			p.drop(err)
		}
	}
	for p.drainPos < len(msgs) {
		end := min(p.drainPos+p.cfg.MaxInFlight, len(msgs))
		acked, err := p.publishBatch(ctx, msgs[p.drainPos:end])
		p.drainPos += acked
		p.drained.Add(uint64(acked))
		if err != nil {
			return fmt.Errorf("drain spool segment %d: %w", seg.n, err)
		}
	}
	return p.spool.remove(seg)
}

// decodeSegment returns the events of a segment in order and an error for
// each line that cannot be published (torn by a crash, not an event).
func (p *Publisher) decodeSegment(data []byte) ([]drainMsg, []error) {
	var msgs []drainMsg
	var bad []error
	for len(data) > 0 {
		line, rest, complete := bytes.Cut(data, []byte{'\n'})
		data = rest
		if !complete {
			bad = append(bad, fmt.Errorf("spool: torn last line (%d bytes) dropped", len(line)))
			break
		}
		if len(line) == 0 {
			continue
		}
		var e struct {
			EventID  string `json:"event_id"`
			Code     string `json:"timeout_category"`
			TenantID string `json:"tenant_id"`
		}
		if err := json.Unmarshal(line, &e); err != nil {
			bad = append(bad, fmt.Errorf("spool: unreadable line dropped: %w", err))
			continue
		}
		subject, err := p.cfg.Subject(e.TenantID, e.Code)
		if err != nil || e.EventID == "" {
			bad = append(bad, fmt.Errorf("spool: line with code %q and event id %q dropped", e.Code, e.EventID))
			continue
		}
		msgs = append(msgs, drainMsg{subject: subject, id: e.EventID, data: line})
	}
	return msgs, bad
}

// publishBatch publishes msgs pipelined, under one guarded call, and
// returns how many of them, counted from the first, the stream acknowledged.
func (p *Publisher) publishBatch(ctx context.Context, msgs []drainMsg) (int, error) {
	var acked atomic.Int64
	err := p.guard.Do(ctx, jsguard.NATSPublish, "audit spool drain", func(ctx context.Context) error {
		futures := make([]jetstream.PubAckFuture, 0, len(msgs))
		var pubErr error
		for _, m := range msgs {
			f, err := p.drain.PublishMsgAsync(&nats.Msg{Subject: m.subject, Data: m.data},
				jetstream.WithMsgID(m.id), jetstream.WithStallWait(max(time.Until(deadline(ctx)), time.Millisecond)))
			if err != nil {
				pubErr = err
				break
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
				acked.Add(1)
			case err := <-f.Err():
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return pubErr
	})
	return int(acked.Load()), err
}
