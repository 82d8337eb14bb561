package kvapprovals

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// How fresh a tenant's pending count must be. Between listings the count is
// adjusted locally: +1 per admitted request, -1 per approval this process
// finished. A tenant at its cap is re-listed at most every pendingRelist.
const (
	pendingRefresh = time.Second
	pendingRelist  = 100 * time.Millisecond
)

// pendingCounts holds one small counter per tenant (not per approval), to
// enforce Config.MaxPending without listing the timers on every request.
//
// A counter older than pendingRefresh with no request in flight holds
// nothing a new listing would not give, so entries like that are removed,
// at most once per pendingRefresh: the map holds only tenants active in the
// last second or so, however many tenants come and go.
type pendingCounts struct {
	mu    sync.Mutex
	m     map[string]*tenantPending
	swept time.Time
}

type tenantPending struct {
	mu sync.Mutex // held while listing: one listing per tenant at a time
	n  int
	// inflight counts admitted requests whose timer may not exist
	// yet, so a listing does not see them.
	inflight int
	at       time.Time // when n was listed; zero: never
	removed  bool      // no longer in the map: take the tenant's new entry
}

func (p *pendingCounts) tenant(t string, create bool) *tenantPending {
	p.mu.Lock()
	defer p.mu.Unlock()
	if create && time.Since(p.swept) >= pendingRefresh {
		p.sweepLocked()
	}
	tp := p.m[t]
	if tp == nil && create {
		tp = &tenantPending{}
		p.m[t] = tp
	}
	return tp
}

// sweepLocked removes the counters that a new listing would replace anyway.
// A counter in use (its lock held) is left for the next sweep.
func (p *pendingCounts) sweepLocked() {
	p.swept = time.Now()
	for t, tp := range p.m {
		if !tp.mu.TryLock() {
			continue
		}
		if tp.inflight == 0 && time.Since(tp.at) >= pendingRefresh {
			tp.removed = true
			delete(p.m, t)
		}
		tp.mu.Unlock()
	}
}

// size returns how many tenants have a counter.
func (p *pendingCounts) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}

// release accounts for an approval that finished, or a request that was
// admitted but created nothing.
func (p *pendingCounts) release(t string) {
	if tp := p.tenant(t, false); tp != nil {
		tp.mu.Lock()
		if tp.n > 0 {
			tp.n--
		}
		tp.mu.Unlock()
	}
}

// settled ends an admission: the request's timers exist or it failed.
func (p *pendingCounts) settled(t string) {
	if tp := p.tenant(t, false); tp != nil {
		tp.mu.Lock()
		if tp.inflight > 0 {
			tp.inflight--
		}
		tp.mu.Unlock()
	}
}

// admit reserves room for one more pending approval in tenant; the caller
// must call s.pending.settled(tenant) when it returns true. It returns
// ErrTooManyPending when the tenant is at Config.MaxPending, or the error of
// listing the tenant's timers.
func (s *Service) admit(ctx context.Context, tenant string) (bool, error) {
	max := s.cfg.MaxPending
	if max == 0 {
		return false, nil
	}
	tp := s.pending.tenant(tenant, true)
	tp.mu.Lock()
	for tp.removed {
		tp.mu.Unlock()
		tp = s.pending.tenant(tenant, true)
		tp.mu.Lock()
	}
	defer tp.mu.Unlock()
	age := time.Since(tp.at)
	if tp.at.IsZero() || age >= pendingRefresh || (tp.n >= max && age >= pendingRelist) {
		n, err := s.countPending(ctx, tenant)
		if err != nil {
			return false, fmt.Errorf("count pending: %w", err)
		}
		tp.n, tp.at = n+tp.inflight, time.Now()
	}
	if tp.n >= max {
		return false, fmt.Errorf("%w: tenant %s has %d pending, the maximum is %d", ErrTooManyPending, tenant, tp.n, max)
	}
	tp.n++
	tp.inflight++
	return true, nil
}

// Pending returns how many approvals of tenant are pending, counted as the
// tenant's live timers, of which each pending approval has one (see
// Service.Request): this is the count Config.MaxPending limits.
// An approval whose timer has fired but which the expirer has not moved yet
// is not counted. It reads the timers stream's subjects under ApprovalCheck, so its
// cost grows with the tenant's pending approvals. It returns a *FieldError for a bad tenant, or the jetstream
// error or *jsguard.TimeoutError, wrapped. Safe for concurrent use.
func (s *Service) Pending(ctx context.Context, tenant string) (int, error) {
	if err := checkName("tenant", tenant); err != nil {
		return 0, err
	}
	n, err := s.countPending(withTenant(ctx, tenant), tenant)
	if err != nil {
		return 0, fmt.Errorf("pending %s: %w", tenant, err)
	}
	return n, nil
}

// countPending counts the tenant's armed timers, under ApprovalCheck.
// Fired timers are not armed.
func (s *Service) countPending(ctx context.Context, tenant string) (int, error) {
	armed, err := s.timers.scheduled(ctx, tenant+".*.*")
	return len(armed), err
}
