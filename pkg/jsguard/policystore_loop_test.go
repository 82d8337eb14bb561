package jsguard_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// The tests in this file drive PolicyStore.Run against a fake bucket under
// synctest, so that watch failures, backoff and resync are exact.

type entry struct {
	rev uint64
	val string
	op  jetstream.KeyValueOp
}

func (e entry) Bucket() string                  { return "FAKE" }
func (e entry) Key() string                     { return jsguard.PolicyKey }
func (e entry) Value() []byte                   { return []byte(e.val) }
func (e entry) Revision() uint64                { return e.rev }
func (e entry) Created() time.Time              { return time.Time{} }
func (e entry) Delta() uint64                   { return 0 }
func (e entry) Operation() jetstream.KeyValueOp { return e.op }

type fakeWatcher struct {
	ch      chan jetstream.KeyValueEntry
	stopped atomic.Bool
}

func (w *fakeWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.ch }
func (w *fakeWatcher) Stop() error                             { w.stopped.Store(true); return nil }

// fakeKV is a bucket holding one key. Only the methods PolicyStore uses are
// implemented; the embedded nil interface panics on any other.
type fakeKV struct {
	jetstream.KeyValue

	mu       sync.Mutex
	watchErr error
	watches  []time.Time
	watchers []*fakeWatcher
	latest   *entry
	keys     map[string]bool // keys watched or read
}

func (f *fakeKV) Bucket() string { return "FAKE" }

func (f *fakeKV) Watch(_ context.Context, key string, _ ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.saw(key)
	f.watches = append(f.watches, time.Now())
	if f.watchErr != nil {
		return nil, f.watchErr
	}
	w := &fakeWatcher{ch: make(chan jetstream.KeyValueEntry, 16)}
	if f.latest != nil {
		w.ch <- *f.latest
	}
	w.ch <- nil
	f.watchers = append(f.watchers, w)
	return w, nil
}

func (f *fakeKV) Get(_ context.Context, key string) (jetstream.KeyValueEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.saw(key)
	if f.latest == nil {
		return nil, jetstream.ErrKeyNotFound
	}
	return *f.latest, nil
}

func (f *fakeKV) saw(key string) {
	if f.keys == nil {
		f.keys = map[string]bool{}
	}
	f.keys[key] = true
}

// put stores e as the latest value; deliver also sends it to the newest
// watcher.
func (f *fakeKV) put(e entry, deliver bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e.op == 0 {
		e.op = jetstream.KeyValuePut
	}
	f.latest = &e
	if deliver {
		f.watchers[len(f.watchers)-1].ch <- e
	}
}

func (f *fakeKV) watcher(i int) *fakeWatcher {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.watchers[i]
}

func (f *fakeKV) watchTimes() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.watches...)
}

func policyDoc(t *testing.T, kvGet time.Duration) string {
	t.Helper()
	b, err := policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: kvGet}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func newLoopStore(t *testing.T, f *fakeKV, opts ...jsguard.PolicyStoreOption) (*jsguard.Guard, *jsguard.PolicyStore, func() error) {
	t.Helper()
	g, err := jsguard.New(jsguard.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	store := jsguard.NewPolicyStore(g, g.KV(f), opts...)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- store.Run(ctx) }()
	stop := func() error {
		cancel()
		return <-done
	}
	return g, store, stop
}

func TestPolicyStoreRewatchesAfterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeKV{}
		f.put(entry{rev: 1, val: policyDoc(t, time.Second)}, false)
		g, _, stop := newLoopStore(t, f, jsguard.WithWatchBackoff(100*time.Millisecond, time.Second), jsguard.WithResync(0))
		start := time.Now()
		synctest.Wait()
		if g.Budget(jsguard.KVGet) != time.Second {
			t.Fatalf("initial value not applied: %s", g.Budget(jsguard.KVGet))
		}
		f.put(entry{rev: 2, val: `{"default":"nonsense"}`}, true)
		synctest.Wait()
		if g.PolicyRejections() != 1 {
			t.Fatalf("rejections = %d, want 1", g.PolicyRejections())
		}

		close(f.watcher(0).ch) // the connection dropped
		time.Sleep(time.Second)
		watches := f.watchTimes()
		if len(watches) != 2 || watches[1].Sub(start) != 100*time.Millisecond {
			t.Fatalf("watches at %v, want a second one after the 100ms backoff", watches)
		}
		if !f.watcher(0).stopped.Load() {
			t.Fatal("the closed watcher was not stopped")
		}
		// The new watch delivers revision 2 again: not a second rejection.
		if g.PolicyRejections() != 1 || g.Budget(jsguard.KVGet) != time.Second {
			t.Fatalf("after re-watch: rejections %d, budget %s", g.PolicyRejections(), g.Budget(jsguard.KVGet))
		}
		f.put(entry{rev: 3, val: policyDoc(t, 3*time.Second)}, true)
		synctest.Wait()
		if g.Budget(jsguard.KVGet) != 3*time.Second {
			t.Fatalf("update on the new watch not applied: %s", g.Budget(jsguard.KVGet))
		}
		// A delete keeps the policy; a stale revision is ignored.
		f.put(entry{rev: 4, op: jetstream.KeyValueDelete}, true)
		f.watcher(1).ch <- entry{rev: 2, val: policyDoc(t, time.Minute), op: jetstream.KeyValuePut}
		synctest.Wait()
		if g.Budget(jsguard.KVGet) != 3*time.Second {
			t.Fatalf("delete or stale revision changed the policy: %s", g.Budget(jsguard.KVGet))
		}
		if err := stop(); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if !f.watcher(1).stopped.Load() {
			t.Fatal("the watcher was not stopped when Run ended")
		}
	})
}

func TestPolicyStoreBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeKV{watchErr: errors.New("no responders")}
		_, _, stop := newLoopStore(t, f, jsguard.WithWatchBackoff(100*time.Millisecond, 400*time.Millisecond), jsguard.WithResync(0))
		start := time.Now()
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		var at []time.Duration
		for _, w := range f.watchTimes() {
			at = append(at, w.Sub(start))
		}
		want := []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond, 700 * time.Millisecond, 1100 * time.Millisecond, 1500 * time.Millisecond}
		if len(at) != len(want) {
			t.Fatalf("watch attempts at %v, want %v", at, want)
		}
		for i := range want {
			if at[i] != want[i] {
				t.Fatalf("watch attempts at %v, want %v (doubling from 100ms, capped at 400ms)", at, want)
			}
		}
		// Once a watch is established, the backoff starts over.
		f.mu.Lock()
		f.watchErr = nil
		f.mu.Unlock()
		time.Sleep(time.Second)
		n := len(f.watchTimes())
		close(f.watcher(0).ch)
		closed := time.Now()
		time.Sleep(time.Second)
		watches := f.watchTimes()
		if len(watches) != n+1 || watches[n].Sub(closed) != 100*time.Millisecond {
			t.Fatalf("after an established watch closed, re-watch at %v, want 100ms later", watches[n].Sub(closed))
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestPolicyStoreResync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeKV{}
		g, store, stop := newLoopStore(t, f, jsguard.WithResync(time.Second), jsguard.WithPolicyKey("acme.policy"))
		synctest.Wait()
		if store.Key() != "acme.policy" {
			t.Fatalf("Key = %q", store.Key())
		}
		// The watch misses an update (it stalled); the direct read finds it.
		f.put(entry{rev: 7, val: policyDoc(t, 2*time.Second)}, false)
		time.Sleep(999 * time.Millisecond)
		if g.Budget(jsguard.KVGet) != 5*time.Second {
			t.Fatal("applied before the resync interval")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if g.Budget(jsguard.KVGet) != 2*time.Second {
			t.Fatalf("resync did not apply the missed revision: %s", g.Budget(jsguard.KVGet))
		}
		f.mu.Lock()
		keys := f.keys
		f.mu.Unlock()
		if len(keys) != 1 || !keys["acme.policy"] {
			t.Fatalf("store used keys %v, want only acme.policy", keys)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
}
