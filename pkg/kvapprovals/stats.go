package kvapprovals

import "sync/atomic"

// Stats counts what this process did since Open, for metrics. Transitions
// are counted by the process that wrote them, so the sum over replicas is the
// cluster's total.
type Stats struct {
	Requested uint64 // new pending approvals written
	Approved  uint64
	Denied    uint64
	Cancelled uint64
	Expired   uint64 // expired by this process's expirer or sweep
	Warned    uint64 // warning stamps written by the expirer
	// TimersRepaired counts timers re-created: by a retried request, the
	// start sweep, or a periodic sweep that found a pending approval
	// without one.
	TimersRepaired uint64
	// EventsPublished counts lifecycle events the notifier published
	// (a redelivered event that JetStream dropped as a duplicate included).
	EventsPublished uint64
	// AuditEvents counts TIMEOUT_APPROVAL_EXPIRED and AUDIT_APPROVAL_EXTENDED
	// events handed to the guard.
	AuditEvents uint64
	// WebhookDelivered and WebhookFailed count webhook deliveries that
	// succeeded and that were given up after the last attempt (each of
	// those is a notification_failed event).
	WebhookDelivered uint64
	WebhookFailed    uint64
	// ConsumeErrors counts consumer errors and messages that had to be
	// redelivered because processing failed.
	ConsumeErrors uint64
	// Outages counts outage reports (see Outage).
	Outages uint64
	// Sweeps counts periodic sweeps this process ran (see
	// Config.SweepInterval).
	Sweeps uint64
	// SweepChecked counts the records' changes the periodic sweeps read
	// (each change once, see Config.SweepInterval).
	SweepChecked uint64
	// Extended counts extensions written; Votes counts approvals and
	// denials recorded without deciding (N-of-M).
	Extended uint64
	Votes    uint64
	// TimersHeld counts fired timers the expirer held in memory until
	// their instant, because they came ahead of it (see Expirer).
	TimersHeld uint64
}

type stats struct {
	requested, approved, denied, cancelled, expired, warned, repaired  atomic.Uint64
	published, audit, webhookOK, webhookFailed, consumeErrors, outages atomic.Uint64
	sweeps, sweepChecked, extended, votes, held                        atomic.Uint64
}

func (s *stats) byStatus(st Status) *atomic.Uint64 {
	switch st {
	case StatusApproved:
		return &s.approved
	case StatusDenied:
		return &s.denied
	case StatusCancelled:
		return &s.cancelled
	case StatusExpired:
		return &s.expired
	}
	return &s.requested
}

// Stats returns a snapshot of the counters. It is safe for concurrent use.
func (s *Service) Stats() Stats {
	t := &s.stats
	return Stats{
		Requested: t.requested.Load(), Approved: t.approved.Load(), Denied: t.denied.Load(),
		Cancelled: t.cancelled.Load(), Expired: t.expired.Load(), Warned: t.warned.Load(),
		TimersRepaired: t.repaired.Load(), EventsPublished: t.published.Load(), AuditEvents: t.audit.Load(),
		WebhookDelivered: t.webhookOK.Load(), WebhookFailed: t.webhookFailed.Load(),
		ConsumeErrors: t.consumeErrors.Load(), Outages: t.outages.Load(), Sweeps: t.sweeps.Load(),
		SweepChecked: t.sweepChecked.Load(), Extended: t.extended.Load(), Votes: t.votes.Load(),
		TimersHeld: t.held.Load(),
	}
}
