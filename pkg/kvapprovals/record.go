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
}

// Key returns the record's key in the records bucket, <tenant>.<id>.
func (r *Record) Key() string { return r.Tenant + "." + r.ID }

// Deadline returns expires_at + grace: the instant after which no decision is
// accepted.
func (r *Record) Deadline(grace time.Duration) time.Time { return r.ExpiresAt.Add(grace) }

// sameRequest reports whether r was created by a request with this content.
func (r *Record) sameRequest(in *RequestInput, timeout time.Duration) bool {
	return r.SessionID == in.SessionID && r.RequestedBy == in.RequestedBy && r.OperatorID == in.OperatorID &&
		time.Duration(r.Timeout) == timeout && bytes.Equal(r.Details, in.Details)
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
type RequestInput struct {
	ID          string          `json:"id,omitempty"`
	SessionID   string          `json:"session_id"`
	RequestedBy string          `json:"requested_by"`
	OperatorID  string          `json:"operator_id,omitempty"`
	Details     json.RawMessage `json:"details,omitempty"`
	Timeout     Duration        `json:"timeout,omitempty"`
}

// DecisionInput approves or denies an approval.
type DecisionInput struct {
	ID        string `json:"id"`
	DecidedBy string `json:"decided_by"`
	Reason    string `json:"reason,omitempty"`
}

// CancelInput withdraws a pending approval.
type CancelInput struct {
	ID          string `json:"id"`
	CancelledBy string `json:"cancelled_by"`
	Reason      string `json:"reason,omitempty"`
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
