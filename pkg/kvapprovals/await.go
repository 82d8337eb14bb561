package kvapprovals

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// MaxAwait bounds one Await call's wait; a caller that needs longer calls
// again (Client.Await does).
const MaxAwait = 5 * time.Minute

// AwaitInput asks to wait for an approval's decision: at most Wait (0: 25s,
// at most MaxAwait).
type AwaitInput struct {
	ID   string   `json:"id"`
	Wait Duration `json:"wait,omitempty"`
}

// DecodeAwait strictly decodes an AwaitInput; see DecodeRequest.
func DecodeAwait(data []byte) (AwaitInput, error) { return decode[AwaitInput](data) }

// defaultAwait is the wait of an AwaitInput without one.
const defaultAwait = 25 * time.Second

// waiters wakes Await calls when their approval's lifecycle event goes by:
// one subscription per Service on the events subjects, shared by every
// waiting call.
type waiters struct {
	mu    sync.Mutex
	sub   *nats.Subscription
	byKey map[string]map[chan struct{}]struct{}
}

func (w *waiters) add(ctx context.Context, s *Service, key string) (chan struct{}, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sub == nil {
		sub, err := s.g.Subscribe(ctx, s.js.Conn(), s.cfg.EventsSubjectPrefix+".>", w.onEvent)
		if err != nil {
			return nil, fmt.Errorf("await: subscribe to the events: %w", err)
		}
		w.sub, w.byKey = sub, map[string]map[chan struct{}]struct{}{}
	}
	ch := make(chan struct{}, 1)
	if w.byKey[key] == nil {
		w.byKey[key] = map[chan struct{}]struct{}{}
	}
	w.byKey[key][ch] = struct{}{}
	return ch, nil
}

func (w *waiters) remove(key string, ch chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.byKey[key], ch)
	if len(w.byKey[key]) == 0 {
		delete(w.byKey, key)
	}
}

func (w *waiters) onEvent(m *nats.Msg) {
	kind := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	switch kind {
	case KindApproved, KindDenied, KindCancelled, KindExpired:
	default:
		return
	}
	var ev struct {
		Tenant string `json:"tenant"`
		ID     string `json:"id"`
	}
	if json.Unmarshal(m.Data, &ev) != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.byKey[ev.Tenant+"."+ev.ID] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Await returns the approval once it is final (approved, denied, cancelled
// or expired), or as it is after at most wait (0: 25s; more than MaxAwait
// is MaxAwait) or when ctx ends, whichever comes first: check the returned
// record's Status. It is woken by the approval's lifecycle event (a
// subscription this Service shares among its waiting calls), not by
// polling, and reads the record once more when the wait ends, so a missed
// event costs at most the wait. A decision made before the call is
// returned at once.
//
// It returns a *FieldError (ErrInvalidRequest) for a malformed tenant or id,
// ErrNotFound, or the jetstream error or *jsguard.TimeoutError of a read,
// wrapped; when ctx ends it returns the record as last read and no error.
func (s *Service) Await(ctx context.Context, tenant, id string, wait time.Duration) (Record, error) {
	if err := checkName("tenant", tenant); err != nil {
		return Record{}, err
	}
	if err := checkName("id", id); err != nil {
		return Record{}, err
	}
	switch {
	case wait <= 0:
		wait = defaultAwait
	case wait > MaxAwait:
		wait = MaxAwait
	}
	ctx = withTenant(ctx, tenant)
	key := tenant + "." + id
	ch, err := s.waiters.add(ctx, s, key)
	if err != nil {
		return Record{}, err
	}
	defer s.waiters.remove(key, ch)
	// Registered before the read: a decision written after the read wakes
	// this call.
	rec, err := s.getRecent(ctx, key)
	if err != nil {
		return Record{}, fmt.Errorf("await %s: %w", key, err)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for !rec.Status.Terminal() {
		last := false
		select {
		case <-ctx.Done():
			return rec, nil
		case <-ch:
		case <-timer.C:
			last = true
		}
		if rec, err = s.get(context.WithoutCancel(ctx), key); err != nil {
			return Record{}, fmt.Errorf("await %s: %w", key, err)
		}
		if last {
			return rec, nil
		}
	}
	return rec, nil
}
