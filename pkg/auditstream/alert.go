package auditstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// Alert is the JSON body published on AlertPrefix.<CODE> when a code's rate
// crosses the threshold:
//
//	{"code":"TIMEOUT_KV_GET","count":101,"window":"1m0s","threshold":100,"time":"2026-11-22T10:00:00Z"}
type Alert struct {
	// Code is the audit code whose rate crossed the threshold.
	Code string `json:"code"`
	// Count is the number of events of Code in the window when it
	// crossed, Threshold+1.
	Count int `json:"count"`
	// Window is Config.AlertWindow as a Go duration string.
	Window string `json:"window"`
	// Threshold is Config.AlertThreshold.
	Threshold int `json:"threshold"`
	// Time is when the stream stored the event that crossed it, UTC.
	Time time.Time `json:"time"`
}

// rateTracker counts events per code over a sliding window (t-window, t]
// and reports when a code's count rises above the threshold. A code that
// fired is silent until its count has fallen below the threshold again.
// It is pure and exact: time comes from the events.
type rateTracker struct {
	window    time.Duration
	threshold int
	codes     map[string]*codeRate
}

type codeRate struct {
	// times holds the newest events of the window, oldest first, at most
	// threshold+1 of them: enough for every count that decides something
	// to be exact, since older events leave the window first.
	times  []time.Time
	firing bool
	// settled is set once the end of the code's last episode (or, for a
	// new tracker, the count below the threshold) has been recorded in the
	// shared state; a fire clears it. rearmed is set when the count fell
	// below the threshold after a fire.
	settled, rearmed bool
}

// endPending reports whether code's episode has ended and the end is not
// yet recorded: its count fell below the threshold after it fired, or, for
// a tracker that never saw it fire, the count is below the threshold now.
func (r *rateTracker) endPending(code string) bool {
	c := r.codes[code]
	return c != nil && !c.firing && !c.settled && (c.rearmed || len(c.times) < r.threshold)
}

// ended records that the end of code's episode is in the shared state.
func (r *rateTracker) ended(code string) {
	if c := r.codes[code]; c != nil {
		c.settled, c.rearmed = true, false
	}
}

func newRateTracker(window time.Duration, threshold int) *rateTracker {
	return &rateTracker{window: window, threshold: threshold, codes: map[string]*codeRate{}}
}

// add records an event of code at t and returns whether this event made
// the count exceed the threshold (the alert fires now) and the count in
// the window including it, capped at threshold+1. Times that go backwards
// are treated as the latest time seen. The count only falls between
// events, so checking for the fall just before each event is exact.
func (r *rateTracker) add(code string, t time.Time) (fire bool, count int) {
	c := r.codes[code]
	if c == nil {
		c = &codeRate{}
		r.codes[code] = c
	}
	if n := len(c.times); n > 0 && t.Before(c.times[n-1]) {
		t = c.times[n-1]
	}
	cut := t.Add(-r.window)
	i := 0
	for i < len(c.times) && !c.times[i].After(cut) {
		i++
	}
	c.times = c.times[i:]
	if c.firing && len(c.times) < r.threshold {
		c.firing, c.rearmed = false, true
	}
	c.times = append(c.times, t)
	if len(c.times) > r.threshold+1 {
		c.times = c.times[1:]
	}
	if !c.firing && len(c.times) > r.threshold {
		c.firing, c.settled = true, false
		return true, len(c.times)
	}
	return false, len(c.times)
}

// approvalAuditPrefix starts the codes of the approval audit events
// (AUDIT_APPROVAL_EXTENDED, AUDIT_APPROVAL_DECIDED), which alerts do not
// count.
const approvalAuditPrefix = "AUDIT_APPROVAL_"

// Alerter watches the audit stream and publishes an Alert on
// AlertPrefix.<CODE> (core NATS, so it reaches subscribers and any stream
// that captures those subjects) when more than AlertThreshold events of one
// code are stored within AlertWindow, and not again for that code until its
// count has fallen below the threshold.
//
// One crossing gives one alert however many Alerters run (one per
// replica) and however often they restart: the state of each code's
// episode lives in the KV bucket Config.AlertStateBucket, key <CODE>, as
// {"firing":…,"seq":…}, the stream sequence of its last change. An Alerter
// that sees a crossing at sequence S claims the episode with a
// revision-checked write, allowed only when the code is not firing and S
// is after the sequence that ended the last episode, and publishes only if
// its claim won; one that sees the count below the threshold at a sequence
// after the claim ends the episode. A process that stops between its
// claim and its publish loses that alert (at most one alert per
// crossing). It starts by reading the last window of history. Its methods
// are safe for concurrent use, but run one Run per Alerter.
type Alerter struct {
	g   *jsguard.Guard
	js  jetstream.JetStream
	cfg Config
	log *slog.Logger
}

// NewAlerter returns an Alerter; g (nil for jsguard.Default()) bounds its
// NATS calls. It returns an error wrapping ErrInvalidConfig for a bad cfg.
func NewAlerter(g *jsguard.Guard, js jetstream.JetStream, cfg Config, opts ...Option) (*Alerter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Alerter{g: g, js: js, cfg: cfg, log: buildOptions(opts).log}, nil
}

