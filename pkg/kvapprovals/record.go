package kvapprovals

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"
)

// Status is an approval's state. Pending is the only non-terminal one.
type Status string

// The statuses.
const (
	StatusPending   Status = "pending"
	StatusApproved  Status = "approved"
	StatusDenied    Status = "denied"
	StatusCancelled Status = "cancelled"
	StatusExpired   Status = "expired"
)

// Terminal reports whether s is a final status.
func (s Status) Terminal() bool {
	switch s {
	case StatusApproved, StatusDenied, StatusCancelled, StatusExpired:
		return true
	}
	return false
}

func (s Status) valid() bool { return s == StatusPending || s.Terminal() }

const timeFormat = time.RFC3339Nano

// Duration is a time.Duration that travels in JSON as a Go duration string
// such as "90s".
type Duration time.Duration

// MarshalJSON returns the duration as a string, e.g. "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON parses a Go duration string. It returns a
// *json.UnmarshalTypeError for anything else, so decoders name the field.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &json.UnmarshalTypeError{Value: "non-string", Type: reflect.TypeFor[Duration]()}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &json.UnmarshalTypeError{Value: fmt.Sprintf("string %q (want a duration like \"90s\")", s), Type: reflect.TypeFor[Duration]()}
	}
	*d = Duration(v)
	return nil
}

// Record is one approval as stored in the records bucket under
// <tenant>.<id>. Times are UTC; a null warned_at or decided_at has not
// happened. Revision is the bucket revision the record was read at (it is
// not part of the stored value's identity). A Record is a plain value.
type Record struct {
	ID          string          `json:"id"`
	Tenant      string          `json:"tenant"`
	SessionID   string          `json:"session_id"`
	RequestedBy string          `json:"requested_by"`
	OperatorID  string          `json:"operator_id"`
	Details     json.RawMessage `json:"details"`
	Status      Status          `json:"status"`
	Timeout     Duration        `json:"timeout"`
	RequestedAt time.Time       `json:"requested_at"`
	ExpiresAt   time.Time       `json:"expires_at"`
	WarnedAt    *time.Time      `json:"warned_at"`
	// DecidedBy is the approver, denier or canceller; empty for expired.
	DecidedBy string     `json:"decided_by"`
	DecidedAt *time.Time `json:"decided_at"`
	Reason    string     `json:"reason"`
	Revision  uint64     `json:"revision"`
	// Requester and Decider are who requested and who made the final
	// decision (the last approval, the deciding denial, or the
	// cancellation), as the Service established it (see Identity). Absent
	// in records written before identities were recorded.
	Requester *Identity `json:"requester,omitempty"`
	Decider   *Identity `json:"decider,omitempty"`
	// RequiredApprovals is how many distinct approvers must approve (0 in
	// older records means 1); RequiredDenials how many denials deny.
	RequiredApprovals int `json:"required_approvals,omitempty"`
	RequiredDenials   int `json:"required_denials,omitempty"`
	// Approvals and Denials are the votes so far, one per principal, in
	// order; the final one is among them.
	Approvals []Vote `json:"approvals,omitempty"`
	Denials   []Vote `json:"denials,omitempty"`
	// Extensions are the deadline's extensions, in order; ExpiresAt is the
	// current deadline.
	Extensions []Extension `json:"extensions,omitempty"`
	// Change names what a pending revision changed when it is not the
	// request or the warning: approval_added, denial_added or extended.
	Change string `json:"change,omitempty"`
}

// Vote is one approval or denial.
type Vote struct {
	By       string    `json:"by"`
	Identity *Identity `json:"identity,omitempty"`
	At       time.Time `json:"at"`
	Reason   string    `json:"reason,omitempty"`
}

