package kvapprovals

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// Expirer turns fired timers into record transitions: a fired
// <tenant>.<id>.expire timer moves a pending record to expired, a fired
// .warn timer stamps warned_at and creates the expire timer. It is a
// durable consumer on the timers stream's fire subjects that every replica
// shares (Config.ExpirerDurable), so each fired timer is processed by one
// of them; processing is idempotent, so a redelivery after a crash is
// harmless.
//
// Timers are scheduled to fire a second ahead of their instant, because
// the server fires schedules in rounds at least 250 ms apart and hands a
// round's thousands over one after another. The expirer holds a timer that
// comes early in memory (on no worker) until its instant and only then
// reads and writes the record, so expiries and warnings are neither early
// nor a round late (Stats.TimersHeld counts them). A stop, or a crash,
// leaves held timers to another replica: a stop naks them at once, a crash
// after AckWait. An Expirer is safe for concurrent use; run it once
// per process.
type Expirer struct {
	s *Service
	o consumerOpts

	sweeps chan struct{} // a tick asks Run's sweeper for a sweep
}

// Expirer returns an expirer for s's timers stream and records bucket. Options: WithWorkers,
// WithMaxAckPending, WithoutStartSweep.
func (s *Service) Expirer(opts ...ConsumerOption) *Expirer {
	return &Expirer{s: s, o: newConsumerOpts(expirerMaxAckPending, opts), sweeps: make(chan struct{}, 1)}
}

// Outage describes an expirer start after a long outage: a fired timer had
// waited for the expirer longer than Config.MaxOutage, or the start sweep
// found pending approvals overdue by more than MaxOutage. Nothing was lost: fired timers wait in the timers stream, and
// the start sweep expires what is overdue at once.
type Outage struct {
	// LastActive is the consumer's last delivery or ack before this start,
	// as the server remembers it; zero when unknown (e.g. after a server
	// restart, or when it never had a fired timer).
	LastActive time.Time
	// Down is now - LastActive, or, when that is unknown, how long the
	// oldest fired timer had waited; zero when only the sweep saw the
	// outage.
	Down time.Duration
	// Overdue counts pending approvals past expires_at + grace that the
	// start sweep expired; Late counts those overdue by more than
	// MaxOutage.
	Overdue, Late int
}

// budgets returns the expirer's AckWait (consumerAckWait: a handler that
// works longer keeps its message with InProgress) and a message's
// processing budget, which allows a few compare-and-set rounds.
func (e *Expirer) budgets() (ackWait, handle time.Duration) {
	g := e.s.g
	handle = 2*(g.Budget(jsguard.ApprovalCheck)+g.Budget(jsguard.ApprovalGrant)) + 5*time.Second
	return consumerAckWait, handle
}

// Run creates or updates the durable consumer and processes fired timers until
// ctx ends; then it stops fetching, lets in-flight messages finish and
// returns nil. At start it reports a possible outage (see Outage) to
// Hooks.OnOutage and the logger, and, unless WithoutStartSweep, sweeps all
// records in the background and expires every pending one past its
// deadline through the same compare-and-set path. It returns the error of
// creating the consumer, or an error when consuming stops by itself.
func (e *Expirer) Run(ctx context.Context) error {
	s := e.s
	ackWait, handleBudget := e.budgets()
	stream := s.cfg.TimersStream
	cons, err := s.g.EnsureConsumer(ctx, s.js, stream, jetstream.ConsumerConfig{
		Durable:       s.cfg.ExpirerDurable,
		Description:   "guardian approval expirer",
		FilterSubject: s.timers.fires(),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: e.o.maxAckPending,
	})
	if err != nil {
		return fmt.Errorf("expirer: %w", err)
	}
	outage := e.lastActivity(ctx, cons.CachedInfo())
	if err := e.armSweep(ctx); err != nil {
		s.consumeError(fmt.Errorf("expirer: arm the periodic sweep: %w", err))
	}

	var wg sync.WaitGroup
	sweepCtx, stopSweeps := context.WithCancel(ctx) // ends with consuming, however that ends
	wg.Go(func() { e.sweeper(sweepCtx) })
	if e.o.noSweep {
		e.report(outage)
	} else {
		wg.Go(func() {
			overdue, late, err := e.Sweep(sweepCtx)
			if err != nil && sweepCtx.Err() == nil {
				s.consumeError(fmt.Errorf("expirer start sweep: %w", err))
			}
			outage.Overdue, outage.Late = overdue, late
			e.report(outage)
		})
	}
	err = s.consume(ctx, cons, e.o.workers, ackWait, handleBudget, nil, e.handle)
	stopSweeps()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("expirer: %w", err)
	}
	return nil
}

