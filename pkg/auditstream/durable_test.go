package auditstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// freshEvent is testEvent i with a Timestamp i ms after base: young enough
// for a Publisher to publish it directly when base is about now.
func freshEvent(base time.Time, i int, tenant, code string) jsguard.Event {
	e := testEvent(i, tenant, code)
	e.Timestamp = base.UTC().Add(time.Duration(i) * time.Millisecond)
	return e
}

// shortDup is the Duplicates window of the durability tests, and
// shortSlack and shortPublish the timestamp slack and NATS_PUBLISH budget
// of their publishers: events younger than min(2s/2, 2s-100ms) - 200ms =
// 800 ms are published directly.
const (
	shortDup     = 2 * time.Second
	shortSlack   = 100 * time.Millisecond
	shortPublish = 200 * time.Millisecond
)

// dupEnv is a server with an audit stream whose Duplicates window is
// shortDup.
type dupEnv struct {
	t   *testing.T
	js  jetstream.JetStream
	cfg Config
	g   *jsguard.Guard
}

func newDupEnv(t *testing.T) *dupEnv {
	t.Helper()
	s := natstest.Run(t)
	_, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	cfg.Duplicates = shortDup
	if _, err := Ensure(t.Context(), nil, js, cfg); err != nil {
		t.Fatal(err)
	}
	pol := jsguard.DefaultPolicy()
	pol.Budgets[jsguard.NATSPublish] = shortPublish
	g, err := jsguard.New(jsguard.WithPolicy(pol))
	if err != nil {
		t.Fatal(err)
	}
	e := &dupEnv{t: t, js: js, cfg: cfg, g: g}
	return e
}