// Extension is one extension of an approval's deadline.
type Extension struct {
	By       string    `json:"by"`
	Identity *Identity `json:"identity,omitempty"`
	At       time.Time `json:"at"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Reason   string    `json:"reason"`
}

// Kind returns the lifecycle event kind this revision stands for:
// requested, warning, approval_added, denial_added, extended, or the
// terminal status.
func (r *Record) Kind() string {
	switch {
	case r.Status == StatusPending && r.Change != "":
		return r.Change
	case r.Status == StatusPending && r.WarnedAt != nil:
		return KindWarning
	case r.Status == StatusPending:
		return KindRequested
	}
	return string(r.Status) // approved, denied, cancelled, expired
}

// requiredApprovals is how many approvals approve r.
func (r *Record) requiredApprovals() int { return max(1, r.RequiredApprovals) }

// requiredDenials is how many denials deny r.
func (r *Record) requiredDenials() int { return max(1, r.RequiredDenials) }

// Key returns the record's key in the records bucket, <tenant>.<id>.
func (r *Record) Key() string { return r.Tenant + "." + r.ID }

// Deadline returns expires_at + grace: the instant after which no decision is
// accepted.
func (r *Record) Deadline(grace time.Duration) time.Time { return r.ExpiresAt.Add(grace) }

// sameRequest reports whether r was created by a request with this content.
func (r *Record) sameRequest(in *RequestInput, timeout time.Duration) bool {
	return r.SessionID == in.SessionID && r.RequestedBy == in.RequestedBy && r.OperatorID == in.OperatorID &&
		time.Duration(r.Timeout) == timeout && bytes.Equal(r.Details, in.Details) &&
		in.RequiredApprovals <= r.requiredApprovals() // the tenant's rules may have raised it
}

func decodeRecord(b []byte, rev uint64) (Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, fmt.Errorf("decode record: %w", err)
	}
	r.Revision = rev
	if string(r.Details) == "null" {
		r.Details = nil
	}
	return r, nil
}

// RequestInput asks for an approval. ID is optional: give one to make
// retries idempotent. Details, when given, must be a JSON object. A zero
// Timeout means the configured default.
//
// RequestedBy names the requester; with an authenticated identity (see
// WithIdentity) it may be left out, and must match it when given.
// RequiredApprovals asks for that many distinct approvals (1-16; the
// tenant's rules may require more, never fewer).
type RequestInput struct {
	ID                string          `json:"id,omitempty"`
	SessionID         string          `json:"session_id"`
	RequestedBy       string          `json:"requested_by,omitempty"`
	OperatorID        string          `json:"operator_id,omitempty"`
	Details           json.RawMessage `json:"details,omitempty"`
	Timeout           Duration        `json:"timeout,omitempty"`
	RequiredApprovals int             `json:"required_approvals,omitempty"`
}

// DecisionInput approves or denies an approval. DecidedBy is like
// RequestInput.RequestedBy.
type DecisionInput struct {
	ID        string `json:"id"`
	DecidedBy string `json:"decided_by,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

// CancelInput withdraws a pending approval. CancelledBy is like
// RequestInput.RequestedBy.
type CancelInput struct {
	ID          string `json:"id"`
	CancelledBy string `json:"cancelled_by,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// ExtendInput moves a pending approval's deadline later: by ExtendBy from
// the current expires_at, or to ExpiresAt (give exactly one). Reason is
// required. ExtendedBy is like RequestInput.RequestedBy.
type ExtendInput struct {
	ID         string     `json:"id"`
	ExtendBy   Duration   `json:"extend_by,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	Reason     string     `json:"reason"`
	ExtendedBy string     `json:"extended_by,omitempty"`
}

// GetInput names an approval.
type GetInput struct {
	ID string `json:"id"`
}

// ListInput selects a page of a tenant's approvals, optionally by status.
// Limit 0 means DefaultListLimit; Cursor is a previous ListResult.NextCursor.
type ListInput struct {
	Status Status `json:"status,omitempty"`
	Limit  int    `json:"limit,omitempty"`
	Cursor string `json:"cursor,omitempty"`
}

// ListResult is a page of approvals ordered by id. NextCursor is set when
// more may follow. Partial is true when the listing ran out of its time
// budget: Items holds what was gathered and NextCursor continues after it.
type ListResult struct {
	Items      []Record `json:"items"`
	NextCursor string   `json:"next_cursor,omitempty"`
	Partial    bool     `json:"partial,omitempty"`
}

// Input bounds.
const (
	// MaxInputBytes bounds an encoded input document.
	MaxInputBytes = 1 << 20
	// MaxTextBytes bounds session_id, requested_by, operator_id,
	// decided_by and cancelled_by.
	MaxTextBytes = 256
	// MaxReasonBytes bounds a reason.
	MaxReasonBytes = 1024
	// DefaultListLimit and MaxListLimit bound a page of List.
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// DecodeRequest strictly decodes a RequestInput: unknown fields, trailing
// data, wrong types and documents over MaxInputBytes are refused with a
// *FieldError (ErrInvalidRequest) naming the field. It checks syntax and
// types only; Service.Request validates values. Safe for concurrent use.
func DecodeRequest(data []byte) (RequestInput, error) { return decode[RequestInput](data) }

// DecodeDecision strictly decodes a DecisionInput; see DecodeRequest.
func DecodeDecision(data []byte) (DecisionInput, error) { return decode[DecisionInput](data) }

// DecodeCancel strictly decodes a CancelInput; see DecodeRequest.
func DecodeCancel(data []byte) (CancelInput, error) { return decode[CancelInput](data) }

// DecodeExtend strictly decodes an ExtendInput; see DecodeRequest.
func DecodeExtend(data []byte) (ExtendInput, error) { return decode[ExtendInput](data) }

// DecodeGet strictly decodes a GetInput; see DecodeRequest.
func DecodeGet(data []byte) (GetInput, error) { return decode[GetInput](data) }

// DecodeList strictly decodes a ListInput; see DecodeRequest.
func DecodeList(data []byte) (ListInput, error) { return decode[ListInput](data) }

func decode[T any](data []byte) (T, error) {
	var v T
	if len(data) > MaxInputBytes {
		return v, invalid("body", "%d bytes exceeds the maximum %d", len(data), MaxInputBytes)
	}
	if !utf8.Valid(data) {
		return v, invalid("body", "not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		var zero T
		return zero, jsonFieldError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		var zero T
		return zero, invalid("body", "unexpected data after the JSON object")
	}
	return v, nil
}

func jsonFieldError(err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te) && te.Field != "":
		return invalid(te.Field, "cannot use %s as %s", te.Value, te.Type)
	case errors.As(err, &te):
		return invalid("body", "must be a JSON object")
	case errors.As(err, &se):
		return invalid("body", "malformed JSON at offset %d: %v", se.Offset, se)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("body", "empty or truncated JSON")
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if name := strings.Trim(f, `"`); name != "" {
			return invalid(name, "unknown field")
		}
		return invalid("body", "unknown field %s", f)
	}
	return invalid("body", "%v", err)
}
