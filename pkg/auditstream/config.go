package auditstream

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// Sentinel errors. Every error the package returns for these conditions
// wraps one of them; test with errors.Is.
var (
	// ErrInvalidConfig is wrapped by Config.Validate and by every
	// constructor given a bad Config; the message names the field and its
	// allowed range.
	ErrInvalidConfig = errors.New("auditstream: invalid config")
	// ErrIncompatibleStream is returned by Ensure when the existing stream
	// cannot be used as the Config asks: other subjects, storage or
	// retention policy, or a weaker retention (e.g. a shorter MaxAge) whose
	// update is refused; the message names each setting with its stored
	// and wanted value.
	ErrIncompatibleStream = errors.New("auditstream: existing stream is incompatible")
	// ErrInvalidEvent is returned by Emit and Config.Subject for an event
	// whose code is not a TIMEOUT_[A-Z0-9_]+ audit code.
	ErrInvalidEvent = errors.New("auditstream: invalid event")
	// ErrSpoolFull is returned by Emit when NATS could not take an event
	// and the spool had no room for it; the event is counted as dropped.
	ErrSpoolFull = errors.New("auditstream: spool full")
	// ErrSpoolLocked is returned by NewPublisher when another Publisher
	// (in this or another process) holds the spool directory.
	ErrSpoolLocked = errors.New("auditstream: spool directory in use")
	// ErrClosed is returned by Emit after Close.
	ErrClosed = errors.New("auditstream: publisher closed")
	// ErrInvalidFilter is returned by Tail and Stats for a bad tenant,
	// code or window.
	ErrInvalidFilter = errors.New("auditstream: invalid filter")
	// ErrMalformedEvent is yielded by Tail for a message whose data is not
	// an audit event; it concerns that message only.
	ErrMalformedEvent = errors.New("auditstream: malformed event")
	// ErrInvalidKey is returned by Verify and VerifyExport for a public key
	// that is not an nkeys account or user public key.
	ErrInvalidKey = errors.New("auditstream: invalid public key")
	// ErrInvalidExport is returned by VerifyExport for input that is not an
	// export: a line that does not parse, a sequence of 0, a line too long.
	ErrInvalidExport = errors.New("auditstream: invalid export")
	// ErrTampered is wrapped by Report.Err when verification found a
	// problem.
	ErrTampered = errors.New("auditstream: audit trail failed verification")
	// ErrIncomplete is wrapped by Report.Err when a verification ran out
	// of time before it covered the whole trail and found no problem in
	// what it covered.
	ErrIncomplete = errors.New("auditstream: verification aborted before the end of the trail")
)

// NoTenant is the subject token that stands for "no tenant": an event whose
// tenant_id is empty goes to guardian.v1.audit._none.<CODE>. The tenant id
// "_none" itself is reserved and filed the same way.
const NoTenant = "_none"