// Run follows the stream and publishes alerts until ctx ends, then returns
// nil. With AlertThreshold 0 it only waits for ctx. Read errors are logged
// and the consumer restarted after the last event seen; it returns an
// error only when the NATS connection is closed.
func (a *Alerter) Run(ctx context.Context) error {
	if a.cfg.AlertThreshold == 0 {
		<-ctx.Done()
		return nil
	}
	tr := newRateTracker(a.cfg.AlertWindow, a.cfg.AlertThreshold)
	var lastSeq uint64
	var backoff time.Duration
	var kv *jsguard.KV
	for {
		var err error
		if kv == nil {
			kv, err = a.g.EnsureKV(ctx, a.js, jetstream.KeyValueConfig{Bucket: a.cfg.AlertStateBucket,
				Description: "guardian audit rate alerts: the episode of each code", History: 1,
				Storage: jetstream.FileStorage, Replicas: a.cfg.Replicas})
		}
		if err == nil {
			err = a.follow(ctx, tr, kv, &lastSeq)
		}
		if ctx.Err() != nil {
			return nil
		}
		if a.js.Conn().IsClosed() {
			return fmt.Errorf("alerter: %w", err)
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
		a.log.Warn("audit alerter: reading the stream failed", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}
}

// alertState is the value of a code's key in the alert state bucket.
type alertState struct {
	Firing bool   `json:"firing"`
	Seq    uint64 `json:"seq"`
}

// transition moves code's episode to firing (claim) or not, as observed at
// stream sequence seq. It returns whether this call made the change; a
// change another Alerter made first, or one that the state already
// reflects, returns false.
func (a *Alerter) transition(ctx context.Context, kv *jsguard.KV, code string, seq uint64, firing bool) (bool, error) {
	for {
		var cur alertState
		var rev uint64
		e, err := kv.Get(ctx, code)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return false, err
		default:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &cur); err != nil {
				cur = alertState{} // not ours: overwrite
			}
		}
		if cur.Firing == firing || seq <= cur.Seq {
			return false, nil
		}
		data, _ := json.Marshal(alertState{Firing: firing, Seq: seq})
		if rev == 0 {
			_, err = kv.Create(ctx, code, data)
		} else {
			_, err = kv.Update(ctx, code, data, rev)
		}
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			continue // another Alerter changed it: judge again
		default:
			if apiErr, ok := errors.AsType[*jetstream.APIError](err); ok && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
				continue
			}
			return false, err
		}
	}
}

func (a *Alerter) follow(ctx context.Context, tr *rateTracker, kv *jsguard.KV, lastSeq *uint64) error {
	filter, _ := filterSubject(&a.cfg, "", "")
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}}
	if *lastSeq > 0 {
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, *lastSeq+1
	} else {
		from := time.Now().Add(-a.cfg.AlertWindow)
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &from
	}
	cons, err := orderedConsumer(ctx, a.g, a.js, a.cfg.Stream, occ)
	if err != nil {
		return err
	}
	defer deleteConsumer(a.g, a.js, a.cfg.Stream, cons)
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return err
		}
		md, err := msg.Metadata()
		if err != nil {
			return err
		}
		seq := md.Sequence.Stream
		*lastSeq = seq
		_, code, ok := splitSubject(&a.cfg, msg.Subject())
		if !ok || strings.HasPrefix(code, approvalAuditPrefix) {
			continue // approvals' own audit events record work done, not failures
		}
		fire, count := tr.add(code, md.Timestamp)
		switch {
		case fire:
			won, err := a.transition(ctx, kv, code, seq, true)
			if err != nil {
				// The shared state cannot be read: this crossing's alert is
				// lost rather than possibly sent twice.
				a.log.Error("audit alert not sent: its episode cannot be claimed", "code", code, "err", err)
				return fmt.Errorf("claim alert of %s: %w", code, err)
			}
			if won {
				a.publish(ctx, Alert{Code: code, Count: count, Window: a.cfg.AlertWindow.String(),
					Threshold: a.cfg.AlertThreshold, Time: md.Timestamp.UTC()})
			}
		case tr.endPending(code):
			if _, err := a.transition(ctx, kv, code, seq, false); err != nil {
				return fmt.Errorf("end alert of %s: %w", code, err)
			}
			tr.ended(code)
		}
	}
}

// publish sends an alert and flushes it; a failure is logged, as nobody
// waits for the alert.
func (a *Alerter) publish(ctx context.Context, al Alert) {
	subject := a.cfg.AlertPrefix + "." + al.Code
	data, _ := json.Marshal(al)
	nc := a.js.Conn()
	err := a.g.Do(ctx, jsguard.NATSPublish, "alert "+subject, func(ctx context.Context) error {
		if err := nc.PublishMsg(&nats.Msg{Subject: subject, Data: data}); err != nil {
			return err
		}
		return nc.FlushWithContext(ctx)
	})
	switch {
	case err == nil:
		a.log.Warn("audit timeout rate above threshold", "code", al.Code, "count", al.Count,
			"window", al.Window, "threshold", al.Threshold)
	case !errors.Is(err, context.Canceled):
		a.log.Error("audit alert not published", "subject", subject, "err", err)
	}
}
