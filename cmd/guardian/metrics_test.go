package main

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// TestCircuitMetrics: a breaker's changes set guardian_circuit_state and
// count into guardian_circuit_changes_total; calls it refused count as
// outcome "rejected" without a duration.
func TestCircuitMetrics(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	h := m.hooks()
	h.OnCircuit(jsguard.KVGet, jsguard.CircuitOpen)
	if v := testutil.ToFloat64(m.circuit.WithLabelValues("KV_GET")); v != 1 {
		t.Errorf("state %g after open, want 1", v)
	}
	h.OnCircuit(jsguard.KVGet, jsguard.CircuitHalfOpen)
	h.OnCircuit(jsguard.KVGet, jsguard.CircuitClosed)
	if v := testutil.ToFloat64(m.circuit.WithLabelValues("KV_GET")); v != 0 {
		t.Errorf("state %g after closed, want 0", v)
	}
	if v := testutil.ToFloat64(m.circuitChanges.WithLabelValues("KV_GET", "open")); v != 1 {
		t.Errorf("changes to open %g, want 1", v)
	}
	h.OnCall(jsguard.CallInfo{Category: jsguard.KVGet, Outcome: jsguard.Rejected})
	if v := testutil.ToFloat64(m.calls.WithLabelValues("KV_GET", "rejected")); v != 1 {
		t.Errorf("rejected calls %g, want 1", v)
	}
	if n := testutil.CollectAndCount(m.durations); n != 0 {
		t.Errorf("a rejected call observed a duration (%d series)", n)
	}
}
