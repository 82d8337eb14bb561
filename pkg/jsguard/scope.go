package jsguard

import (
	"sync"
	"time"
)

// scope is one deadline and the guarded calls it bounds: the call whose
// budget (or parent) set it, and the nested guarded calls inside it whose
// deadline is that same instant. Exactly one of them emits the event when
// the deadline fires: the first to claim the scope. A call waits for the
// nested calls still deciding before it claims, so the innermost call that
// timed out normally wins and the event names the operation that was slow.
type scope struct {
	deadline time.Time

	mu      sync.Mutex
	claimed bool
	eventID string
	emitted chan struct{} // closed by the claimant once its event is out
	live    []int         // live[d]: nested calls at depth d still running
	wake    chan struct{} // closed when live changes, if someone waits

	// The outermost T1–T5 hierarchy call among the scope's calls, which
	// reports the deadline instead of the innermost call: its depth and
	// event id.
	owned      bool
	ownerDepth int
	ownerID    string
}

// adopt makes the hierarchy call at depth d, whose event id is id, the
// scope's reporter unless one further out is already.
func (s *scope) adopt(d int, id string) {
	s.mu.Lock()
	if !s.owned || d < s.ownerDepth {
		s.owned, s.ownerDepth, s.ownerID = true, d, id
	}
	s.mu.Unlock()
}

// disown ends the reporting role of the hierarchy call at depth d with
// event id id, which returned before the deadline: a deadline firing after
// that is reported as if it had never run. Once the deadline has fired
// (the scope is claimed) the role stays, for the children still deciding.
func (s *scope) disown(d int, id string) {
	s.mu.Lock()
	if s.owned && !s.claimed && s.ownerDepth == d && s.ownerID == id {
		s.owned = false
	}
	s.mu.Unlock()
}

// owner returns the depth and event id of the scope's reporting hierarchy
// call, if it has one.
func (s *scope) owner() (int, string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ownerDepth, s.ownerID, s.owned
}

// enter registers a nested call at depth d.
func (s *scope) enter(d int) {
	s.mu.Lock()
	for len(s.live) <= d {
		s.live = append(s.live, 0)
	}
	s.live[d]++
	s.mu.Unlock()
}

// leave unregisters a nested call at depth d and wakes waiters.
func (s *scope) leave(d int) {
	s.mu.Lock()
	s.live[d]--
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
	s.mu.Unlock()
}

// waitDeeper waits, at most max, until no call deeper than d is running.
func (s *scope) waitDeeper(d int, max time.Duration) {
	var t *time.Timer
	for {
		s.mu.Lock()
		busy := false
		for i := d + 1; i < len(s.live); i++ {
			if s.live[i] > 0 {
				busy = true
				break
			}
		}
		if !busy {
			s.mu.Unlock()
			return
		}
		if s.wake == nil {
			s.wake = make(chan struct{})
		}
		w := s.wake
		s.mu.Unlock()
		if t == nil {
			t = time.NewTimer(max)
			defer t.Stop()
		}
		select {
		case <-w:
		case <-t.C:
			return
		}
	}
}

// claim makes id the event of this deadline unless another call claimed it
// first. It reports whether id won and returns the winning id and the
// channel the winner closes once it has emitted the event.
func (s *scope) claim(id string) (bool, string, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.claimed {
		return false, s.eventID, s.emitted
	}
	s.claimed, s.eventID, s.emitted = true, id, make(chan struct{})
	return true, id, s.emitted
}
