package kvapprovals

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// The kinds of lifecycle events, the last token of their subject.
const (
	KindRequested          = "requested"
	KindWarning            = "warning"
	KindApproved           = "approved"
	KindDenied             = "denied"
	KindCancelled          = "cancelled"
	KindExpired            = "expired"
	KindNotificationFailed = "notification_failed"
	// KindApprovalAdded: an approval of an approval that needs more than
	// one; it stays pending.
	KindApprovalAdded = "approval_added"
	// KindDenialAdded: a denial of an approval that needs more than one
	// to deny; it stays pending.
	KindDenialAdded = "denial_added"
	// KindExtended: the deadline moved later.
	KindExtended = "extended"
)

// Event is a lifecycle event on <prefix>.<tenant>.<kind>: one per record
// revision, with message id <tenant>.<id>.<revision> so that JetStream stores
// it once. Time is when the revision was written. A notification_failed
// event carries Failure and has message id <tenant>.<id>.<revision>.failed.
type Event struct {
	Kind     string    `json:"kind"`
	Tenant   string    `json:"tenant"`
	ID       string    `json:"id"`
	Revision uint64    `json:"revision"`
	Time     time.Time `json:"time"`
	Record   Record    `json:"record"`
	Failure  *Failure  `json:"failure,omitempty"`
	// Execution is set on execution_started and execution_finished.
	Execution *Execution `json:"execution,omitempty"`
}

// Failure describes a notification that could not be delivered.
type Failure struct {
	Kind     string `json:"kind"` // the kind of the event not delivered
	Sink     string `json:"sink"` // "webhook"
	Attempts int    `json:"attempts"`
	Error    string `json:"error"`
}

// MsgID returns the event's JetStream message id.
func (e *Event) MsgID() string {
	id := e.Tenant + "." + e.ID + "." + strconv.FormatUint(e.Revision, 10)
	switch e.Kind {
	case KindNotificationFailed:
		id += ".failed"
	case KindExecutionStarted, KindExecutionFinished:
		id += "." + e.Kind
	}
	return id
}

// Webhook is an optional notification sink: every lifecycle event is POSTed
// as JSON to URL, with an Idempotency-Key header of the event's message id,
// under the jsguard APIRequest budget. A non-2xx answer or an error is
// retried by JetStream redelivery after each Backoff delay; after the last
// attempt a notification_failed event is published, so no failure is lost
// silently.
type Webhook struct {
	URL string
	// Client defaults to http.DefaultClient.
	Client *http.Client
	// Backoff are the delays before the 2nd, 3rd … attempt; attempts =
	// len(Backoff)+1 (default 1s, 5s, 30s, 2m).
	Backoff []time.Duration
}

// WithWebhook makes the notifier deliver events to w. The expirer ignores it.
func WithWebhook(w Webhook) ConsumerOption {
	return func(o *consumerOpts) {
		if w.Client == nil {
			w.Client = http.DefaultClient
		}
		if len(w.Backoff) == 0 {
			w.Backoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute}
		}
		o.webhook = &w
	}
}

// Notifier turns every record revision into one lifecycle event and every
// expiry into one TIMEOUT_APPROVAL_EXPIRED audit event (through the guard's
// sink), and feeds the optional webhook. It is a durable consumer on the
// records bucket's stream shared by all replicas (Config.NotifierDurable);
// redelivered revisions yield the same message and event ids, so duplicates
// are dropped downstream. Events of one approval are published in order
// (a webhook retry may reorder webhook deliveries). A new durable starts at
// the beginning of the records stream, so it publishes the events of the
// retained history once. A Notifier is safe for concurrent use; run it once
// per process.
//
// The expiry audit event is handed to the guard's sink with
// jsguard.Guard.EmitDurable: the revision is acknowledged only once the
// sink has stored it, and is redelivered otherwise. A webhook retry
// redelivers the revision and hands the audit event over again: the sink
// must store it once however late the copy comes (the auditstream
// Publisher does).
type Notifier struct {
	s *Service
	o consumerOpts
}

// Notifier returns a notifier for s's buckets. Options: WithWorkers,
// WithMaxAckPending, WithWebhook.
func (s *Service) Notifier(opts ...ConsumerOption) *Notifier {
	return &Notifier{s: s, o: newConsumerOpts(notifierMaxAckPending, opts)}
}

func (n *Notifier) budgets() (ackWait, handle time.Duration) {
	g := n.s.g
	handle = 2*g.Budget(jsguard.NATSPublish) + time.Second
	if n.o.webhook != nil {
		handle += g.Budget(jsguard.APIRequest)
	}
	return consumerAckWait, handle
}

