package kvapprovals

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// Service manages approvals whose state lives in JetStream: records in the
// records bucket, timers in the timers stream, lifecycle events in the events
// stream. It keeps no per-approval state in memory, so any number of
// processes may serve the same buckets and streams. A Service is safe for concurrent use.
type Service struct {
	g       *jsguard.Guard
	js      jetstream.JetStream
	cfg     Config
	records *jsguard.KV
	timers  *timers
	rules   *jsguard.KV // approver rules; nil: no tenant has any
	// The records bucket's stream, for scans and the notifier.
	recordsStream jetstream.Stream
	now           func() time.Time
	log           *slog.Logger
	hooks         Hooks
	pending       pendingCounts
	stats         stats
	waiters       waiters
}

// Hooks are called synchronously; they must be fast and safe for concurrent
// use. Any of them may be nil.
type Hooks struct {
	// OnTransition is called after this process wrote a record: a new
	// pending approval, a warning stamp or a terminal status.
	OnTransition func(tenant string, to Status, warning bool)
	// OnExpired is called by the expirer for every approval it expired, with
	// how late: processing time - (expires_at + grace).
	OnExpired func(lateness time.Duration)
	// OnOutage is called by the expirer at start after an outage longer
	// than Config.MaxOutage (see Outage).
	OnOutage func(Outage)
	// OnConsumeError is called with errors of the expirer's and notifier's
	// consumers and with failures to process a message (which is
	// redelivered).
	OnConsumeError func(error)
	// OnNotificationFailed is called when the notifier gave up delivering a
	// webhook notification and recorded a notification_failed event.
	OnNotificationFailed func(Event, error)
}

// Option configures a Service.
type Option func(*Service)

