package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// TestLoadPolicy: the policy at start comes from the bucket (T2), which
// fills a local cache; when the bucket does not answer within T2's
// budget, from that cache (the fallback content), else the environment's;
// a bucket without a policy removes the cache, so a deleted policy never
// comes back from it.
func TestLoadPolicy(t *testing.T) {
	srv := natstest.Run(t)
	_, js := natstest.Connect(t, srv)
	var events []jsguard.Event
	g, err := jsguard.New(jsguard.WithSink(jsguard.SinkFunc(func(_ context.Context, e jsguard.Event) error {
		events = append(events, e)
		return nil
	})))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := jsguard.EnsurePolicyBucket(t.Context(), g, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	store := jsguard.NewPolicyStore(g, kv)
	cache := policyCache{path: filepath.Join(t.TempDir(), "policy-cache.json"), log: newLogger(io.Discard, "error", "json")}

	// Nothing stored, no cache: the environment's.
	if p, from := loadPolicy(t.Context(), g, store, cache); p != nil || !strings.Contains(from, "no policy is stored") {
		t.Fatalf("empty bucket: %v, %q", p, from)
	}
	stored := jsguard.DefaultPolicy()
	stored.Budgets[jsguard.KVGet] = 1234 * time.Millisecond
	if err := store.Save(t.Context(), stored); err != nil {
		t.Fatal(err)
	}
	// From the bucket, which fills the cache.
	p, from := loadPolicy(t.Context(), g, store, cache)
	if p == nil || p.Budget(jsguard.KVGet) != 1234*time.Millisecond || from != "bucket" {
		t.Fatalf("bucket: %v, %q", p, from)
	}
	if c, ok := cache.load(); !ok || c.Budget(jsguard.KVGet) != 1234*time.Millisecond {
		t.Fatalf("cache after the load: %v, %v", c, ok)
	}
	// The bucket stays the authority: a newer stored policy wins over
	// the cache.
	stored.Budgets[jsguard.KVGet] = 999 * time.Millisecond
	if err := store.Save(t.Context(), stored); err != nil {
		t.Fatal(err)
	}
	if p, from := loadPolicy(t.Context(), g, store, cache); p == nil || p.Budget(jsguard.KVGet) != 999*time.Millisecond || from != "bucket" {
		t.Fatalf("newer stored policy: %v, %q", p, from)
	}
	// The bucket too slow for T2: the cached policy, with one T2 event.
	srv.Shutdown()
	events = nil
	p, from = loadPolicy(t.Context(), g, store, cache)
	if p == nil || p.Budget(jsguard.KVGet) != 999*time.Millisecond || !strings.Contains(from, "did not answer within 500ms") || !strings.HasPrefix(from, "cache ") {
		t.Fatalf("server down: %v, %q", p, from)
	}
	if len(events) != 1 || events[0].Code != "TIMEOUT_T2_FILE" || !events[0].FallbackUsed {
		t.Errorf("events %+v, want one T2 timeout with fallback_used", events)
	}
	// No cache either: the environment's.
	cache.store(nil)
	if p, from := loadPolicy(t.Context(), g, store, cache); p != nil || strings.HasPrefix(from, "cache ") {
		t.Errorf("server down, no cache: %v, %q", p, from)
	}
}

// TestLoadPolicyDeletedNotCached: a policy deleted from the bucket while
// a guardian was down is not brought back by its cache.
func TestLoadPolicyDeletedNotCached(t *testing.T) {
	g, kv, store := policyBucket(t)
	cache := policyCache{path: filepath.Join(t.TempDir(), "policy-cache.json"), log: newLogger(io.Discard, "error", "json")}
	if err := store.Save(t.Context(), jsguard.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	if p, _ := loadPolicy(t.Context(), g, store, cache); p == nil {
		t.Fatal("no stored policy loaded")
	}
	if err := kv.Delete(t.Context(), jsguard.PolicyKey); err != nil {
		t.Fatal(err)
	}
	if p, from := loadPolicy(t.Context(), g, store, cache); p != nil {
		t.Errorf("deleted policy came back from %q", from)
	}
	if _, ok := cache.load(); ok {
		t.Error("the cache outlived the deleted policy")
	}
}

// TestPolicyChangedEventID: guardians that apply the same policy revision
// emit the same audit event id, so the audit stream stores the change
// once; another revision is another event.
func TestPolicyChangedEventID(t *testing.T) {
	_, kv, store := policyBucket(t)
	p := jsguard.DefaultPolicy()
	ids := map[string]bool{}
	for i := range 2 {
		p.Budgets[jsguard.KVGet] = time.Duration(i+1) * time.Second
		if err := store.Save(t.Context(), p); err != nil {
			t.Fatal(err)
		}
		e, err := kv.Get(t.Context(), jsguard.PolicyKey)
		if err != nil {
			t.Fatal(err)
		}
		// Two replicas, each with its own decoded copy.
		var id string
		for range 2 {
			ev := policyChangedEvent(kv.Bucket(), &p, e)
			ev.EventID = jsguard.EventID(ev.Code, ev.Operation, ev.TenantID, ev.CorrelationID, ev.TraceID, ev.StartedAt)
			if id != "" && ev.EventID != id {
				t.Fatalf("revision %d: ids %s and %s", e.Revision(), id, ev.EventID)
			}
			id = ev.EventID
		}
		ids[id] = true
	}
	if len(ids) != 2 {
		t.Errorf("two revisions gave %d ids", len(ids))
	}
}

// policyBucket starts a server and returns a guard, the policy bucket on
// it and a store for it.
func policyBucket(t *testing.T) (*jsguard.Guard, *jsguard.KV, *jsguard.PolicyStore) {
	t.Helper()
	_, js := natstest.Connect(t, natstest.Run(t))
	g, err := jsguard.New()
	if err != nil {
		t.Fatal(err)
	}
	kv, err := jsguard.EnsurePolicyBucket(t.Context(), g, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return g, kv, jsguard.NewPolicyStore(g, kv)
}