// Run creates or updates the durable consumer and publishes events until ctx
// ends; then it stops fetching, lets in-flight messages finish and returns
// nil. It returns the error of creating the consumer, or an error when
// consuming stops by itself. A message whose event cannot be published is
// redelivered with a backoff.
func (n *Notifier) Run(ctx context.Context) error {
	s := n.s
	ackWait, handleBudget := n.budgets()
	cons, err := s.g.EnsureConsumer(ctx, s.js, "KV_"+s.cfg.RecordsBucket, jetstream.ConsumerConfig{
		Durable:       s.cfg.NotifierDurable,
		Description:   "guardian approval notifier",
		FilterSubject: "$KV." + s.cfg.RecordsBucket + ".>",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: n.o.maxAckPending,
	})
	if err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	if err := s.consume(ctx, cons, n.o.workers, ackWait, handleBudget, nil, func(ctx context.Context, m jetstream.Msg) time.Duration {
		n.handle(ctx, m)
		return 0
	}); err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	return nil
}

func (n *Notifier) handle(ctx context.Context, msg jetstream.Msg) {
	s := n.s
	key, ok := strings.CutPrefix(msg.Subject(), "$KV."+s.cfg.RecordsBucket+".")
	tenant, id, ok2 := strings.Cut(key, ".")
	md, err := msg.Metadata()
	if !ok || !ok2 || err != nil {
		_ = msg.Term()
		return
	}
	h := msg.Headers()
	if h.Get("KV-Operation") != "" || h.Get(jetstream.MarkerReasonHeader) != "" {
		_ = msg.Ack() // a delete, purge or expiry of the record itself: no transition
		return
	}
	rec, err := decodeRecord(msg.Data(), md.Sequence.Stream)
	if err != nil || rec.Tenant != tenant || rec.ID != id {
		s.consumeError(fmt.Errorf("notifier: %s: not an approval record: %v", msg.Subject(), err))
		_ = msg.Term()
		return
	}
	ctx = withTenant(ctx, tenant)
	ev := Event{Kind: rec.Kind(), Tenant: tenant, ID: id, Revision: rec.Revision, Time: md.Timestamp.UTC(), Record: rec}
	if err := s.publishEvent(ctx, &ev); err != nil {
		s.settle(msg, err)
		return
	}
	if audit := s.auditOf(ev.Kind, &rec); audit != nil {
		if err := s.g.EmitDurable(ctx, audit(&rec)); err != nil {
			s.settle(msg, fmt.Errorf("%s audit of %s: %w", ev.Kind, ev.MsgID(), err))
			return
		}
		s.stats.audit.Add(1)
	}
	if w := n.o.webhook; w != nil {
		if err := n.deliver(ctx, w, &ev); err != nil {
			attempts := len(w.Backoff) + 1
			if int(md.NumDelivered) < attempts {
				_ = msg.NakWithDelay(w.Backoff[md.NumDelivered-1])
				return
			}
			failed := ev
			failed.Kind = KindNotificationFailed
			failed.Failure = &Failure{Kind: ev.Kind, Sink: "webhook", Attempts: int(md.NumDelivered), Error: err.Error()}
			if perr := s.publishEvent(ctx, &failed); perr != nil {
				s.settle(msg, perr)
				return
			}
			s.stats.webhookFailed.Add(1)
			if s.hooks.OnNotificationFailed != nil {
				s.hooks.OnNotificationFailed(ev, err)
			}
		} else {
			s.stats.webhookOK.Add(1)
		}
	}
	_ = msg.Ack()
}

// publishEvent publishes ev under NATSPublish with its message id.
func (s *Service) publishEvent(ctx context.Context, ev *Event) error {
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	m := &nats.Msg{Subject: s.cfg.EventsSubjectPrefix + "." + ev.Tenant + "." + ev.Kind, Data: data}
	if _, err := s.g.PublishMsg(ctx, s.js, m, jetstream.WithMsgID(ev.MsgID()), jetstream.WithExpectStream(s.cfg.EventsStream)); err != nil {
		return fmt.Errorf("publish %s event %s: %w", ev.Kind, ev.MsgID(), err)
	}
	s.stats.published.Add(1)
	return nil
}

