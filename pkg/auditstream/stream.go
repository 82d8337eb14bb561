package auditstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// streamConfig is the stream Ensure provisions for cfg.
func streamConfig(cfg Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        cfg.Stream,
		Description: "guardian TIMEOUT_* audit events and their seals",
		Subjects:    []string{cfg.SubjectPrefix + ".*.*", cfg.SealSubject()},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.MaxAge,
		Duplicates:  cfg.Duplicates,
		DenyDelete:  true,
		DenyPurge:   true,
	}
}

// Ensure creates the audit stream, or checks an existing one, so that it
// keeps at least what cfg asks for: subjects SubjectPrefix.*.* (events) and
// the seal subject, file storage, limits retention, at least Replicas
// replicas, events for at least MaxAge (0: forever), a Duplicates window of
// at least Duplicates, no MaxMsgs, MaxBytes, MaxMsgsPerSubject or
// MaxMsgSize limit, DiscardOld, DenyDelete and DenyPurge, no roll-ups and no
// per-message TTLs. g may be nil for jsguard.Default(); opts take
// WithLogger.
//
// A missing stream is created (a JetStream STREAM.CREATE request). An
// existing stream that already keeps at least that much is left alone: no
// update is sent, so a NATS user that may not update the stream (the shipped
// deploy/nats/accounts.conf denies guardian's user
// $JS.API.STREAM.UPDATE.GUARDIAN_AUDIT) still passes. A stored MaxAge,
// Duplicates window or replica count above cfg's is kept and logged at info
// level. Any stored setting that keeps less than cfg asks is raised with one
// STREAM.UPDATE request; Ensure never carries on with a weaker stream.
//
// It returns an error wrapping ErrInvalidConfig for a bad cfg. It returns
// one wrapping ErrIncompatibleStream when the existing stream has other
// subjects, another storage type or retention, is a mirror or sealed, or
// when it keeps less than cfg and the update is refused; that message names
// each setting with its stored and wanted value and says to change the
// stream as the identity that provisions it, or the configuration. A
// refusal by NATS permissions also wraps nats.ErrPermissionViolation and
// returns as soon as the server reports it; a refusal by the server also
// wraps the *jetstream.APIError; an update that gets no reply also wraps the
// *jsguard.TimeoutError (code TIMEOUT_NATS_STREAM_CREATE). Other failures
// return the jetstream error or *jsguard.TimeoutError. Ensure is safe for
// concurrent use.
func Ensure(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream, cfg Config, opts ...Option) (jetstream.Stream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	want := streamConfig(cfg)
	lookup := func() (jetstream.Stream, error) {
		return jsguard.DoValue(ctx, g, jsguard.NATSStreamCreate, "stream info "+cfg.Stream,
			func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, cfg.Stream) })
	}
	existing, err := lookup()
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, cerr := jsguard.DoValue(ctx, g, jsguard.NATSStreamCreate, "create stream "+cfg.Stream,
			func(ctx context.Context) (jetstream.Stream, error) { return js.CreateStream(ctx, want) })
		if !errors.Is(cerr, jetstream.ErrStreamNameAlreadyInUse) {
			if cerr != nil {
				return nil, fmt.Errorf("create stream %s: %w", cfg.Stream, cerr)
			}
			return s, nil
		}
		// Another process created it in between, maybe otherwise: check it.
		existing, err = lookup()
	}
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", cfg.Stream, err)
	}
	have := existing.CachedInfo().Config
	if err := compatible(have, want); err != nil {
		return nil, err
	}
	upd, raise, keep := plan(have, want)
	for _, d := range keep {
		o.log.Info("audit stream keeps its stored setting, which keeps more than configured",
			"stream", cfg.Stream, "setting", d.setting, "stored", fmt.Sprint(d.stored), "configured", fmt.Sprint(d.wanted))
	}
	if len(raise) == 0 {
		return existing, nil
	}
	s, err := update(ctx, g, js, upd)
	if err != nil {
		return nil, fmt.Errorf("%w: stream %s keeps less than configured (%s) and %w; change the stream as the identity that provisions it (e.g. nats stream edit %s), or the configuration to match it",
			ErrIncompatibleStream, cfg.Stream, joinDiffs(raise), err, cfg.Stream)
	}
	return s, nil
}

// compatible reports the first setting of have that an update to want
// cannot or must not change.
func compatible(have, want jetstream.StreamConfig) error {
	bad := func(setting string, h, w any) error {
		return fmt.Errorf("%w: stream %s: %s is %v, want %v", ErrIncompatibleStream, want.Name, setting, h, w)
	}
	hs, ws := slices.Sorted(slices.Values(have.Subjects)), slices.Sorted(slices.Values(want.Subjects))
	switch {
	case !slices.Equal(hs, ws):
		return bad("Subjects", hs, ws)
	case have.Storage != want.Storage:
		return bad("Storage", have.Storage, want.Storage)
	case have.Retention != want.Retention:
		return bad("Retention", have.Retention, want.Retention)
	case have.Mirror != nil:
		return bad("Mirror", have.Mirror.Name, "none")
	case have.Sealed:
		return bad("Sealed", true, false)
	}
	return nil
}

// diff is one setting whose stored value differs from the wanted one.
type diff struct {
	setting        string
	stored, wanted any
}

func joinDiffs(ds []diff) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprintf("%s is %v, want %v", d.setting, d.stored, d.wanted)
	}
	return strings.Join(s, "; ")
}

// age prints a MaxAge, where 0 means forever.
type age time.Duration

func (a age) String() string {
	if a == 0 {
		return "0 (forever)"
	}
	return time.Duration(a).String()
}

