package jsguard_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond every 10ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// process is one guardian process: its own connection, guard and store.
type process struct {
	g        *jsguard.Guard
	store    *jsguard.PolicyStore
	log      *syncBuffer
	mu       sync.Mutex
	rejected []error
	done     chan error
}

func (p *process) rejections() []error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]error(nil), p.rejected...)
}

func startProcess(t *testing.T, ctx context.Context, js jetstream.JetStream, run bool, opts ...jsguard.PolicyStoreOption) *process {
	t.Helper()
	p := &process{log: &syncBuffer{}, done: make(chan error, 1)}
	g, err := jsguard.New(
		jsguard.WithLogger(slog.New(slog.NewTextHandler(p.log, nil))),
		jsguard.WithHooks(jsguard.Hooks{OnPolicyRejected: func(err error) {
			p.mu.Lock()
			p.rejected = append(p.rejected, err)
			p.mu.Unlock()
		}}))
	if err != nil {
		t.Fatal(err)
	}
	p.g = g
	kv, err := jsguard.EnsurePolicyBucket(ctx, g, js, 1)
	if err != nil {
		t.Fatalf("EnsurePolicyBucket: %v", err)
	}
	p.store = jsguard.NewPolicyStore(g, kv, append([]jsguard.PolicyStoreOption{jsguard.WithWatchBackoff(20*time.Millisecond, 200*time.Millisecond)}, opts...)...)
	if run {
		p.run(ctx)
	}
	return p
}

func (p *process) run(ctx context.Context) {
	go func() { p.done <- p.store.Run(ctx) }()
}