// expiryAudit builds the TIMEOUT_APPROVAL_EXPIRED event of an expired record.
// Everything in it derives from the record, so a redelivery yields the same
// event and event id. The correlation id is the approval's session_id;
// lateness is how long after expires_at + grace the expiry was written.
func (s *Service) expiryAudit(r *Record) jsguard.Event {
	code := jsguard.ApprovalExpired.Code()
	op := "approval expire " + r.Tenant + "/" + r.ID
	at := r.ExpiresAt
	if r.DecidedAt != nil {
		at = *r.DecidedAt
	}
	deadline := r.Deadline(s.cfg.GracePeriod)
	ev := jsguard.Event{
		EventType:      jsguard.EventType,
		Code:           code,
		Operation:      op,
		TimeoutSeconds: (time.Duration(r.Timeout) + s.cfg.GracePeriod).Seconds(),
		TenantID:       r.Tenant,
		CorrelationID:  r.SessionID,
		AdditionalContext: map[string]string{
			"approval_id":  r.ID,
			"session_id":   r.SessionID,
			"requested_by": r.RequestedBy,
			"operator_id":  r.OperatorID,
			"timeout":      time.Duration(r.Timeout).String(),
			"grace":        s.cfg.GracePeriod.String(),
			"expires_at":   r.ExpiresAt.Format(timeFormat),
			"deadline":     deadline.Format(timeFormat),
			"lateness":     at.Sub(deadline).String(),
			"revision":     strconv.FormatUint(r.Revision, 10),
		},
		Timestamp:      at.UTC(),
		StartedAt:      r.RequestedAt.UTC(),
		ElapsedSeconds: at.Sub(r.RequestedAt).Seconds(),
		BudgetSource:   jsguard.SourceCategory,
	}
	addIdentity(ev.AdditionalContext, "requester", r.Requester)
	ev.EventID = jsguard.EventID(code, op, ev.TenantID, ev.CorrelationID, ev.TraceID, r.RequestedAt)
	return ev
}

// The audit codes of approval events besides the expiry: an extension and
// a decision (approved, denied or cancelled); EventTypeApproval is their
// event_type.
const (
	ExtendedCode      = "AUDIT_APPROVAL_EXTENDED"
	DecidedCode       = "AUDIT_APPROVAL_DECIDED"
	EventTypeApproval = "approval_audit"
)

// auditOf returns the builder of the audit event a revision of kind owes,
// nil when it owes none.
func (s *Service) auditOf(kind string, r *Record) func(*Record) jsguard.Event {
	switch {
	case kind == KindExpired:
		return s.expiryAudit
	case kind == KindExtended && len(r.Extensions) > 0:
		return s.extensionAudit
	case kind == KindApproved, kind == KindDenied, kind == KindCancelled:
		return s.decisionAudit
	}
	return nil
}

// decisionAudit builds the AUDIT_APPROVAL_DECIDED event of a decided
// record: the outcome, who decided (with the identity the Service
// established) and every approval and denial. It derives from the record
// alone, so a redelivery yields the same event id.
func (s *Service) decisionAudit(r *Record) jsguard.Event {
	op := fmt.Sprintf("approval %s %s/%s", r.Status, r.Tenant, r.ID)
	at := r.RequestedAt
	if r.DecidedAt != nil {
		at = *r.DecidedAt
	}
	voters := func(vs []Vote) string {
		names := make([]string, len(vs))
		for i, v := range vs {
			names[i] = v.By
			if v.Identity != nil {
				names[i] = v.Identity.String()
			}
		}
		return strings.Join(names, ",")
	}
	ev := jsguard.Event{
		EventType:      EventTypeApproval,
		Code:           DecidedCode,
		Operation:      op,
		TimeoutSeconds: r.ExpiresAt.Sub(r.RequestedAt).Seconds(),
		TenantID:       r.Tenant,
		CorrelationID:  r.SessionID,
		AdditionalContext: map[string]string{
			"approval_id":        r.ID,
			"session_id":         r.SessionID,
			"status":             string(r.Status),
			"requested_by":       r.RequestedBy,
			"decided_by":         r.DecidedBy,
			"reason":             truncate(r.Reason, 256),
			"required_approvals": strconv.Itoa(r.requiredApprovals()),
			"approvals":          truncate(voters(r.Approvals), 1024),
			"denials":            truncate(voters(r.Denials), 1024),
			"revision":           strconv.FormatUint(r.Revision, 10),
		},
		Timestamp:      at.UTC(),
		StartedAt:      r.RequestedAt.UTC(),
		ElapsedSeconds: at.Sub(r.RequestedAt).Seconds(),
		BudgetSource:   jsguard.SourceCategory,
	}
	addIdentity(ev.AdditionalContext, "requester", r.Requester)
	addIdentity(ev.AdditionalContext, "decider", r.Decider)
	ev.EventID = jsguard.EventID(DecidedCode, op, ev.TenantID, ev.CorrelationID, ev.TraceID, r.RequestedAt)
	return ev
}