// publisher returns a Publisher on js (the env's when nil) and the env's
// spool, closed when the test ends.
func (e *dupEnv) publisher(js jetstream.JetStream, opts ...Option) *Publisher {
	e.t.Helper()
	if js == nil {
		js = e.js
	}
	p, err := NewPublisher(e.g, js, e.cfg, append([]Option{quiet, WithTimestampSlack(shortSlack)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = p.Close() })
	return p
}

// offline returns a JetStream context whose connection is closed: a
// Publisher on it spools everything, as during an outage.
func (e *dupEnv) offline() jetstream.JetStream {
	e.t.Helper()
	s := natstest.Run(e.t)
	nc, js := natstest.Connect(e.t, s)
	nc.Close()
	return js
}

// publishRaw stores ev on the stream as a Publisher would: same subject,
// data and message id.
func (e *dupEnv) publishRaw(ev jsguard.Event) {
	e.t.Helper()
	subject, err := e.cfg.Subject(ev.TenantID, ev.Code)
	if err != nil {
		e.t.Fatal(err)
	}
	data, _ := json.Marshal(ev)
	if _, err := e.js.PublishMsg(e.t.Context(), &nats.Msg{Subject: subject, Data: data}, jetstream.WithMsgID(ev.EventID)); err != nil {
		e.t.Fatal(err)
	}
}

// awaitWindow publishes a marker and returns a function that waits until
// the stream's duplicate window no longer covers it: then it covers
// nothing stored before the marker either.
func (e *dupEnv) awaitWindow() func() {
	e.t.Helper()
	id := fmt.Sprintf("window-%d", time.Now().UnixNano())
	msg := func() *nats.Msg {
		return &nats.Msg{Subject: e.cfg.SubjectPrefix + ".window.TIMEOUT_WINDOW", Data: []byte("{}")}
	}
	if _, err := e.js.PublishMsg(e.t.Context(), msg(), jetstream.WithMsgID(id)); err != nil {
		e.t.Fatal(err)
	}
	return func() {
		e.t.Helper()
		eventually(e.t, 4*shortDup, func() bool {
			ack, err := e.js.PublishMsg(e.t.Context(), msg(), jetstream.WithMsgID(id))
			return err == nil && !ack.Duplicate
		}, "the duplicate window (%s) has passed", shortDup)
	}
}

// stored returns how often each message id is on the stream, and the ids
// of the events in stream order.
func (e *dupEnv) stored() (map[string]int, []string) {
	e.t.Helper()
	counts := map[string]int{}
	var order []string
	for _, r := range eventRecords(e.cfg, readStream(e.t, e.js, e.cfg)) {
		if r.Subject == e.cfg.SubjectPrefix+".window.TIMEOUT_WINDOW" {
			continue
		}
		counts[r.MsgID]++
		order = append(order, r.MsgID)
	}
	return counts, order
}

// assertOnce fails unless each event of evs is on the stream exactly once.
func (e *dupEnv) assertOnce(evs ...jsguard.Event) {
	e.t.Helper()
	counts, _ := e.stored()
	for _, ev := range evs {
		if n := counts[ev.EventID]; n != 1 {
			e.t.Errorf("event %s stored %d times, want 1", ev.EventID, n)
		}
	}
}

// emitFunc is Emit or EmitDurable.
type emitFunc struct {
	name string
	emit func(*Publisher, context.Context, jsguard.Event) error
}

var emitFuncs = []emitFunc{
	{"Emit", (*Publisher).Emit},
	{"EmitDurable", (*Publisher).EmitDurable},
}

// TestDurableReEmittedAfterWindow (a): an event stored, then emitted again
// after the stream's duplicate window (a late notifier redelivery, a
// re-sent report) is stored once: the Publisher spools it and the drainer
// finds it on the stream.
func TestDurableReEmittedAfterWindow(t *testing.T) {
	for _, f := range emitFuncs {
		t.Run(f.name, func(t *testing.T) {
			e := newDupEnv(t)
			p := e.publisher(nil)
			runInBackground(t, p.Run)
			ev := freshEvent(time.Now(), 1, "acme", "TIMEOUT_APPROVAL_EXPIRED")
			if err := f.emit(p, t.Context(), ev); err != nil {
				t.Fatal(err)
			}
			if err := p.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); st.Published != 1 || st.Spooled != 0 {
				t.Fatalf("first emission: %+v, want published directly", st)
			}
			e.awaitWindow()()

			if err := f.emit(p, t.Context(), ev); err != nil {
				t.Fatal(err)
			}
			eventually(t, 10*time.Second, func() bool { st := p.Stats(); return st.Skipped == 1 && st.SpoolBytes == 0 },
				"the re-emitted event skipped: %+v", p.Stats())
			e.assertOnce(ev)
			if st := p.Stats(); st.Published != 1 || st.Spooled != 1 || st.Drained != 0 {
				t.Errorf("stats %+v, want 1 published, 1 spooled and skipped", st)
			}
		})
	}
}

