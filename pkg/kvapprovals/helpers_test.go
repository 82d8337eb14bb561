package kvapprovals

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// env is one embedded server with a Service on it.
type env struct {
	t     testing.TB
	srv   *server.Server
	js    jetstream.JetStream
	g     *jsguard.Guard
	audit *auditSink
	svc   *Service
	cfg   Config
}

// testConfig is DefaultConfig with timeouts that suit tests: 2s default,
// 1s grace, warnings 1s before.
func testConfig() Config {
	c := DefaultConfig()
	c.DefaultTimeout = 2 * time.Second
	c.GracePeriod = time.Second
	c.WarningBefore = time.Second
	return c
}

func newEnv(t testing.TB, mutate func(*Config), opts ...Option) *env {
	t.Helper()
	e := &env{t: t, audit: &auditSink{}}
	e.srv = natstest.Run(t)
	_, e.js = natstest.Connect(t, e.srv)
	var err error
	e.g, err = jsguard.New(jsguard.WithSink(e.audit))
	if err != nil {
		t.Fatal(err)
	}
	e.cfg = testConfig()
	if mutate != nil {
		mutate(&e.cfg)
	}
	e.svc = e.open(opts...)
	return e
}

// open opens another Service on a new connection to the same server, like
// a second replica.
func (e *env) open(opts ...Option) *Service {
	e.t.Helper()
	_, js := natstest.Connect(e.t, e.srv)
	svc, err := Open(e.t.Context(), e.g, js, e.cfg, opts...)
	if err != nil {
		e.t.Fatalf("open: %v", err)
	}
	return svc
}

// run starts fn in the background and returns a stop function (also
// registered as cleanup) that cancels it, waits and reports its error.
func run(t *testing.T, fn func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("run: did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// startConsumers runs an expirer and a notifier of svc.
func startConsumers(t *testing.T, svc *Service, opts ...ConsumerOption) (stop func()) {
	stopE := run(t, svc.Expirer(opts...).Run)
	stopN := run(t, svc.Notifier(opts...).Run)
	return func() { stopE(); stopN() }
}

// waitFor polls cond every 20ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fetchAll hands every message of stream on subjects matching filter to fn.
func (e *env) fetchAll(stream, filter string, fn func(jetstream.Msg)) {
	e.t.Helper()
	ctx := e.t.Context()
	str, err := e.js.Stream(ctx, stream)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := str.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject: filter, AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = str.DeleteConsumer(context.WithoutCancel(ctx), c.CachedInfo().Name) }()
	want := int(c.CachedInfo().NumPending)
	for got := 0; got < want; {
		batch, err := c.Fetch(min(want-got, 1000), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			e.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			fn(m)
			n++
		}
		if n == 0 {
			e.t.Fatalf("fetch %s %s: got %d of %d", stream, filter, got, want)
		}
		got += n
	}
}

// events returns the lifecycle events stored on subjects matching filter.
func (e *env) events(filter string) []Event {
	e.t.Helper()
	var out []Event
	e.fetchAll(e.cfg.EventsStream, filter, func(m jetstream.Msg) {
		var ev Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			e.t.Fatalf("event %s: %v", m.Subject(), err)
		}
		out = append(out, ev)
	})
	return out
}

// revisions returns every stored record revision of tenant, by id.
func (e *env) revisions(tenant string) map[string][]Record {
	e.t.Helper()
	out := map[string][]Record{}
	e.fetchAll("KV_"+e.cfg.RecordsBucket, "$KV."+e.cfg.RecordsBucket+"."+tenant+".*", func(m jetstream.Msg) {
		md, _ := m.Metadata()
		r, err := decodeRecord(m.Data(), md.Sequence.Stream)
		if err != nil {
			e.t.Fatalf("record %s: %v", m.Subject(), err)
		}
		out[r.ID] = append(out[r.ID], r)
	})
	return out
}

// countEvents returns how many events match filter.
func (e *env) countEvents(filter string) int {
	e.t.Helper()
	str, err := e.js.Stream(e.t.Context(), e.cfg.EventsStream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := str.Info(e.t.Context(), jetstream.WithSubjectFilter(filter))
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n
}

// history returns every stored revision of a record.
func (e *env) history(key string) []Record {
	e.t.Helper()
	hs, err := e.svc.records.Raw().History(e.t.Context(), key)
	if err != nil {
		e.t.Fatalf("history %s: %v", key, err)
	}
	var out []Record
	for _, h := range hs {
		r, err := decodeRecord(h.Value(), h.Revision())
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// timerKeys returns the keys of the armed timers, but the sweep tick's.
func (e *env) timerKeys() []string {
	e.t.Helper()
	armed, err := e.svc.timers.scheduled(e.t.Context(), ">")
	if err != nil {
		e.t.Fatal(err)
	}
	var keys []string
	for subj := range armed {
		if k := strings.TrimPrefix(subj, e.svc.timers.sched("")); k != sweepKey {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// timerMsgs counts the messages of approvals' timers (keys of three
// tokens) in the timers stream: kind "sched" for armed ones, "fire" for
// fired ones not acknowledged yet, "*" for both.
func (e *env) timerMsgs(kind string) (uint64, error) {
	info, err := e.svc.timers.str.Info(e.t.Context(), jetstream.WithSubjectFilter(e.svc.timers.prefix+"."+kind+".*.*.*"))
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}

// recordKeys returns the keys of the records bucket.
func (e *env) recordKeys() []string {
	e.t.Helper()
	keys, err := e.svc.records.Keys(e.t.Context())
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return keys
}

func (e *env) get(tenant, id string) Record {
	e.t.Helper()
	r, err := e.svc.Get(e.t.Context(), tenant, id)
	if err != nil {
		e.t.Fatalf("get %s/%s: %v", tenant, id, err)
	}
	return r
}

func (e *env) request(tenant string, in RequestInput) Record {
	e.t.Helper()
	r, err := e.svc.Request(e.t.Context(), tenant, in)
	if err != nil {
		e.t.Fatalf("request %s/%s: %v", tenant, in.ID, err)
	}
	return r
}

// auditSink collects audit events.
type auditSink struct {
	mu     sync.Mutex
	events []jsguard.Event
}

func (a *auditSink) Emit(_ context.Context, ev jsguard.Event) error {
	a.mu.Lock()
	a.events = append(a.events, ev)
	a.mu.Unlock()
	return nil
}

func (a *auditSink) byCode(code string) []jsguard.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []jsguard.Event
	for _, ev := range a.events {
		if ev.Code == code {
			out = append(out, ev)
		}
	}
	return out
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func req(id string) RequestInput {
	return RequestInput{ID: id, SessionID: "s-" + id, RequestedBy: "alice"}
}
