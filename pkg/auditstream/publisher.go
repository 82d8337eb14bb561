package auditstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
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
	log   *slog.Logger
	slack time.Duration
}

// DefaultTimestampSlack is the default of WithTimestampSlack: the minute by
// which guardian's audit.report accepts timestamps in the future, plus 5 s
// of clock skew between the hosts of guardian and of the NATS servers,
// counted twice (once when the event was first stored, once now).
const DefaultTimestampSlack = 70 * time.Second

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithTimestampSlack bounds how far an event's Timestamp may lie after the
// moment the audit stream first stored the event, by the server's clock,
// plus how far the Publisher's clock may run behind the server's (default
// DefaultTimestampSlack; a negative d is ignored). The Publisher relies on
// it to decide which events the stream's Duplicates window still covers
// (see Publisher). Only Publishers use it.
func WithTimestampSlack(d time.Duration) Option {
	return func(o *options) {
		if d >= 0 {
			o.slack = d
		}
	}
}

func buildOptions(opts []Option) options {
	o := options{log: slog.Default(), slack: DefaultTimestampSlack}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Publisher writes audit events to the audit stream, each exactly once. It
// implements jsguard.Sink, so a Guard can use it directly
// (jsguard.WithSink).
//
// Emit hands each event to an asynchronous JetStream publish with the event
// id as Nats-Msg-Id; at most Config.MaxInFlight publishes await their ack.
// EmitDurable does the same but returns only once the event is durable:
// acknowledged by the stream, or appended to the on-disk spool and
// fsynced. When NATS cannot take an event (not connected, publish error,
// ack error or ack timeout) the event goes to the spool instead, and Run
// publishes the spool again, in order, once NATS is back. A full spool, a
// closed publisher or an invalid event loses an event of Emit, counted
// (Stats.Dropped) and logged once per burst; so does a crash, for the
// publishes still awaiting their ack and for spooled events not yet
// fsynced (at most about 250 ms of them). EmitDurable loses nothing it
// returned nil for.
//
// Exactly once. The stream drops a message whose Nats-Msg-Id it stored
// within its Duplicates window, and the Publisher does not rely on that
// window for anything older. Let window be the smaller of Duplicates/2
// and Duplicates minus the timestamp slack (WithTimestampSlack, 70 s by
// default): 50 s for the default 2 minute window. An event whose
// Timestamp, plus the time its publish may take (the NATS_PUBLISH budget),
// is younger than window is published directly: any earlier copy of it was
// stored after Timestamp minus the slack, so within the window, and the
// stream drops the new copy. An older event (a late redelivery, a report
// of an old timeout, an event without Timestamp) is never published
// directly: it goes to the spool, and the drainer, before it publishes
// spooled events that are not that young, reads the message ids the stream
// holds from the oldest spooled Timestamp minus the slack on (headers only,
// continuing where it stopped before each batch) and skips every spooled
// event already stored (Stats.Skipped). The drainer keeps in memory the
// ids of the spooled events, never the stream's. So neither a re-sent
// event, nor an event whose ack was lost, nor a spool segment interrupted
// by a crash is stored twice.
//
// Order. While the spool holds events, Emit and EmitDurable append new
// events to it too, so events reach the stream in the order this
// Publisher took them; the exception is an event whose ack failed, which
// re-enters through the spool behind the events taken after it.
//
// The publisher's own NATS calls run under a Guard without a sink, so a
// failed audit publish never produces another audit event.
//
// A Publisher is safe for concurrent use.
type Publisher struct {
	cfg     Config
	nc      *nats.Conn
	live    jetstream.JetStream // Emit's publishes; acks and errors arrive in onAck and onErr
	durable jetstream.JetStream // EmitDurable's publishes, awaited through their futures
	drain   jetstream.JetStream // the drainer's publishes, awaited through their futures
	g       *jsguard.Guard      // the caller's guard: its policy is followed
	guard   *jsguard.Guard      // no sink: the publisher's own calls
	spool   *spool
	log     *slog.Logger
	ackWait time.Duration // the live publishes' ack timeout
	window  time.Duration // events younger than this are in the stream's duplicate window
	slack   time.Duration

	mu     sync.RWMutex // shared by Emit and EmitDurable, exclusive by Close
	closed bool
	done   chan struct{} // closed by Close
	// closing is closed when Close starts, before it waits for the Emits
	// in progress: EmitDurable stops waiting for an ack then and spools.
	closing     chan struct{}
	closingOnce sync.Once

	published, spooled, drained, skipped, dropped, syncErrors atomic.Uint64
	dropping                                                  atomic.Bool
	burst                                                     atomic.Uint64

	drainMu  sync.Mutex // one drain at a time; guards what follows
	drainSeg uint64     // the segment being drained and how far it got
	drainPos int
	gen      *generation
}

// A generation is the spool as it was when the drainer started on it:
// the segments, the ids of their events and how far the stream has been
// read for those ids.
type generation struct {
	segs    map[uint64]bool
	stored  map[string]bool // id of every event in segs: already on the stream?
	from    time.Time       // where reading the stream starts: the oldest Timestamp minus the slack
	scanned bool            // the stream was read up to pos
	pos     uint64
}

// NewPublisher returns a Publisher on the connection of js, with the spool
// in cfg.SpoolDir. The publisher follows g's policy (g may be nil for
// jsguard.Default()): acks time out after its NATS_PUBLISH budget as it is
// when NewPublisher runs, and the drainer picks up later changes. g may
// have this publisher as its sink. It does not create the stream: call
// Ensure first. Events that an earlier process spooled in the same
// directory are published by Run.
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
	p := &Publisher{cfg: cfg, nc: js.Conn(), g: g, guard: guard, log: o.log, done: make(chan struct{}), closing: make(chan struct{}),
		ackWait: guard.Budget(jsguard.NATSPublish), slack: o.slack,
		window: min(cfg.Duplicates/2, cfg.Duplicates-o.slack)}
	p.live, err = jetstream.New(p.nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight),
		jetstream.WithPublishAsyncTimeout(p.ackWait),
		jetstream.WithPublishAsyncAckHandler(p.onAck),
		jetstream.WithPublishAsyncErrHandler(p.onErr))
	if err != nil {
		return nil, fmt.Errorf("publisher jetstream: %w", err)
	}
	for _, js := range []*jetstream.JetStream{&p.durable, &p.drain} {
		*js, err = jetstream.New(p.nc,
			jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight),
			jetstream.WithPublishAsyncTimeout(p.ackWait))
		if err != nil {
			return nil, fmt.Errorf("publisher jetstream: %w", err)
		}
	}
	if p.spool, err = openSpool(cfg.SpoolDir, cfg.SpoolMaxBytes); err != nil {
		return nil, err
	}
	p.spool.onSyncErr = p.onSyncErr
	return p, nil
}