// sweepKey is the key of the sweep tick, a timer in the timers stream. It
// has two tokens, approvals' timer keys three (<tenant>.<id>.<kind>), so it
// is never an approval's.
const sweepKey = "guardian.sweep"

// armSweep arms the sweep tick for SweepInterval from now, when it is not
// armed. Of all replicas' attempts one succeeds; the tick, when it fires,
// reaches one replica through the shared durable consumer.
func (e *Expirer) armSweep(ctx context.Context) error {
	s := e.s
	_, err := s.timers.arm(ctx, sweepKey, s.now().Add(s.cfg.SweepInterval))
	return err
}

// tick handles the fired sweep tick: it arms the next tick first (so a
// crash mid-sweep does not stop the ticks), acknowledges, and sweeps in the
// background unless this process is sweeping already.
func (e *Expirer) tick(ctx context.Context, msg jetstream.Msg) {
	s := e.s
	if err := e.armSweep(ctx); err != nil {
		s.settle(msg, fmt.Errorf("arm the next sweep: %w", err))
		return
	}
	_ = msg.Ack()
	select {
	case e.sweeps <- struct{}{}:
	default: // a sweep is asked for already
	}
}

// sweeper runs a periodic sweep (see checkChanges) whenever a tick asks,
// one at a time, until ctx ends.
func (e *Expirer) sweeper(ctx context.Context) {
	s := e.s
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.sweeps:
		}
		rearmed, err := e.checkChanges(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.consumeError(fmt.Errorf("expirer periodic sweep: %w", err))
		case rearmed > 0:
			s.log.Warn("kvapprovals: the periodic sweep re-armed the timers of pending approvals that had none", "rearmed", rearmed)
		}
		s.stats.sweeps.Add(1)
	}
}

// periodicSweepSlack is how old a change must be before the periodic
// sweep checks it: the request, extension or warning that made it writes
// its timer at the same time, and a consumer redelivers a fired timer
// within its AckWait after a crash.
const periodicSweepSlack = 2 * consumerAckWait

// sweepOverlap is how far before its cursor a periodic sweep starts, so
// that a change stamped a little out of order (a new stream leader's
// clock) is still checked. Checking a change twice is harmless.
const sweepOverlap = 2 * time.Second