// Config describes the audit stream and the parts that work on it. It is a
// plain value; DefaultConfig returns the defaults and Validate checks it.
type Config struct {
	// Stream is the stream name (default GUARDIAN_AUDIT).
	Stream string
	// SubjectPrefix starts every subject of the stream (default
	// guardian.v1.audit); the stream captures SubjectPrefix + ".*.*" (events)
	// and the seal subject, and nothing else: guardian.v1.audit.report is the
	// service's request subject, not part of the stream.
	SubjectPrefix string
	// Replicas is the stream's replica count, 1..5 (default 1; use 3 in
	// a cluster).
	Replicas int
	// MaxAge is how long events are kept at least (default 90 days); 0
	// keeps them forever. When set it must be at least Duplicates. Ensure
	// keeps a longer MaxAge it finds on the stream, and never shortens it.
	MaxAge time.Duration
	// Duplicates is the window in which a re-sent event id is stored once
	// (default 2 minutes), 1s..24h.
	Duplicates time.Duration

	// SpoolDir is where the Publisher keeps events NATS could not take.
	// NewPublisher requires it; the other parts ignore it.
	SpoolDir string
	// SpoolMaxBytes bounds the spool on disk (default 64 MiB), 1 KiB..1 TiB.
	SpoolMaxBytes int64
	// MaxInFlight bounds the asynchronous publishes awaiting an ack, for
	// live events and separately for the drainer (default 1024), 1..65536.
	MaxInFlight int

	// SealEvery seals after this many events (default 10,000), 1..50,000.
	// A seal carries about 11 bytes per event (an 8-byte digest in
	// base64), so SealEvery × 11 B must stay below the server's
	// max_payload (1 MiB by default).
	SealEvery int
	// SealInterval seals at least this often while events arrive
	// (default 60s), 10ms..24h.
	SealInterval time.Duration
	// SealSeed is an nkeys account (SA…) or user (SU…) seed that signs
	// seals. Optional: without it there is no Sealer.
	SealSeed string

	// AlertPrefix starts the subjects of rate alerts (default
	// guardian.v1.alerts.timeout_rate); an alert for a code goes to
	// AlertPrefix + "." + code.
	AlertPrefix string
	// AlertWindow is the window over which a code's rate is measured
	// (default 1 minute), 1s..24h.
	AlertWindow time.Duration
	// AlertThreshold is the number of events of one code within
	// AlertWindow above which an alert fires (default 100); 0 disables
	// alerts. 0..1,000,000.
	AlertThreshold int
	// AlertStateBucket is the KV bucket in which Alerters share each
	// code's alert episode (default GUARDIAN_ALERTS), so that one crossing
	// gives one alert across replicas and restarts.
	AlertStateBucket string
}

// DefaultConfig returns the defaults: stream GUARDIAN_AUDIT on
// guardian.v1.audit.*.* and guardian.v1.audit.seal, 1 replica, 90 days, a 2 minute duplicate window, a
// 64 MiB spool (SpoolDir empty), 1024 publishes in flight, a seal every
// 10,000 events or 60s, no seal seed, alerts above 100 events of a code per
// minute.
func DefaultConfig() Config {
	return Config{
		Stream:         "GUARDIAN_AUDIT",
		SubjectPrefix:  "guardian.v1.audit",
		Replicas:       1,
		MaxAge:         90 * 24 * time.Hour,
		Duplicates:     2 * time.Minute,
		SpoolMaxBytes:  64 << 20,
		MaxInFlight:    1024,
		SealEvery:      10_000,
		SealInterval:   60 * time.Second,
		AlertPrefix:    "guardian.v1.alerts.timeout_rate",
		AlertWindow:    time.Minute,
		AlertThreshold: 100,

		AlertStateBucket: "GUARDIAN_ALERTS",
	}
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
}

