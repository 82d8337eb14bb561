package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// Header names of the request/reply API.
const (
	correlationHeader = kvapprovals.CorrelationHeader
	traceparentHeader = "traceparent"
)

// Bounds of an audit.report: its body, how long the timeout it reports may
// have run, and how old it may be (times must stay encodable, years 0-9999).
const (
	maxReportBytes   = 16 << 10
	maxReportElapsed = 7 * 24 * time.Hour
)

var oldestReport = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// api serves guardian's micro service endpoints. Each request runs in its
// own goroutine, at most cap(sem) at once (more wait in NATS), under
// jsguard's API_REQUEST budget; shutdown waits for the ones in flight.
//
// Replies are published on the API's connection nc directly, not through
// micro.Request's Respond and Error, which micro's own bookkeeping reads
// when the synchronous handler returns: long before an asynchronous reply.
// So micro's num_errors and processing times do not see guardian's work;
// each endpoint's stats carry guardian's own counts in their data instead
// (see endpointStats).
type api struct {
	g         *jsguard.Guard
	approvals *kvapprovals.Service
	// identity is IdentityRequired when every tenant request must carry
	// the server's Nats-Request-Info stamp; ownAccount is the account of
	// guardian's connection, whose requests the server never stamps.
	identity   kvapprovals.IdentityMode
	ownAccount string
	log        *slog.Logger
	nc         *nats.Conn
	sem        chan struct{}
	// awaitSem bounds the await requests, which hold their slot while they
	// wait and must not take the others' (4 × GUARDIAN_MAX_IN_FLIGHT).
	awaitSem chan struct{}
	inflight atomic.Int64 // requests received and not yet answered
	stats    sync.Map     // endpoint name -> *endpointStats
}

// endpointStats are an endpoint's own counts, the data of its entry in
// $SRV.STATS.guardian.
type endpointStats struct {
	requests, errors, nanos, inflight atomic.Int64
	mu                                sync.Mutex
	lastError                         string
}

// endpointStatsData is the JSON form of endpointStats.
type endpointStatsData struct {
	Requests              int64  `json:"requests"`
	Errors                int64  `json:"errors"`
	InFlight              int64  `json:"in_flight"`
	ProcessingTime        string `json:"processing_time"`
	AverageProcessingTime string `json:"average_processing_time"`
	LastError             string `json:"last_error,omitempty"`
}

func (a *api) endpointStats(name string) *endpointStats {
	st, _ := a.stats.LoadOrStore(name, &endpointStats{})
	return st.(*endpointStats)
}

// statsData is micro's StatsHandler: the data of an endpoint's stats.
func (a *api) statsData(e *micro.Endpoint) any {
	st := a.endpointStats(e.Name)
	d := endpointStatsData{Requests: st.requests.Load(), Errors: st.errors.Load(), InFlight: st.inflight.Load()}
	total := time.Duration(st.nanos.Load())
	d.ProcessingTime = total.String()
	if d.Requests > 0 {
		d.AverageProcessingTime = (total / time.Duration(d.Requests)).String()
	}
	st.mu.Lock()
	d.LastError = st.lastError
	st.mu.Unlock()
	return d
}

// handlerFunc handles one request; tenant is "" for endpoints without one.
type handlerFunc func(ctx context.Context, tenant string, data []byte) (any, error)

var (
	// traceparentRE matches a W3C traceparent header; the group is the
	// trace id.
	traceparentRE = regexp.MustCompile(`^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$`)
	// correlationRE is what a client's correlation id may be: 1-128
	// printable ASCII characters without spaces.
	correlationRE = regexp.MustCompile(`^[\x21-\x7E]{1,128}$`)
)

// traceID returns the trace id of a W3C traceparent header, or "" when the
// header is absent or invalid (version ff, or a trace or parent id of
// zeros).
func traceID(traceparent string) string {
	m := traceparentRE.FindStringSubmatch(traceparent)
	if m == nil || strings.HasPrefix(traceparent, "ff-") || m[1] == strings.Repeat("0", 32) ||
		traceparent[36:52] == strings.Repeat("0", 16) {
		return ""
	}
	return m[1]
}