// extensionAudit builds the AUDIT_APPROVAL_EXTENDED event of a revision
// that extended r: who, from when to when, why. Like expiryAudit it
// derives from the record alone, so a redelivery yields the same event id.
func (s *Service) extensionAudit(r *Record) jsguard.Event {
	x := r.Extensions[len(r.Extensions)-1]
	op := fmt.Sprintf("approval extend %s/%s #%d", r.Tenant, r.ID, len(r.Extensions))
	ev := jsguard.Event{
		EventType:      EventTypeApproval,
		Code:           ExtendedCode,
		Operation:      op,
		TimeoutSeconds: x.To.Sub(r.RequestedAt).Seconds(),
		TenantID:       r.Tenant,
		CorrelationID:  r.SessionID,
		AdditionalContext: map[string]string{
			"approval_id":  r.ID,
			"session_id":   r.SessionID,
			"requested_by": r.RequestedBy,
			"extended_by":  x.By,
			"from":         x.From.Format(timeFormat),
			"to":           x.To.Format(timeFormat),
			"reason":       truncate(x.Reason, 256),
			"revision":     strconv.FormatUint(r.Revision, 10),
		},
		Timestamp:      x.At.UTC(),
		StartedAt:      r.RequestedAt.UTC(),
		ElapsedSeconds: x.At.Sub(r.RequestedAt).Seconds(),
		BudgetSource:   jsguard.SourceCategory,
	}
	addIdentity(ev.AdditionalContext, "requester", r.Requester)
	addIdentity(ev.AdditionalContext, "extender", x.Identity)
	ev.EventID = jsguard.EventID(ExtendedCode, op, ev.TenantID, ev.CorrelationID, ev.TraceID, r.RequestedAt)
	return ev
}

// addIdentity records id in an audit event's context as <role>_source,
// <role>_account and <role>_user.
func addIdentity(ctx map[string]string, role string, id *Identity) {
	if id == nil {
		return
	}
	ctx[role+"_source"] = id.Source
	if id.Account != "" {
		ctx[role+"_account"] = id.Account
	}
	ctx[role+"_user"] = id.User
}

// deliver POSTs ev to the webhook under APIRequest; a non-2xx status is an
// error.
func (n *Notifier) deliver(ctx context.Context, w *Webhook, ev *Event) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return n.s.g.Do(ctx, jsguard.APIRequest, "webhook POST "+webhookHost(w.URL), func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", ev.MsgID())
		resp, err := w.Client.Do(req)
		if err != nil {
			return redactURL(err, w.URL)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return fmt.Errorf("webhook %s: %s", webhookHost(w.URL), resp.Status)
		}
		return nil
	}, jsguard.WithDetail("approval_id", ev.ID), jsguard.WithDetail("event", ev.MsgID()))
}

// urlRedactedError is an error whose text names a webhook by its scheme
// and host only; it unwraps to the original error.
type urlRedactedError struct {
	msg string
	err error
}

func (e *urlRedactedError) Error() string { return e.msg }
func (e *urlRedactedError) Unwrap() error { return e.err }

// redactURL returns err with every mention of the webhook URL raw (as
// net/http's errors quote it) cut to its scheme and host, so that a token
// in its user info, path or query never reaches an event or a log.
func redactURL(err error, raw string) error {
	msg := err.Error()
	host := webhookHost(raw)
	forms := []string{raw}
	if u, perr := url.Parse(raw); perr == nil {
		forms = append(forms, u.String(), u.Redacted())
		if u.User != nil {
			forms = append(forms, u.User.String())
		}
		if p := u.EscapedPath(); len(p) > 1 {
			forms = append(forms, p)
		}
		if u.RawQuery != "" {
			forms = append(forms, u.RawQuery)
		}
	}
	for _, f := range forms {
		if f != "" {
			msg = strings.ReplaceAll(msg, f, host)
		}
	}
	return &urlRedactedError{msg: msg, err: err}
}

// webhookHost returns the scheme and host of a webhook URL for operation
// names and logs: its path, query and user info may hold a secret token.
func webhookHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(webhook)"
	}
	return u.Scheme + "://" + u.Host
}
