package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// TestPolicySuggest: a guardian publishes its latency histograms to
// GUARDIAN_LATENCY; 'policy suggest' reads them, prints old and new budgets
// side by side, and with --apply stores the new ones, which the guardian
// applies and audits once as AUDIT_POLICY_CHANGED.
func TestPolicySuggest(t *testing.T) {
	t.Parallel()
	g := startGuardian(t, "", "GUARDIAN_LATENCY_INTERVAL=200ms")
	nc := g.connect(t)
	for range 50 {
		request(t, nc, "guardian.v1.policy.get", "", nil).ok(t, nil)
	}
	// The API's calls reach the stream within an interval.
	var stdout, stderr string
	var code int
	eventually(t, 20*time.Second, func() (bool, string) {
		stdout, stderr, code = g.cli(t, "policy", "suggest", "--window", "1h", "--min-calls", "50", "--codes", "TIMEOUT_API_REQUEST")
		return code == 0 && strings.Contains(stdout, "TIMEOUT_API_REQUEST"), fmt.Sprintf("exit %d\n%s%s", code, stdout, stderr)
	})
	if !tableHas(stdout, []string{"CODE", "CALLS", "TIMEOUTS", "P99.9", "MAX_OK", "OLD", "OLD_RATE", "NEW", "NEW_RATE"},
		[]string{"TIMEOUT_API_REQUEST", "30s", "0.000%"}) {
		t.Fatalf("suggest table:\n%s", stdout)
	}
	var out struct {
		Suggestions []jsguard.Suggestion `json:"suggestions"`
	}
	stdout, stderr, code = g.cli(t, "policy", "suggest", "--window", "1h", "--min-calls", "50", "--codes", "TIMEOUT_API_REQUEST", "--json")
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || code != 0 || len(out.Suggestions) != 1 {
		t.Fatalf("suggest --json: exit %d, %v\n%s%s", code, err, stdout, stderr)
	}
	s := out.Suggestions[0]
	if s.Calls < 50 || s.Old != 30*time.Second || s.New <= 0 || s.New >= s.Old || s.New < s.MaxOK {
		t.Fatalf("suggestion %+v: want a budget below 30s and not below the longest call", s)
	}
	if _, stderr, code := g.cli(t, "policy", "suggest", "--margin", "0.5"); code != 2 || !strings.Contains(stderr, "--margin 0.5 is out of range") {
		t.Errorf("--margin 0.5: exit %d: %s", code, stderr)
	}

	// The API's calls take well under a millisecond: the largest margin
	// keeps the applied budget (100ms or more) one the rest of the test,
	// which only asks for the policy, can live with.
	_, stderr, code = g.cli(t, "policy", "suggest", "--window", "1h", "--min-calls", "50", "--codes", "TIMEOUT_API_REQUEST", "--margin", "1000", "--apply")
	if code != 0 || !strings.Contains(stderr, "1 budgets stored in GUARDIAN_POLICY") {
		t.Fatalf("suggest --apply: exit %d: %s", code, stderr)
	}
	var applied jsguard.Policy
	eventually(t, 10*time.Second, func() (bool, string) {
		request(t, nc, "guardian.v1.policy.get", "", nil).ok(t, &applied)
		return applied.Budget(jsguard.APIRequest) != 30*time.Second, fmt.Sprint(applied.Budget(jsguard.APIRequest))
	})
	// The change is audited once.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		info, err := js.Stream(t.Context(), "GUARDIAN_AUDIT")
		if err != nil {
			return false, err.Error()
		}
		st, err := info.Info(t.Context(), jetstream.WithSubjectFilter("guardian.v1.audit._none."+PolicyChangedCode))
		if err != nil {
			return false, err.Error()
		}
		return st.State.Msgs == 1, fmt.Sprintf("%d policy change events", st.State.Msgs)
	})
	// ... and stays one: the watch and the resync apply it once.
	time.Sleep(6 * time.Second) // past the store's 5s resync
	st, err := js.Stream(t.Context(), "GUARDIAN_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context(), jetstream.WithSubjectFilter("guardian.v1.audit._none."+PolicyChangedCode))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("%d policy change events later, want 1", info.State.Msgs)
	}
}
