package main

import (
	"fmt"
	"time"
)

// approvalConfig is GUARDIAN_APPROVAL_*.
type approvalConfig struct {
	DefaultTimeout    time.Duration `split_words:"true" default:"30m" desc:"timeout of a request that names none"`
	MinTimeout        time.Duration `split_words:"true" default:"1s" desc:"shortest timeout a request may ask for (>=1s, the NATS TTL floor)"`
	MaxTimeout        time.Duration `split_words:"true" default:"2h" desc:"longest timeout a request may ask for (>= default, <=24h)"`
	GracePeriod       time.Duration `split_words:"true" default:"30s" desc:"how long after expires_at a decision is still accepted (0-60s)"`
	SendWarnings      bool          `split_words:"true" default:"true" desc:"publish a warning event before an approval expires"`
	WarningBefore     time.Duration `split_words:"true" default:"5m" desc:"how long before expiry the warning fires (only for longer timeouts)"`
	MaxPending        int           `split_words:"true" default:"10000" desc:"pending approvals allowed per tenant; more are refused with 429"`
	Retention         time.Duration `split_words:"true" default:"168h" desc:"how long finished records are kept (>= max timeout + grace + 1h)"`
	MaxOutage         time.Duration `split_words:"true" default:"24h" desc:"longest expirer outage that loses no timer (the timers bucket's marker TTL)"`
	RequireReason     bool          `split_words:"true" default:"false" desc:"refuse decisions without a reason"`
	AllowSelfApproval bool          `split_words:"true" default:"false" desc:"let requested_by decide their own approval"`
	WebhookURL        string        `split_words:"true" desc:"POST every lifecycle event as JSON to this URL (optional)"`
}

func (a *approvalConfig) validate() error {
	return nil
}

// auditConfig is GUARDIAN_AUDIT_*.
type auditConfig struct {
	MaxAge         time.Duration `split_words:"true" default:"2160h" desc:"how long audit events are kept (90 days)"`
	Duplicates     time.Duration `split_words:"true" default:"2m" desc:"window in which a re-sent event id is stored once"`
	SpoolMaxBytes  int64         `split_words:"true" default:"67108864" desc:"size limit of the on-disk spool for events NATS could not take (64 MiB)"`
	SealSeed       string        `split_words:"true" desc:"nkey seed (SU...) that signs audit seals; empty: no seals" secret:"true"`
	SealEvery      int           `split_words:"true" default:"10000" desc:"seal after this many events"`
	SealInterval   time.Duration `split_words:"true" default:"60s" desc:"seal at least this often when events arrive"`
	AlertWindow    time.Duration `split_words:"true" default:"1m" desc:"window over which timeout rates are measured"`
	AlertThreshold int           `split_words:"true" default:"100" desc:"events of one code per window that raise an alert; 0 disables"`
}

func (a *auditConfig) validate() error {
	_ = fmt.Sprint
	return nil
}
