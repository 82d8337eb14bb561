package kvapprovals

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// DefaultAPIPrefix starts every subject of guardian's request/reply API.
const DefaultAPIPrefix = "guardian.v1"

// Client speaks guardian's request/reply API over NATS: the typed
// counterpart of `nats req guardian.v1.<tenant>.approvals.<op>`. Each call
// runs under jsguard's API_REQUEST budget (or ctx's earlier deadline). A
// correlation id in ctx (jsguard.WithCorrelationID) is sent as the
// Guardian-Correlation-Id header, and a 32-hex-digit trace id
// (jsguard.WithTraceID) as a W3C traceparent header. A Client is safe for concurrent use.
//
// Errors: a refusal comes back as an *APIError that matches the same
// sentinels a Service returns (ErrNotFound, ErrExpired, …); no responders
// or a 5xx reply match ErrUnavailable; a timeout is a *jsguard.TimeoutError.
type Client struct {
	nc     *nats.Conn
	g      *jsguard.Guard
	prefix string
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithClientGuard runs the client's requests under g (default
// jsguard.Default()).
func WithClientGuard(g *jsguard.Guard) ClientOption { return func(c *Client) { c.g = g } }

// WithAPIPrefix changes the subject prefix (default guardian.v1).
func WithAPIPrefix(p string) ClientOption { return func(c *Client) { c.prefix = p } }

// NewClient returns a client that sends requests over nc.
func NewClient(nc *nats.Conn, opts ...ClientOption) *Client {
	c := &Client{nc: nc, g: jsguard.Default(), prefix: DefaultAPIPrefix}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Request asks for an approval; see Service.Request for the errors.
func (c *Client) Request(ctx context.Context, tenant string, in RequestInput) (Record, error) {
	var r Record
	return r, c.tenantCall(ctx, tenant, "request", in, &r)
}

// Approve approves a pending approval; see Service.Approve for the errors.
func (c *Client) Approve(ctx context.Context, tenant string, in DecisionInput) (Record, error) {
	var r Record
	return r, c.tenantCall(ctx, tenant, "approve", in, &r)
}

// Deny denies a pending approval; see Service.Deny for the errors.
func (c *Client) Deny(ctx context.Context, tenant string, in DecisionInput) (Record, error) {
	var r Record
	return r, c.tenantCall(ctx, tenant, "deny", in, &r)
}

// Cancel cancels a pending approval; see Service.Cancel for the errors.
func (c *Client) Cancel(ctx context.Context, tenant string, in CancelInput) (Record, error) {
	var r Record
	return r, c.tenantCall(ctx, tenant, "cancel", in, &r)
}

// Extend moves a pending approval's deadline later. A refusal is an
// *APIError matching the sentinel Service.Extend returns; no responders or
// a 5xx reply match ErrUnavailable; a timeout is a *jsguard.TimeoutError.
func (c *Client) Extend(ctx context.Context, tenant string, in ExtendInput) (Record, error) {
	var r Record
	return r, c.tenantCall(ctx, tenant, "extend", in, &r)
}

// Await waits until the approval is final (approved, denied, cancelled or
// expired) and returns it: it asks guardian's approvals.await endpoint,
// which answers on the decision (driven by the lifecycle events, no
// polling) or after a wait a little shorter than this client's API_REQUEST
// budget, and asks again while the approval is pending. Failures that pass
// (no guardian answering, a 5xx reply, a timeout: a guardian restart or a
// NATS reconnect while waiting) are retried with backoff, so waiting
// survives them. It returns ctx's error (wrapped) when ctx ends first, an
// *APIError matching ErrNotFound or ErrInvalidRequest for an unknown or
// malformed id, or another *APIError the service replied with.
func (c *Client) Await(ctx context.Context, tenant, id string) (Record, error) {
	p := c.g.Policy()
	wait := max(time.Second, p.Budget(jsguard.APIRequest)-2*time.Second)
	backoff := 100 * time.Millisecond
	for {
		w := wait
		if dl, ok := ctx.Deadline(); ok {
			w = max(100*time.Millisecond, min(w, time.Until(dl)-200*time.Millisecond))
		}
		var r Record
		err := c.tenantCall(ctx, tenant, "await", AwaitInput{ID: id, Wait: Duration(w)}, &r)
		switch {
		case err == nil && r.Status.Terminal():
			return r, nil
		case err == nil:
			backoff = 100 * time.Millisecond
			continue
		case ctx.Err() != nil:
			return Record{}, fmt.Errorf("await %s.%s: %w", tenant, id, ctx.Err())
		case errors.Is(err, ErrUnavailable), errors.Is(err, jsguard.ErrTimeout), errors.Is(err, nats.ErrTimeout),
			errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrDisconnected):
			select {
			case <-ctx.Done():
				return Record{}, fmt.Errorf("await %s.%s: %w", tenant, id, ctx.Err())
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		default:
			return Record{}, err
		}
	}
}

// RecordExecution reports the start or end of a command run under an
// approved approval (see Service.RecordExecution); a refusal is an
// *APIError matching the same sentinel, no responders or a 5xx reply match
// ErrUnavailable, a timeout is a *jsguard.TimeoutError.
func (c *Client) RecordExecution(ctx context.Context, tenant string, in ExecutionInput) (Event, error) {
	var ev Event
	return ev, c.tenantCall(ctx, tenant, "execution", in, &ev)
}

// Get returns an approval; ErrNotFound when there is none.
func (c *Client) Get(ctx context.Context, tenant, id string) (Record, error) {
	var r Record
	return r, c.tenantCall(ctx, tenant, "get", GetInput{ID: id}, &r)
}

// List returns a page of a tenant's approvals; see Service.List.
func (c *Client) List(ctx context.Context, tenant string, in ListInput) (ListResult, error) {
	var r ListResult
	return r, c.tenantCall(ctx, tenant, "list", in, &r)
}

// Policy returns the timeout policy in force at the service.
func (c *Client) Policy(ctx context.Context) (jsguard.Policy, error) {
	var p jsguard.Policy
	return p, c.Call(ctx, c.prefix+".policy.get", struct{}{}, &p)
}

// Report sends a timeout that happened elsewhere to the audit stream through
// the service and returns its event id. The event's EventID is ignored: the
// service derives it. It returns an *APIError (ErrInvalidRequest) naming a
// bad field.
func (c *Client) Report(ctx context.Context, ev jsguard.Event) (string, error) {
	var out struct {
		EventID string `json:"event_id"`
	}
	in := map[string]any{
		"timeout_category": ev.Code, "operation": ev.Operation, "timeout_seconds": ev.TimeoutSeconds,
		"elapsed_seconds": ev.ElapsedSeconds, "tenant_id": ev.TenantID, "correlation_id": ev.CorrelationID,
		"trace_id": ev.TraceID, "level": ev.Level, "abandoned": ev.Abandoned, "fallback_used": ev.FallbackUsed,
		"additional_context": ev.AdditionalContext,
	}
	if !ev.Timestamp.IsZero() {
		in["timestamp"] = ev.Timestamp
	}
	if !ev.StartedAt.IsZero() {
		in["started_at"] = ev.StartedAt
	}
	err := c.Call(ctx, c.prefix+".audit.report", in, &out)
	return out.EventID, err
}

func (c *Client) tenantCall(ctx context.Context, tenant, op string, in, out any) error {
	if err := ValidateTenant(tenant); err != nil {
		return err
	}
	return c.Call(ctx, c.prefix+"."+tenant+".approvals."+op, in, out)
}

// noRespondersGrace is how long Call keeps resending a request that found
// no responder: a guardian that just started, or whose subscriptions have
// not reached every server of a cluster yet, answers a moment later. A
// request without responders reached nobody, so sending it again is safe.
const noRespondersGrace = 2 * time.Second

// Call sends in as JSON to subject and decodes the reply into out. A
// request that finds no responder is sent again for up to 2 seconds
// (within ctx). It returns an *APIError for an error reply, an error
// matching ErrUnavailable when nobody answers, or a *jsguard.TimeoutError.
func (c *Client) Call(ctx context.Context, subject string, in, out any) error {
	data, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("%s: encode: %w", subject, err)
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	if id := jsguard.CorrelationID(ctx); id != "" {
		msg.Header.Set(CorrelationHeader, id)
	}
	if tid := jsguard.TraceID(ctx); len(tid) == 32 {
		// A W3C traceparent with a fresh parent (span) id.
		var span [8]byte
		_, _ = rand.Read(span[:])
		msg.Header.Set("traceparent", "00-"+tid+"-"+hex.EncodeToString(span[:])+"-01")
	}
	reply, err := c.g.Request(ctx, c.nc, msg)
	for wait, until := 25*time.Millisecond, time.Now().Add(noRespondersGrace); errors.Is(err, nats.ErrNoResponders) && time.Now().Add(wait).Before(until); wait = min(2*wait, 250*time.Millisecond) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w: no guardian service is listening", subject, ErrUnavailable)
		case <-time.After(wait):
		}
		reply, err = c.g.Request(ctx, c.nc, msg)
	}
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%s: %w: no guardian service is listening", subject, ErrUnavailable)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	if code := reply.Header.Get(micro.ErrorCodeHeader); code != "" {
		return replyError(reply, code)
	}
	if err := json.Unmarshal(reply.Data, out); err != nil {
		return fmt.Errorf("%s: decode reply: %w", subject, err)
	}
	return nil
}

func replyError(reply *nats.Msg, code string) error {
	var body struct {
		Error *APIError `json:"error"`
	}
	if json.Unmarshal(reply.Data, &body) == nil && body.Error != nil {
		return body.Error
	}
	n, _ := strconv.Atoi(code)
	e := &APIError{Code: n, Message: reply.Header.Get(micro.ErrorHeader), Status: APIInternal}
	if n >= 500 {
		e.Status = APIUnavailable
	}
	return e
}
