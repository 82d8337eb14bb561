package jsguard_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// recSink records the events it receives.
type recSink struct {
	mu  sync.Mutex
	evs []jsguard.Event
}

func (s *recSink) Emit(_ context.Context, e jsguard.Event) error {
	s.mu.Lock()
	s.evs = append(s.evs, e)
	s.mu.Unlock()
	return nil
}

func (s *recSink) events() []jsguard.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]jsguard.Event(nil), s.evs...)
}

// one returns the only event, failing the test unless there is exactly one.
func (s *recSink) one(t *testing.T) jsguard.Event {
	t.Helper()
	evs := s.events()
	if len(evs) != 1 {
		t.Fatalf("got %d audit events, want exactly 1: %+v", len(evs), evs)
	}
	return evs[0]
}

func newGuard(t *testing.T, opts ...jsguard.Option) (*jsguard.Guard, *recSink) {
	t.Helper()
	s := &recSink{}
	g, err := jsguard.New(append([]jsguard.Option{jsguard.WithSink(s)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return g, s
}

// policyWith returns DefaultPolicy with the given budgets changed.
func policyWith(budgets map[jsguard.Category]time.Duration) jsguard.Policy {
	p := jsguard.DefaultPolicy()
	for c, d := range budgets {
		p.Budgets[c] = d
	}
	return p
}

// honour waits for its context and returns its error, as a well-behaved
// I/O function does.
func honour(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// asTimeout returns err's *TimeoutError or fails the test.
func asTimeout(t *testing.T, err error) *jsguard.TimeoutError {
	t.Helper()
	var te *jsguard.TimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v (%T), want a *jsguard.TimeoutError", err, err)
	}
	return te
}

// statsOf returns the stats of category c.
func statsOf(g *jsguard.Guard, c jsguard.Category) jsguard.CategoryStats {
	for _, s := range g.Stats() {
		if s.Category == c {
			return s
		}
	}
	return jsguard.CategoryStats{Category: c}
}
