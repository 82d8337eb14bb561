package main

import (
	"time"

	"context"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

func (a *api) request(ctx context.Context, tenant string, data []byte) (any, error) {
	in, err := kvapprovals.DecodeRequest(data)
	if err != nil {
		return nil, err
	}
	return a.approvals.Request(ctx, tenant, in)
}

func (a *api) approve(ctx context.Context, tenant string, data []byte) (any, error) {
	in, err := kvapprovals.DecodeDecision(data)
	if err != nil {
		return nil, err
	}
	return a.approvals.Approve(ctx, tenant, in)
}

func (a *api) deny(ctx context.Context, tenant string, data []byte) (any, error) {
	in, err := kvapprovals.DecodeDecision(data)
	if err != nil {
		return nil, err
	}
	return a.approvals.Deny(ctx, tenant, in)
}

func (a *api) cancel(ctx context.Context, tenant string, data []byte) (any, error) {
	in, err := kvapprovals.DecodeCancel(data)
	if err != nil {
		return nil, err
	}
	return a.approvals.Cancel(ctx, tenant, in)
}

func (a *api) extend(ctx context.Context, tenant string, data []byte) (any, error) {
	in, err := kvapprovals.DecodeExtend(data)
	if err != nil {
		return nil, err
	}
	return a.approvals.Extend(ctx, tenant, in)
}

// await answers when the approval is final, or after the wait the body
// asks (25s when none), shortened so that the answer beats the request's
// deadline: this guardian's API_REQUEST budget, or the caller's
// Guardian-Timeout-Ms when that comes first (a second short of it, or a
// fifth of it when that is less).
func (a *api) await(ctx context.Context, tenant string, data []byte) (any, error) {
	in, err := kvapprovals.DecodeAwait(data)
	if err != nil {
		return nil, err
	}
	wait := time.Duration(in.Wait)
	if wait < 0 {
		return nil, &kvapprovals.FieldError{Field: "wait", Reason: "must not be negative"}
	}
	if wait == 0 {
		wait = 25 * time.Second
	}
	if d, ok := ctx.Deadline(); ok {
		left := time.Until(d)
		wait = min(wait, left-min(time.Second, left/5))
	}
	return a.approvals.Await(ctx, tenant, in.ID, max(wait, 10*time.Millisecond))
}

func (a *api) execution(ctx context.Context, tenant string, data []byte) (any, error) {
	in, err := kvapprovals.DecodeExecution(data)
	if err != nil {
		return nil, err
	}
	return a.approvals.RecordExecution(ctx, tenant, in)
}

func (a *api) get(ctx context.Context, tenant string, data []byte) (any, error) {
	in, err := kvapprovals.DecodeGet(data)
	if err != nil {
		return nil, err
	}
	return a.approvals.Get(ctx, tenant, in.ID)
}

func (a *api) list(ctx context.Context, tenant string, data []byte) (any, error) {
	in, err := kvapprovals.Decode[kvapprovals.ListInput](data) // an empty body lists everything
	if err != nil {
		return nil, err
	}
	return a.approvals.List(ctx, tenant, in)
}
