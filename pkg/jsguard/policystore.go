package jsguard

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// PolicyBucket is the default name of the KV bucket that holds the shared
// timeout policy.
const PolicyBucket = "GUARDIAN_POLICY"

// PolicyKey is the default key of the policy document in its bucket.
const PolicyKey = "policy"

// PolicyBucketConfig returns the configuration of a policy bucket: history
// 10 (so earlier policies can be inspected), file storage, the given name
// and replicas.
func PolicyBucketConfig(name string, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "guardian timeout policy",
		History:     10,
		Replicas:    replicas,
		Storage:     jetstream.FileStorage,
	}
}

// EnsurePolicyBucket creates the bucket PolicyBucket, or updates it, with
// PolicyBucketConfig(PolicyBucket, replicas), under KVCreate, and returns a
// guarded handle for NewPolicyStore. g may be nil for the default Guard. It
// returns the jetstream error or a *TimeoutError.
func EnsurePolicyBucket(ctx context.Context, g *Guard, js jetstream.JetStream, replicas int) (*KV, error) {
	return orDefault(g).EnsureKV(ctx, js, PolicyBucketConfig(PolicyBucket, replicas))
}

// PolicyStore keeps a Guard's policy in a KV bucket, so that a change made
// there reaches every process that runs the store: Save writes the policy,
// Run watches the key and applies each valid revision with Guard.SetPolicy.
// A revision that does not decode or validate is rejected: logged with the
// guard's logger, counted (Guard.PolicyRejections) and passed to
// Hooks.OnPolicyRejected, and the policy in force stays. Deleting the key
// also keeps the policy in force. A PolicyStore is safe for concurrent use;
// run one Run per store.
type PolicyStore struct {
	g          *Guard
	kv         *KV
	key        string
	minBackoff time.Duration
	maxBackoff time.Duration
	resync     time.Duration
	onApply    func(*Policy, jetstream.KeyValueEntry)
}

// WithOnApply calls fn, from Run, with each stored policy it applied and
// its entry, and with nil and the entry when the key was deleted or purged
// (the policy in force stays). fn must not block for long.
func WithOnApply(fn func(*Policy, jetstream.KeyValueEntry)) PolicyStoreOption {
	return func(s *PolicyStore) { s.onApply = fn }
}

// PolicyStoreOption configures a PolicyStore.
type PolicyStoreOption func(*PolicyStore)

// WithPolicyKey sets the key that holds the policy (default PolicyKey).
func WithPolicyKey(key string) PolicyStoreOption {
	return func(s *PolicyStore) {
		if key != "" {
			s.key = key
		}
	}
}

// WithWatchBackoff sets how long Run waits before it re-establishes a watch
// that ended: first min, doubling up to max (default 100ms to 5s). Values
// <= 0 keep the defaults.
func WithWatchBackoff(min, max time.Duration) PolicyStoreOption {
	return func(s *PolicyStore) {
		if min > 0 {
			s.minBackoff = min
		}
		if max > 0 {
			s.maxBackoff = max
		}
	}
}

// WithResync sets how often Run also reads the key directly and applies a
// revision its watch has not delivered (default 5s; d <= 0 turns it off). A
// KV watch does not end when the server restarts: it stalls until the
// client notices the missing heartbeats and recreates it, which takes tens
// of seconds; the direct read bounds that delay.
func WithResync(d time.Duration) PolicyStoreOption {
	return func(s *PolicyStore) { s.resync = d }
}

// NewPolicyStore returns a store for g's policy in kv (a handle from
// EnsurePolicyBucket or Guard.KV). g may be nil for the default Guard; kv
// must not be nil.
func NewPolicyStore(g *Guard, kv *KV, opts ...PolicyStoreOption) *PolicyStore {
	s := &PolicyStore{g: orDefault(g), kv: kv, key: PolicyKey,
		minBackoff: 100 * time.Millisecond, maxBackoff: 5 * time.Second, resync: 5 * time.Second}
	for _, o := range opts {
		o(s)
	}
	if s.maxBackoff < s.minBackoff {
		s.maxBackoff = s.minBackoff
	}
	return s
}

