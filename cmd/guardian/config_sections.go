package main

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// approvalConfig is GUARDIAN_APPROVAL_*.
type approvalConfig struct {
	DefaultTimeout    time.Duration `split_words:"true" default:"30m" desc:"timeout of a request that names none (>= min timeout, <= max timeout)"`
	MinTimeout        time.Duration `split_words:"true" default:"1s" desc:"shortest timeout a request may ask for (>=1s)"`
	MaxTimeout        time.Duration `split_words:"true" default:"2h" desc:"longest timeout a request may ask for (>= default, <=24h)"`
	GracePeriod       time.Duration `split_words:"true" default:"30s" desc:"how long after expires_at a decision is still accepted (0-60s)"`
	SendWarnings      bool          `split_words:"true" default:"true" desc:"publish a warning event before an approval expires"`
	WarningBefore     time.Duration `split_words:"true" default:"5m" desc:"how long before expiry the warning fires, only for longer timeouts (>=1s)"`
	MaxPending        int           `split_words:"true" default:"10000" desc:"pending approvals allowed per tenant, more are refused with 429 (>=0; 0: no cap)"`
	Retention         time.Duration `split_words:"true" default:"168h" desc:"how long a record is kept after its last change (>= max timeout + grace + 10m; what exceeds max timeout + grace is how long an outage of every expirer pending records survive)"`
	MaxOutage         time.Duration `split_words:"true" default:"24h" desc:"expirer downtime after which its start logs an outage; fired timers wait however long it is down (>=1s)"`
	SweepInterval     time.Duration `split_words:"true" default:"1m" desc:"how often one guardian checks the records' changes since its last check (each 8s after it was made) and re-arms the timer of any pending approval that has none (whole seconds, 1s-1h)"`
	RequireReason     bool          `split_words:"true" default:"false" desc:"refuse decisions without a reason"`
	AllowSelfApproval bool          `split_words:"true" default:"false" desc:"let requested_by approve their own approval (never when more than one approval is required)"`
	WebhookURL        string        `split_words:"true" desc:"POST every lifecycle event as JSON to this http(s) URL (optional)" secret:"url"`
}

// auditConfig is GUARDIAN_AUDIT_*.
type auditConfig struct {
	MaxAge         time.Duration `split_words:"true" default:"2160h" desc:"how long audit events are kept, 90 days (0: forever, else >= duplicates)"`
	Duplicates     time.Duration `split_words:"true" default:"2m" desc:"window in which a re-sent event id is stored once (1s-24h)"`
	SpoolMaxBytes  int64         `split_words:"true" default:"67108864" desc:"size limit of the on-disk spool for events NATS could not take, 64 MiB (1 KiB-1 TiB)"`
	SealSeed       string        `split_words:"true" desc:"nkeys account or user seed (SA... or SU...) that signs audit seals; empty: no seals" secret:"true"`
	SealEvery      int           `split_words:"true" default:"10000" desc:"seal after this many events (1-50000)"`
	SealInterval   time.Duration `split_words:"true" default:"60s" desc:"seal at least this often when events arrive (10ms-24h)"`
	AlertWindow    time.Duration `split_words:"true" default:"1m" desc:"window over which timeout rates are measured (1s-24h)"`
	AlertThreshold int           `split_words:"true" default:"100" desc:"events of one code per window that raise an alert (0: off, up to 1000000)"`
}

// approvalVars names the variable behind each kvapprovals.Config field that
// the environment sets.
var approvalVars = map[string]string{
	"DefaultTimeout":      "GUARDIAN_APPROVAL_DEFAULT_TIMEOUT",
	"MinTimeout":          "GUARDIAN_APPROVAL_MIN_TIMEOUT",
	"MaxTimeout":          "GUARDIAN_APPROVAL_MAX_TIMEOUT",
	"GracePeriod":         "GUARDIAN_APPROVAL_GRACE_PERIOD",
	"SendTimeoutWarnings": "GUARDIAN_APPROVAL_SEND_WARNINGS",
	"WarningBefore":       "GUARDIAN_APPROVAL_WARNING_BEFORE",
	"MaxPending":          "GUARDIAN_APPROVAL_MAX_PENDING",
	"Retention":           "GUARDIAN_APPROVAL_RETENTION",
	"MaxOutage":           "GUARDIAN_APPROVAL_MAX_OUTAGE",
	"SweepInterval":       "GUARDIAN_APPROVAL_SWEEP_INTERVAL",
	"RequireReason":       "GUARDIAN_APPROVAL_REQUIRE_REASON",
	"AllowSelfApproval":   "GUARDIAN_APPROVAL_ALLOW_SELF_APPROVAL",
	"Identity":            "GUARDIAN_IDENTITY",
	"Replicas":            "GUARDIAN_REPLICAS",
}