// WithClock sets the source of "now" for timestamps and deadline checks
// (default time.Now). Timers still run on the NATS server's clock.
func WithClock(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// WithLogger sets the logger for what the expirer and notifier report
// without returning it (consume errors, outages). Default slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *Service) { s.log = l } }

// WithHooks sets the observability hooks.
func WithHooks(h Hooks) Option { return func(s *Service) { s.hooks = h } }

// Open validates cfg, creates or updates the records bucket, the timers
// stream and the events stream, and returns a Service. g nil means
// jsguard.Default(). It returns an error wrapping ErrInvalidConfig, or the
// jetstream error or *jsguard.TimeoutError of the first provisioning step
// that failed.
func Open(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream, cfg Config, opts ...Option) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if g == nil {
		g = jsguard.Default()
	}
	s := &Service{g: g, js: js, cfg: cfg, now: time.Now, log: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	s.pending.m = map[string]*tenantPending{}
	var err error
	s.records, err = g.EnsureKV(ctx, js, jetstream.KeyValueConfig{
		Bucket:      cfg.RecordsBucket,
		Description: "guardian approval records",
		// Every revision becomes an event: keep enough that a notifier
		// behind by a whole approval's life (request, warnings, votes,
		// extensions, decision) still reads each one.
		History:  64,
		TTL:      cfg.Retention,
		Replicas: cfg.Replicas,
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open: records bucket %s: %w", cfg.RecordsBucket, err)
	}
	s.recordsStream, err = jsguard.DoValue(ctx, g, jsguard.NATSStreamCreate, "stream KV_"+cfg.RecordsBucket,
		func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, "KV_"+cfg.RecordsBucket) })
	if err != nil {
		return nil, fmt.Errorf("open: bucket stream KV_%s: %w", cfg.RecordsBucket, err)
	}
	tstr, err := g.EnsureStream(ctx, js, timersStreamConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("open: timers stream %s: %w", cfg.TimersStream, err)
	}
	if !tstr.CachedInfo().Config.AllowMsgSchedules {
		return nil, fmt.Errorf("open: timers stream %s: the server did not enable message schedules (AllowMsgSchedules): guardian's timers need nats-server 2.14 or later", cfg.TimersStream)
	}
	s.timers = &timers{g: g, js: js, str: tstr, prefix: timersPrefix(cfg.TimersStream), now: func() time.Time { return s.now() }}
	// Best effort: without a measurement the first timer armed measures
	// in the background, and until then timers name instants on this
	// host's clock.
	_, _ = s.timers.measureSkew(ctx)
	_, err = g.EnsureStream(ctx, js, jetstream.StreamConfig{
		Name:        cfg.EventsStream,
		Description: "guardian approval lifecycle events",
		Subjects:    []string{cfg.EventsSubjectPrefix + ".>"},
		MaxAge:      cfg.Retention,
		Duplicates:  cfg.EventsDuplicates,
		Replicas:    cfg.Replicas,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("open: events stream %s: %w", cfg.EventsStream, err)
	}
	return s, nil
}

// Config returns the configuration the Service runs with.
func (s *Service) Config() Config { return s.cfg }

const (
	maxCASAttempts = 8
)

// Request creates a pending approval in tenant and arms its first timer
// (the warn timer when a warning is scheduled, else the expire timer; both
// writes go out together), and returns the record. Retrying with the same
// id and the same content returns the existing approval (in whatever state
// it is now) and re-creates the missing timer of a still pending one.
//
// It returns a *FieldError (ErrInvalidRequest) for bad input, which changes
// nothing; ErrUnauthenticated or ErrIdentityMismatch (see IdentityMode);
// ErrInvalidRules when the tenant's stored rules are broken; ErrConflict
// when the id exists with other content;
// ErrTooManyPending when the tenant is at MaxPending; otherwise the
// jetstream error or *jsguard.TimeoutError, wrapped. When the record was
// written but its timers were not, the error says so: retry the request to
// repair them (until then, decisions are still refused after the deadline,
// and the expirer's start sweep expires the record).
func (s *Service) Request(ctx context.Context, tenant string, in RequestInput) (Record, error) {
	timeout, err := s.validateRequest(tenant, &in)
	if err != nil {
		return Record{}, err
	}
	by, who, err := s.actor(ctx, "requested_by", in.RequestedBy)
	if err != nil {
		return Record{}, fmt.Errorf("request %s: %w", tenant, err)
	}
	in.RequestedBy = by
	ctx = withTenant(ctx, tenant)
	rules, err := s.TenantRules(ctx, tenant)
	if err != nil {
		return Record{}, fmt.Errorf("request %s: %w", tenant, err)
	}
	if in.ID == "" {
		in.ID = rand.Text()
	}
	now := s.now().UTC()
	rec := Record{
		ID: in.ID, Tenant: tenant, SessionID: in.SessionID, RequestedBy: in.RequestedBy, OperatorID: in.OperatorID,
		Details: in.Details, Status: StatusPending, Timeout: Duration(timeout),
		RequestedAt: now, ExpiresAt: now.Add(timeout), Requester: who,
		RequiredApprovals: max(in.RequiredApprovals, rules.approvals()), RequiredDenials: rules.denials(),
	}
	if rec.RequiredApprovals == 1 {
		rec.RequiredApprovals = 0 // the default; keeps single approvals as they were
	}
	if rec.RequiredDenials == 1 {
		rec.RequiredDenials = 0
	}
	key := rec.Key()
	admitted, err := s.admit(ctx, tenant)
	if admitted {
		defer s.pending.settled(tenant)
	}
	if err != nil {
		if errors.Is(err, ErrTooManyPending) {
			// A retry of an existing approval is not a new pending one.
			if existing, gerr := s.get(ctx, key); gerr == nil {
				return s.retried(ctx, existing, &in, timeout)
			}
		}
		return Record{}, fmt.Errorf("request %s: %w", key, err)
	}
	// The record and its first timer are written at once: a request costs
	// one round trip, not two. The timer is only ever acted on through the
	// record, so one without a record (the record write failed) fires
	// into nothing.
	var timerCreated bool
	var timerErr error
	var wg sync.WaitGroup
	wg.Go(func() { timerCreated, timerErr = s.armNext(ctx, &rec, now) })
	rev, err := s.records.Create(ctx, key, encodeRecord(&rec))
	wg.Wait()
	if errors.Is(err, jetstream.ErrKeyExists) {
		s.pending.release(tenant)
		if timerCreated {
			// Armed for this request's deadline, not the existing
			// approval's: take it back; retried arms the right one.
			kind, _ := rec.nextTimer(s, now)
			_ = s.timers.disarm(context.WithoutCancel(ctx), key+"."+kind)
		}
		existing, gerr := s.getExisting(ctx, key)
		if gerr != nil {
			return Record{}, fmt.Errorf("request %s: %w", key, gerr)
		}
		return s.retried(ctx, existing, &in, timeout)
	}
	if err != nil {
		s.pending.release(tenant)
		return Record{}, fmt.Errorf("request %s: %w", key, err)
	}
	rec.Revision = rev
	s.stats.requested.Add(1)
	s.transition(tenant, StatusPending, false)
	if timerErr != nil {
		return Record{}, fmt.Errorf("request %s: record written but timers not (retry to repair): %w", key, timerErr)
	}
	return rec, nil
}

// getExisting reads a record that Create has just reported to exist. In a
// replicated bucket the read may be answered by a follower that has not
// applied the write yet (KV reads are direct gets), so a not-found answer is
// retried briefly before it is believed.
func (s *Service) getExisting(ctx context.Context, key string) (Record, error) {
	for wait := 10 * time.Millisecond; ; wait *= 2 {
		rec, err := s.get(ctx, key)
		if !errors.Is(err, ErrNotFound) || wait > 640*time.Millisecond {
			return rec, err
		}
		select {
		case <-ctx.Done():
			return rec, err
		case <-time.After(wait):
		}
	}
}

// casBackoff waits before the re-read that follows a lost compare-and-set,
// in a replicated bucket: the re-read is a direct get that a follower may
// answer before it has applied the winning write, and would then lose again
// on the same stale revision. The wait grows with the attempt (a few ms
// each); with one replica there is none.
func (s *Service) casBackoff(ctx context.Context, attempt int) {
	if s.cfg.Replicas <= 1 {
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Duration(attempt) * 5 * time.Millisecond):
	}
}