// wrap turns h into a micro handler that counts into endpoint's stats and
// names op in audit events. tenantToken is the index of the tenant token in
// the subject, or -1.
func (a *api) wrap(endpoint, op string, tenantToken int, h handlerFunc) micro.Handler {
	st := a.endpointStats(endpoint)
	sem := a.sem
	if endpoint == "approvals_await" && a.awaitSem != nil {
		sem = a.awaitSem
	}
	return micro.HandlerFunc(func(req micro.Request) {
		a.inflight.Add(1)
		st.inflight.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; st.inflight.Add(-1); a.inflight.Add(-1) }()
			start := time.Now()
			err := a.serve(op, tenantToken, h, req)
			st.nanos.Add(int64(time.Since(start)))
			st.requests.Add(1)
			if err != nil {
				st.errors.Add(1)
				st.mu.Lock()
				st.lastError = err.Error()
				st.mu.Unlock()
			}
		}()
	})
}

// serve handles one request: the correlation id is the request's
// Guardian-Correlation-Id header, or a new one when it is absent or not 1-128
// printable characters, and goes back in the reply's header; the trace id
// comes from a W3C traceparent header; the tenant from the subject. All
// three travel in the context into audit events.
//
// It returns the error it replied with, nil after a success.
func (a *api) serve(name string, tenantToken int, h handlerFunc, req micro.Request) error {
	hdr := nats.Header(req.Headers())
	corr := hdr.Get(correlationHeader)
	if !correlationRE.MatchString(corr) {
		corr = nuid.Next()
	}
	reply := nats.Header{correlationHeader: []string{corr}}
	// Work no longer than the caller waits (its Guardian-Timeout-Ms).
	ctx, cancel := jsguard.WithRequestTimeout(context.Background(), hdr)
	defer cancel()
	ctx = jsguard.WithCorrelationID(ctx, corr)
	if id := traceID(hdr.Get(traceparentHeader)); id != "" {
		ctx = jsguard.WithTraceID(ctx, id)
	}
	tenant := ""
	if tenantToken >= 0 {
		toks := strings.Split(req.Subject(), ".")
		if tenantToken < len(toks) {
			tenant = toks[tenantToken]
		}
		if err := kvapprovals.ValidateTenant(tenant); err != nil {
			return a.respondError(req, err, reply)
		}
		ctx = jsguard.WithTenant(ctx, tenant)
	}
	// The caller's identity, for the approvals and audit reports: in
	// required mode only from the server's stamp. In asserted mode the
	// header is ignored: within one account any client can write it.
	if a.identity == kvapprovals.IdentityRequired && (tenantToken >= 0 || name == auditReportSubject) {
		v := hdr.Get(kvapprovals.RequestInfoHeader)
		if v == "" {
			return a.respondError(req, fmt.Errorf("%w: the request has no %s header: call guardian through a service import with share: true",
				kvapprovals.ErrUnauthenticated, kvapprovals.RequestInfoHeader), reply)
		}
		id, err := kvapprovals.IdentityFromRequestInfo(v, a.ownAccount)
		if err != nil {
			return a.respondError(req, fmt.Errorf("%w: %v", kvapprovals.ErrUnauthenticated, err), reply)
		}
		ctx = kvapprovals.WithIdentity(ctx, id)
	}
	res, err := jsguard.DoValue(ctx, a.g, jsguard.APIRequest, name, func(ctx context.Context) (any, error) {
		return h(ctx, tenant, req.Data())
	})
	if err != nil {
		return a.respondError(req, err, reply)
	}
	data, err := encodeJSON(res)
	if err != nil {
		return a.respondError(req, fmt.Errorf("encode reply: %w", err), reply)
	}
	a.respond(req, reply, data)
	return nil
}