func TestPolicyStore(t *testing.T) {
	s := natstest.Run(t)
	_, jsA := natstest.Connect(t, s)
	_, jsB := natstest.Connect(t, s)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	// a relies on its watch alone; b also reads the key every 100ms.
	a := startProcess(t, ctx, jsA, true, jsguard.WithResync(0))
	b := startProcess(t, ctx, jsB, false, jsguard.WithResync(100*time.Millisecond)) // runs once a policy is stored

	if _, err := a.store.Load(ctx); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Load of an empty bucket = %v, want ErrKeyNotFound", err)
	}

	// 1. A saves; both processes apply it (b at its start).
	p1 := policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 1234 * time.Millisecond})
	p1.Strategy = jsguard.Strict
	if err := a.store.Save(ctx, p1); err != nil {
		t.Fatalf("Save: %v", err)
	}
	b.run(ctx)
	for name, p := range map[string]*process{"a": a, "b": b} {
		eventually(t, 5*time.Second, name+" applies the saved policy", func() bool {
			return p.g.Budget(jsguard.KVGet) == 1234*time.Millisecond && p.g.Policy().Strategy == jsguard.Strict
		})
	}
	loaded, err := b.store.Load(ctx)
	if err != nil || loaded.Budget(jsguard.KVGet) != 1234*time.Millisecond || loaded.Strategy != jsguard.Strict {
		t.Fatalf("Load = %+v, %v", loaded, err)
	}

	// 2. An invalid policy is refused by Save and nothing is written.
	raw, err := jsA.KeyValue(ctx, jsguard.PolicyBucket)
	if err != nil {
		t.Fatal(err)
	}
	before, err := raw.Get(ctx, jsguard.PolicyKey)
	if err != nil {
		t.Fatal(err)
	}
	bad := policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 0})
	if err := a.store.Save(ctx, bad); !errors.Is(err, jsguard.ErrInvalidPolicy) || !strings.Contains(err.Error(), "TIMEOUT_KV_GET") {
		t.Fatalf("Save(invalid) = %v, want ErrInvalidPolicy naming TIMEOUT_KV_GET", err)
	}
	if after, err := raw.Get(ctx, jsguard.PolicyKey); err != nil || after.Revision() != before.Revision() {
		t.Fatalf("Save(invalid) wrote something: revision %d -> %d", before.Revision(), after.Revision())
	}

	// 3. Malformed documents written by someone else are rejected by every
	// process: logged, counted, hooked; the policy in force stays.
	for i, doc := range []string{`{"budgets":`, `{"budgets":{"TIMEOUT_KV_GET":"0s"}}`} {
		if _, err := raw.Put(ctx, jsguard.PolicyKey, []byte(doc)); err != nil {
			t.Fatal(err)
		}
		for name, p := range map[string]*process{"a": a, "b": b} {
			eventually(t, 5*time.Second, name+" rejects "+doc, func() bool { return p.g.PolicyRejections() == uint64(i+1) })
			rej := p.rejections()
			if len(rej) != i+1 || !errors.Is(rej[i], jsguard.ErrInvalidPolicy) {
				t.Fatalf("%s: hook got %v, want %d errors wrapping ErrInvalidPolicy", name, rej, i+1)
			}
			if p.g.Budget(jsguard.KVGet) != 1234*time.Millisecond {
				t.Fatalf("%s: the policy in force changed after a rejected update", name)
			}
			if !strings.Contains(p.log.String(), "policy update rejected") {
				t.Fatalf("%s: the rejection was not logged: %s", name, p.log.String())
			}
		}
	}
	if _, err := a.store.Load(ctx); !errors.Is(err, jsguard.ErrInvalidPolicy) {
		t.Fatalf("Load of a malformed document = %v, want ErrInvalidPolicy", err)
	}

	// 4. Deleting the key keeps the policy in force.
	if err := raw.Delete(ctx, jsguard.PolicyKey); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the delete is logged", func() bool { return strings.Contains(a.log.String(), "policy key removed") })
	if a.g.Budget(jsguard.KVGet) != 1234*time.Millisecond || a.g.PolicyRejections() != 2 {
		t.Fatalf("delete changed the policy or counted as a rejection")
	}

	// 5. After a server restart the watch stalls until the client recreates
	// it (tens of seconds); b's direct reads still pick up a change saved
	// after the restart.
	natstest.Restart(t, s)
	p2 := policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 777 * time.Millisecond})
	eventually(t, 10*time.Second, "Save succeeds after the restart", func() bool {
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		defer scancel()
		return a.store.Save(sctx, p2) == nil
	})
	eventually(t, 5*time.Second, "b applies the policy saved after the restart", func() bool {
		return b.g.Budget(jsguard.KVGet) == 777*time.Millisecond
	})

	// 6. Run returns nil when its context ends.
	cancel()
	for name, p := range map[string]*process{"a": a, "b": b} {
		select {
		case err := <-p.done:
			if err != nil {
				t.Fatalf("%s: Run = %v, want nil", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: Run did not return after its context ended", name)
		}
	}
}

// Concurrent Updates that change different entries all take effect: none
// is lost to another's write.
func TestPolicyStoreUpdate(t *testing.T) {
	s := natstest.Run(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	g, _ := newGuard(t)
	kv, err := g.EnsureKV(ctx, js, jetstream.KeyValueConfig{Bucket: jsguard.PolicyBucket})
	if err != nil {
		t.Fatal(err)
	}
	store := jsguard.NewPolicyStore(g, kv)

	// Nothing stored: the first update starts from base.
	base := policyWith(map[jsguard.Category]time.Duration{jsguard.KVPut: 7 * time.Second})
	if _, err := store.Update(ctx, base, func(*jsguard.Policy) error { return nil }); err != nil {
		t.Fatal(err)
	}
	cats := []jsguard.Category{jsguard.KVGet, jsguard.KVDelete, jsguard.NATSPublish, jsguard.NATSSubscribe, jsguard.APIRequest, jsguard.ApprovalCheck}
	var wg sync.WaitGroup
	for i, c := range cats {
		wg.Go(func() {
			// A fresh store per writer, as separate processes would have.
			_, err := jsguard.NewPolicyStore(g, kv).Update(ctx, jsguard.DefaultPolicy(), func(p *jsguard.Policy) error {
				p.Budgets[c] = time.Duration(i+1) * time.Second
				return nil
			})
			if err != nil {
				t.Errorf("update %s: %v", c, err)
			}
		})
	}
	wg.Wait()
	got, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cats {
		if want := time.Duration(i+1) * time.Second; got.Budget(c) != want {
			t.Errorf("%s = %s, want %s: a concurrent update was lost", c, got.Budget(c), want)
		}
	}
	if got.Budget(jsguard.KVPut) != 7*time.Second {
		t.Errorf("KV_PUT = %s, want the base's 7s", got.Budget(jsguard.KVPut))
	}

	// A writer that gets in between Update's read and its write: Update
	// starts over from what that writer stored, so both changes stay.
	calls := 0
	_, err = store.Update(ctx, base, func(p *jsguard.Policy) error {
		calls++
		if calls == 1 {
			other := got.Clone()
			other.Budgets[jsguard.KVCreate] = 9 * time.Second
			if err := store.Save(ctx, other); err != nil {
				t.Fatal(err)
			}
		}
		p.Budgets[jsguard.NATSConnect] = 11 * time.Second
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, err = store.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if calls != 2 || got.Budget(jsguard.KVCreate) != 9*time.Second || got.Budget(jsguard.NATSConnect) != 11*time.Second {
		t.Errorf("after an interleaved write: %d rounds, KV_CREATE %s, NATS_CONNECT %s; want 2 rounds, 9s and 11s",
			calls, got.Budget(jsguard.KVCreate), got.Budget(jsguard.NATSConnect))
	}

	// An invalid result writes nothing.
	e, err := kv.Raw().Get(ctx, jsguard.PolicyKey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = store.Update(ctx, base, func(p *jsguard.Policy) error { p.Budgets[jsguard.KVGet] = -time.Second; return nil })
	if !errors.Is(err, jsguard.ErrInvalidPolicy) {
		t.Fatalf("invalid update: %v, want ErrInvalidPolicy", err)
	}
	if e2, err := kv.Raw().Get(ctx, jsguard.PolicyKey); err != nil || e2.Revision() != e.Revision() {
		t.Errorf("revision %d -> %v (%v): an invalid update wrote", e.Revision(), e2, err)
	}
}
