package kvapprovals

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// TestToAPIErrorCircuitOpen: a call refused by an open circuit is a 503
// circuit_open naming the category, which a client can tell apart and
// retry, not a 500.
func TestToAPIErrorCircuitOpen(t *testing.T) {
	err := fmt.Errorf("get acme.a1: %w", &jsguard.CircuitOpenError{Category: jsguard.KVGet, Operation: "kv get"})
	ae := ToAPIError(err)
	if ae.Code != 503 || ae.Status != APICircuitOpen || ae.TimeoutCode != "TIMEOUT_KV_GET" {
		t.Fatalf("api error %+v", ae)
	}
	if !errors.Is(ae, jsguard.ErrCircuitOpen) || !errors.Is(ae, ErrUnavailable) {
		t.Errorf("%v does not match ErrCircuitOpen and ErrUnavailable", ae)
	}
}