// getRecent reads a record a client may have just created: in a replicated
// bucket a follower that has not applied the create yet may answer the
// read (KV reads are direct gets), so a not-found answer is retried for up
// to about 300 ms before it is believed. With one replica it is get.
func (s *Service) getRecent(ctx context.Context, key string) (Record, error) {
	rec, err := s.get(ctx, key)
	for wait := 10 * time.Millisecond; errors.Is(err, ErrNotFound) && s.cfg.Replicas > 1 && wait <= 160*time.Millisecond; wait *= 2 {
		select {
		case <-ctx.Done():
			return rec, err
		case <-time.After(wait):
		}
		rec, err = s.get(ctx, key)
	}
	return rec, err
}

// retried answers a request whose id exists: the same content returns the
// record (repairing a pending one's timers), other content is a conflict.
func (s *Service) retried(ctx context.Context, rec Record, in *RequestInput, timeout time.Duration) (Record, error) {
	if !rec.sameRequest(in, timeout) {
		return Record{}, fmt.Errorf("request %s: %w", rec.Key(), ErrConflict)
	}
	if rec.Status == StatusPending {
		created, err := s.armNext(ctx, &rec, s.now())
		if err != nil {
			return Record{}, fmt.Errorf("request %s: repair timers: %w", rec.Key(), err)
		}
		if created {
			s.stats.repaired.Add(1)
		}
	}
	return rec, nil
}

// warnScheduled reports whether an approval with this timeout gets a warning.
func (s *Service) warnScheduled(timeout time.Duration) bool {
	return s.cfg.SendTimeoutWarnings && timeout > s.cfg.WarningBefore
}

// Timer kinds, the last token of a timer key.
const (
	timerWarn   = "warn"
	timerExpire = "expire"
)