// checkChanges is the periodic sweep. It reads the records' changes once
// each, from its cursor up to periodicSweepSlack ago (by then the request,
// extension or warning that made a change has written its timer), and
// makes sure that every approval still pending has a timer (see
// ensureTimer). Its cost is the number of changes since the last sweep,
// not the number of retained records; it keeps no state but the cursor.
// Without a cursor (the first sweep) it reads all retained records once.
// It returns how many timers it armed, and the read or write error; a
// sweep cut short moves the cursor to the last change it checked.
func (e *Expirer) checkChanges(ctx context.Context) (rearmed int, err error) {
	s := e.s
	until := time.Now().Add(-periodicSweepSlack).UTC()
	var since time.Time
	cur, err := jsguard.DoValue(ctx, s.g, jsguard.KVGet, "read sweep cursor "+s.timers.cursor(),
		func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
			return s.timers.str.GetLastMsgForSubject(ctx, s.timers.cursor())
		})
	switch {
	case err == nil:
		t, perr := time.Parse(time.RFC3339Nano, string(cur.Data))
		if perr == nil {
			since = t.Add(-sweepOverlap)
		}
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, fmt.Errorf("read the sweep cursor: %w", err)
	}
	if !since.IsZero() && !since.Before(until) {
		return 0, nil
	}
	// The scan hands its progress over under mu: an abandoned scan may
	// still run after Do returned.
	var (
		mu      sync.Mutex
		checked time.Time
		armed   int
	)
	err = s.g.Do(ctx, jsguard.ReplayProcessing, "approval sweep "+s.cfg.RecordsBucket, func(ctx context.Context) error {
		return scanSince(ctx, s.recordsStream, "$KV."+s.cfg.RecordsBucket+".>", since, func(m jetstream.Msg) error {
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			if !md.Timestamp.Before(until) {
				return errStopScan
			}
			s.stats.sweepChecked.Add(1)
			if isEntry(m) {
				if rec, derr := decodeRecord(m.Data(), md.Sequence.Stream); derr == nil && rec.Status == StatusPending {
					created, err := s.ensureTimer(withTenant(ctx, rec.Tenant), rec.Key())
					if err != nil {
						return fmt.Errorf("check the timer of %s: %w", rec.Key(), err)
					}
					if created {
						mu.Lock()
						armed++
						mu.Unlock()
						s.stats.repaired.Add(1)
					}
				}
			}
			mu.Lock()
			checked = md.Timestamp
			mu.Unlock()
			return nil
		})
	})
	mu.Lock()
	defer mu.Unlock()
	rearmed = armed
	if err == nil {
		checked = until
	}
	if !checked.IsZero() {
		if _, perr := s.g.Publish(ctx, s.js, s.timers.cursor(), []byte(checked.UTC().Format(time.RFC3339Nano))); perr != nil && err == nil {
			err = fmt.Errorf("store the sweep cursor: %w", perr)
		}
	}
	return rearmed, err
}

// ensureTimer makes sure that the approval at key, when pending, has a
// timer: a live one, or a fired one the expirer has yet to acknowledge.
// When it has neither, it arms the approval's next timer (one that
// fires within a second when its time has passed, so the expirer expires
// it through the usual path) and reports true. It returns the read or
// write error.
func (s *Service) ensureTimer(ctx context.Context, key string) (bool, error) {
	live, err := s.timers.live(ctx, key+".*")
	if err != nil || live {
		return false, err
	}
	rec, err := s.get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil || rec.Status != StatusPending {
		return false, err
	}
	return s.armNext(ctx, &rec, s.now().UTC())
}

// lastActivity reports an outage when the oldest fired timer still in the
// timers stream (a work queue: handled ones are gone) has waited longer
// than MaxOutage. LastActive is the consumer's last delivery or ack before
// this start, when the server remembers one; Down is the time since then,
// or, without one, how long that timer has waited.
func (e *Expirer) lastActivity(ctx context.Context, info *jetstream.ConsumerInfo) Outage {
	s := e.s
	oldest, err := jsguard.DoValue(ctx, s.g, jsguard.ApprovalCheck, "oldest fired timer "+s.timers.fires(),
		func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
			return s.timers.str.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(s.timers.fires()))
		})
	if err != nil {
		return Outage{} // none waits, or it cannot be told
	}
	now := s.timers.serverNow() // oldest.Time and the consumer's times are the server's
	waited := now.Sub(oldest.Time)
	if waited <= s.cfg.MaxOutage {
		return Outage{}
	}
	o := Outage{Down: waited}
	if info != nil {
		for _, t := range []*time.Time{info.Delivered.Last, info.AckFloor.Last} {
			if t != nil && t.After(o.LastActive) {
				o.LastActive = *t
			}
		}
	}
	if !o.LastActive.IsZero() {
		o.Down = now.Sub(o.LastActive)
	}
	return o
}

