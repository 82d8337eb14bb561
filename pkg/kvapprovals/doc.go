// Package kvapprovals implements human approvals that expire, with all state
// in JetStream and none in memory.
//
// An approval is a record in the records bucket (default GUARDIAN_APPROVALS,
// key <tenant>.<id>) whose every transition is one compare-and-set write. Its
// deadline is a chain of timers, JetStream message schedules in the timers
// stream (GUARDIAN_TIMERS), one armed at a time: <tenant>.<id>.warn fires
// WarningBefore expires_at, and <tenant>.<id>.expire at expires_at + grace
// (the request arms the first of them with the record, the expirer the
// expire timer when it sends the warning). When a timer's instant comes the
// server stores a fire message on $TIMERS.<stream>.fire.<key>; the Expirer,
// a durable consumer on those subjects shared by all replicas, turns it
// into a warned_at stamp or the expired transition. The timers stream is a
// work queue: a fire leaves it when the Expirer acknowledges it, and waits
// for it however long it is down. The Notifier, a durable consumer on the records bucket's
// stream, turns each record revision into one lifecycle event on the events
// stream (GUARDIAN_EVENTS, subjects guardian.v1.events.<tenant>.<kind>) and
// each expiry into one TIMEOUT_APPROVAL_EXPIRED audit event.
//
// Enforcement never waits for a timer: a decision after expires_at + grace is
// refused by the clock (ErrExpired) even before the timer fires, and a
// lost race between a decision and the expirer ends in exactly one terminal
// state because both write with the revision they read.
//
// Every NATS call goes through jsguard: reads under APPROVAL_CHECK, decision
// and expiry writes under APPROVAL_GRANT, request writes under KV_PUT, timer
// schedules and event publishes under NATS_PUBLISH, timer removals under
// KV_DELETE, webhooks under
// API_REQUEST. Message acks are fire-and-forget publishes and are not
// guarded.
//
// Errors map onto API statuses: ErrInvalidRequest 400, ErrSelfApproval 403,
// ErrNotFound 404, ErrAlreadyDecided and ErrConflict 409, ErrExpired 410,
// ErrTooManyPending 429.
package kvapprovals
