package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
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

// maxReportBytes bounds an audit.report body.
const maxReportBytes = 16 << 10

// api serves guardian's micro service endpoints. Each request runs in its
// own goroutine, at most maxInFlight at once, under jsguard's API_REQUEST
// budget; shutdown waits for the ones in flight.
type api struct {
	g         *jsguard.Guard
	approvals *kvapprovals.Service
	log       *slog.Logger
	sem       chan struct{}
	inflight  sync.WaitGroup
}

// handlerFunc handles one request; tenant is "" for endpoints without one.
type handlerFunc func(ctx context.Context, tenant string, data []byte) (any, error)

var traceparentRE = regexp.MustCompile(`^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$`)

// wrap turns h into a micro handler. tenantToken is the index of the tenant
// token in the subject, or -1.
func (a *api) wrap(name string, tenantToken int, h handlerFunc) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		a.sem <- struct{}{}
		a.inflight.Add(1)
		go func() {
			defer func() { <-a.sem; a.inflight.Done() }()
			a.serve(name, tenantToken, h, req)
		}()
	})
}

func (a *api) serve(name string, tenantToken int, h handlerFunc, req micro.Request) {
	hdr := req.Headers()
	corr := nats.Header(hdr).Get(correlationHeader)
	if corr == "" || len(corr) > 128 {
		corr = nuid.Next()
	}
	reply := micro.WithHeaders(micro.Headers{correlationHeader: []string{corr}})
	ctx := jsguard.WithCorrelationID(context.Background(), corr)
	if m := traceparentRE.FindStringSubmatch(nats.Header(hdr).Get(traceparentHeader)); m != nil {
		ctx = jsguard.WithTraceID(ctx, m[1])
	}
	tenant := ""
	if tenantToken >= 0 {
		toks := strings.Split(req.Subject(), ".")
		if tenantToken < len(toks) {
			tenant = toks[tenantToken]
		}
		if err := kvapprovals.ValidateTenant(tenant); err != nil {
			a.respondError(req, err, reply)
			return
		}
		ctx = jsguard.WithTenant(ctx, tenant)
	}
	res, err := jsguard.DoValue(ctx, a.g, jsguard.APIRequest, name, func(ctx context.Context) (any, error) {
		return h(ctx, tenant, req.Data())
	})
	if err != nil {
		a.respondError(req, err, reply)
		return
	}
	if err := req.RespondJSON(res, reply); err != nil {
		a.log.Warn("respond", "endpoint", name, "err", err)
	}
}

func (a *api) respondError(req micro.Request, err error, opts ...micro.RespondOpt) {
	ae := kvapprovals.ToAPIError(err)
	if ae.Code >= 500 && !errors.Is(err, jsguard.ErrTimeout) {
		a.log.Error("request failed", "subject", req.Subject(), "err", err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(map[string]any{"error": ae})
	body := bytes.TrimSpace(buf.Bytes())
	if rerr := req.Error(fmt.Sprint(ae.Code), ae.Message, body, opts...); rerr != nil {
		a.log.Warn("respond", "subject", req.Subject(), "err", rerr)
	}
}

// wait waits for requests in flight, at most d; it returns how many were
// still running when it gave up.
func (a *api) wait(d time.Duration) int {
	done := make(chan struct{})
	go func() { a.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return 0
	case <-time.After(d):
		return len(a.sem)
	}
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
		{"approvals_get", "guardian.v1.*.approvals.get", 2, a.get},
		{"approvals_list", "guardian.v1.*.approvals.list", 2, a.list},
		{"policy_get", "guardian.v1.policy.get", -1, a.policyGet},
		{"audit_report", "guardian.v1.audit.report", -1, a.auditReport},
	}
	for _, e := range eps {
		if err := svc.AddEndpoint(e.name, a.wrap(e.subject, e.tenant, e.h), micro.WithEndpointSubject(e.subject)); err != nil {
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

// reportInput is the body of guardian.v1.audit.report: a timeout event
// without event_id.
type reportInput struct {
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
	if _, err := jsguard.ParseCode(in.Code); err != nil {
		return jsguard.Event{}, bad("timeout_category", "must match ^TIMEOUT_[A-Z0-9_]+$")
	}
	if in.Operation == "" || len(in.Operation) > 256 {
		return jsguard.Event{}, bad("operation", "is required, at most 256 bytes")
	}
	if in.TimeoutSeconds <= 0 || in.TimeoutSeconds > jsguard.MaxBudget.Seconds() {
		return jsguard.Event{}, bad("timeout_seconds", "must be > 0 and <= 3600")
	}
	if in.ElapsedSeconds < 0 || in.ElapsedSeconds > 7*24*3600 {
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
	}
	started := ts.Add(-time.Duration(in.ElapsedSeconds * float64(time.Second)))
	if in.StartedAt != nil {
		started = in.StartedAt.UTC()
		if started.After(ts) {
			return jsguard.Event{}, bad("started_at", "must not be after timestamp")
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
	return ev, nil
}

func (a *api) auditReport(ctx context.Context, _ string, data []byte) (any, error) {
	ev, err := reportEvent(ctx, data, time.Now())
	if err != nil {
		return nil, err
	}
	a.g.Emit(ctx, ev)
	return map[string]string{"event_id": ev.EventID}, nil
}
