package kvapprovals

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// timers are the approvals' timers: JetStream message schedules (ADR-51)
// in the timers stream (Config.TimersStream). Arming the timer of key
// (<tenant>.<id>.<kind>) stores a schedule on <prefix>.sched.<key> that
// names an instant ("Nats-Schedule: @at ...") and a target,
// <prefix>.fire.<key>. At that instant the server stores a fire message on
// the target and removes the schedule, in one step. The expirer's durable
// consumer reads the fire subjects only, so arming and disarming a timer
// cost it nothing. The stream is a work queue: a fire leaves it when the
// expirer acknowledges it, and waits for the expirer however long it is
// down.
type timers struct {
	g      *jsguard.Guard
	js     jetstream.JetStream
	str    jetstream.Stream
	prefix string           // "$TIMERS.<stream>"
	now    func() time.Time // the clock deadlines are read on (Service.now)
	// skew is the stream leader's clock minus this host's, in
	// nanoseconds, as measured at measured (Unix nanoseconds; see
	// measureSkew); refreshing is set while arm has a measurement running.
	skew, measured atomic.Int64
	refreshing     atomic.Bool
}

// timerLead is how long before its instant a timer is scheduled to fire.
// The server fires schedules in rounds at least 250 ms apart, and a round
// that fires thousands hands them over one after another; the expirer
// holds a timer that comes early in memory until its instant (see
// timers.early), so expiries are on time rather than up to a round late.
const timerLead = time.Second

// maxHold is the longest the expirer holds a fired timer in memory; one
// that comes earlier still (clocks that differ) is redelivered later
// instead. It stays below consumerAckWait.
const maxHold = 2 * time.Second

// dueHeader carries a timer's instant, on the service's clock, from the
// schedule to its fire message (the server copies headers that are not
// its own).
const dueHeader = "Guardian-Due"

// skewRefresh is how old the skew estimate may get before arm measures it
// again, in the background.
const skewRefresh = time.Minute

// skewDeadband is the skew estimate taken for none: clocks that NTP keeps
// in step differ by less, and timers are no finer than the server's
// 250 ms scheduler period anyway.
const skewDeadband = 50 * time.Millisecond

// timersPrefix is the subject prefix of the timers stream name.
func timersPrefix(stream string) string { return "$TIMERS." + stream }

// timersStreamConfig is the timers stream's configuration.
func timersStreamConfig(cfg Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              cfg.TimersStream,
		Description:       "guardian approval timers (message schedules)",
		Subjects:          []string{timersPrefix(cfg.TimersStream) + ".>"},
		Retention:         jetstream.WorkQueuePolicy,
		MaxMsgsPerSubject: 1,
		AllowMsgSchedules: true,
		AllowRollup:       true, // schedules are stored as rollups; the server would turn it on anyway
		Discard:           jetstream.DiscardOld,
		Replicas:          cfg.Replicas,
		Storage:           jetstream.FileStorage,
	}
}

func (t *timers) sched(key string) string { return t.prefix + ".sched." + key }
func (t *timers) fire(key string) string  { return t.prefix + ".fire." + key }

// fires is the filter of the expirer's consumer.
func (t *timers) fires() string { return t.prefix + ".fire.>" }

// firedKey returns the key of a fire message's subject, and false for any
// other subject.
func (t *timers) firedKey(subject string) (string, bool) {
	key, ok := strings.CutPrefix(subject, t.prefix+".fire.")
	return key, ok && key != ""
}

// cursor is the subject of the periodic sweep's cursor.
func (t *timers) cursor() string { return t.prefix + ".swept" }

// arm stores the schedule of key for at, unless key has one already. at
// is read on t.now's clock; the schedule names the instant that is as far
// from now on the stream leader's clock (this host's wall clock corrected
// by the measured skew), less timerLead, so neither a fake clock nor a
// server clock that differs from this host's moves it. The server fires it
// then, or up to its scheduler's 250 ms period later, with at in the
// dueHeader; an instant already past fires at once. It reports whether it stored the schedule, and returns the publish
// error or *jsguard.TimeoutError (TIMEOUT_NATS_PUBLISH).
func (t *timers) arm(ctx context.Context, key string, at time.Time) (bool, error) {
	if time.Since(time.Unix(0, t.measured.Load())) > skewRefresh && t.refreshing.CompareAndSwap(false, true) {
		go func() {
			defer t.refreshing.Store(false)
			_, _ = t.measureSkew(context.WithoutCancel(ctx))
		}()
	}
	m := nats.NewMsg(t.sched(key))
	wait := at.Sub(t.now()) // before reading the wall clock: never early
	instant := time.Now().Add(time.Duration(t.skew.Load()) + wait - timerLead)
	// Not jetstream.WithScheduleAt: it writes whole seconds, cut down, so
	// the timer would fire up to a second before its instant.
	m.Header.Set(jetstream.ScheduleHeader, "@at "+instant.UTC().Format(time.RFC3339Nano))
	m.Header.Set(dueHeader, at.UTC().Format(time.RFC3339Nano))
	_, err := t.g.PublishMsg(ctx, t.js, m, jetstream.WithScheduleTarget(t.fire(key)), jetstream.WithExpectLastSequencePerSubject(0))
	if isWrongLastSeq(err) {
		return false, nil
	}
	return err == nil, err
}

