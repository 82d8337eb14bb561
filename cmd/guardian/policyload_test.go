package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// TestLoadPolicy: the policy at start comes from the local cache (T1),
// else the bucket (T2, which fills the cache), else the environment's
// when the bucket does not answer within T2's budget; a deleted stored
// policy removes the cache.
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
	if _, err := os.Stat(cache.path); err != nil {
		t.Fatalf("no cache written: %v", err)
	}
	// From the cache, before the bucket is asked.
	stored.Budgets[jsguard.KVGet] = 999 * time.Millisecond
	if err := store.Save(t.Context(), stored); err != nil {
		t.Fatal(err)
	}
	if p, from := loadPolicy(t.Context(), g, store, cache); p == nil || p.Budget(jsguard.KVGet) != 1234*time.Millisecond || !strings.HasPrefix(from, "cache ") {
		t.Fatalf("cache: %v, %q", p, from)
	}
	// A deleted stored policy removes the cache (the watch reports it).
	cache.store(nil)
	if _, err := os.Stat(cache.path); !os.IsNotExist(err) {
		t.Fatalf("cache still there: %v", err)
	}
	// The bucket too slow for T2: the environment's, with one T2 event.
	srv.Shutdown()
	events = nil
	p, from = loadPolicy(t.Context(), g, store, cache)
	if p != nil || !strings.Contains(from, "did not answer within 500ms") {
		t.Fatalf("server down: %v, %q", p, from)
	}
	if len(events) != 1 || events[0].Code != "TIMEOUT_T2_FILE" || !events[0].FallbackUsed {
		t.Errorf("events %+v, want one T2 timeout with fallback_used", events)
	}
}
