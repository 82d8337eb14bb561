package kvapprovals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// RulesKeyPrefix prefixes a tenant's approver rules in the rules bucket:
// approvers.<tenant>.
const RulesKeyPrefix = "approvers."

// MaxRequiredApprovals bounds RequestInput.RequiredApprovals and the rules'
// counts; MaxExtensions bounds how often one approval may be extended.
const (
	MaxRequiredApprovals = 16
	MaxExtensions        = 8
)

// Rules are a tenant's approver rules, stored as JSON under
// approvers.<tenant> in the rules bucket (see WithRules) and read on every
// decision, so a change applies to the next one.
//
// Approvers name who may approve, deny or extend the tenant's approvals;
// anyone else is refused with ErrNotEligible. Each entry is one of:
//
//	user:ACCOUNT/USER   a NATS user of an account (ACCOUNT * for any account)
//	account:ACCOUNT     every user of a NATS account
//	tag:TAG             a NATS user whose JWT carries the tag
//	sub:SUBJECT         a browser login's OIDC subject
//	email:ADDRESS       a browser login's verified email (case-insensitive)
//	group:GROUP         a browser login in the group
//	name:NAME           a name written in the body (asserted identity only)
//
// An empty Approvers list, like a tenant without rules, lets anyone
// decide. Whatever the rules, the requester never extends its own request
// and approves it only when Config.AllowSelfApproval is set and one
// approval is required; it may always deny or cancel it (a withdrawal).
//
// RequiredApprovals (default 1) is how many distinct approvers must
// approve; a request may ask for more, never fewer. RequiredDenials
// (default 1) is how many distinct denials deny.
type Rules struct {
	Approvers         []string `json:"approvers,omitempty"`
	RequiredApprovals int      `json:"required_approvals,omitempty"`
	RequiredDenials   int      `json:"required_denials,omitempty"`
}

// ruleKinds are the prefixes an approver entry may have.
var ruleKinds = []string{"user", "account", "tag", "sub", "email", "group", "name"}

// Validate returns an error wrapping ErrInvalidRules naming the first
// malformed entry or count, nil when r is usable.
func (r *Rules) Validate() error {
	for i, a := range r.Approvers {
		kind, v, ok := strings.Cut(a, ":")
		switch {
		case !ok || !slices.Contains(ruleKinds, kind):
			return fmt.Errorf("%w: approvers[%d] %q: want one of %s followed by a colon and a value", ErrInvalidRules, i, truncate(a, 80), strings.Join(ruleKinds, ", "))
		case v == "" || len(v) > MaxTextBytes:
			return fmt.Errorf("%w: approvers[%d] %q: the value must be 1-%d bytes", ErrInvalidRules, i, truncate(a, 80), MaxTextBytes)
		case kind == "user" && !strings.Contains(v, "/"):
			return fmt.Errorf("%w: approvers[%d] %q: want user:ACCOUNT/USER (ACCOUNT may be *)", ErrInvalidRules, i, truncate(a, 80))
		}
	}
	if r.RequiredApprovals < 0 || r.RequiredApprovals > MaxRequiredApprovals {
		return fmt.Errorf("%w: required_approvals %d: want 0-%d", ErrInvalidRules, r.RequiredApprovals, MaxRequiredApprovals)
	}
	if r.RequiredDenials < 0 || r.RequiredDenials > MaxRequiredApprovals {
		return fmt.Errorf("%w: required_denials %d: want 0-%d", ErrInvalidRules, r.RequiredDenials, MaxRequiredApprovals)
	}
	return nil
}

// DecodeRules strictly decodes and validates a rules document. It returns a
// *FieldError for malformed JSON and an error wrapping ErrInvalidRules for
// bad entries.
func DecodeRules(b []byte) (Rules, error) {
	r, err := decode[Rules](b)
	if err != nil {
		return Rules{}, err
	}
	return r, r.Validate()
}