// TestDurableAckLost (b): an event the stream stored but whose ack never
// arrived (so it was spooled too) is stored once when the spool is drained
// after the duplicate window.
func TestDurableAckLost(t *testing.T) {
	e := newDupEnv(t)
	evs := []jsguard.Event{freshEvent(time.Now(), 1, "acme", "TIMEOUT_KV_GET"), freshEvent(time.Now(), 2, "acme", "TIMEOUT_KV_GET")}
	// ev[0]: stored, and spooled as if its ack had timed out; ev[1]: only
	// spooled.
	e.publishRaw(evs[0])
	p1 := e.publisher(e.offline())
	for _, ev := range evs {
		if err := p1.Emit(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}
	e.awaitWindow()()

	p2 := e.publisher(nil)
	runInBackground(t, p2.Run)
	eventually(t, 10*time.Second, func() bool { return p2.Stats().SpoolBytes == 0 }, "drained: %+v", p2.Stats())
	e.assertOnce(evs...)
	if st := p2.Stats(); st.Skipped != 1 || st.Drained != 1 || st.Dropped != 0 {
		t.Errorf("stats %+v, want 1 skipped, 1 drained", st)
	}
}

// TestDurableCrashMidSegment (c): a drainer published half a segment and
// the process died before it removed the segment; a new Publisher on the
// same directory, after the duplicate window, stores each event once.
func TestDurableCrashMidSegment(t *testing.T) {
	e := newDupEnv(t)
	base := time.Now()
	var evs []jsguard.Event
	p1 := e.publisher(e.offline())
	for i := range 20 {
		ev := freshEvent(base, i, "acme", "TIMEOUT_KV_PUT")
		evs = append(evs, ev)
		if err := p1.Emit(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}
	// The drainer of a second process publishes the first half of the
	// segment, as drainOne does, and dies.
	p2 := e.publisher(nil)
	seg, ok, err := p2.spool.oldest()
	if err != nil || !ok {
		t.Fatalf("oldest segment: %v %v", ok, err)
	}
	data, err := os.ReadFile(p2.spool.path(seg.n))
	if err != nil {
		t.Fatal(err)
	}
	msgs, bad := p2.decodeSegment(data)
	if len(msgs) != 20 || len(bad) != 0 {
		t.Fatalf("segment holds %d events and %d bad lines", len(msgs), len(bad))
	}
	if n, err := p2.publishBatch(t.Context(), msgs[:10]); n != 10 || err != nil {
		t.Fatalf("publish half: %d, %v", n, err)
	}
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	e.awaitWindow()()

	p3 := e.publisher(nil)
	runInBackground(t, p3.Run)
	eventually(t, 10*time.Second, func() bool { return p3.Stats().SpoolBytes == 0 }, "drained: %+v", p3.Stats())
	e.assertOnce(evs...)
	if st := p3.Stats(); st.Skipped != 10 || st.Drained != 10 || st.Dropped != 0 {
		t.Errorf("stats %+v, want 10 skipped, 10 drained", st)
	}
}

// TestDurableOrder (d): while the spool holds events, a new event, emitted
// with NATS connected, is spooled behind them and reaches the stream after
// them; once the spool is empty events are published directly again.
func TestDurableOrder(t *testing.T) {
	e := newDupEnv(t)
	base := time.Now()
	p1 := e.publisher(e.offline())
	var want []string
	for i := range 5 {
		ev := freshEvent(base, i, "acme", "TIMEOUT_KV_GET")
		want = append(want, ev.EventID)
		if err := p1.Emit(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}

	p2 := e.publisher(nil) // the restarted process, before its drainer runs
	for i, f := range emitFuncs {
		ev := freshEvent(time.Now(), 10+i, "acme", "TIMEOUT_KV_GET")
		want = append(want, ev.EventID)
		if err := f.emit(p2, t.Context(), ev); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
	}
	if st := p2.Stats(); st.Spooled != 2 || st.Published != 0 {
		t.Fatalf("with a non-empty spool: %+v, want both spooled", st)
	}
	runInBackground(t, p2.Run)
	eventually(t, 10*time.Second, func() bool { return p2.Stats().SpoolBytes == 0 }, "drained: %+v", p2.Stats())
	last := freshEvent(time.Now(), 20, "acme", "TIMEOUT_KV_GET")
	want = append(want, last.EventID)
	if err := p2.EmitDurable(t.Context(), last); err != nil {
		t.Fatal(err)
	}
	if st := p2.Stats(); st.Published != 1 {
		t.Errorf("after the drain: %+v, want the last event published directly", st)
	}
	_, order := e.stored()
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("stream order\n%v\nwant\n%v", order, want)
	}
}

// TestEmitDurable: EmitDurable returns once the event is on the stream, or
// in the spool and fsynced; its errors.
func TestEmitDurable(t *testing.T) {
	t.Run("acknowledged", func(t *testing.T) {
		e := newDupEnv(t)
		p := e.publisher(nil)
		ev := freshEvent(time.Now(), 1, "acme", "TIMEOUT_KV_GET")
		if err := p.EmitDurable(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
		e.assertOnce(ev) // at once: no waiting
		if st := p.Stats(); st.Published != 1 || st.Spooled != 0 || st.InFlight != 0 {
			t.Errorf("stats %+v", st)
		}
	})
	t.Run("offline: spooled and synced", func(t *testing.T) {
		e := newDupEnv(t)
		p1 := e.publisher(e.offline())
		ev := freshEvent(time.Now(), 1, "acme", "TIMEOUT_KV_GET")
		if err := p1.EmitDurable(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
		if st := p1.Stats(); st.Spooled != 1 || st.SpoolBytes == 0 {
			t.Fatalf("stats %+v, want 1 spooled", st)
		}
		// The process dies without Close: the event is in the file.
		entries, _ := filepath.Glob(filepath.Join(e.cfg.SpoolDir, "*.jsonl"))
		var lines int
		for _, name := range entries {
			data, _ := os.ReadFile(name)
			msgs, _ := p1.decodeSegment(data)
			lines += len(msgs)
		}
		if lines != 1 {
			t.Fatalf("spool files hold %d events, want 1", lines)
		}
		p1.spool.lock.Close() // what the kernel does when the process dies
		p2 := e.publisher(nil)
		runInBackground(t, p2.Run)
		eventually(t, 10*time.Second, func() bool { return p2.Stats().Drained == 1 }, "drained: %+v", p2.Stats())
		e.assertOnce(ev)
	})
	t.Run("old event: spooled, then stored once", func(t *testing.T) {
		e := newDupEnv(t)
		p := e.publisher(nil)
		ev := freshEvent(time.Now().Add(-time.Hour), 1, "acme", "TIMEOUT_KV_GET")
		e.publishRaw(ev) // stored an hour ago, as far as anyone can tell
		if err := p.EmitDurable(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
		if st := p.Stats(); st.Spooled != 1 || st.Published != 0 {
			t.Fatalf("stats %+v, want spooled", st)
		}
		runInBackground(t, p.Run)
		eventually(t, 10*time.Second, func() bool { return p.Stats().Skipped == 1 }, "skipped: %+v", p.Stats())
		e.assertOnce(ev)
	})
	t.Run("errors", func(t *testing.T) {
		e := newDupEnv(t)
		e.cfg.SpoolMaxBytes = 1024
		p := e.publisher(e.offline())
		if err := p.EmitDurable(t.Context(), jsguard.Event{Code: "bad code"}); !errors.Is(err, ErrInvalidEvent) {
			t.Errorf("bad code: %v, want ErrInvalidEvent", err)
		}
		var err error
		for i := 0; err == nil && i < 10; i++ {
			err = p.EmitDurable(t.Context(), freshEvent(time.Now(), i, "acme", "TIMEOUT_KV_GET"))
		}
		if !errors.Is(err, ErrSpoolFull) {
			t.Errorf("spool full: %v, want ErrSpoolFull", err)
		}
		if st := p.Stats(); st.Dropped != 0 {
			t.Errorf("stats %+v: the caller was told, nothing counts as dropped", st)
		}
		_ = p.Close()
		if err := p.EmitDurable(t.Context(), freshEvent(time.Now(), 1, "acme", "TIMEOUT_KV_GET")); !errors.Is(err, ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
	})
}

// TestDurableSyncError: a failed fsync is an error for EmitDurable, and is
// logged and counted on Emit's path. The active segment is replaced by a
// pipe, on which write(2) succeeds and fsync(2) fails with EINVAL.
func TestDurableSyncError(t *testing.T) {
	e := newDupEnv(t)
	var errorLogs atomic.Int32
	p := e.publisher(e.offline(), WithLogger(slog.New(countingHandler{level: slog.LevelError, n: &errorLogs})))
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p.spool.mu.Lock()
	p.spool.active, p.spool.activeN, p.spool.next = w, 1000, 1001
	p.spool.mu.Unlock()

	err = p.EmitDurable(t.Context(), freshEvent(time.Now(), 1, "acme", "TIMEOUT_KV_GET"))
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("EmitDurable with a failing fsync: %v, want EINVAL", err)
	}
	if st := p.Stats(); st.SyncErrors != 1 || st.Spooled != 1 {
		t.Errorf("stats %+v, want 1 sync error", st)
	}
	if err := p.Emit(t.Context(), freshEvent(time.Now(), 2, "acme", "TIMEOUT_KV_GET")); err != nil {
		t.Fatalf("Emit: %v", err)
	}
	if err := p.Flush(t.Context()); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("Flush: %v, want the fsync error", err)
	}
	if st, logs := p.Stats(), errorLogs.Load(); st.SyncErrors != 2 || logs != 2 {
		t.Errorf("stats %+v, %d error logs; want 2 sync errors, each logged", st, logs)
	}
	_ = p.Close()
}

// TestDurableGroupCommit: concurrent EmitDurable calls that spool all
// succeed, and share fsyncs.
func TestDurableGroupCommit(t *testing.T) {
	e := newDupEnv(t)
	p := e.publisher(e.offline())
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			if err := p.EmitDurable(t.Context(), freshEvent(start, i, "acme", "TIMEOUT_KV_GET")); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := p.Stats(); st.Spooled != n {
		t.Errorf("stats %+v, want %d spooled", st, n)
	}
	t.Logf("%d concurrent durable spool appends in %s", n, time.Since(start))
}

// TestDurableClosePending: live publishes still awaiting their ack when the
// Publisher is closed (Flush gave up) are spooled, and a new Publisher on
// the same directory stores each once.
func TestDurableClosePending(t *testing.T) {
	s := natstest.Run(t)
	nc, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	// No stream yet: a plain subscriber takes the publishes and never
	// answers, so their acks stay pending.
	sub, err := nc.Subscribe(cfg.SubjectPrefix+".*.*", func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	pol := jsguard.DefaultPolicy()
	pol.Budgets[jsguard.NATSPublish] = 30 * time.Second
	g, err := jsguard.New(jsguard.WithPolicy(pol))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(g, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now()
	for i := range 10 {
		if err := p.Emit(t.Context(), freshEvent(base, i, "acme", "TIMEOUT_KV_GET")); err != nil {
			t.Fatal(err)
		}
	}
	if st := p.Stats(); st.InFlight != 10 {
		t.Fatalf("stats %+v, want 10 in flight", st)
	}
	// Two EmitDurable calls wait for acks that do not come; Close must not
	// wait for them: they spool their events and return nil.
	durable := make(chan error, 2)
	for i := 10; i < 12; i++ {
		go func() { durable <- p.EmitDurable(t.Context(), freshEvent(base, i, "acme", "TIMEOUT_KV_GET")) }()
	}
	eventually(t, 5*time.Second, func() bool { n, _ := sub.Delivered(); return n >= 12 }, "durable publishes sent")
	fctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := p.Flush(fctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush = %v, want DeadlineExceeded", err)
	}
	closed := time.Now()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(closed); d > 5*time.Second {
		t.Errorf("Close took %s: it waited for acks", d)
	}
	for range 2 {
		if err := <-durable; err != nil {
			t.Errorf("EmitDurable during Close: %v, want nil (spooled)", err)
		}
	}
	if st := p.Stats(); st.Spooled != 12 || st.Dropped != 0 {
		t.Fatalf("after Close: %+v, want 12 spooled", st)
	}

	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(t.Context(), nil, js, cfg); err != nil {
		t.Fatal(err)
	}
	p2, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	runInBackground(t, p2.Run)
	eventually(t, 10*time.Second, func() bool { return p2.Stats().SpoolBytes == 0 }, "drained: %+v", p2.Stats())
	assertEventsOnce(t, js, cfg, 12)
}