// Validate checks every field and returns an error wrapping
// ErrInvalidConfig that names the first bad field and its allowed range.
// SpoolDir is not checked here; NewPublisher requires it.
func (c *Config) Validate() error {
	if !validName(c.Stream) {
		return invalid("Stream %q must be a non-empty name without spaces, '.', '*', '>', '/' or '\\'", c.Stream)
	}
	if !validSubject(c.SubjectPrefix) {
		return invalid("SubjectPrefix %q must be dot-separated non-empty tokens without wildcards or spaces", c.SubjectPrefix)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return invalid("Replicas %d out of range: must be 1..5", c.Replicas)
	}
	if c.Duplicates < time.Second || c.Duplicates > 24*time.Hour {
		return invalid("Duplicates %s out of range: must be 1s..24h", c.Duplicates)
	}
	if c.MaxAge < 0 || (c.MaxAge != 0 && c.MaxAge < c.Duplicates) {
		return invalid("MaxAge %s out of range: must be 0 (forever) or >= Duplicates (%s)", c.MaxAge, c.Duplicates)
	}
	if c.SpoolMaxBytes < 1<<10 || c.SpoolMaxBytes > 1<<40 {
		return invalid("SpoolMaxBytes %d out of range: must be 1024..1099511627776 (1 KiB..1 TiB)", c.SpoolMaxBytes)
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > 65536 {
		return invalid("MaxInFlight %d out of range: must be 1..65536", c.MaxInFlight)
	}
	if c.SealEvery < 1 || c.SealEvery > maxSealEvery {
		return invalid("SealEvery %d out of range: must be 1..%d", c.SealEvery, maxSealEvery)
	}
	if c.SealInterval < 10*time.Millisecond || c.SealInterval > 24*time.Hour {
		return invalid("SealInterval %s out of range: must be 10ms..24h", c.SealInterval)
	}
	if c.SealSeed != "" {
		if _, err := sealKey(c.SealSeed); err != nil {
			return invalid("SealSeed: %v", err)
		}
	}
	if !validName(c.AlertStateBucket) {
		return invalid("AlertStateBucket %q must be a bucket name: letters, digits, - and _", c.AlertStateBucket)
	}
	if !validSubject(c.AlertPrefix) {
		return invalid("AlertPrefix %q must be dot-separated non-empty tokens without wildcards or spaces", c.AlertPrefix)
	}
	if c.AlertWindow < time.Second || c.AlertWindow > 24*time.Hour {
		return invalid("AlertWindow %s out of range: must be 1s..24h", c.AlertWindow)
	}
	if c.AlertThreshold < 0 || c.AlertThreshold > 1_000_000 {
		return invalid("AlertThreshold %d out of range: must be 0 (off)..1000000", c.AlertThreshold)
	}
	return nil
}

// maxSealEvery keeps a seal (8 bytes of digest per event, base64) well
// below NATS's default 1 MiB payload limit.
const maxSealEvery = 50_000

// sealKey returns the key pair of an account or user seed.
func sealKey(seed string) (nkeys.KeyPair, error) {
	prefix, _, err := nkeys.DecodeSeed([]byte(seed))
	if err != nil {
		return nil, fmt.Errorf("not an nkeys seed: %w", err)
	}
	if prefix != nkeys.PrefixByteAccount && prefix != nkeys.PrefixByteUser {
		return nil, fmt.Errorf("must be an account (SA…) or user (SU…) seed, not %s", prefix)
	}
	return nkeys.FromSeed([]byte(seed))
}

func validName(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n.*>/\\")
}

func validSubject(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n*>") {
		return false
	}
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" {
			return false
		}
	}
	return true
}

// SealSubject returns the subject seals are published on, SubjectPrefix +
// ".seal". Seals have four tokens and events five, so filters of the form
// SubjectPrefix.*.* never match a seal.
func (c *Config) SealSubject() string { return c.SubjectPrefix + ".seal" }

// Subject returns the subject of an event: SubjectPrefix.<tenant>.<code>,
// with the tenant encoded by TenantToken. It returns an error wrapping
// ErrInvalidEvent when code is neither a TIMEOUT_[A-Z0-9_]+ audit code nor
// an AUDIT_[A-Z0-9_]+ integrity code (such as ForgedSealCode).
func (c *Config) Subject(tenant, code string) (string, error) {
	if _, err := jsguard.ParseCode(code); err != nil && !integrityCode.MatchString(code) {
		return "", fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	return c.SubjectPrefix + "." + TenantToken(tenant) + "." + code, nil
}

// TenantToken returns the subject token for a tenant id. The empty tenant
// and the reserved id "_none" become NoTenant. Other ids keep the bytes
// A-Z, a-z, 0-9, '-' and '_' and have every other byte (including '.',
// '*', '>', '%', spaces and non-ASCII) percent-encoded as %XX, so the
// mapping is reversible (see TenantFromToken) and no tenant can inject
// tokens or wildcards.
func TenantToken(tenant string) string {
	if tenant == "" || tenant == NoTenant {
		return NoTenant
	}
	var b strings.Builder
	for i := 0; i < len(tenant); i++ {
		c := tenant[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// TenantFromToken reverses TenantToken: NoTenant gives "", and %XX escapes
// are decoded. A token that is not valid percent-encoding is returned as it
// is.
func TenantFromToken(token string) string {
	if token == NoTenant {
		return ""
	}
	t, err := url.PathUnescape(token)
	if err != nil {
		return token
	}
	return t
}