func (e *Expirer) report(o Outage) {
	s := e.s
	if o.Down <= s.cfg.MaxOutage && o.Late == 0 {
		return
	}
	s.stats.outages.Add(1)
	s.log.Warn("kvapprovals: expirer was down longer than MaxOutage; the start sweep expired overdue approvals and fired timers are handled now",
		"last_active", o.LastActive, "down", o.Down, "max_outage", s.cfg.MaxOutage, "overdue", o.Overdue, "late", o.Late)
	if s.hooks.OnOutage != nil {
		s.hooks.OnOutage(o)
	}
}

// handle processes one fired timer. A timer that came ahead of its
// instant, by at most maxHold, is held until then (by its dueHeader, before
// any read, or by the record's deadline); one that came earlier still is
// redelivered when it is due.
func (e *Expirer) handle(ctx context.Context, msg jetstream.Msg) (hold time.Duration) {
	s := e.s
	rest, ok := s.timers.firedKey(msg.Subject())
	if ok && rest == sweepKey {
		e.tick(ctx, msg)
		return 0
	}
	parts := strings.Split(rest, ".")
	if !ok || len(parts) != 3 {
		_ = msg.Term() // not a guardian timer
		return 0
	}
	if wait := s.timers.early(msg); wait > 0 {
		s.stats.held.Add(1)
		return wait
	}
	key := parts[0] + "." + parts[1]
	ctx = withTenant(ctx, parts[0])
	var err error
	switch parts[2] {
	case timerExpire:
		_, err = s.expire(ctx, key, nil)
	case timerWarn:
		err = s.warn(ctx, key)
	default:
		_ = msg.Term()
		return 0
	}
	var wait errRetryAfter
	if errors.As(err, &wait) && time.Duration(wait) <= maxHold {
		s.stats.held.Add(1)
		return time.Duration(wait)
	}
	s.settle(msg, err)
	return 0
}

// expire moves the record at key to expired if it is pending and past its
// deadline, by compare-and-set; rec, when given, is a fresh read to start
// from. It returns a nil error when there is nothing (more) to do, errRetryAfter
// when the deadline has not passed by this clock, or the read or write
// error. It reports whether this call wrote the expiry.
func (s *Service) expire(ctx context.Context, key string, rec *Record) (bool, error) {
	for attempt := 1; ; attempt++ {
		if rec == nil {
			r, err := s.get(ctx, key)
			if errors.Is(err, ErrNotFound) {
				return false, nil // a timer without a record: its request failed
			}
			if err != nil {
				return false, err
			}
			rec = &r
		}
		if rec.Status != StatusPending {
			return false, nil
		}
		now := s.now().UTC()
		deadline := rec.Deadline(s.cfg.GracePeriod)
		if wait := deadline.Sub(now); wait > 0 {
			if staleTimer(rec, wait) {
				_, err := s.armNext(ctx, rec, now)
				return false, err
			}
			return false, errRetryAfter(wait)
		}
		next := *rec
		next.Status, next.DecidedAt, next.Change = StatusExpired, &now, ""
		next.Reason = fmt.Sprintf("no decision within %s and %s grace", time.Duration(rec.Timeout), s.cfg.GracePeriod)
		if n := len(rec.Extensions); n > 0 {
			next.Reason = fmt.Sprintf("no decision by %s (timeout %s, extended %d times) and %s grace",
				rec.ExpiresAt.Format(timeFormat), time.Duration(rec.Timeout), n, s.cfg.GracePeriod)
		}
		_, err := s.update(ctx, &next, rec.Revision)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) && attempt < maxCASAttempts {
			rec = nil
			s.casBackoff(ctx, attempt)
			continue
		}
		if err != nil {
			return false, err
		}
		s.finished(rec.Tenant, StatusExpired)
		if s.hooks.OnExpired != nil {
			s.hooks.OnExpired(now.Sub(deadline))
		}
		return true, nil
	}
}