// nextTimer returns the kind of timer a pending approval in rec's state
// runs on next, and when it must fire. Timers are chained, so that an
// approval has one live timer at a time: the warn timer while a warning is
// scheduled and not yet sent, then the expire timer, which the expirer
// creates when it sends the warning.
func (r *Record) nextTimer(s *Service, now time.Time) (kind string, at time.Time) {
	if s.warnScheduled(time.Duration(r.Timeout)) && r.WarnedAt == nil && now.Before(r.ExpiresAt) {
		return timerWarn, r.ExpiresAt.Add(-s.cfg.WarningBefore)
	}
	return timerExpire, r.Deadline(s.cfg.GracePeriod)
}

// armNext creates the approval's next timer (see nextTimer). A timer that
// exists already is left alone. It reports whether it created one.
func (s *Service) armNext(ctx context.Context, rec *Record, now time.Time) (bool, error) {
	kind, at := rec.nextTimer(s, now)
	return s.armTimer(ctx, rec, kind, at)
}

// armTimer creates timer kind of rec firing no earlier than at (on the
// Service's clock). A timer that exists already is left alone. It reports
// whether it created one.
func (s *Service) armTimer(ctx context.Context, rec *Record, kind string, at time.Time) (bool, error) {
	return s.timers.arm(ctx, rec.Key()+"."+kind, at)
}

// disarm removes an approval's live timer after a decision, best effort: a
// timer left behind fires into a record that is no longer pending and is
// ignored. (An expire timer the expirer creates while the decision is being
// written is such a timer.)
func (s *Service) disarm(ctx context.Context, rec *Record) {
	kind, _ := rec.nextTimer(s, time.Time{})
	_ = s.timers.disarm(context.WithoutCancel(ctx), rec.Key()+"."+kind)
}

// Approve adds the caller's approval to a pending approval and returns the
// record: approved once it has its required number of distinct approvals
// (RequiredApprovals, 1 unless the request or the tenant's rules ask for
// more), else still pending with the approval recorded. An approver who
// already approved is counted once: the call returns the record unchanged.
//
// It returns a *FieldError (ErrInvalidRequest) for bad input;
// ErrUnauthenticated or ErrIdentityMismatch (see Service.actor and
// IdentityMode); ErrNotFound; ErrSelfApproval when the caller requested it
// (always when more than one approval is required, else unless
// Config.AllowSelfApproval); ErrNotEligible when the tenant's rules do not
// name the caller; a *StateError matching ErrAlreadyDecided when it is no
// longer pending, or ErrExpired when now is past expires_at + grace (an
// expired approval can never be approved, even before its timer fires);
// ErrInvalidRules when the tenant's stored rules are broken; otherwise the
// jetstream error or *jsguard.TimeoutError, wrapped. A write that loses the
// compare-and-set to another writer re-reads and reports the real outcome.
func (s *Service) Approve(ctx context.Context, tenant string, in DecisionInput) (Record, error) {
	return s.decide(ctx, "approve", tenant, in.ID, "decided_by", in.DecidedBy, in.Reason, StatusApproved)
}

// Deny adds the caller's denial and returns the record: denied once it has
// its required number of distinct denials (RequiredDenials, 1 unless the
// tenant's rules ask for more). The requester may always deny, in effect
// withdrawing its request, and that denies at once; anyone else must be
// eligible under the tenant's rules. It returns the errors of Approve
// except ErrSelfApproval.
func (s *Service) Deny(ctx context.Context, tenant string, in DecisionInput) (Record, error) {
	return s.decide(ctx, "deny", tenant, in.ID, "decided_by", in.DecidedBy, in.Reason, StatusDenied)
}

// Cancel withdraws a pending approval and returns the cancelled record, with
// decided_by set to the canceller: the requester, or an eligible approver
// under the tenant's rules (anyone when it has none). It returns the errors
// of Deny.
func (s *Service) Cancel(ctx context.Context, tenant string, in CancelInput) (Record, error) {
	return s.decide(ctx, "cancel", tenant, in.ID, "cancelled_by", in.CancelledBy, in.Reason, StatusCancelled)
}