// limit prints a MaxMsgs/MaxBytes-style limit, where 0 and -1 mean none.
type limit int64

func (l limit) String() string {
	if l <= 0 {
		return "-1 (unlimited)"
	}
	return fmt.Sprint(int64(l))
}

// longer reports whether MaxAge a keeps events longer than b; 0 is forever.
func longer(a, b time.Duration) bool {
	return (a == 0 && b != 0) || (b != 0 && a > b)
}

// plan compares the stored config have with want. raise lists the settings
// in which have keeps less than want, and upd is have with those settings
// taken from want (settings guardian does not manage, such as placement,
// compression or metadata, stay as stored). keep lists the settings in which
// have keeps more than want; they stay as stored.
func plan(have, want jetstream.StreamConfig) (upd jetstream.StreamConfig, raise, keep []diff) {
	upd = have
	switch {
	case longer(want.MaxAge, have.MaxAge):
		raise = append(raise, diff{"MaxAge", age(have.MaxAge), age(want.MaxAge)})
		upd.MaxAge = want.MaxAge
	case longer(have.MaxAge, want.MaxAge):
		keep = append(keep, diff{"MaxAge", age(have.MaxAge), age(want.MaxAge)})
	}
	switch {
	case have.Duplicates < want.Duplicates:
		raise = append(raise, diff{"Duplicates", have.Duplicates, want.Duplicates})
		upd.Duplicates = want.Duplicates
	case have.Duplicates > want.Duplicates:
		keep = append(keep, diff{"Duplicates", have.Duplicates, want.Duplicates})
	}
	switch {
	case have.Replicas < want.Replicas:
		raise = append(raise, diff{"Replicas", have.Replicas, want.Replicas})
		upd.Replicas = want.Replicas
	case have.Replicas > want.Replicas:
		keep = append(keep, diff{"Replicas", have.Replicas, want.Replicas})
	}
	// guardian sets no size or count limit: any limit drops events early
	// (DiscardOld) or refuses new ones.
	for _, l := range []struct {
		setting string
		stored  int64
		clear   func()
	}{
		{"MaxMsgs", have.MaxMsgs, func() { upd.MaxMsgs = -1 }},
		{"MaxBytes", have.MaxBytes, func() { upd.MaxBytes = -1 }},
		{"MaxMsgsPerSubject", have.MaxMsgsPerSubject, func() { upd.MaxMsgsPerSubject = -1 }},
		{"MaxMsgSize", int64(have.MaxMsgSize), func() { upd.MaxMsgSize = -1 }},
	} {
		if l.stored > 0 {
			raise = append(raise, diff{l.setting, limit(l.stored), limit(-1)})
			l.clear()
		}
	}
	if have.Discard != want.Discard {
		raise = append(raise, diff{"Discard", have.Discard, want.Discard})
		upd.Discard = want.Discard
	}
	if have.DiscardNewPerSubject {
		raise = append(raise, diff{"DiscardNewPerSubject", true, false})
		upd.DiscardNewPerSubject = false
	}
	for _, b := range []struct {
		setting      string
		stored, want bool
		set          func(bool)
	}{
		// deletes, purges, roll-ups (which purge) and per-message TTLs
		// (Nats-TTL) each remove events before MaxAge
		{"DenyDelete", have.DenyDelete, true, func(v bool) { upd.DenyDelete = v }},
		{"DenyPurge", have.DenyPurge, true, func(v bool) { upd.DenyPurge = v }},
		{"AllowRollup", have.AllowRollup, false, func(v bool) { upd.AllowRollup = v }},
		{"AllowMsgTTL", have.AllowMsgTTL, false, func(v bool) { upd.AllowMsgTTL = v }},
	} {
		if b.stored != b.want {
			raise = append(raise, diff{b.setting, b.stored, b.want})
			b.set(b.want)
		}
	}
	return upd, raise, keep
}

// update sends the STREAM.UPDATE request for cfg under NATSStreamCreate. A
// NATS user denied that subject gets no reply, only an asynchronous
// permissions violation on the connection: update watches for it and
// returns it (wrapping nats.ErrPermissionViolation) at once instead of
// waiting for the deadline.
func update(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if nc := js.Conn(); nc != nil {
		stop := make(chan struct{})
		defer close(stop)
		go watchDenied(nc, "STREAM.UPDATE."+cfg.Name, nc.LastError(), stop, cancel)
	}
	s, err := jsguard.DoValue(ctx, g, jsguard.NATSStreamCreate, "update stream "+cfg.Name,
		func(ctx context.Context) (jetstream.Stream, error) { return js.UpdateStream(ctx, cfg) })
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, nats.ErrPermissionViolation) {
		return nil, fmt.Errorf("this NATS user may not update it: %w", cause)
	}
	if err != nil {
		if _, ok := errors.AsType[*jetstream.APIError](err); ok {
			return nil, fmt.Errorf("the server refused the update: %w", err)
		}
		return nil, fmt.Errorf("the update failed: %w", err)
	}
	return s, nil
}

// watchDenied polls nc's last error until stop closes, and cancels with it
// when it is a new permissions violation for a publish to a subject ending
// in suffix.
func watchDenied(nc *nats.Conn, suffix string, before error, stop <-chan struct{}, cancel context.CancelCauseFunc) {
	want := strings.ToLower(suffix + `"`)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		// errors.Is first: a violation's error is a comparable pointer, so
		// the comparison with before cannot panic.
		err := nc.LastError()
		if errors.Is(err, nats.ErrPermissionViolation) && err != before &&
			strings.Contains(strings.ToLower(err.Error()), want) {
			cancel(err)
			return
		}
	}
}