// staleTimer reports whether a timer that fired wait before the time it
// stands for was armed for a deadline an extension has since moved. Such a
// timer is not kept pending until then: its handler makes sure the
// approval's next timer exists (creating it is a no-op when the extension
// armed it; it was not when a warn handler's timer took the key between the
// extension's purge and create) and acknowledges it. Without an extension,
// or within a few seconds (clocks differ), the timer is retried after wait.
func staleTimer(rec *Record, wait time.Duration) bool {
	return len(rec.Extensions) > 0 && wait > 2*time.Second
}

// warn handles a fired warn timer: it stamps warned_at on a pending, not
// yet warned record and creates the expire timer, which comes next in the
// chain (see nextTimer). A redelivery after a crash between the two creates
// the timer; a record already past its deadline (the expirer was down) is
// expired at once.
func (s *Service) warn(ctx context.Context, key string) error {
	for attempt := 1; ; attempt++ {
		rec, err := s.get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		now := s.now().UTC()
		if rec.Status != StatusPending {
			return nil
		}
		if !now.Before(rec.Deadline(s.cfg.GracePeriod)) {
			_, err := s.expire(ctx, key, &rec)
			return err
		}
		if rec.WarnedAt == nil {
			if wait := rec.ExpiresAt.Add(-s.cfg.WarningBefore).Sub(now); wait > 0 {
				if staleTimer(&rec, wait) {
					_, err := s.armNext(ctx, &rec, now)
					return err
				}
				return errRetryAfter(wait)
			}
			next := rec
			next.WarnedAt, next.Change = &now, ""
			_, err = s.update(ctx, &next, rec.Revision)
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) && attempt < maxCASAttempts {
				s.casBackoff(ctx, attempt)
				continue
			}
			if err != nil {
				return err
			}
			s.stats.warned.Add(1)
			s.transition(rec.Tenant, StatusPending, true)
		}
		_, err = s.armTimer(ctx, &rec, timerExpire, rec.Deadline(s.cfg.GracePeriod))
		return err
	}
}

// Sweep reads the latest revision of every record and expires each pending
// one whose expires_at + grace has passed, through the same compare-and-set
// path as the timers; it also arms the next timer of a pending one that has
// none. Run calls it at start; call it yourself to close the window of a
// request whose process died between writing the record and its timers. It returns how
// many it expired (overdue) and how many of those were overdue by more than
// MaxOutage (late). It runs under the ReplayProcessing budget and
// returns the jetstream error or *jsguard.TimeoutError with the counts so
// far. Safe for concurrent use; cost grows with the retained records.
func (e *Expirer) Sweep(ctx context.Context) (overdue, late int, err error) {
	s := e.s
	err = s.g.Do(ctx, jsguard.ReplayProcessing, "approval sweep "+s.cfg.RecordsBucket, func(ctx context.Context) error {
		return scanLatest(ctx, s.recordsStream, "$KV."+s.cfg.RecordsBucket+".>", false, func(m jetstream.Msg) error {
			if !isEntry(m) {
				return nil
			}
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			rec, err := decodeRecord(m.Data(), md.Sequence.Stream)
			if err != nil || rec.Status != StatusPending {
				return nil
			}
			now := s.now()
			deadline := rec.Deadline(s.cfg.GracePeriod)
			by := now.Sub(deadline)
			if by <= 0 {
				// A pending approval without a timer (its request failed
				// halfway, or the timer was removed after the periodic
				// sweep checked its record) gets one.
				created, err := s.ensureTimer(withTenant(ctx, rec.Tenant), rec.Key())
				if err != nil {
					return fmt.Errorf("check the timer of %s: %w", rec.Key(), err)
				}
				if created {
					s.stats.repaired.Add(1)
				}
				return nil
			}
			// The revision may be stale by now: expire re-reads on a
			// lost compare-and-set.
			wrote, err := s.expire(withTenant(ctx, rec.Tenant), rec.Key(), &rec)
			if err != nil {
				return fmt.Errorf("expire %s: %w", rec.Key(), err)
			}
			if wrote {
				overdue++
				if by > s.cfg.MaxOutage+time.Second {
					late++
				}
			}
			return nil
		})
	})
	return overdue, late, err
}