// outMsg is an event ready to publish or spool.
type outMsg struct {
	subject, id string
	ts          time.Time
	data        []byte
}

// prepare derives e's id when empty and encodes it. It returns the id
// and an error wrapping ErrInvalidEvent for a malformed event.
func (p *Publisher) prepare(e jsguard.Event) (outMsg, error) {
	if e.EventID == "" {
		e.EventID = jsguard.EventID(e.Code, e.Operation, e.TenantID, e.CorrelationID, e.TraceID, e.StartedAt)
	}
	m := outMsg{id: e.EventID, ts: e.Timestamp}
	subject, err := p.cfg.Subject(e.TenantID, e.Code)
	if err != nil {
		return m, err
	}
	data, err := json.Marshal(e)
	if err != nil {
		return m, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	m.subject, m.data = subject, data
	return m, nil
}

// fresh reports whether an event with timestamp ts, published within
// budget from now, is inside the stream's duplicate window: whether the
// stream drops it by itself if it holds it already. An event without a
// timestamp is not fresh.
func (p *Publisher) fresh(ts time.Time, budget time.Duration) bool {
	return !ts.IsZero() && time.Since(ts)+budget < p.window
}

// direct reports whether m may be published now instead of spooled: NATS
// is connected, the spool is empty (so m overtakes no spooled event), and
// m is fresh.
func (p *Publisher) direct(m *outMsg) bool {
	return p.nc.IsConnected() && p.spool.size() == 0 && p.fresh(m.ts, p.ackWait)
}

// Emit publishes e to SubjectPrefix.<tenant>.<code> with Nats-Msg-Id set to
// e.EventID (derived with jsguard.EventID when empty). It returns once the
// publish is handed to NATS or the event is appended to the spool,
// whichever ctx allows; the ack is awaited in the background and a failure
// spools the event then. The spool is fsynced by Run's tick (every 250
// ms), Flush and Close; a failed fsync is logged and counted
// (Stats.SyncErrors). An event that is not fresh (see Publisher) or that
// would overtake spooled events is spooled.
//
// It returns nil when the event was published or spooled; an error wrapping
// ErrInvalidEvent for a malformed code, ErrSpoolFull when NATS could not
// take the event and the spool had no room, or ErrClosed after Close. Every
// non-nil return means the event was dropped and counted.
func (p *Publisher) Emit(ctx context.Context, e jsguard.Event) error {
	m, err := p.prepare(e)
	if err != nil {
		p.drop(err)
		return fmt.Errorf("emit %s: %w", m.id, err)
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		p.drop(ErrClosed)
		return fmt.Errorf("emit %s: %w", m.id, ErrClosed)
	}
	if !p.direct(&m) {
		return p.toSpool(m.data)
	}
	err = p.guard.Do(ctx, jsguard.NATSPublish, "audit publish "+m.subject, func(ctx context.Context) error {
		wait := time.Until(deadline(ctx))
		if wait <= 0 {
			return context.DeadlineExceeded
		}
		_, err := p.live.PublishMsgAsync(&nats.Msg{Subject: m.subject, Data: m.data},
			jetstream.WithMsgID(m.id), jetstream.WithStallWait(wait))
		return err
	})
	if err != nil {
		p.log.Debug("audit publish failed, spooling", "event_id", m.id, "err", err)
		return p.toSpool(m.data)
	}
	return nil
}

// EmitDurable is Emit for a caller that must not report an event as kept
// before it is: it returns nil only once the audit stream acknowledged e
// (its PubAck arrived, also when the stream dropped e as a duplicate) or e
// is appended to the spool and the spool fsynced. It publishes directly
// when Emit would, waits for the ack within ctx and the NATS_PUBLISH
// budget, and spools e when the publish or the ack fails. Concurrent
// callers that spool share fsyncs.
//
// It returns an error wrapping ErrInvalidEvent for a malformed code,
// ErrClosed after Close, ErrSpoolFull when e had to be spooled and the
// spool had no room, or the file system's error when appending or
// fsyncing failed (a failed fsync is also logged and counted in
// Stats.SyncErrors). After an error e may still reach the stream, once: a
// caller may send it again. Errors are not counted in Stats.Dropped: the
// caller learns of them.
func (p *Publisher) EmitDurable(ctx context.Context, e jsguard.Event) error {
	m, err := p.prepare(e)
	if err != nil {
		return fmt.Errorf("emit %s: %w", m.id, err)
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return fmt.Errorf("emit %s: %w", m.id, ErrClosed)
	}
	if p.direct(&m) {
		err := p.guard.Do(ctx, jsguard.NATSPublish, "audit publish "+m.subject, func(ctx context.Context) error {
			f, err := p.durable.PublishMsgAsync(&nats.Msg{Subject: m.subject, Data: m.data},
				jetstream.WithMsgID(m.id), jetstream.WithStallWait(max(time.Until(deadline(ctx)), time.Millisecond)))
			if err != nil {
				return err
			}
			select {
			case <-f.Ok():
				return nil
			case err := <-f.Err():
				return err
			case <-ctx.Done():
				return ctx.Err()
			case <-p.closing:
				return ErrClosed // Close waits for this Emit: spool the event instead
			}
		})
		if err == nil {
			p.published.Add(1)
			p.endBurst()
			return nil
		}
		p.log.Debug("audit publish failed, spooling", "event_id", m.id, "err", err)
	}
	b, err := p.spool.appendBatch(m.data)
	if err != nil {
		return fmt.Errorf("spool event %s: %w", m.id, err)
	}
	p.spooled.Add(1)
	p.endBurst()
	if err := p.spool.commit(b); err != nil {
		return fmt.Errorf("spool event %s: %w", m.id, err)
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

// onErr spools a live publish that failed. nats.go calls it for an ack
// error or timeout, for every pending publish when the connection starts
// reconnecting, and from CleanupPublisher (in Close) for every publish
// still awaiting its ack.
func (p *Publisher) onErr(_ jetstream.JetStream, m *nats.Msg, err error) {
	p.log.Debug("audit publish not acknowledged, spooling", "subject", m.Subject, "err", err)
	_ = p.toSpool(m.Data)
}

// onSyncErr counts and logs a failed fsync of the spool.
func (p *Publisher) onSyncErr(err error) {
	p.syncErrors.Add(1)
	p.log.Error("audit spool fsync failed: spooled events may not survive a power failure", "err", err,
		"spool_dir", p.cfg.SpoolDir)
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
	// Skipped counts spooled events the drainer found already stored and
	// did not publish again.
	Skipped uint64
	// Dropped counts lost events: spool full, publisher closed, invalid
	// event, or a spool line that could not be read back.
	Dropped uint64
	// SyncErrors counts failed fsyncs of the spool.
	SyncErrors uint64
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
		Skipped:    p.skipped.Load(),
		Dropped:    p.dropped.Load(),
		SyncErrors: p.syncErrors.Load(),
		SpoolBytes: p.spool.size(),
		InFlight:   p.live.PublishAsyncPending() + p.durable.PublishAsyncPending(),
	}
}

// Flush waits until every event Emit took before the call is acknowledged
// by the stream or in the spool, and fsyncs the spool. Then, while NATS is
// connected and ctx allows, it publishes what the spool held when Flush
// began, as Run would; what it cannot publish stays in the spool for Run,
// and that is no error. Call it at shutdown before Close and before
// draining the connection. It returns an error wrapping ctx.Err() when ctx
// ends before the acks, or the spool's fsync error. Safe for concurrent
// use.
func (p *Publisher) Flush(ctx context.Context) error {
	select {
	case <-p.live.PublishAsyncComplete():
	case <-ctx.Done():
		return fmt.Errorf("flush audit publishes (%d in flight): %w", p.live.PublishAsyncPending(), ctx.Err())
	}
	if err := p.spool.sync(); err != nil {
		return fmt.Errorf("flush audit spool: %w", err)
	}
	segs, err := p.spool.closeActive()
	if err != nil || len(segs) == 0 {
		return nil // closed (nothing to publish), or empty
	}
	upTo := segs[len(segs)-1].n
	for p.nc.IsConnected() && ctx.Err() == nil {
		more, err := p.drainOne(ctx, upTo)
		if err != nil {
			p.log.Debug("audit spool drain at flush failed", "err", err)
			break
		}
		if !more {
			break
		}
	}
	return nil
}

// Close stops the publisher. It waits for EmitDurable calls in progress;
// live publishes still awaiting their ack are spooled (call Flush first to
// let them finish), Run returns, and the spool is fsynced and its directory
// released for another Publisher. Emit and EmitDurable return ErrClosed
// afterwards. It returns the spool's fsync or file error, if any; a second
// Close returns nil. Safe for concurrent use.
func (p *Publisher) Close() error {
	p.closingOnce.Do(func() { close(p.closing) })
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	// nats.go fails every publish still awaiting its ack with
	// ErrJetStreamPublisherClosed and calls onErr for each before
	// CleanupPublisher returns: they are in the spool before it closes.
	p.live.CleanupPublisher()
	p.durable.CleanupPublisher()
	p.drain.CleanupPublisher()
	p.drainMu.Lock()
	defer p.drainMu.Unlock()
	return p.spool.close()
}

// Run drains the spool until ctx ends: whenever the spool holds events and
// the connection is up, it publishes them again in their order, with their
// event ids as Nats-Msg-Id, skips those the stream already holds (see
// Publisher), and removes each segment once all of it is acknowledged or
// skipped. Failures are retried with a growing pause (100ms to 5s) and
// logged at debug level. Run also fsyncs the spool every 250 ms while
// events are appended. It returns nil when ctx ends or the Publisher is
// closed. Run one Run per Publisher.
func (p *Publisher) Run(ctx context.Context) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var backoff time.Duration
	var retryAt time.Time
	for {
		if p.spool.size() > 0 && p.nc.IsConnected() && !time.Now().Before(retryAt) {
			more, err := p.drainOne(ctx, math.MaxUint64)
			switch {
			case ctx.Err() != nil, errors.Is(err, ErrClosed):
				return nil
			case err != nil:
				backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
				retryAt = time.Now().Add(backoff)
				p.log.Debug("audit spool drain failed", "err", err, "retry_in", backoff)
			case more:
				backoff = 0
				continue
			}
		}
		select {
		case <-ctx.Done():
			_ = p.spool.sync() // a failure is counted and logged by onSyncErr
			return nil
		case <-p.done:
			return nil
		case <-p.spool.notify:
		case <-tick.C:
			_ = p.spool.sync()
		}
	}
}

// drainMsg is one spooled event ready to publish.
type drainMsg struct {
	subject, id string
	ts          time.Time
	data        []byte
}

// drainOne publishes the oldest spool segment, if its number is at most
// upTo, and removes it. It reports whether it drained a segment.
func (p *Publisher) drainOne(ctx context.Context, upTo uint64) (bool, error) {
	p.drainMu.Lock()
	defer p.drainMu.Unlock()
	_ = p.guard.SetPolicy(p.g.Policy()) // follow the caller's policy; it validated already
	seg, ok, err := p.spool.oldest()
	if err != nil || !ok || seg.n > upTo {
		return false, err
	}
	if p.gen == nil || !p.gen.segs[seg.n] {
		if err := p.newGeneration(); err != nil {
			return false, err
		}
	}
	data, err := os.ReadFile(p.spool.path(seg.n))
	if err != nil {
		return false, fmt.Errorf("read spool segment: %w", err)
	}
	msgs, bad := p.decodeSegment(data)
	if p.drainSeg != seg.n {
		p.drainSeg, p.drainPos = seg.n, 0
		for _, err := range bad {
			p.drop(err)
		}
	}
	for p.drainPos < len(msgs) {
		batch := msgs[p.drainPos:min(p.drainPos+p.cfg.MaxInFlight, len(msgs))]
		n, err := p.drainBatch(ctx, batch)
		p.drainPos += n
		if err != nil {
			return false, fmt.Errorf("drain spool segment %d: %w", seg.n, err)
		}
	}
	if err := p.spool.remove(seg); err != nil {
		return false, err
	}
	return true, nil
}

// newGeneration closes the active segment and indexes every segment of the
// spool: the ids of their events and the oldest Timestamp.
func (p *Publisher) newGeneration() error {
	segs, err := p.spool.closeActive()
	if err != nil {
		return err
	}
	gen := &generation{segs: map[uint64]bool{}, stored: map[string]bool{}}
	var oldest time.Time
	for i, seg := range segs {
		gen.segs[seg.n] = true
		data, err := os.ReadFile(p.spool.path(seg.n))
		if err != nil {
			return fmt.Errorf("read spool segment: %w", err)
		}
		msgs, _ := p.decodeSegment(data)
		for j, m := range msgs {
			gen.stored[m.id] = false
			if (i == 0 && j == 0) || m.ts.Before(oldest) {
				oldest = m.ts
			}
		}
	}
	if !oldest.IsZero() {
		gen.from = oldest.Add(-p.slack)
	}
	p.gen = gen
	return nil
}

// drainBatch publishes the events of batch that the stream does not hold
// yet, reading the stream's ids first when some event of batch is no
// longer fresh. It returns how many events of batch, counted from the
// first, are done: acknowledged or skipped.
func (p *Publisher) drainBatch(ctx context.Context, batch []drainMsg) (int, error) {
	budget := p.guard.Budget(jsguard.NATSPublish)
	for _, m := range batch {
		if !p.fresh(m.ts, budget) {
			if err := p.readStored(ctx); err != nil {
				return 0, err
			}
			break
		}
	}
	send := make([]drainMsg, 0, len(batch))
	at := make([]int, 0, len(batch)) // index in batch of each send
	seen := make(map[string]bool, len(batch))
	for i, m := range batch {
		if p.gen.stored[m.id] || seen[m.id] {
			continue // on the stream already, or earlier in this batch
		}
		seen[m.id] = true
		send = append(send, m)
		at = append(at, i)
	}
	acked, err := p.publishBatch(ctx, send)
	for _, m := range send[:acked] {
		p.gen.stored[m.id] = true
	}
	done := len(batch)
	if acked < len(send) {
		done = at[acked]
	}
	p.drained.Add(uint64(acked))
	p.skipped.Add(uint64(done - acked))
	return done, err
}

// readStored reads the message ids the audit stream holds, from where the
// generation's last read stopped (at first: from the generation's oldest
// Timestamp minus the slack) up to the stream's last sequence now, and
// marks the generation's events it finds as stored. Only event subjects
// are read, headers only.
func (p *Publisher) readStored(ctx context.Context) error {
	gen := p.gen
	st, err := lookupStream(ctx, p.guard, p.drain, p.cfg.Stream)
	if err != nil {
		return fmt.Errorf("check stored events: %w", err)
	}
	last := st.CachedInfo().State.LastSeq
	if gen.scanned && gen.pos >= last {
		return nil
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{p.cfg.SubjectPrefix + ".*.*"}, HeadersOnly: true}
	switch {
	case gen.scanned:
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, gen.pos+1
	case gen.from.After(time.Unix(0, 0)):
		from := gen.from
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &from
	default:
		occ.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	err = scan(ctx, p.guard, p.drain, p.cfg.Stream, occ, func(m jetstream.Msg) error {
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if id := m.Headers().Get(jetstream.MsgIDHeader); id != "" {
			if _, ok := gen.stored[id]; ok {
				gen.stored[id] = true
			}
		}
		gen.pos, gen.scanned = md.Sequence.Stream, true
		if md.Sequence.Stream >= last {
			return errStopScan
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check stored events: %w", err)
	}
	gen.pos, gen.scanned = max(gen.pos, last), true
	return nil
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
			EventID   string    `json:"event_id"`
			Code      string    `json:"timeout_category"`
			TenantID  string    `json:"tenant_id"`
			Timestamp time.Time `json:"timestamp"`
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
		msgs = append(msgs, drainMsg{subject: subject, id: e.EventID, ts: e.Timestamp, data: line})
	}
	return msgs, bad
}

// publishBatch publishes msgs pipelined, under one guarded call, and
// returns how many of them, counted from the first, the stream acknowledged.
func (p *Publisher) publishBatch(ctx context.Context, msgs []drainMsg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
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