// requester returns who requested r: its recorded identity, or for older
// records the asserted requested_by.
func (r *Record) requester() *Identity {
	if r.Requester != nil {
		return r.Requester
	}
	return &Identity{Source: SourceAsserted, User: r.RequestedBy}
}

// votedBy reports whether who already cast one of votes.
func votedBy(votes []Vote, who *Identity) bool {
	k := principalKey(who)
	return slices.ContainsFunc(votes, func(v Vote) bool { return principalKey(v.Identity) == k })
}

func (s *Service) decide(ctx context.Context, op, tenant, id, byField, body, reason string, to Status) (Record, error) {
	if err := checkName("tenant", tenant); err != nil {
		return Record{}, err
	}
	if err := checkName("id", id); err != nil {
		return Record{}, err
	}
	if err := checkText(byField, body, false, MaxTextBytes); err != nil {
		return Record{}, err
	}
	if err := checkText("reason", reason, s.cfg.RequireReason, MaxReasonBytes); err != nil {
		return Record{}, err
	}
	key := tenant + "." + id
	by, who, err := s.actor(ctx, byField, body)
	if err != nil {
		return Record{}, fmt.Errorf("%s %s: %w", op, key, err)
	}
	ctx = withTenant(ctx, tenant)
	rules, err := s.TenantRules(ctx, tenant)
	if err != nil {
		return Record{}, fmt.Errorf("%s %s: %w", op, key, err)
	}
	for attempt := 1; ; attempt++ {
		rec, err := s.getRecent(ctx, key)
		if err != nil {
			return Record{}, fmt.Errorf("%s %s: %w", op, key, err)
		}
		if rec.Status.Terminal() {
			return Record{}, &StateError{Op: op, Record: rec, err: ErrAlreadyDecided}
		}
		now := s.now().UTC()
		if now.After(rec.Deadline(s.cfg.GracePeriod)) {
			return Record{}, &StateError{Op: op, Record: rec, err: ErrExpired}
		}
		self := who.Same(rec.requester())
		switch {
		case to == StatusApproved && self && (rec.requiredApprovals() > 1 || !s.cfg.AllowSelfApproval):
			return Record{}, fmt.Errorf("%s %s: %w: %s requested it", op, key, ErrSelfApproval, who)
		case to == StatusApproved && !rules.Eligible(who), to != StatusApproved && !self && !rules.Eligible(who):
			return Record{}, fmt.Errorf("%s %s: %w: the approver rules of %s do not name %s", op, key, ErrNotEligible, tenant, who)
		}
		next := rec
		next.Change = ""
		vote := Vote{By: by, Identity: who, At: now, Reason: reason}
		final := true
		switch to {
		case StatusApproved:
			if votedBy(rec.Approvals, who) {
				return rec, nil // counted once
			}
			next.Approvals = append(slices.Clone(rec.Approvals), vote)
			if len(next.Approvals) < rec.requiredApprovals() {
				next.Change, final = KindApprovalAdded, false
			}
		case StatusDenied:
			if !self && votedBy(rec.Denials, who) {
				return rec, nil
			}
			next.Denials = append(slices.Clone(rec.Denials), vote)
			if !self && len(next.Denials) < rec.requiredDenials() {
				next.Change, final = KindDenialAdded, false
			}
		}
		if final {
			next.Status, next.DecidedBy, next.Decider, next.DecidedAt, next.Reason = to, by, who, &now, reason
		}
		rev, err := s.update(ctx, &next, rec.Revision)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) && attempt < maxCASAttempts {
			s.casBackoff(ctx, attempt)
			continue // another writer won: re-read and report what happened
		}
		if err != nil {
			return Record{}, fmt.Errorf("%s %s: %w", op, key, err)
		}
		next.Revision = rev
		if !final {
			s.stats.votes.Add(1)
			return next, nil
		}
		s.finished(tenant, to)
		s.disarm(ctx, &next)
		return next, nil
	}
}

