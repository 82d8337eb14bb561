package scenarios

import (
	"strings"
	"testing"
)

func TestFailoverRows(t *testing.T) {
	r := E2EResult{Figures: map[string]map[string]float64{
		"TestReplicaKilled":       {"approvals": 700, "lost": 0, "duplicated": 0, "lateness n": 490, "lateness p50": 0.2, "lateness p99": 0.5, "lateness max": 6},
		"TestClusterLeaderKilled": {"requests succeed again after": 2.5, "leader elected after": 1.2, "lost": 0, "acknowledged": 900},
	}}
	rows := r.FailoverRows()
	status := map[string]Status{}
	for _, row := range rows {
		status[row.Measure] = row.Status
	}
	if s := status["  expiry lateness with a replica killed"]; s != Miss {
		t.Errorf("a 6 s expiry with a replica killed: %q, want MISS (limit 5 s)", s)
	}
	if s := status["one of two replicas killed during expiries: lost / duplicated"]; s != Pass {
		t.Errorf("lost 0 / dup 0: %q", s)
	}
	if s := status["3-node cluster, records stream leader shut down: requests succeed again after"]; s != Pass {
		t.Errorf("recovery 2.5 s: %q", s)
	}
	// A test that recorded nothing is a miss, not a pass.
	if s := status["nats-server down 0.0 s: lost / duplicated"]; s != Miss {
		t.Errorf("TestNATSRestart without figures: %q, want MISS", s)
	}
}

func TestSoakRows(t *testing.T) {
	r := E2EResult{Figures: map[string]map[string]float64{"TestSoak": {
		"duration": 240, "approvals requested": 9600, "API calls": 14000, "approvals": 9600, "lost": 0, "duplicated": 0,
		"nats-server memory first third": 100 << 20, "nats-server memory last third": 200 << 20, "nats-server memory allowed": 150 << 20,
		"guardian goroutines first third": 240, "guardian goroutines last third": 241, "guardian goroutines allowed": 274,
	}}}
	var memory, gor Status
	for _, row := range r.SoakRows() {
		switch {
		case strings.Contains(row.Measure, "nats-server memory"):
			memory = row.Status
		case strings.Contains(row.Measure, "guardian goroutines"):
			gor = row.Status
		}
	}
	if memory != Miss || gor != Pass {
		t.Errorf("memory %q (want MISS), goroutines %q (want pass)", memory, gor)
	}
}
