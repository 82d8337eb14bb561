package kvapprovals

import (
	"errors"
	"fmt"
	"regexp"
	"time"
)

// ErrInvalidConfig is wrapped by every error Config.Validate returns.
var ErrInvalidConfig = errors.New("kvapprovals: invalid config")

// Config holds the approval settings and the names of the JetStream objects
// that hold approval state. Start from DefaultConfig: the zero Config is not
// valid. A Config is a plain value.
type Config struct {
	// DefaultTimeout applies when a request names no timeout (30m).
	DefaultTimeout time.Duration
	// MinTimeout is the shortest timeout a request may ask for (1s; at
	// least 1s). A timer names its instant to the millisecond; the server
	// fires it then or up to its scheduler's 250 ms period later.
	MinTimeout time.Duration
	// MaxTimeout is the longest timeout a request may ask for (120m; at
	// least DefaultTimeout, at most 24h).
	MaxTimeout time.Duration
	// GracePeriod protects against premature expiry: a decision is refused
	// only after expires_at + GracePeriod, and the timer fires then (30s;
	// 0–60s).
	GracePeriod time.Duration
	// SendTimeoutWarnings schedules a warning WarningBefore the deadline for
	// approvals whose timeout is longer than WarningBefore (true).
	SendTimeoutWarnings bool
	// WarningBefore is how long before expires_at the warning fires (5m;
	// at least 1s).
	WarningBefore time.Duration
	// MaxPending caps the pending approvals of one tenant (10000; 0 means no
	// cap). Over it Request fails with ErrTooManyPending. The count is the
	// tenant's armed timers (one per pending approval), listed at most once
	// a second per tenant and process and adjusted locally in between, so
	// several replicas together may briefly admit a few more than the cap.
	// Above 100,000 armed timers in a tenant the listing comes in pages,
	// and approvals requested or decided meanwhile may be missed.
	MaxPending int
	// RequireReason makes the reason mandatory for Approve, Deny and Cancel.
	RequireReason bool
	// AllowSelfApproval lets requested_by approve its own request (false).
	AllowSelfApproval bool
	// Identity says where the actor of a call comes from (asserted; see
	// IdentityMode).
	Identity IdentityMode
	// MaxDetailsBytes bounds a request's details object (16 KiB; 1 B–512 KiB).
	MaxDetailsBytes int
	// Retention is how long a record lives after its last change: the
	// records bucket's MaxAge (7 days; at least MaxTimeout + GracePeriod +
	// 10m, so no record disappears before it is finished). What exceeds
	// MaxTimeout + GracePeriod is also the longest outage of every expirer
	// that a pending approval's record survives.
	Retention time.Duration
	// MaxOutage is how long the expirer may be down before its start
	// reports an outage (a log line, Hooks.OnOutage and Stats.Outages; 24h;
	// at least 1s). No timer is lost however long it is down: a fired timer
	// waits in the timers stream until the expirer acknowledges it.
	MaxOutage time.Duration
	// SweepInterval is how often one replica runs the periodic sweep
	// (1m; 1s–1h, whole seconds). Each sweep reads the records' changes
	// since the previous one, each once, 8s after it was made, and arms
	// the timer of every approval still pending that has none (written by
	// a request that failed halfway, or removed behind guardian's back
	// before the check). Such an approval then expires at its deadline, or
	// within a second of the check when that is later: at most
	// SweepInterval plus 8s plus one sweep after the change. Its cost
	// follows the rate of changes, not Retention. A timer removed by hand
	// after its record was checked is found by Expirer.Sweep, which runs
	// when an expirer starts.
	SweepInterval time.Duration
	// EventsDuplicates is the events stream's duplicate window; a lifecycle
	// event redelivered within it is stored once (20m; 1m–Retention). It
	// must exceed the notifier's redelivery horizon (AckWait plus webhook
	// backoff).
	EventsDuplicates time.Duration
	// Replicas of the buckets, the timers stream and the events stream
	// (1; 1–5).
	Replicas int

	// RecordsBucket holds the records (GUARDIAN_APPROVALS).
	RecordsBucket string
	// TimersStream holds the timers, as message schedules on subjects
	// $TIMERS.<TimersStream>.> (GUARDIAN_TIMERS).
	TimersStream string
	// EventsStream holds the lifecycle events (GUARDIAN_EVENTS).
	EventsStream string
	// EventsSubjectPrefix starts every lifecycle event subject
	// (guardian.v1.events); events go to <prefix>.<tenant>.<kind>.
	EventsSubjectPrefix string
	// ExpirerDurable and NotifierDurable name the durable consumers that all
	// replicas share (guardian-expirer, guardian-notifier).
	ExpirerDurable  string
	NotifierDurable string
}

