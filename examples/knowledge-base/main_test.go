package main

import (
	"strings"
	"testing"
)

// TestKnowledgeBase runs the example against its embedded server: every
// level degrades once, as its comment says, each with one audit event,
// and the request returns a summary at T5's budget.
func TestKnowledgeBase(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for T5's 10s budget")
	}
	var out strings.Builder
	if err := run(nil, &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"audit TIMEOUT_T1_CACHE     T1    fallback_used=true", "cache core/overview.md: skip cache",
		"audit TIMEOUT_T2_FILE      T2    fallback_used=true", "read guides/tuning.md: fallback content",
		"audit TIMEOUT_T3_LAYER     T3    fallback_used=true", "layer history: partial result, missing [",
		"audit TIMEOUT_T4_FULL      T4    fallback_used=true", "load knowledge base: core only, missing [archive]",
		"audit TIMEOUT_T5_COMPLEX   T5    fallback_used=true", "T5 answer request: abort with summary",
		"summary: loaded the core (2 files) and 3 of 4 optional layers; answered",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "audit TIMEOUT_"); n != 5 {
		t.Errorf("%d audit events, want one per level:\n%s", n, got)
	}
}