// respondError replies with err as an API error: the micro error headers
// (Nats-Service-Error-Code, Nats-Service-Error) and the body {"error": ...}.
// It returns the API error.
func (a *api) respondError(req micro.Request, err error, hdr nats.Header) error {
	ae := kvapprovals.ToAPIError(err)
	// Timeouts are audited, and calls refused by an open circuit counted:
	// neither is logged once per request.
	if ae.Code >= 500 && !errors.Is(err, jsguard.ErrTimeout) && !errors.Is(err, jsguard.ErrCircuitOpen) {
		a.log.Error("request failed", "subject", req.Subject(), "err", err)
	}
	body, _ := encodeJSON(map[string]any{"error": ae}) // plain data: it always encodes
	hdr.Set(micro.ErrorCodeHeader, strconv.Itoa(ae.Code))
	hdr.Set(micro.ErrorHeader, ae.Message)
	a.respond(req, hdr, body)
	return ae
}

// encodeJSON encodes v without escaping <, > and &, which replies and
// messages carry as they are.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// respond publishes a reply to req, if it asked for one.
func (a *api) respond(req micro.Request, hdr nats.Header, data []byte) {
	if req.Reply() == "" {
		return
	}
	if err := a.nc.PublishMsg(&nats.Msg{Subject: req.Reply(), Header: hdr, Data: data}); err != nil {
		a.log.Warn("respond", "subject", req.Subject(), "err", err)
	}
}

