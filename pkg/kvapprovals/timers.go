package kvapprovals

import (
	"context"
	"errors"
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
	prefix string // "$TIMERS.<stream>"
}

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
	p := t.prefix + ".fire."
	if len(subject) <= len(p) || subject[:len(p)] != p {
		return "", false
	}
	return subject[len(p):], true
}

// cursor is the subject of the periodic sweep's cursor.
func (t *timers) cursor() string { return t.prefix + ".swept" }

// arm stores the schedule of key for at, unless key has one already. at is
// read on the clock now was read from; the schedule names the same distance
// from this host's wall clock, and the server fires it on its own clock
// (its scheduler runs every 250 ms at most). An instant already past fires
// at once. It reports whether it stored the schedule, and returns the
// publish error or *jsguard.TimeoutError (TIMEOUT_NATS_PUBLISH).
func (t *timers) arm(ctx context.Context, key string, at, now time.Time) (bool, error) {
	m := nats.NewMsg(t.sched(key))
	// Not jetstream.WithScheduleAt: it writes whole seconds, cut down, so
	// the timer would fire up to a second before its instant.
	m.Header.Set(jetstream.ScheduleHeader, "@at "+time.Now().Add(at.Sub(now)).UTC().Format(time.RFC3339Nano))
	_, err := t.g.PublishMsg(ctx, t.js, m, jetstream.WithScheduleTarget(t.fire(key)), jetstream.WithExpectLastSequencePerSubject(0))
	if isWrongLastSeq(err) {
		return false, nil
	}
	return err == nil, err
}

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
