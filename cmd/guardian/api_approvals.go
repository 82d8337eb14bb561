package main

import (
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