// Eligible reports whether id may approve, deny or extend under r.
func (r *Rules) Eligible(id *Identity) bool {
	if len(r.Approvers) == 0 {
		return true
	}
	if id == nil {
		return false
	}
	for _, a := range r.Approvers {
		kind, v, _ := strings.Cut(a, ":")
		var match bool
		switch kind {
		case "user":
			acc, user, _ := strings.Cut(v, "/")
			match = id.Source == SourceNATS && (acc == "*" || acc == id.Account) && user == id.User
		case "account":
			match = id.Source == SourceNATS && id.Account == v
		case "tag":
			match = id.Source == SourceNATS && slices.Contains(id.Tags, v)
		case "sub":
			match = id.Source == SourceOIDC && id.Subject == v
		case "email":
			match = id.Source == SourceOIDC && id.Email != "" && strings.EqualFold(id.Email, v)
		case "group":
			match = id.Source == SourceOIDC && hasFold(id.Groups, v)
		case "name":
			match = id.Source == SourceAsserted && id.User == v
		}
		if match {
			return true
		}
	}
	return false
}

func (r *Rules) approvals() int { return max(1, r.RequiredApprovals) }
func (r *Rules) denials() int   { return max(1, r.RequiredDenials) }

// WithRules makes the Service read each tenant's approver rules from kv
// (key approvers.<tenant>) on every decision and extension. Without it,
// every tenant has no rules.
func WithRules(kv *jsguard.KV) Option { return func(s *Service) { s.rules = kv } }

// TenantRules returns tenant's approver rules from the rules bucket (see
// LoadRules for the errors), zero Rules without WithRules (or a *FieldError
// for a malformed tenant).
func (s *Service) TenantRules(ctx context.Context, tenant string) (Rules, error) {
	if s.rules == nil {
		if err := checkName("tenant", tenant); err != nil {
			return Rules{}, err
		}
		return Rules{}, nil
	}
	return LoadRules(withTenant(ctx, tenant), s.rules, tenant)
}

// SetTenantRules stores tenant's approver rules (see StoreRules). Without
// WithRules it returns an error wrapping ErrInvalidConfig.
func (s *Service) SetTenantRules(ctx context.Context, tenant string, r Rules) error {
	if s.rules == nil {
		return fmt.Errorf("%w: no rules bucket (WithRules)", ErrInvalidConfig)
	}
	return StoreRules(withTenant(ctx, tenant), s.rules, tenant, r)
}

// LoadRules reads tenant's approver rules from kv, zero Rules when none are
// stored. It returns a *FieldError for a malformed tenant; a stored
// document that does not decode or validate is an error wrapping
// ErrInvalidRules (decisions fail closed until it is fixed); read errors
// are the jetstream error or *jsguard.TimeoutError, wrapped.
func LoadRules(ctx context.Context, kv *jsguard.KV, tenant string) (Rules, error) {
	if err := checkName("tenant", tenant); err != nil {
		return Rules{}, err
	}
	e, err := kv.Get(ctx, RulesKeyPrefix+tenant)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Rules{}, nil
	}
	if err != nil {
		return Rules{}, fmt.Errorf("approver rules of %s: %w", tenant, err)
	}
	r, err := DecodeRules(e.Value())
	if err != nil {
		return Rules{}, fmt.Errorf("approver rules of %s (revision %d): %w: %v", tenant, e.Revision(), ErrInvalidRules, err)
	}
	return r, nil
}

// StoreRules validates r and stores it in kv as tenant's approver rules;
// every Service reading kv applies them from its next decision. It returns
// a *FieldError or an error wrapping ErrInvalidRules without writing
// anything, or the jetstream error or *jsguard.TimeoutError of the write.
func StoreRules(ctx context.Context, kv *jsguard.KV, tenant string, r Rules) error {
	if err := checkName("tenant", tenant); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(&r)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, RulesKeyPrefix+tenant, b); err != nil {
		return fmt.Errorf("store approver rules of %s: %w", tenant, err)
	}
	return nil
}
