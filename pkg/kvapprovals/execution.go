package kvapprovals

import (
	"context"
	"fmt"
	"time"
)

// Kinds of the lifecycle events of a command run under an approved
// approval (guardian exec).
const (
	KindExecutionStarted  = "execution_started"
	KindExecutionFinished = "execution_finished"
)

// ExecutionInput reports the start or the end of a command run under an
// approved approval. Phase is "started" or "finished"; ExitCode, Duration
// and TimedOut belong to "finished". RunBy is like RequestInput.RequestedBy
// and must name the requester.
type ExecutionInput struct {
	ID       string   `json:"id"`
	Phase    string   `json:"phase"`
	Argv     []string `json:"argv,omitempty"`
	Host     string   `json:"host,omitempty"`
	ExitCode *int     `json:"exit_code,omitempty"`
	Duration Duration `json:"duration,omitempty"`
	TimedOut bool     `json:"timed_out,omitempty"`
	RunBy    string   `json:"run_by,omitempty"`
}

// DecodeExecution strictly decodes an ExecutionInput; see DecodeRequest.
func DecodeExecution(data []byte) (ExecutionInput, error) { return decode[ExecutionInput](data) }

// Execution is what an execution event carries besides the record.
type Execution struct {
	Phase      string    `json:"phase"`
	Argv       []string  `json:"argv,omitempty"`
	Host       string    `json:"host,omitempty"`
	ExitCode   *int      `json:"exit_code,omitempty"`
	Duration   Duration  `json:"duration,omitempty"`
	TimedOut   bool      `json:"timed_out,omitempty"`
	RunBy      string    `json:"run_by"`
	Identity   *Identity `json:"identity,omitempty"`
	ApprovedBy string    `json:"approved_by"`
	At         time.Time `json:"at"`
}

// RecordExecution publishes the start or the end of a command run under an
// approved approval as its lifecycle event (execution_started or
// execution_finished, message id <tenant>.<id>.<revision>.<kind>, so a
// repeated report is stored once) and returns the event.
//
// It returns a *FieldError (ErrInvalidRequest) for bad input;
// ErrUnauthenticated or ErrIdentityMismatch; ErrNotFound; ErrNotEligible
// when the caller is not the requester; ErrConflict when the approval is
// not approved; otherwise the jetstream error or *jsguard.TimeoutError,
// wrapped.
func (s *Service) RecordExecution(ctx context.Context, tenant string, in ExecutionInput) (Event, error) {
	if err := checkName("tenant", tenant); err != nil {
		return Event{}, err
	}
	if err := checkName("id", in.ID); err != nil {
		return Event{}, err
	}
	kind := ""
	switch in.Phase {
	case "started":
		kind = KindExecutionStarted
	case "finished":
		kind = KindExecutionFinished
	default:
		return Event{}, invalid("phase", "%q: want started or finished", truncate(in.Phase, 40))
	}
	if len(in.Argv) > 256 || len(in.Host) > MaxTextBytes {
		return Event{}, invalid("argv", "at most 256 arguments and a host of at most %d bytes", MaxTextBytes)
	}
	n := 0
	for _, a := range in.Argv {
		n += len(a)
	}
	if n > 16<<10 {
		return Event{}, invalid("argv", "%d bytes exceeds the maximum %d", n, 16<<10)
	}
	key := tenant + "." + in.ID
	by, who, err := s.actor(ctx, "run_by", in.RunBy)
	if err != nil {
		return Event{}, fmt.Errorf("execution %s: %w", key, err)
	}
	ctx = withTenant(ctx, tenant)
	rec, err := s.getRecent(ctx, key)
	if err != nil {
		return Event{}, fmt.Errorf("execution %s: %w", key, err)
	}
	if rec.Status != StatusApproved {
		return Event{}, fmt.Errorf("execution %s: %w: the approval is %s, not approved", key, ErrConflict, rec.Status)
	}
	if !who.Same(rec.requester()) {
		return Event{}, fmt.Errorf("execution %s: %w: only the requester runs what it asked for", key, ErrNotEligible)
	}
	ev := Event{Kind: kind, Tenant: tenant, ID: in.ID, Revision: rec.Revision, Time: s.now().UTC(), Record: rec,
		Execution: &Execution{Phase: in.Phase, Argv: in.Argv, Host: in.Host, ExitCode: in.ExitCode, Duration: in.Duration,
			TimedOut: in.TimedOut, RunBy: by, Identity: who, ApprovedBy: rec.DecidedBy, At: s.now().UTC()}}
	if err := s.publishEvent(ctx, &ev); err != nil {
		return Event{}, fmt.Errorf("execution %s: %w", key, err)
	}
	return ev, nil
}
