package kvapprovals

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// CorrelationHeader is the request and reply header that carries a
// correlation id through the request/reply API into audit events.
const CorrelationHeader = "Guardian-Correlation-Id"

// ErrUnavailable is what a client sees for a 5xx reply: guardian or one of its
// dependencies failed or timed out. A *APIError with it carries the
// TIMEOUT_* code when a dependency timed out.
var ErrUnavailable = errors.New("guardian unavailable")

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidateTenant returns a *FieldError (ErrInvalidRequest) unless tenant
// matches ^[A-Za-z0-9_-]{1,64}$ and is not one of the names guardian uses
// for its own subjects under guardian.v1 (audit, events, alerts, policy).
func ValidateTenant(tenant string) error {
	if !tokenRE.MatchString(tenant) {
		return &FieldError{Field: "tenant", Reason: fmt.Sprintf("%q must match ^[A-Za-z0-9_-]{1,64}$", tenant)}
	}
	return checkName("tenant", tenant)
}

// Decode strictly decodes one JSON document into a T, like DecodeRequest:
// unknown fields, trailing data, wrong types and documents over
// MaxInputBytes are refused with a *FieldError naming the field. An empty
// body decodes as {}.
func Decode[T any](data []byte) (T, error) {
	if len(bytesTrimSpace(data)) == 0 {
		data = []byte("{}")
	}
	return decode[T](data)
}

func bytesTrimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\n' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// APIError is an error as the request/reply API reports it: an HTTP-like
// status code, a stable status word, a message and, where it applies, the
// offending field, the record's final status, or the TIMEOUT_* code of a
// dependency that timed out. Replies carry it in the micro error headers
// (Nats-Service-Error-Code, Nats-Service-Error) and as the JSON body
// {"error": {...}}. It unwraps to the matching sentinel, so errors.Is works
// on the client side as on the server side.
type APIError struct {
	Code        int    `json:"code"`
	Status      string `json:"status"`
	Message     string `json:"message"`
	Field       string `json:"field,omitempty"`
	FinalStatus Status `json:"final_status,omitempty"`
	TimeoutCode string `json:"timeout_code,omitempty"`
}

// The stable status words of APIError, one per code.
const (
	APIInvalidRequest   = "invalid_request"   // 400
	APIUnauthenticated  = "unauthenticated"   // 401
	APIIdentityMismatch = "identity_mismatch" // 403
	APINotEligible      = "not_eligible"      // 403
	APIInvalidRules     = "invalid_rules"     // 500
	APISelfApproval     = "self_approval"     // 403
	APINotFound         = "not_found"         // 404
	APIAlreadyDecided   = "already_decided"   // 409
	APIConflict         = "conflict"          // 409
	APIExpired          = "expired"           // 410
	APITooManyPending   = "too_many_pending"  // 429
	APIInternal         = "internal"          // 500
	APITimeout          = "timeout"           // 503
	APIUnavailable      = "unavailable"       // 503
	APICircuitOpen      = "circuit_open"      // 503: a dependency's circuit breaker is open; retry later
)

// Error returns the message.
func (e *APIError) Error() string { return e.Message }

// Unwrap returns the sentinel matching the status: ErrInvalidRequest,
// ErrUnauthenticated, ErrIdentityMismatch, ErrNotEligible, ErrInvalidRules
// (with ErrUnavailable), ErrSelfApproval, ErrNotFound, ErrAlreadyDecided, ErrConflict, ErrExpired,
// ErrTooManyPending, or ErrUnavailable (with jsguard.ErrTimeout for a
// timeout, jsguard.ErrCircuitOpen for an open circuit).
func (e *APIError) Unwrap() []error {
	switch e.Status {
	case APIInvalidRequest:
		return []error{ErrInvalidRequest}
	case APISelfApproval:
		return []error{ErrSelfApproval}
	case APIUnauthenticated:
		return []error{ErrUnauthenticated}
	case APIIdentityMismatch:
		return []error{ErrIdentityMismatch}
	case APINotEligible:
		return []error{ErrNotEligible}
	case APIInvalidRules:
		return []error{ErrInvalidRules, ErrUnavailable}
	case APINotFound:
		return []error{ErrNotFound}
	case APIAlreadyDecided:
		if e.FinalStatus == StatusExpired {
			return []error{ErrAlreadyDecided, ErrExpired}
		}
		return []error{ErrAlreadyDecided}
	case APIConflict:
		return []error{ErrConflict}
	case APIExpired:
		return []error{ErrExpired}
	case APITooManyPending:
		return []error{ErrTooManyPending}
	case APITimeout:
		return []error{ErrUnavailable, jsguard.ErrTimeout}
	case APICircuitOpen:
		return []error{ErrUnavailable, jsguard.ErrCircuitOpen}
	}
	return []error{ErrUnavailable}
}