// DefaultConfig returns the defaults listed on each Config field.
func DefaultConfig() Config {
	return Config{
		DefaultTimeout:      30 * time.Minute,
		MinTimeout:          time.Second,
		MaxTimeout:          120 * time.Minute,
		GracePeriod:         30 * time.Second,
		SendTimeoutWarnings: true,
		WarningBefore:       5 * time.Minute,
		MaxPending:          10000,
		Identity:            IdentityAsserted,
		MaxDetailsBytes:     16 << 10,
		Retention:           7 * 24 * time.Hour,
		MaxOutage:           24 * time.Hour,
		SweepInterval:       time.Minute,
		EventsDuplicates:    20 * time.Minute,
		Replicas:            1,
		RecordsBucket:       "GUARDIAN_APPROVALS",
		TimersStream:        "GUARDIAN_TIMERS",
		EventsStream:        "GUARDIAN_EVENTS",
		EventsSubjectPrefix: "guardian.v1.events",
		ExpirerDurable:      "guardian-expirer",
		NotifierDurable:     "guardian-notifier",
	}
}

// Limits of Config values.
const (
	maxMaxTimeout      = 24 * time.Hour
	maxGracePeriod     = 60 * time.Second
	maxDetailsLimit    = 512 << 10
	maxReplicas        = 5
	retentionHeadroom  = 10 * time.Minute
	minEventsDuplicate = time.Minute
)

var (
	nameRe    = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	subjectRe = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

// Validate checks c. The error wraps ErrInvalidConfig and names the first bad
// field and its allowed range.
func (c *Config) Validate() error {
	bad := func(field string, v any, rng string) error {
		return fmt.Errorf("%w: %s %v is out of range: %s", ErrInvalidConfig, field, v, rng)
	}
	switch {
	case c.MinTimeout < time.Second:
		return bad("MinTimeout", c.MinTimeout, "must be >= 1s")
	case c.DefaultTimeout < c.MinTimeout:
		return bad("DefaultTimeout", c.DefaultTimeout, fmt.Sprintf("must be >= MinTimeout (%s)", c.MinTimeout))
	case c.MaxTimeout < c.DefaultTimeout || c.MaxTimeout > maxMaxTimeout:
		return bad("MaxTimeout", c.MaxTimeout, fmt.Sprintf("must be >= DefaultTimeout (%s) and <= %s", c.DefaultTimeout, maxMaxTimeout))
	case c.GracePeriod < 0 || c.GracePeriod > maxGracePeriod:
		return bad("GracePeriod", c.GracePeriod, fmt.Sprintf("must be >= 0 and <= %s", maxGracePeriod))
	case c.SendTimeoutWarnings && c.WarningBefore < time.Second:
		return bad("WarningBefore", c.WarningBefore, "must be >= 1s")
	case c.MaxPending < 0:
		return bad("MaxPending", c.MaxPending, "must be >= 0 (0: no cap)")
	case c.MaxDetailsBytes < 1 || c.MaxDetailsBytes > maxDetailsLimit:
		return bad("MaxDetailsBytes", c.MaxDetailsBytes, fmt.Sprintf("must be >= 1 and <= %d", maxDetailsLimit))
	case c.Retention < c.MaxTimeout+c.GracePeriod+retentionHeadroom:
		return bad("Retention", c.Retention, fmt.Sprintf("must be >= MaxTimeout + GracePeriod + 10m (%s)", c.MaxTimeout+c.GracePeriod+retentionHeadroom))
	case c.MaxOutage < time.Second:
		return bad("MaxOutage", c.MaxOutage, "must be >= 1s")
	case c.SweepInterval < time.Second || c.SweepInterval > time.Hour || c.SweepInterval%time.Second != 0:
		return bad("SweepInterval", c.SweepInterval, "must be whole seconds, >= 1s and <= 1h")
	case c.EventsDuplicates < minEventsDuplicate || c.EventsDuplicates > c.Retention:
		return bad("EventsDuplicates", c.EventsDuplicates, fmt.Sprintf("must be >= %s and <= Retention (%s)", minEventsDuplicate, c.Retention))
	case c.Replicas < 1 || c.Replicas > maxReplicas:
		return bad("Replicas", c.Replicas, fmt.Sprintf("must be >= 1 and <= %d", maxReplicas))
	case c.Identity != IdentityAsserted && c.Identity != IdentityRequired:
		return bad("Identity", fmt.Sprintf("%q", c.Identity), fmt.Sprintf("must be %q or %q", IdentityAsserted, IdentityRequired))
	}
	for _, f := range []struct{ name, v string }{
		{"RecordsBucket", c.RecordsBucket}, {"TimersStream", c.TimersStream}, {"EventsStream", c.EventsStream},
		{"ExpirerDurable", c.ExpirerDurable}, {"NotifierDurable", c.NotifierDurable},
	} {
		if !nameRe.MatchString(f.v) {
			return fmt.Errorf("%w: %s %q must match %s", ErrInvalidConfig, f.name, f.v, nameRe)
		}
	}
	if c.TimersStream == "KV_"+c.RecordsBucket || c.TimersStream == c.EventsStream {
		return fmt.Errorf("%w: TimersStream %q must differ from EventsStream and from KV_<RecordsBucket>", ErrInvalidConfig, c.TimersStream)
	}
	if !subjectRe.MatchString(c.EventsSubjectPrefix) {
		return fmt.Errorf("%w: EventsSubjectPrefix %q must be dot-separated tokens of [A-Za-z0-9_-]", ErrInvalidConfig, c.EventsSubjectPrefix)
	}
	return nil
}
