package jsguard

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Cache is a stale-while-timeout cache in front of a slow loader: a value
// younger than freshFor is served without loading; otherwise Get loads it
// under the cache's category, and when that load times out under the
// graceful strategy, a cached value no older than the policy's MaxStaleAge
// is served instead, marked degraded. A Cache is safe for concurrent use;
// concurrent misses of one key each load it.
type Cache[K comparable, V any] struct {
	g        *Guard
	c        Category
	freshFor time.Duration
	max      int

	mu sync.Mutex
	m  map[K]cacheEntry[V]
}

type cacheEntry[V any] struct {
	v  V
	at time.Time // when it was loaded
}

// CacheOption configures a Cache.
type CacheOption func(*cacheConfig)

type cacheConfig struct{ max int }

// WithMaxEntries bounds the cache to n entries (default unbounded); adding
// one more evicts the entry loaded longest ago. n <= 0 means unbounded.
func WithMaxEntries(n int) CacheOption { return func(c *cacheConfig) { c.max = n } }

// NewCache returns an empty cache whose loads run under category c of g (nil
// for the default Guard) and whose values are fresh for freshFor (0: every
// Get loads, and cached values serve only as stale fallbacks).
func NewCache[K comparable, V any](g *Guard, c Category, freshFor time.Duration, opts ...CacheOption) *Cache[K, V] {
	var cfg cacheConfig
	for _, o := range opts {
		o(&cfg)
	}
	return &Cache[K, V]{g: orDefault(g), c: c, freshFor: freshFor, max: cfg.max, m: map[K]cacheEntry[V]{}}
}

// Get returns the value for key. A fresh cached value returns at once,
// without calling load. Otherwise load runs like DoValue under the cache's
// category (opts apply to it, e.g. WithBudget or WithStrategy) and its
// value is cached and returned.
//
// When load times out and the strategy is graceful, a cached value at most
// MaxStaleAge old returns with Degraded set and Cause the timeout, and a nil
// error; the audit event is emitted with fallback_used set. Otherwise Get
// returns what DoValue would: the *TimeoutError (always under strict and
// none, or when no cached value is young enough), load's error (the cache
// is not consulted for errors other than timeouts), or ctx.Err().
func (c *Cache[K, V]) Get(ctx context.Context, key K, load func(ctx context.Context) (V, error), opts ...CallOption) (Result[V], error) {
	now := time.Now()
	c.mu.Lock()
	e, cached := c.m[key]
	c.mu.Unlock()
	if cached && now.Sub(e.at) < c.freshFor {
		return Result[V]{Value: e.v}, nil
	}

	o := applyOpts(opts)
	// staleOK says whether the cached value, the newest if another Get
	// stored one meanwhile, may stand in for a load that timed out now.
	staleOK := func() bool {
		c.mu.Lock()
		if cur, ok := c.m[key]; ok {
			e, cached = cur, true
		}
		c.mu.Unlock()
		return cached && c.g.strategy(&o) == Graceful && time.Since(e.at) <= c.g.policy.Load().MaxStaleAge
	}
	stale, decided := false, false
	r := run(ctx, c.g, c.c, fmt.Sprintf("cache load %v", key), valueFunc[V](load), &o, nil, func() bool {
		stale, decided = staleOK(), true
		return stale
	})
	if r.te != nil && !decided {
		stale = staleOK() // a nested call emitted the event
	}
	switch {
	case r.te != nil && stale:
		return Result[V]{Value: e.v, Degraded: true, Cause: r.te}, nil
	case r.err != nil:
		return Result[V]{}, r.err
	}
	c.store(key, r.v)
	return Result[V]{Value: r.v}, nil
}

func (c *Cache[K, V]) store(key K, v V) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[key]; !ok && c.max > 0 && len(c.m) >= c.max {
		var (
			oldest K
			at     time.Time
			first  = true
		)
		for k, e := range c.m {
			if first || e.at.Before(at) {
				oldest, at, first = k, e.at, false
			}
		}
		delete(c.m, oldest)
	}
	c.m[key] = cacheEntry[V]{v: v, at: now}
}

// Put caches v for key as if it had just been loaded.
func (c *Cache[K, V]) Put(key K, v V) { c.store(key, v) }

// Forget removes key from the cache.
func (c *Cache[K, V]) Forget(key K) {
	c.mu.Lock()
	delete(c.m, key)
	c.mu.Unlock()
}

// Len returns the number of cached values, fresh or stale.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