// auditVars names the variable behind each auditstream.Config field that
// the environment sets.
var auditVars = map[string]string{
	"MaxAge":         "GUARDIAN_AUDIT_MAX_AGE",
	"Duplicates":     "GUARDIAN_AUDIT_DUPLICATES",
	"SpoolMaxBytes":  "GUARDIAN_AUDIT_SPOOL_MAX_BYTES",
	"SealSeed":       "GUARDIAN_AUDIT_SEAL_SEED",
	"SealEvery":      "GUARDIAN_AUDIT_SEAL_EVERY",
	"SealInterval":   "GUARDIAN_AUDIT_SEAL_INTERVAL",
	"AlertWindow":    "GUARDIAN_AUDIT_ALERT_WINDOW",
	"AlertThreshold": "GUARDIAN_AUDIT_ALERT_THRESHOLD",
	"Replicas":       "GUARDIAN_REPLICAS",
}

// validateApproval checks GUARDIAN_APPROVAL_* by building the kvapprovals
// config and validating it; the error names the variable, its value and the
// allowed range.
func (c *config) validateApproval() error {
	if u := c.Approval.WebhookURL; u != "" {
		if err := checkWebhookURL(u); err != nil {
			return fmt.Errorf("GUARDIAN_APPROVAL_WEBHOOK_URL=%s: %w", redactURL(u), err)
		}
	}
	k := c.approvalsConfig()
	if err := k.Validate(); err != nil {
		return translateConfigError(err, kvapprovals.ErrInvalidConfig, approvalVars, nil)
	}
	return nil
}

// validateAudit checks GUARDIAN_AUDIT_* by building the auditstream config
// and validating it; the error names the variable, its value (secrets
// redacted) and the allowed range.
func (c *config) validateAudit() error {
	a := c.auditStream()
	if err := a.Validate(); err != nil {
		return translateConfigError(err, auditstream.ErrInvalidConfig, auditVars, map[string]bool{"SealSeed": true})
	}
	return nil
}

// checkWebhookURL accepts an absolute http or https URL with a host.
func checkWebhookURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL: must be an http:// or https:// URL, like https://hooks.example.com/guardian")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("must be an http:// or https:// URL, like https://hooks.example.com/guardian")
	}
	if u.Host == "" {
		return errors.New("must name a host, like https://hooks.example.com/guardian")
	}
	return nil
}

// translateConfigError turns a package's Validate error, "<sentinel>:
// <Field> <value> <what is allowed>", into "<VARIABLE>=<value>: <what is
// allowed>", with every field name in the text replaced by its variable.
// The value is the variable as set in the environment, or the package's
// rendering of the default; a secret shows [redacted].
func translateConfigError(err, sentinel error, vars map[string]string, secret map[string]bool) error {
	msg := strings.TrimPrefix(err.Error(), sentinel.Error()+": ")
	field, rest, _ := strings.Cut(msg, " ")
	field = strings.TrimSuffix(field, ":")
	name, ok := vars[field]
	if !ok {
		// A field the environment does not set: report it as it is.
		return fmt.Errorf("%s: %w", strings.Join(sortedValues(vars), " / "), err)
	}
	var value string
	if secret[field] {
		// The package says what is wrong with a secret, never its value.
		value = "[redacted]"
	} else {
		shown, after, _ := strings.Cut(rest, " ")
		rest = after
		if v, set := os.LookupEnv(name); set {
			value = v
		} else {
			value = shown + " (default)"
		}
	}
	rest = strings.TrimPrefix(rest, "is ")
	rest = fieldRE(vars).ReplaceAllStringFunc(rest, func(f string) string { return vars[f] })
	return fmt.Errorf("%s=%s: %s", name, value, rest)
}

// fieldRE matches the field names of vars as whole words.
func fieldRE(vars map[string]string) *regexp.Regexp {
	names := make([]string, 0, len(vars))
	for f := range vars {
		names = append(names, regexp.QuoteMeta(f))
	}
	slices.Sort(names)
	return regexp.MustCompile(`\b(` + strings.Join(names, "|") + `)\b`)
}

func sortedValues(m map[string]string) []string {
	out := slices.Sorted(maps.Values(m))
	return slices.Compact(out)
}
