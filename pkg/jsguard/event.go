package jsguard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"
)

// EventType is the event_type of every timeout event.
const EventType = "timeout_occurred"

// Budget sources, the values of Event.BudgetSource: which deadline bound the
// call that timed out.
const (
	SourceCategory = "category" // the category's budget from the policy
	SourceLevel    = "level"    // the budget of a T1–T5 level category
	SourceOverride = "override" // a per-call WithBudget override
	SourceParent   = "parent"   // the parent context's deadline came first
	SourceReported = "reported" // reported by another service, through Guard.Emit
)

// Event is one timeout, as it is written to the audit stream. Its JSON form is
// the audit schema; the fields follow the seed's audit events plus guardian's
// own. An Event is a plain value.
type Event struct {
	// EventID is deterministic: see EventID.
	EventID string `json:"event_id"`
	// EventType is always "timeout_occurred".
	EventType string `json:"event_type"`
	// Code is the audit code, e.g. TIMEOUT_KV_GET.
	Code string `json:"timeout_category"`
	// Operation names what timed out, e.g. "kv get GUARDIAN_APPROVALS/acme.a1".
	Operation string `json:"operation"`
	// TimeoutSeconds is the budget that applied, in seconds.
	TimeoutSeconds float64 `json:"timeout_seconds"`
	// TenantID, CorrelationID and TraceID come from the call's context.
	TenantID      string `json:"tenant_id"`
	CorrelationID string `json:"correlation_id"`
	TraceID       string `json:"trace_id"`
	// AdditionalContext holds caller details (WithDetail) and producer
	// specifics, e.g. an approval's ids.
	AdditionalContext map[string]string `json:"additional_context,omitempty"`
	// Timestamp is when the timeout fired, UTC.
	Timestamp time.Time `json:"timestamp"`
	// StartedAt is when the operation started, UTC.
	StartedAt time.Time `json:"started_at"`
	// Level is "T1" … "T5" for a hierarchy level, else empty.
	Level string `json:"level,omitempty"`
	// ElapsedSeconds is how long the call ran until it returned or was
	// abandoned.
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	// BudgetSource says which deadline bound the call: category, level,
	// override, parent or reported.
	BudgetSource string `json:"budget_source"`
	// Abandoned is true when the function ignored its context and was left
	// running at the deadline.
	Abandoned bool `json:"abandoned"`
	// FallbackUsed is true when a fallback or stale value was returned
	// instead of the error.
	FallbackUsed bool `json:"fallback_used"`
}

// Category returns the event's category, the code without its TIMEOUT_ prefix.
func (e *Event) Category() Category {
	if len(e.Code) > len(CodePrefix) {
		return Category(e.Code[len(CodePrefix):])
	}
	return ""
}

// EventID derives a deterministic event id from a timeout's code, operation,
// tenant, correlation and trace ids and its start time: the same timeout
// described again yields the same id, so a re-sent event is stored once.
// The id is 32 lowercase hex characters.
func EventID(code, operation, tenant, correlation, trace string, startedAt time.Time) string {
	h := sha256.New()
	for _, s := range []string{code, operation, tenant, correlation, trace} {
		h.Write([]byte(strconv.Itoa(len(s))))
		h.Write([]byte{':'})
		h.Write([]byte(s))
	}
	h.Write([]byte(strconv.FormatInt(startedAt.UnixNano(), 10)))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Sink receives timeout events. auditstream.Publisher implements it; an
// interface with one method keeps jsguard free of its users. Emit must honour
// ctx: the guard bounds every call with the guard's emit bound, and counts a
// returned error or an overrun as a sink failure (see Hooks.OnSinkError).
// Implementations must be safe for concurrent use.
type Sink interface {
	Emit(ctx context.Context, e Event) error
}

// DurableSink is a Sink that can also confirm that an event is stored
// (the auditstream Publisher is one). Guard.EmitDurable uses it.
type DurableSink interface {
	Sink
	// EmitDurable returns nil only once e is stored durably, else the
	// reason it is not.
	EmitDurable(ctx context.Context, e Event) error
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(ctx context.Context, e Event) error

// Emit calls f(ctx, e) and returns its error.
func (f SinkFunc) Emit(ctx context.Context, e Event) error { return f(ctx, e) }

type ctxKey int

const (
	tenantKey ctxKey = iota
	correlationKey
	traceKey
)

// WithTenant returns a context carrying the tenant id that audit events report.
func WithTenant(ctx context.Context, tenant string) context.Context {
	return context.WithValue(ctx, tenantKey, tenant)
}

// Tenant returns the tenant id carried by ctx, or "".
func Tenant(ctx context.Context) string { s, _ := ctx.Value(tenantKey).(string); return s }

// WithCorrelationID returns a context carrying the correlation id that audit
// events report.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey, id)
}

// CorrelationID returns the correlation id carried by ctx, or "".
func CorrelationID(ctx context.Context) string {
	s, _ := ctx.Value(correlationKey).(string)
	return s
}

// WithTraceID returns a context carrying the trace id (e.g. from a W3C
// traceparent header) that audit events report.
func WithTraceID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, traceKey, id)
}

// TraceID returns the trace id carried by ctx, or "".
func TraceID(ctx context.Context) string { s, _ := ctx.Value(traceKey).(string); return s }