// shutdown stops svc from taking requests and waits, until deadline, for
// the requests NATS delivered before that to finish and their replies to be
// sent; then it closes nc, the API's connection.
//
// svc.Stop drains the endpoint subscriptions: messages already delivered to
// this process are still handed to the handlers. Once nc has no
// subscription left, every one of them has started, and waiting for the
// handlers in flight covers them all.
func (a *api) shutdown(svc micro.Service, nc *nats.Conn, deadline time.Time) {
	if err := svc.Stop(); err != nil {
		a.log.Warn("stop micro service", "err", err)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for nc.NumSubscriptions() > 0 || a.inflight.Load() > 0 {
		if !time.Now().Before(deadline) {
			a.log.Warn("requests still running at the shutdown timeout; they get no reply", "count", a.inflight.Load())
			break
		}
		<-tick.C
	}
	// Replies are buffered: draining a connection without subscriptions
	// flushes them and closes it.
	drainConn(nc, time.Until(later(deadline, time.Second)), a.log)
}

// addEndpoints registers every endpoint on svc.
func (a *api) addEndpoints(svc micro.Service) error {
	type ep struct {
		name, subject string
		tenant        int
		h             handlerFunc
	}
	eps := []ep{
		{"approvals_request", "guardian.v1.*.approvals.request", 2, a.request},
		{"approvals_approve", "guardian.v1.*.approvals.approve", 2, a.approve},
		{"approvals_deny", "guardian.v1.*.approvals.deny", 2, a.deny},
		{"approvals_cancel", "guardian.v1.*.approvals.cancel", 2, a.cancel},
		{"approvals_extend", "guardian.v1.*.approvals.extend", 2, a.extend},
		{"approvals_await", "guardian.v1.*.approvals.await", 2, a.await},
		{"approvals_execution", "guardian.v1.*.approvals.execution", 2, a.execution},
		{"approvals_get", "guardian.v1.*.approvals.get", 2, a.get},
		{"approvals_list", "guardian.v1.*.approvals.list", 2, a.list},
		{"policy_get", "guardian.v1.policy.get", -1, a.policyGet},
		{"audit_report", auditReportSubject, -1, a.auditReport},
	}
	for _, e := range eps {
		if err := svc.AddEndpoint(e.name, a.wrap(e.name, e.subject, e.tenant, e.h), micro.WithEndpointSubject(e.subject)); err != nil {
			return fmt.Errorf("add endpoint %s: %w", e.name, err)
		}
	}
	return nil
}

func (a *api) policyGet(_ context.Context, _ string, data []byte) (any, error) {
	if _, err := kvapprovals.Decode[struct{}](data); err != nil {
		return nil, err
	}
	return a.g.Policy(), nil
}

// reportInput is the body of guardian.v1.audit.report: a timeout event in
// the shape of the audit trail (jsguard.Event). event_type, budget_source
// and event_id are optional: guardian sets them, and a body that gives one
// must give guardian's value.
type reportInput struct {
	EventID           *string           `json:"event_id"`
	EventType         *string           `json:"event_type"`
	BudgetSource      *string           `json:"budget_source"`
	Code              string            `json:"timeout_category"`
	Operation         string            `json:"operation"`
	TimeoutSeconds    float64           `json:"timeout_seconds"`
	ElapsedSeconds    float64           `json:"elapsed_seconds"`
	TenantID          string            `json:"tenant_id"`
	CorrelationID     string            `json:"correlation_id"`
	TraceID           string            `json:"trace_id"`
	Level             string            `json:"level"`
	StartedAt         *time.Time        `json:"started_at"`
	Timestamp         *time.Time        `json:"timestamp"`
	Abandoned         bool              `json:"abandoned"`
	FallbackUsed      bool              `json:"fallback_used"`
	AdditionalContext map[string]string `json:"additional_context"`
}

// reportEvent validates a report and turns it into an event. Its errors wrap
// kvapprovals.ErrInvalidRequest and name the field.
func reportEvent(ctx context.Context, data []byte, now time.Time) (jsguard.Event, error) {
	if len(data) > maxReportBytes {
		return jsguard.Event{}, &kvapprovals.FieldError{Field: "body", Reason: fmt.Sprintf("%d bytes exceeds the maximum %d", len(data), maxReportBytes)}
	}
	in, err := kvapprovals.Decode[reportInput](data)
	if err != nil {
		return jsguard.Event{}, err
	}
	bad := func(field, msg string) error {
		return &kvapprovals.FieldError{Field: field, Reason: msg}
	}
	if in.EventType != nil && *in.EventType != jsguard.EventType {
		return jsguard.Event{}, bad("event_type", fmt.Sprintf("must be %q or absent", jsguard.EventType))
	}
	if in.BudgetSource != nil && *in.BudgetSource != jsguard.SourceReported {
		return jsguard.Event{}, bad("budget_source", fmt.Sprintf("must be %q or absent: a reported timeout's budget is the reporter's", jsguard.SourceReported))
	}
	if _, err := jsguard.ParseCode(in.Code); err != nil {
		return jsguard.Event{}, bad("timeout_category", "must match ^TIMEOUT_[A-Z0-9_]+$")
	}
	if in.Operation == "" || len(in.Operation) > 256 {
		return jsguard.Event{}, bad("operation", "is required, at most 256 bytes")
	}
	if in.TimeoutSeconds <= 0 || in.TimeoutSeconds > jsguard.MaxBudget.Seconds() {
		return jsguard.Event{}, bad("timeout_seconds", "must be > 0 and <= 3600")
	}
	if in.ElapsedSeconds < 0 || in.ElapsedSeconds > maxReportElapsed.Seconds() {
		return jsguard.Event{}, bad("elapsed_seconds", "must be >= 0 and at most a week")
	}
	switch in.Level {
	case "", "T1", "T2", "T3", "T4", "T5":
	default:
		return jsguard.Event{}, bad("level", "must be empty or T1 … T5")
	}
	if in.TenantID != "" {
		if err := kvapprovals.ValidateTenant(in.TenantID); err != nil {
			return jsguard.Event{}, bad("tenant_id", "must match ^[A-Za-z0-9_-]{1,64}$")
		}
	}
	for f, v := range map[string]string{"correlation_id": in.CorrelationID, "trace_id": in.TraceID} {
		if len(v) > 128 {
			return jsguard.Event{}, bad(f, "at most 128 bytes")
		}
	}
	if len(in.AdditionalContext) > 32 {
		return jsguard.Event{}, bad("additional_context", "at most 32 entries")
	}
	ts := now.UTC()
	if in.Timestamp != nil {
		ts = in.Timestamp.UTC()
		if ts.After(now.Add(time.Minute)) {
			return jsguard.Event{}, bad("timestamp", "must not be in the future")
		}
		if ts.Before(oldestReport) {
			return jsguard.Event{}, bad("timestamp", "must be after "+oldestReport.Format(time.RFC3339))
		}
	}
	started := ts.Add(-time.Duration(in.ElapsedSeconds * float64(time.Second)))
	if in.StartedAt != nil {
		started = in.StartedAt.UTC()
		if started.After(ts) {
			return jsguard.Event{}, bad("started_at", "must not be after timestamp")
		}
		if ts.Sub(started) > maxReportElapsed {
			return jsguard.Event{}, bad("started_at", "must be at most a week before timestamp")
		}
	}
	ev := jsguard.Event{
		EventType:         jsguard.EventType,
		Code:              in.Code,
		Operation:         in.Operation,
		TimeoutSeconds:    in.TimeoutSeconds,
		TenantID:          in.TenantID,
		CorrelationID:     in.CorrelationID,
		TraceID:           in.TraceID,
		AdditionalContext: in.AdditionalContext,
		Timestamp:         ts,
		StartedAt:         started,
		Level:             in.Level,
		ElapsedSeconds:    ts.Sub(started).Seconds(),
		BudgetSource:      jsguard.SourceReported,
		Abandoned:         in.Abandoned,
		FallbackUsed:      in.FallbackUsed,
	}
	// Ids missing from the body come from the request's headers.
	if ev.CorrelationID == "" {
		ev.CorrelationID = jsguard.CorrelationID(ctx)
	}
	if ev.TraceID == "" {
		ev.TraceID = jsguard.TraceID(ctx)
	}
	ev.EventID = jsguard.EventID(ev.Code, ev.Operation, ev.TenantID, ev.CorrelationID, ev.TraceID, started)
	if in.EventID != nil && *in.EventID != ev.EventID {
		return jsguard.Event{}, bad("event_id", "is derived from timeout_category, operation, tenant_id, correlation_id, trace_id and started_at: omit it or send "+ev.EventID)
	}
	return ev, nil
}

// auditReportSubject is the subject of the audit.report endpoint.
const auditReportSubject = "guardian.v1.audit.report"

// auditReport stores a reported timeout and replies with its event id only
// once the event is durable: acknowledged by the audit stream, or in the
// fsynced spool. Otherwise it answers 503 (unavailable), and the client
// may send the same report again: it gets the same event id, stored once.
func (a *api) auditReport(ctx context.Context, _ string, data []byte) (any, error) {
	ev, err := reportEvent(ctx, data, time.Now())
	if err != nil {
		return nil, err
	}
	// Who reported it, when the server proved it (not part of the event
	// id: the same report from anyone is the same event).
	if id, ok := kvapprovals.IdentityFrom(ctx); ok {
		ev.AdditionalContext = maps.Clone(ev.AdditionalContext)
		if ev.AdditionalContext == nil {
			ev.AdditionalContext = map[string]string{}
		}
		ev.AdditionalContext["reporter_source"] = id.Source
		ev.AdditionalContext["reporter_account"] = id.Account
		ev.AdditionalContext["reporter_user"] = id.User
	}
	// The guard's sink is the audit publisher: EmitDurable returns once the
	// event is acknowledged by the stream or fsynced in the spool, and
	// counts it in guardian_timeouts_total as the guard's own events.
	if err := a.g.EmitDurable(ctx, ev); err != nil {
		return nil, &kvapprovals.APIError{Code: http.StatusServiceUnavailable, Status: kvapprovals.APIUnavailable,
			Message: fmt.Sprintf("audit event %s not stored: %v", ev.EventID, err)}
	}
	return map[string]string{"event_id": ev.EventID}, nil
}
