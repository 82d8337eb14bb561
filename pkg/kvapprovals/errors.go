package kvapprovals

import (
	"errors"
	"fmt"
)

// The sentinel errors. Every error a Service returns for a refused operation
// matches one of them with errors.Is; the suggested API status is in
// brackets. Errors from NATS or a timeout (*jsguard.TimeoutError) pass
// through wrapped.
var (
	// ErrInvalidRequest: the input is malformed or out of range; the error
	// is a *FieldError naming the field [400].
	ErrInvalidRequest = errors.New("invalid request")
	// ErrSelfApproval: decided_by is the requester and self-approval is not
	// allowed [403].
	ErrSelfApproval = errors.New("self-approval is not allowed")
	// ErrNotFound: no approval with that id in that tenant [404].
	ErrNotFound = errors.New("approval not found")
	// ErrAlreadyDecided: the approval is no longer pending; the error is a
	// *StateError carrying the record [409].
	ErrAlreadyDecided = errors.New("approval already decided")
	// ErrConflict: a request reused an id with different content [409].
	ErrConflict = errors.New("approval id already used with different content")
	// ErrExpired: the approval ran out (now is past expires_at + grace, or
	// its status is expired); the error is a *StateError [410].
	ErrExpired = errors.New("approval expired")
	// ErrTooManyPending: the tenant has MaxPending pending approvals [429].
	ErrTooManyPending = errors.New("too many pending approvals")
	// ErrUnauthenticated: the Service requires an authenticated identity
	// (IdentityRequired) and the call carries none [401].
	ErrUnauthenticated = errors.New("no authenticated identity")
	// ErrIdentityMismatch: the body names an actor other than the
	// caller's authenticated identity [403].
	ErrIdentityMismatch = errors.New("the body names someone other than the caller")
	// ErrNotEligible: the tenant's approver rules do not name the caller,
	// or the requester tried to extend its own request [403].
	ErrNotEligible = errors.New("not an eligible approver")
	// ErrInvalidRules: a tenant's stored approver rules do not decode or
	// validate; decisions fail closed until they are fixed [500].
	ErrInvalidRules = errors.New("invalid approver rules")
)

// FieldError reports a bad input field. It matches ErrInvalidRequest.
type FieldError struct {
	Field  string // JSON name, e.g. "timeout"; "body" for the document itself
	Reason string // what is wrong and the allowed range
}

// Error returns e.g. "invalid request: timeout: 48h0m0s is out of range: must be >= 1s and <= 2h0m0s".
func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: %s: %s", ErrInvalidRequest, e.Field, e.Reason)
}

// Unwrap returns ErrInvalidRequest.
func (e *FieldError) Unwrap() error { return ErrInvalidRequest }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// StateError reports an operation refused because of the approval's state:
// it is already decided (ErrAlreadyDecided) or ran out (ErrExpired). Record
// is the approval as last read. An approval whose status is expired matches
// both ErrAlreadyDecided and ErrExpired.
type StateError struct {
	Op     string // approve, deny or cancel
	Record Record
	err    error
}

// Error returns e.g. "approve acme/a1: approval already decided: approved by bob".
func (e *StateError) Error() string {
	r := &e.Record
	prefix := fmt.Sprintf("%s %s/%s: ", e.Op, r.Tenant, r.ID)
	switch {
	case r.Status == StatusPending:
		return prefix + fmt.Sprintf("%s: expired at %s, grace ended", ErrExpired, r.ExpiresAt.Format(timeFormat))
	case r.Status == StatusExpired:
		return prefix + fmt.Sprintf("%s: status expired", ErrExpired)
	case r.DecidedBy != "":
		return prefix + fmt.Sprintf("%s: %s by %s", ErrAlreadyDecided, r.Status, r.DecidedBy)
	default:
		return prefix + fmt.Sprintf("%s: %s", ErrAlreadyDecided, r.Status)
	}
}

// Unwrap returns the sentinels the error matches.
func (e *StateError) Unwrap() []error {
	if e.Record.Status == StatusExpired {
		return []error{ErrExpired, ErrAlreadyDecided}
	}
	return []error{e.err}
}