// Extend moves a pending approval's deadline later (see ExtendInput),
// re-arms its timers (a warning already sent is sent again before the new
// deadline) and returns the record. The new expires_at may be at most
// MaxTimeout after requested_at. Only an eligible approver may extend
// (anyone when the tenant has no rules), never the requester.
//
// It returns a *FieldError (ErrInvalidRequest) for bad input, a missing
// reason, no or both of extend_by and expires_at, or a deadline that is not
// later or beyond the bound; ErrUnauthenticated or ErrIdentityMismatch;
// ErrNotFound; ErrNotEligible; a *StateError matching ErrAlreadyDecided or
// ErrExpired (refused after expires_at + grace); ErrInvalidRules; otherwise
// the jetstream error or *jsguard.TimeoutError, wrapped. When the record
// was written but its timers were not re-armed, it still returns the
// record: the periodic sweep expires it at most SweepInterval after its
// new deadline.
func (s *Service) Extend(ctx context.Context, tenant string, in ExtendInput) (Record, error) {
	if err := checkName("tenant", tenant); err != nil {
		return Record{}, err
	}
	if err := checkName("id", in.ID); err != nil {
		return Record{}, err
	}
	if err := checkText("extended_by", in.ExtendedBy, false, MaxTextBytes); err != nil {
		return Record{}, err
	}
	if err := checkText("reason", in.Reason, true, MaxReasonBytes); err != nil {
		return Record{}, err
	}
	switch {
	case in.ExtendBy == 0 && in.ExpiresAt == nil:
		return Record{}, invalid("extend_by", "give extend_by or expires_at")
	case in.ExtendBy != 0 && in.ExpiresAt != nil:
		return Record{}, invalid("extend_by", "give extend_by or expires_at, not both")
	case in.ExtendBy < 0 || (in.ExtendBy > 0 && time.Duration(in.ExtendBy) < time.Second):
		return Record{}, invalid("extend_by", "%s must be at least 1s", time.Duration(in.ExtendBy))
	}
	key := tenant + "." + in.ID
	by, who, err := s.actor(ctx, "extended_by", in.ExtendedBy)
	if err != nil {
		return Record{}, fmt.Errorf("extend %s: %w", key, err)
	}
	ctx = withTenant(ctx, tenant)
	rules, err := s.TenantRules(ctx, tenant)
	if err != nil {
		return Record{}, fmt.Errorf("extend %s: %w", key, err)
	}
	for attempt := 1; ; attempt++ {
		rec, err := s.getRecent(ctx, key)
		if err != nil {
			return Record{}, fmt.Errorf("extend %s: %w", key, err)
		}
		if rec.Status.Terminal() {
			return Record{}, &StateError{Op: "extend", Record: rec, err: ErrAlreadyDecided}
		}
		now := s.now().UTC()
		if now.After(rec.Deadline(s.cfg.GracePeriod)) {
			return Record{}, &StateError{Op: "extend", Record: rec, err: ErrExpired}
		}
		if who.Same(rec.requester()) {
			return Record{}, fmt.Errorf("extend %s: %w: %s requested it and may not extend it", key, ErrNotEligible, who)
		}
		if !rules.Eligible(who) {
			return Record{}, fmt.Errorf("extend %s: %w: the approver rules of %s do not name %s", key, ErrNotEligible, tenant, who)
		}
		if len(rec.Extensions) >= MaxExtensions {
			return Record{}, invalid("id", "%s was extended %d times, the most an approval may be", key, MaxExtensions)
		}
		to, field := rec.ExpiresAt.Add(time.Duration(in.ExtendBy)), "extend_by"
		if in.ExpiresAt != nil {
			to, field = in.ExpiresAt.UTC(), "expires_at"
		}
		limit := rec.RequestedAt.Add(s.cfg.MaxTimeout)
		switch {
		case !to.After(rec.ExpiresAt):
			return Record{}, invalid(field, "the new deadline %s is not later than expires_at %s", to.Format(timeFormat), rec.ExpiresAt.Format(timeFormat))
		case to.After(limit):
			return Record{}, invalid(field, "the new deadline %s is beyond requested_at + the maximum timeout %s (%s)", to.Format(timeFormat), s.cfg.MaxTimeout, limit.Format(timeFormat))
		}
		next := rec
		next.ExpiresAt, next.Change = to, KindExtended
		next.Extensions = append(slices.Clone(rec.Extensions), Extension{By: by, Identity: who, At: now, From: rec.ExpiresAt, To: to, Reason: in.Reason})
		if next.WarnedAt != nil && s.warnScheduled(time.Duration(rec.Timeout)) && to.Add(-s.cfg.WarningBefore).After(now) {
			next.WarnedAt = nil // warn again before the new deadline
		}
		rev, err := s.update(ctx, &next, rec.Revision)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) && attempt < maxCASAttempts {
			s.casBackoff(ctx, attempt)
			continue
		}
		if err != nil {
			return Record{}, fmt.Errorf("extend %s: %w", key, err)
		}
		next.Revision = rev
		s.stats.extended.Add(1)
		// Re-arm: the live timer fires at the old deadline. A timer that
		// fires anyway finds the later deadline and is dropped (see
		// staleTimer); one that cannot be created is covered by the sweep.
		// An old timer firing while this runs removes the schedule on its
		// subject as it fires, which can take the new one of the same kind
		// with it; its fire then finds the later deadline and arms it
		// again (staleTimer).
		for _, kind := range []string{timerWarn, timerExpire} {
			_ = s.timers.disarm(context.WithoutCancel(ctx), key+"."+kind)
		}
		if _, err := s.armNext(context.WithoutCancel(ctx), &next, now); err != nil {
			s.log.Warn("extended approval's timer not armed; the sweep will expire it", "approval", key, "err", err)
		}
		return next, nil
	}
}

