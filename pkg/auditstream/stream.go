package auditstream

import (
	"context"
	"errors"
	"fmt"
	"slices"

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

// Ensure creates the audit stream, or updates an existing one, to match
// cfg: subjects SubjectPrefix.*.* (events) and the seal subject, file storage, limits retention, Replicas,
// MaxAge, Duplicates, DenyDelete and DenyPurge. Both calls run through
// g.EnsureStream (g may be nil for jsguard.Default()).
//
// It returns an error wrapping ErrInvalidConfig for a bad cfg; one wrapping
// ErrIncompatibleStream that names the setting when the existing stream has
// other subjects, another storage type or retention, is a mirror, or the
// server refuses the update (the *jetstream.APIError is wrapped too); and
// the jetstream error or *jsguard.TimeoutError otherwise. Ensure is safe for
// concurrent use.
func Ensure(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream, cfg Config) (jetstream.Stream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	want := streamConfig(cfg)
	existing, err := jsguard.DoValue(ctx, g, jsguard.NATSStreamCreate, "stream info "+cfg.Stream,
		func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, cfg.Stream) })
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err := g.EnsureStream(ctx, js, want)
		if err != nil {
			return nil, fmt.Errorf("create stream %s: %w", cfg.Stream, err)
		}
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("look up stream %s: %w", cfg.Stream, err)
	}
	if err := compatible(existing.CachedInfo().Config, want); err != nil {
		return nil, err
	}
	s, err := g.EnsureStream(ctx, js, want)
	if err != nil {
		if _, ok := errors.AsType[*jetstream.APIError](err); ok {
			return nil, fmt.Errorf("%w: stream %s: the server refused the update: %w", ErrIncompatibleStream, cfg.Stream, err)
		}
		return nil, fmt.Errorf("update stream %s: %w", cfg.Stream, err)
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