// Key returns the key that holds the policy.
func (s *PolicyStore) Key() string { return s.key }

// Load reads, decodes and validates the stored policy; it does not apply it
// (Run does). It returns an error matching jetstream.ErrKeyNotFound when no
// policy is stored, one wrapping ErrInvalidPolicy when the stored document
// does not decode or validate, or the KV error or *TimeoutError of the read.
func (s *PolicyStore) Load(ctx context.Context) (Policy, error) {
	e, err := s.kv.Get(ctx, s.key)
	if err != nil {
		return Policy{}, fmt.Errorf("load policy %s/%s: %w", s.kv.Bucket(), s.key, err)
	}
	p, err := decodePolicy(e.Value())
	if err != nil {
		return Policy{}, fmt.Errorf("load policy %s/%s revision %d: %w", s.kv.Bucket(), s.key, e.Revision(), err)
	}
	return p, nil
}

// Save validates p and writes it as the stored policy (JSON, as
// Policy.MarshalJSON), replacing whatever is stored; to change part of the
// stored policy without losing a concurrent change, use Update. Every running store, this one's included, applies it
// when its watch sees it. It returns the validation error (wrapping
// ErrInvalidPolicy) without writing anything when p is invalid, or the KV
// error or *TimeoutError of the write.
func (s *PolicyStore) Save(ctx context.Context, p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	b, err := p.MarshalJSON()
	if err != nil {
		return fmt.Errorf("save policy: %w", err)
	}
	if _, err := s.kv.Put(ctx, s.key, b); err != nil {
		return fmt.Errorf("save policy %s/%s: %w", s.kv.Bucket(), s.key, err)
	}
	return nil
}

// maxUpdateAttempts bounds Update's read-modify-write rounds.
const maxUpdateAttempts = 8

// Update changes the stored policy without losing a concurrent change: it
// reads the stored policy (base when none is stored yet), applies change to
// it, validates the result and writes it back only if the key is still at
// the revision it read, starting over when another writer got in between.
// It returns the policy it stored. It returns change's error or the
// validation error (wrapping ErrInvalidPolicy) without writing anything, an
// error wrapping jetstream.ErrKeyExists when other writers kept winning for
// 8 rounds, or the KV error or *TimeoutError of a read or the write.
func (s *PolicyStore) Update(ctx context.Context, base Policy, change func(*Policy) error) (Policy, error) {
	for attempt := 1; ; attempt++ {
		p, rev := base.Clone(), uint64(0)
		e, err := s.kv.Get(ctx, s.key)
		switch {
		case err == nil:
			if p, err = decodePolicy(e.Value()); err != nil {
				return Policy{}, fmt.Errorf("update policy %s/%s revision %d: %w", s.kv.Bucket(), s.key, e.Revision(), err)
			}
			rev = e.Revision()
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return Policy{}, fmt.Errorf("update policy %s/%s: %w", s.kv.Bucket(), s.key, err)
		}
		if err := change(&p); err != nil {
			return Policy{}, err
		}
		if err := p.Validate(); err != nil {
			return Policy{}, err
		}
		b, err := p.MarshalJSON()
		if err != nil {
			return Policy{}, fmt.Errorf("update policy: %w", err)
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, s.key, b)
		} else {
			_, err = s.kv.Update(ctx, s.key, b, rev)
		}
		lost := errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
		if lost && attempt < maxUpdateAttempts {
			continue
		}
		if lost {
			return Policy{}, fmt.Errorf("update policy %s/%s: other writers won %d times: %w", s.kv.Bucket(), s.key, attempt, jetstream.ErrKeyExists)
		}
		if err != nil {
			return Policy{}, fmt.Errorf("update policy %s/%s: %w", s.kv.Bucket(), s.key, err)
		}
		return p, nil
	}
}