// finished accounts for an approval that left pending.
func (s *Service) finished(tenant string, to Status) {
	s.pending.release(tenant)
	s.stats.byStatus(to).Add(1)
	s.transition(tenant, to, false)
}

func (s *Service) transition(tenant string, to Status, warning bool) {
	if s.hooks.OnTransition != nil {
		s.hooks.OnTransition(tenant, to, warning)
	}
}

// Get returns the approval id of tenant. It returns a *FieldError
// (ErrInvalidRequest) for a malformed tenant or id, ErrNotFound, or the
// jetstream error or *jsguard.TimeoutError, wrapped. A pending record past
// its deadline is returned as stored until the expirer moves it; its
// Deadline tells whether a decision would still be accepted.
func (s *Service) Get(ctx context.Context, tenant, id string) (Record, error) {
	if err := checkName("tenant", tenant); err != nil {
		return Record{}, err
	}
	if err := checkName("id", id); err != nil {
		return Record{}, err
	}
	rec, err := s.getRecent(withTenant(ctx, tenant), tenant+"."+id)
	if err != nil {
		return Record{}, fmt.Errorf("get %s.%s: %w", tenant, id, err)
	}
	return rec, nil
}

// get reads a record under ApprovalCheck; a missing key is ErrNotFound.
func (s *Service) get(ctx context.Context, key string) (Record, error) {
	e, err := jsguard.DoValue(ctx, s.g, jsguard.ApprovalCheck, "approval get "+s.cfg.RecordsBucket+"/"+key,
		func(ctx context.Context) (jetstream.KeyValueEntry, error) { return s.records.Raw().Get(ctx, key) })
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Record{}, ErrNotFound
	}
	if err != nil {
		return Record{}, err
	}
	return decodeRecord(e.Value(), e.Revision())
}

// update writes rec if the record is still at revision last, under
// ApprovalGrant. It returns an error matching ErrKeyRevisionMismatch when
// another writer won.
func (s *Service) update(ctx context.Context, rec *Record, last uint64) (uint64, error) {
	key := rec.Key()
	return jsguard.DoValue(ctx, s.g, jsguard.ApprovalGrant, "approval update "+s.cfg.RecordsBucket+"/"+key,
		func(ctx context.Context) (uint64, error) {
			return s.records.Raw().Update(ctx, key, encodeRecord(rec), last)
		})
}