// measureSkew estimates the stream leader's clock minus this host's from
// the time stamp of a stream info answer, taken as read halfway through
// the round trip, and keeps it for arm. It returns the stream info, or the
// jetstream error or *jsguard.TimeoutError (TIMEOUT_APPROVAL_CHECK), and
// then keeps the previous estimate until the next try, skewRefresh later.
func (t *timers) measureSkew(ctx context.Context) (*jetstream.StreamInfo, error) {
	start := time.Now()
	info, err := jsguard.DoValue(ctx, t.g, jsguard.ApprovalCheck, "stream info "+t.str.CachedInfo().Config.Name,
		func(ctx context.Context) (*jetstream.StreamInfo, error) { return t.str.Info(ctx) })
	if err != nil {
		t.measured.Store(time.Now().UnixNano()) // try again after skewRefresh, not at every arm
		return nil, err
	}
	if !info.TimeStamp.IsZero() {
		rtt := time.Since(start)
		skew := info.TimeStamp.Sub(start.Add(rtt / 2))
		if skew.Abs() <= rtt/2+skewDeadband {
			skew = 0 // within what the measurement can tell
		}
		t.skew.Store(int64(skew))
	}
	t.measured.Store(time.Now().UnixNano())
	return info, nil
}

// early returns how long before its instant a fire message came, by
// t.now's clock, when that is more than nothing and at most maxHold, and
// otherwise 0 (also for a fire without the dueHeader).
func (t *timers) early(m jetstream.Msg) time.Duration {
	v := m.Headers().Get(dueHeader)
	if v == "" {
		return 0
	}
	at, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return 0
	}
	if wait := at.Sub(t.now()); wait > 0 && wait <= maxHold {
		return wait
	}
	return 0
}

// serverNow returns the stream leader's time as last estimated.
func (t *timers) serverNow() time.Time { return time.Now().Add(time.Duration(t.skew.Load())) }

// disarm removes the schedule of key, if any; a timer that fired already
// is not touched. It returns the jetstream error or *jsguard.TimeoutError
// (TIMEOUT_KV_DELETE).
func (t *timers) disarm(ctx context.Context, key string) error {
	return t.g.Do(ctx, jsguard.KVDelete, "disarm timer "+key, func(ctx context.Context) error {
		return t.str.Purge(ctx, jetstream.WithPurgeSubject(t.sched(key)))
	})
}

// live reports whether key has a timer: a schedule, or a fire the expirer
// has yet to acknowledge. It returns the read error or
// *jsguard.TimeoutError (TIMEOUT_APPROVAL_CHECK).
func (t *timers) live(ctx context.Context, key string) (bool, error) {
	_, err := jsguard.DoValue(ctx, t.g, jsguard.ApprovalCheck, "approval timer "+key,
		func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
			return t.str.GetLastMsgForSubject(ctx, t.prefix+".*."+key)
		})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	return err == nil, err
}

// scheduled returns the schedules' subjects that match filter (a key
// pattern such as "acme.*.*"), under ApprovalCheck. It returns the
// jetstream error or *jsguard.TimeoutError.
func (t *timers) scheduled(ctx context.Context, filter string) (map[string]uint64, error) {
	info, err := jsguard.DoValue(ctx, t.g, jsguard.ApprovalCheck, "approval timers "+filter,
		func(ctx context.Context) (*jetstream.StreamInfo, error) {
			return t.str.Info(ctx, jetstream.WithSubjectFilter(t.sched(filter)))
		})
	if err != nil {
		return nil, err
	}
	return info.State.Subjects, nil
}

// isWrongLastSeq reports whether err is a failed Nats-Expected-Last-
// Subject-Sequence condition (10071; replicated streams say 10164).
func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
