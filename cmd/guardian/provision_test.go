package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

func TestProvisionRetriesTransientErrors(t *testing.T) {
	log := newLogger(io.Discard, "error", "json")
	tests := []struct {
		name      string
		errs      []error
		wantCalls int
		wantErr   error
	}{
		{"ok at once", nil, 1, nil},
		{"timeout then ok", []error{&jsguard.TimeoutError{Code: "TIMEOUT_NATS_STREAM_CREATE"}}, 2, nil},
		{"no responders, cluster unavailable, then ok", []error{nats.ErrNoResponders, &jetstream.APIError{Code: 503}}, 3, nil},
		{"no peers for placement yet, then ok", []error{&jetstream.APIError{Code: 400, ErrorCode: 10005, Description: "no suitable peers for placement"}}, 2, nil},
		{"permanent error is not retried", []error{jetstream.ErrStreamNameAlreadyInUse}, 1, jetstream.ErrStreamNameAlreadyInUse},
		{"permissions violation is not retried", []error{fmt.Errorf("%w: update refused: %w", auditstream.ErrIncompatibleStream, nats.ErrPermissionViolation)}, 1, auditstream.ErrIncompatibleStream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := provision(t.Context(), log, "test", func(context.Context) error {
				calls++
				if calls <= len(tt.errs) {
					return tt.errs[calls-1]
				}
				return nil
			})
			if calls != tt.wantCalls || !errors.Is(err, tt.wantErr) {
				t.Errorf("calls = %d, err = %v; want %d calls, err %v", calls, err, tt.wantCalls, tt.wantErr)
			}
		})
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := provision(ctx, log, "test", func(context.Context) error { return nats.ErrNoResponders }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled provision = %v, want context.Canceled", err)
	}
}