// withTenant puts tenant into ctx for audit events unless ctx carries one.
func withTenant(ctx context.Context, tenant string) context.Context {
	if jsguard.Tenant(ctx) != "" {
		return ctx
	}
	return jsguard.WithTenant(ctx, tenant)
}

func encodeRecord(r *Record) []byte {
	c := *r
	c.Revision = 0 // the bucket's revision is authoritative
	b, err := json.Marshal(&c)
	if err != nil {
		panic(fmt.Sprintf("kvapprovals: encode record: %v", err)) // every field is plain data
	}
	return b
}

func (s *Service) validateRequest(tenant string, in *RequestInput) (time.Duration, error) {
	if err := checkName("tenant", tenant); err != nil {
		return 0, err
	}
	if in.ID != "" {
		if err := checkName("id", in.ID); err != nil {
			return 0, err
		}
	}
	if err := checkText("session_id", in.SessionID, true, MaxTextBytes); err != nil {
		return 0, err
	}
	if err := checkText("requested_by", in.RequestedBy, false, MaxTextBytes); err != nil {
		return 0, err
	}
	if in.RequiredApprovals < 0 || in.RequiredApprovals > MaxRequiredApprovals {
		return 0, invalid("required_approvals", "%d is out of range: must be 1-%d (0: the tenant's rule, else 1)", in.RequiredApprovals, MaxRequiredApprovals)
	}
	if err := checkText("operator_id", in.OperatorID, false, MaxTextBytes); err != nil {
		return 0, err
	}
	details, err := normDetails(in.Details, s.cfg.MaxDetailsBytes)
	if err != nil {
		return 0, err
	}
	in.Details = details
	timeout := time.Duration(in.Timeout)
	if timeout == 0 {
		timeout = s.cfg.DefaultTimeout
	}
	if timeout < s.cfg.MinTimeout || timeout > s.cfg.MaxTimeout {
		return 0, invalid("timeout", "%s is out of range: must be >= %s and <= %s", timeout, s.cfg.MinTimeout, s.cfg.MaxTimeout)
	}
	return timeout, nil
}

func checkName(field, v string) error {
	if !nameRe.MatchString(v) {
		return invalid(field, "%q must be 1-64 characters of A-Z, a-z, 0-9, _ and -", truncate(v, 80))
	}
	if field == "tenant" && reservedTenants[v] {
		return invalid(field, "%q is reserved: guardian.v1.%s.> holds guardian's own subjects", v, v)
	}
	return nil
}

// reservedTenants are the subject tokens under guardian.v1 that guardian
// uses itself; a tenant of that name would put its requests on the audit or
// events streams' subjects.
var reservedTenants = map[string]bool{"audit": true, "events": true, "alerts": true, "policy": true}

func checkText(field, v string, required bool, max int) error {
	switch {
	case v == "" && required:
		return invalid(field, "is required")
	case len(v) > max:
		return invalid(field, "%d bytes exceeds the maximum %d", len(v), max)
	case !utf8.ValidString(v):
		return invalid(field, "is not valid UTF-8")
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// normDetails returns details compacted, nil when absent or null; it must
// be a JSON object of at most max bytes.
func normDetails(d json.RawMessage, max int) (json.RawMessage, error) {
	if len(d) == 0 {
		return nil, nil
	}
	if len(d) > MaxInputBytes {
		return nil, invalid("details", "%d bytes exceeds the maximum %d", len(d), MaxInputBytes)
	}
	var v any
	if err := json.Unmarshal(d, &v); err != nil {
		return nil, invalid("details", "is not valid JSON: %v", err)
	}
	switch v.(type) {
	case nil:
		return nil, nil
	case map[string]any:
	default:
		return nil, invalid("details", "must be a JSON object")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, d); err != nil {
		return nil, invalid("details", "is not valid JSON: %v", err)
	}
	if buf.Len() > max {
		return nil, invalid("details", "%d bytes exceeds the maximum %d", buf.Len(), max)
	}
	return json.RawMessage(buf.Bytes()), nil
}