// ToAPIError maps any error a Service (or guardian's API) returns to its API
// form: 400 invalid input (with the field), 401 unauthenticated, 403
// identity mismatch, not eligible or self-approval, 404 not
// found, 409 already decided (with the final status) or conflicting retry,
// 410 expired, 429 too many pending, 503 with the TIMEOUT_* code when a
// dependency timed out, 503 circuit_open (with the code) when a
// dependency's circuit breaker is open, 500 otherwise. An *APIError is returned as it is.
func ToAPIError(err error) *APIError {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae
	}
	e := &APIError{Message: err.Error()}
	var fe *FieldError
	var se *StateError
	var te *jsguard.TimeoutError
	var coe *jsguard.CircuitOpenError
	switch {
	case errors.As(err, &fe):
		e.Code, e.Status, e.Field = http.StatusBadRequest, APIInvalidRequest, fe.Field
	case errors.Is(err, ErrInvalidRequest):
		e.Code, e.Status = http.StatusBadRequest, APIInvalidRequest
	case errors.Is(err, ErrSelfApproval):
		e.Code, e.Status = http.StatusForbidden, APISelfApproval
	case errors.Is(err, ErrUnauthenticated):
		e.Code, e.Status = http.StatusUnauthorized, APIUnauthenticated
	case errors.Is(err, ErrIdentityMismatch):
		e.Code, e.Status = http.StatusForbidden, APIIdentityMismatch
	case errors.Is(err, ErrNotEligible):
		e.Code, e.Status = http.StatusForbidden, APINotEligible
	case errors.Is(err, ErrInvalidRules):
		e.Code, e.Status = http.StatusInternalServerError, APIInvalidRules
	case errors.Is(err, ErrNotFound):
		e.Code, e.Status = http.StatusNotFound, APINotFound
	case errors.As(err, &se) && errors.Is(err, ErrExpired) && se.Record.Status != StatusExpired:
		// Pending but past expires_at + grace: the decision came too late.
		e.Code, e.Status = http.StatusGone, APIExpired
	case errors.As(err, &se) && se.Record.Status == StatusExpired:
		e.Code, e.Status, e.FinalStatus = http.StatusGone, APIExpired, StatusExpired
	case errors.Is(err, ErrAlreadyDecided):
		e.Code, e.Status = http.StatusConflict, APIAlreadyDecided
		if errors.As(err, &se) {
			e.FinalStatus = se.Record.Status
		}
	case errors.Is(err, ErrExpired):
		e.Code, e.Status = http.StatusGone, APIExpired
	case errors.Is(err, ErrConflict):
		e.Code, e.Status = http.StatusConflict, APIConflict
	case errors.Is(err, ErrTooManyPending):
		e.Code, e.Status = http.StatusTooManyRequests, APITooManyPending
	case errors.As(err, &te):
		e.Code, e.Status, e.TimeoutCode = http.StatusServiceUnavailable, APITimeout, te.Code
	case errors.As(err, &coe):
		e.Code, e.Status, e.TimeoutCode = http.StatusServiceUnavailable, APICircuitOpen, coe.Category.Code()
	default:
		e.Code, e.Status = http.StatusInternalServerError, APIInternal
	}
	return e
}