func decodePolicy(b []byte) (Policy, error) {
	var p Policy
	if err := p.UnmarshalJSON(b); err != nil {
		return Policy{}, err
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

var errWatchClosed = errors.New("policy watch closed")

// Run watches the policy key until ctx ends and applies the stored policy
// when it starts and every valid revision after, in revision order (a
// revision at or below one already handled is skipped). A KV watch ends when
// its subscription closes, so Run re-establishes it, after a backoff (see
// WithWatchBackoff), for as long as ctx lasts; and it reads the key directly
// every resync interval (see WithResync) in case the watch stalled. Setting
// up a watch and the direct reads run under KVGet (a read's budget at most
// the interval), so while NATS is unreachable their timeouts are audited
// like any other. Failures to watch are logged, not returned. Run returns
// nil when ctx ends.
func (s *PolicyStore) Run(ctx context.Context) error {
	backoff := s.minBackoff
	var last uint64 // highest revision applied or rejected
	for ctx.Err() == nil {
		established, err := s.watch(ctx, &last)
		if ctx.Err() != nil {
			break
		}
		if established {
			backoff = s.minBackoff
		}
		s.g.log.Warn("jsguard: policy watch ended, re-establishing",
			"bucket", s.kv.Bucket(), "key", s.key, "error", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		backoff = min(2*backoff, s.maxBackoff)
	}
	return nil
}

// watch runs one watch until it ends or ctx does. It reports whether the
// watch was established.
func (s *PolicyStore) watch(ctx context.Context, last *uint64) (bool, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := doValue(ctx, s.g, KVGet, s.kv.op("watch", s.key), func(context.Context) (jetstream.KeyWatcher, error) {
		// The watch must outlive this call's deadline: it lives as long as
		// wctx, and release stops it if the call gave up on it.
		return s.kv.Raw().Watch(wctx, s.key)
	}, stopWatcher, nil)
	if err != nil {
		return false, err
	}
	defer w.Stop()
	var resync <-chan time.Time
	if s.resync > 0 {
		t := time.NewTicker(s.resync)
		defer t.Stop()
		resync = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case e, ok := <-w.Updates():
			if !ok {
				return true, errWatchClosed
			}
			if e != nil { // nil marks the end of the initial values
				s.handle(e, last)
			}
		case <-resync:
			if e, err := s.kv.Get(ctx, s.key, WithBudget(s.resync)); err == nil {
				s.handle(e, last)
			}
		}
	}
}

// handle applies e unless a revision at or after it was handled already.
func (s *PolicyStore) handle(e jetstream.KeyValueEntry, last *uint64) {
	if e.Revision() <= *last {
		return
	}
	*last = e.Revision()
	s.apply(e)
}

func stopWatcher(w jetstream.KeyWatcher) { _ = w.Stop() }

func (s *PolicyStore) apply(e jetstream.KeyValueEntry) {
	if op := e.Operation(); op != jetstream.KeyValuePut {
		s.g.log.Info("jsguard: policy key removed, keeping the policy in force",
			"bucket", s.kv.Bucket(), "key", s.key, "revision", e.Revision(), "operation", op.String())
		if s.onApply != nil {
			s.onApply(nil, e)
		}
		return
	}
	p, err := decodePolicy(e.Value())
	if err == nil {
		err = s.g.SetPolicy(p)
	}
	if err == nil && s.onApply != nil {
		s.onApply(&p, e)
	}
	if err != nil {
		err = fmt.Errorf("policy %s/%s revision %d rejected: %w", s.kv.Bucket(), s.key, e.Revision(), err)
		s.g.log.Warn("jsguard: policy update rejected, keeping the policy in force", "error", err)
		if s.g.hooks.OnPolicyRejected != nil {
			s.g.hooks.OnPolicyRejected(err)
		}
		s.g.rejected.Add(1) // last, so a caller that sees the count sees the rest
	}
}
