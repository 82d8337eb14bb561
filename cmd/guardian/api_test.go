package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nkeys"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

const testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestServe runs one guardian and checks, as a client would, every endpoint
// and error code over plain NATS, the micro service discovery subjects, the
// CLI, HTTP /readyz and /metrics, and that no secret reaches the logs.
// Subtests share the server and use a tenant each.
func TestServe(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	sealPub, _ := kp.PublicKey()
	const password = "nats-password-that-must-not-leak"
	g := startGuardian(t, "",
		"GUARDIAN_LOG_LEVEL=debug", // the most a log shows: still no secret
		"GUARDIAN_APPROVAL_MAX_PENDING=3",
		"GUARDIAN_NATS_USER=alice",
		"GUARDIAN_NATS_PASSWORD="+password,
		"GUARDIAN_AUDIT_SEAL_SEED="+string(seed),
		"GUARDIAN_AUDIT_SEAL_INTERVAL=100ms",
	)
	nc := g.connect(t)

	t.Run("discovery", func(t *testing.T) { testDiscovery(t, nc) })
	t.Run("lifecycle", func(t *testing.T) { testLifecycle(t, nc) })
	t.Run("bad input", func(t *testing.T) { testBadInput(t, nc) })
	t.Run("too many pending", func(t *testing.T) { testTooManyPending(t, nc) })
	t.Run("expiry", func(t *testing.T) { testExpiry(t, nc) })
	t.Run("correlation and trace", func(t *testing.T) { testCorrelation(t, nc) })
	t.Run("audit report", func(t *testing.T) { testAuditReport(t, nc) })
	t.Run("caller deadline", func(t *testing.T) { testCallerDeadline(t, nc) })
	t.Run("policy get", func(t *testing.T) {
		var p jsguard.Policy
		request(t, nc, "guardian.v1.policy.get", "", nil).ok(t, &p)
		if p.Strategy != jsguard.Graceful || p.Default != 30*time.Second || p.Budget(jsguard.KVGet) != 5*time.Second {
			t.Fatalf("policy.get = %+v, want the defaults", p)
		}
		request(t, nc, "guardian.v1.policy.get", `{"x":1}`, nil).wantError(t, 400, kvapprovals.APIInvalidRequest, "x")
	})
	t.Run("stats", func(t *testing.T) { testStats(t, nc) })
	// The CLI runs are slow to start on a loaded machine: run them at once.
	t.Run("clients", func(t *testing.T) {
		t.Run("cli approvals", func(t *testing.T) { t.Parallel(); testCLIApprovals(t, g) })
		t.Run("cli audit", func(t *testing.T) { t.Parallel(); testCLIAudit(t, g, nc, sealPub) })
		t.Run("cli policy", func(t *testing.T) { t.Parallel(); testCLIPolicy(t, g, nc) })
		t.Run("cli exec", func(t *testing.T) { t.Parallel(); testCLIExec(t, g, nc) })
		t.Run("demo", func(t *testing.T) { t.Parallel(); testDemo(t, g) })
	})
	t.Run("http", func(t *testing.T) { testHTTP(t, g) })

	logs := g.logs.String()
	for _, secret := range []string{password, string(seed)} {
		if strings.Contains(logs, secret) {
			t.Errorf("serve logs show a secret (%.6s...)", secret)
		}
	}
	if !strings.Contains(logs, sealPub) {
		t.Errorf("serve logs lack the seal public key %s", sealPub)
	}
}

// testDemo runs the demo against the running guardian.
func testDemo(t *testing.T, g *guardian) {
	out, stderr, code := g.cli(t, "demo", "--expire-after", "1s")
	if code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	for _, want := range []string{"approve deploy-", "deny    deploy-", "again: refused", "event  expired", "audit  TIMEOUT_APPROVAL_EXPIRED", "after expiry: refused", "Done."} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "starting one of our own") {
		t.Errorf("demo started its own guardian although one runs:\n%s", out)
	}
}

func testDiscovery(t *testing.T, nc *nats.Conn) {
	for _, subject := range []string{"$SRV.PING", "$SRV.PING.guardian"} {
		var ping micro.Ping
		request(t, nc, subject, "", nil).ok(t, &ping)
		if ping.Name != "guardian" || ping.ID == "" || ping.Version == "" || ping.Type != micro.PingResponseType {
			t.Fatalf("%s = %+v", subject, ping)
		}
	}
	var info micro.Info
	request(t, nc, "$SRV.INFO.guardian", "", nil).ok(t, &info)
	if info.Name != "guardian" || info.Description == "" || info.Metadata["instance"] == "" {
		t.Fatalf("$SRV.INFO.guardian = %+v", info)
	}
	got := map[string]string{}
	for _, e := range info.Endpoints {
		got[e.Name] = e.Subject
	}
	want := map[string]string{
		"approvals_request":   "guardian.v1.*.approvals.request",
		"approvals_approve":   "guardian.v1.*.approvals.approve",
		"approvals_deny":      "guardian.v1.*.approvals.deny",
		"approvals_cancel":    "guardian.v1.*.approvals.cancel",
		"approvals_extend":    "guardian.v1.*.approvals.extend",
		"approvals_await":     "guardian.v1.*.approvals.await",
		"approvals_execution": "guardian.v1.*.approvals.execution",
		"approvals_get":       "guardian.v1.*.approvals.get",
		"approvals_list":      "guardian.v1.*.approvals.list",
		"policy_get":          "guardian.v1.policy.get",
		"audit_report":        "guardian.v1.audit.report",
	}
	for name, subject := range want {
		if got[name] != subject {
			t.Errorf("endpoint %s: subject %q, want %q", name, got[name], subject)
		}
	}
	if len(got) != len(want) {
		t.Errorf("endpoints %v, want %v", got, want)
	}
}

// testStats checks $SRV.STATS.guardian: micro's request count and
// guardian's own counts (requests, errors) in each endpoint's data.
func testStats(t *testing.T, nc *nats.Conn) {
	read := func() (micro.EndpointStats, endpointStatsData) {
		t.Helper()
		var st micro.Stats
		request(t, nc, "$SRV.STATS.guardian", "", nil).ok(t, &st)
		if st.Name != "guardian" || len(st.Endpoints) != 11 {
			t.Fatalf("$SRV.STATS.guardian = %+v", st)
		}
		for _, e := range st.Endpoints {
			if e.Name == "approvals_get" {
				var d endpointStatsData
				if err := json.Unmarshal(e.Data, &d); err != nil {
					t.Fatalf("approvals_get stats data %q: %v", e.Data, err)
				}
				return *e, d
			}
		}
		t.Fatal("$SRV.STATS.guardian has no approvals_get")
		return micro.EndpointStats{}, endpointStatsData{}
	}
	before, dBefore := read()
	request(t, nc, subj("stats", "request"), map[string]string{"id": "s1", "session_id": "s", "requested_by": "r"}, nil).ok(t, nil)
	request(t, nc, subj("stats", "get"), `{"id":"s1"}`, nil).ok(t, nil)
	request(t, nc, subj("stats", "get"), `{"id":"missing"}`, nil).wantError(t, 404, kvapprovals.APINotFound, "")
	after, dAfter := read()
	if after.NumRequests != before.NumRequests+2 {
		t.Errorf("num_requests %d -> %d, want +2", before.NumRequests, after.NumRequests)
	}
	if dAfter.Requests != dBefore.Requests+2 || dAfter.Errors != dBefore.Errors+1 {
		t.Errorf("data requests %d -> %d (want +2), errors %d -> %d (want +1)", dBefore.Requests, dAfter.Requests, dBefore.Errors, dAfter.Errors)
	}
	if !strings.Contains(dAfter.LastError, "approval not found") {
		t.Errorf("data last_error %q, want the 404's message", dAfter.LastError)
	}
}

func testLifecycle(t *testing.T, nc *nats.Conn) {
	const tenant = "acme"
	in := map[string]any{"id": "a1", "session_id": "s1", "requested_by": "alice", "timeout": "10m", "details": map[string]string{"cmd": "deploy <payments> & more"}}
	var r1 kvapprovals.Record
	before := time.Now()
	request(t, nc, subj(tenant, "request"), in, nil).ok(t, &r1)
	if r1.ID != "a1" || r1.Tenant != tenant || r1.Status != kvapprovals.StatusPending || r1.Revision == 0 ||
		r1.ExpiresAt.Before(before.Add(10*time.Minute-time.Second)) || time.Duration(r1.Timeout) != 10*time.Minute ||
		!sameJSON(r1.Details, `{"cmd":"deploy <payments> & more"}`) {
		t.Fatalf("request = %+v (details %s)", r1, r1.Details)
	}

	// In asserted mode a Nats-Request-Info header is the client's own
	// writing, not the server's: it is ignored.
	var forged kvapprovals.Record
	request(t, nc, subj("forged", "request"), map[string]any{"id": "a-forged", "session_id": "s", "requested_by": "alice"},
		map[string]string{kvapprovals.RequestInfoHeader: `{"acc":"OPS","user":"bob"}`}).ok(t, &forged)
	if forged.Requester == nil || forged.Requester.Source != kvapprovals.SourceAsserted || forged.Requester.User != "alice" || forged.Requester.Account != "" {
		t.Fatalf("asserted mode took a client-written identity header: requester %+v", forged.Requester)
	}

	// A retry returns the same approval; other content under the id is a conflict.
	var again kvapprovals.Record
	request(t, nc, subj(tenant, "request"), in, nil).ok(t, &again)
	if again.Revision != r1.Revision || !again.RequestedAt.Equal(r1.RequestedAt) {
		t.Fatalf("retry = %+v, want the same approval %+v", again, r1)
	}
	other := map[string]any{"id": "a1", "session_id": "s2", "requested_by": "alice", "timeout": "10m"}
	request(t, nc, subj(tenant, "request"), other, nil).wantError(t, 409, kvapprovals.APIConflict, "")

	var got kvapprovals.Record
	request(t, nc, subj(tenant, "get"), map[string]string{"id": "a1"}, nil).ok(t, &got)
	if got.Status != kvapprovals.StatusPending || got.Revision != r1.Revision {
		t.Fatalf("get = %+v", got)
	}

	request(t, nc, subj(tenant, "approve"), map[string]string{"id": "a1", "decided_by": "alice"}, nil).
		wantError(t, 403, kvapprovals.APISelfApproval, "")
	var approved kvapprovals.Record
	request(t, nc, subj(tenant, "approve"), map[string]string{"id": "a1", "decided_by": "bob", "reason": "ticket 42"}, nil).ok(t, &approved)
	if approved.Status != kvapprovals.StatusApproved || approved.DecidedBy != "bob" || approved.Reason != "ticket 42" || approved.DecidedAt == nil {
		t.Fatalf("approve = %+v", approved)
	}
	r := request(t, nc, subj(tenant, "approve"), map[string]string{"id": "a1", "decided_by": "carol"}, nil)
	r.wantError(t, 409, kvapprovals.APIAlreadyDecided, "")
	if r.Err.FinalStatus != kvapprovals.StatusApproved {
		t.Errorf("409 final_status %q, want approved", r.Err.FinalStatus)
	}
	request(t, nc, subj(tenant, "deny"), map[string]string{"id": "a1", "decided_by": "carol"}, nil).wantError(t, 409, kvapprovals.APIAlreadyDecided, "")
	request(t, nc, subj(tenant, "cancel"), map[string]string{"id": "a1", "cancelled_by": "alice"}, nil).wantError(t, 409, kvapprovals.APIAlreadyDecided, "")

	request(t, nc, subj(tenant, "request"), map[string]any{"id": "a2", "session_id": "s", "requested_by": "alice"}, nil).ok(t, nil)
	var denied kvapprovals.Record
	request(t, nc, subj(tenant, "deny"), map[string]string{"id": "a2", "decided_by": "bob", "reason": "no"}, nil).ok(t, &denied)
	if denied.Status != kvapprovals.StatusDenied {
		t.Fatalf("deny = %+v", denied)
	}
	request(t, nc, subj(tenant, "request"), map[string]any{"id": "a3", "session_id": "s", "requested_by": "alice"}, nil).ok(t, nil)
	var cancelled kvapprovals.Record
	request(t, nc, subj(tenant, "cancel"), map[string]string{"id": "a3", "cancelled_by": "alice"}, nil).ok(t, &cancelled)
	if cancelled.Status != kvapprovals.StatusCancelled || cancelled.DecidedBy != "alice" {
		t.Fatalf("cancel = %+v", cancelled)
	}

	for _, op := range []string{"get", "approve", "deny", "cancel"} {
		body := map[string]string{"id": "nope"}
		switch op {
		case "approve", "deny":
			body["decided_by"] = "bob"
		case "cancel":
			body["cancelled_by"] = "bob"
		}
		request(t, nc, subj(tenant, op), body, nil).wantError(t, 404, kvapprovals.APINotFound, "")
	}

	var all kvapprovals.ListResult
	request(t, nc, subj(tenant, "list"), "", nil).ok(t, &all)
	if ids := recordIDs(all.Items); !slices.Equal(ids, []string{"a1", "a2", "a3"}) || all.Partial || all.NextCursor != "" {
		t.Fatalf("list = %v partial %v next %q", ids, all.Partial, all.NextCursor)
	}
	var onlyApproved kvapprovals.ListResult
	request(t, nc, subj(tenant, "list"), map[string]string{"status": "approved"}, nil).ok(t, &onlyApproved)
	if ids := recordIDs(onlyApproved.Items); !slices.Equal(ids, []string{"a1"}) {
		t.Fatalf("list status=approved = %v", ids)
	}
	var page1, page2 kvapprovals.ListResult
	request(t, nc, subj(tenant, "list"), map[string]int{"limit": 2}, nil).ok(t, &page1)
	request(t, nc, subj(tenant, "list"), map[string]any{"limit": 2, "cursor": page1.NextCursor}, nil).ok(t, &page2)
	if ids := recordIDs(append(page1.Items, page2.Items...)); !slices.Equal(ids, []string{"a1", "a2", "a3"}) || page1.NextCursor == "" || page2.NextCursor != "" {
		t.Fatalf("pages = %v, cursors %q %q", ids, page1.NextCursor, page2.NextCursor)
	}
}

func recordIDs(rs []kvapprovals.Record) []string {
	var ids []string
	for _, r := range rs {
		ids = append(ids, r.ID)
	}
	return ids
}

// testBadInput sends malformed and out-of-range requests: each is a 400
// naming the field, and none changes anything.
func testBadInput(t *testing.T, nc *nats.Conn) {
	const tenant = "badin"
	details := `{"blob":"` + strings.Repeat("x", 17<<10) + `"}`
	tests := []struct {
		name, subject string
		body          any
		field         string
	}{
		{"malformed JSON", subj(tenant, "request"), `{"id":"x1","session_id":`, "body"},
		{"not an object", subj(tenant, "request"), `[1,2]`, "body"},
		{"trailing data", subj(tenant, "request"), `{"id":"x1","session_id":"s","requested_by":"r"} {}`, "body"},
		{"not UTF-8", subj(tenant, "request"), []byte("{\"id\":\"x1\",\"session_id\":\"\xff\",\"requested_by\":\"r\"}"), "body"},
		{"unknown field", subj(tenant, "request"), `{"id":"x1","session_id":"s","requested_by":"r","colour":"red"}`, "colour"},
		{"wrong type", subj(tenant, "request"), `{"id":"x1","session_id":1,"requested_by":"r"}`, "session_id"},
		{"missing requested_by", subj(tenant, "request"), `{"id":"x1","session_id":"s"}`, "requested_by"},
		{"timeout too long", subj(tenant, "request"), `{"id":"x1","session_id":"s","requested_by":"r","timeout":"48h"}`, "timeout"},
		{"timeout too short", subj(tenant, "request"), `{"id":"x1","session_id":"s","requested_by":"r","timeout":"500ms"}`, "timeout"},
		{"timeout not a duration", subj(tenant, "request"), `{"id":"x1","session_id":"s","requested_by":"r","timeout":"soon"}`, "timeout"},
		{"details not an object", subj(tenant, "request"), `{"id":"x1","session_id":"s","requested_by":"r","details":[1]}`, "details"},
		{"details oversized", subj(tenant, "request"), `{"id":"x1","session_id":"s","requested_by":"r","details":` + details + `}`, "details"},
		{"bad id", subj(tenant, "request"), `{"id":"x.1","session_id":"s","requested_by":"r"}`, "id"},
		{"bad tenant token", subj("bad!tenant", "request"), `{"id":"x1","session_id":"s","requested_by":"r"}`, "tenant"},
		{"tenant too long", subj(strings.Repeat("t", 65), "request"), `{"id":"x1","session_id":"s","requested_by":"r"}`, "tenant"},
		{"approve without decided_by", subj(tenant, "approve"), `{"id":"x1"}`, "decided_by"},
		{"cancel with decided_by", subj(tenant, "cancel"), `{"id":"x1","decided_by":"r"}`, "decided_by"},
		{"get without id", subj(tenant, "get"), `{}`, "id"},
		{"list bad status", subj(tenant, "list"), `{"status":"maybe"}`, "status"},
		{"list limit too large", subj(tenant, "list"), `{"limit":5000}`, "limit"},
		{"list bad cursor", subj(tenant, "list"), `{"cursor":"!!"}`, "cursor"},
		{"report oversized", "guardian.v1.audit.report", `{"operation":"` + strings.Repeat("x", 17<<10) + `"}`, "body"},
		{"report bad code", "guardian.v1.audit.report", `{"timeout_category":"KV_GET","operation":"x","timeout_seconds":1}`, "timeout_category"},
		{"report other event_type", "guardian.v1.audit.report", `{"event_type":"timeout_cleared","timeout_category":"TIMEOUT_KV_GET","operation":"x","timeout_seconds":1}`, "event_type"},
		{"report other budget_source", "guardian.v1.audit.report", `{"budget_source":"category","timeout_category":"TIMEOUT_KV_GET","operation":"x","timeout_seconds":1}`, "budget_source"},
		{"report chosen event_id", "guardian.v1.audit.report", `{"event_id":"00000000000000000000000000000000","timeout_category":"TIMEOUT_KV_GET","operation":"x","timeout_seconds":1,"started_at":"2026-01-02T03:04:05Z","timestamp":"2026-01-02T03:04:06Z"}`, "event_id"},
		{"report unknown field", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"x","timeout_seconds":1,"colour":"red"}`, "colour"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			request(t, nc, tt.subject, tt.body, nil).wantError(t, 400, kvapprovals.APIInvalidRequest, tt.field)
		})
	}
	// Nothing was written.
	request(t, nc, subj(tenant, "get"), `{"id":"x1"}`, nil).wantError(t, 404, kvapprovals.APINotFound, "")
	var l kvapprovals.ListResult
	request(t, nc, subj(tenant, "list"), "", nil).ok(t, &l)
	if len(l.Items) != 0 {
		t.Fatalf("bad input created %v", recordIDs(l.Items))
	}
}

func testTooManyPending(t *testing.T, nc *nats.Conn) {
	const tenant = "crowd" // the server allows 3 pending per tenant
	req := func(id string) map[string]string {
		return map[string]string{"id": id, "session_id": "s", "requested_by": "r", "timeout": "10m"}
	}
	for _, id := range []string{"c1", "c2", "c3"} {
		request(t, nc, subj(tenant, "request"), req(id), nil).ok(t, nil)
	}
	request(t, nc, subj(tenant, "request"), req("c4"), nil).wantError(t, 429, kvapprovals.APITooManyPending, "")
	request(t, nc, subj(tenant, "get"), `{"id":"c4"}`, nil).wantError(t, 404, kvapprovals.APINotFound, "")
	// A retry of a pending one is not a new one.
	request(t, nc, subj(tenant, "request"), req("c1"), nil).ok(t, nil)
	// Another tenant is not affected.
	request(t, nc, subj("crowd2", "request"), req("c4"), nil).ok(t, nil)
	// A decision makes room.
	request(t, nc, subj(tenant, "cancel"), `{"id":"c1","cancelled_by":"r"}`, nil).ok(t, nil)
	request(t, nc, subj(tenant, "request"), req("c4"), nil).ok(t, nil)
}

// testExpiry lets an approval run out: the decision that comes too late is
// a 410, the record turns expired, and one TIMEOUT_APPROVAL_EXPIRED audit
// event names the tenant and carries the session as correlation id.
func testExpiry(t *testing.T, nc *nats.Conn) {
	const tenant = "late"
	var r kvapprovals.Record
	request(t, nc, subj(tenant, "request"), map[string]string{"id": "e1", "session_id": "sess-e1", "requested_by": "alice", "timeout": "1s"}, nil).ok(t, &r)
	// Wait for the deadline (expires_at, the grace period is 0) on the
	// clock the server shares with the test.
	time.Sleep(time.Until(r.ExpiresAt.Add(50 * time.Millisecond)))
	// Refused from expires_at on, whether or not the expirer has run.
	request(t, nc, subj(tenant, "approve"), `{"id":"e1","decided_by":"bob"}`, nil).wantError(t, 410, kvapprovals.APIExpired, "")
	eventually(t, 20*time.Second, func() (bool, string) {
		var got kvapprovals.Record
		request(t, nc, subj(tenant, "get"), `{"id":"e1"}`, nil).ok(t, &got)
		return got.Status == kvapprovals.StatusExpired, "status " + string(got.Status)
	})
	rep := request(t, nc, subj(tenant, "deny"), `{"id":"e1","decided_by":"bob"}`, nil)
	rep.wantError(t, 410, kvapprovals.APIExpired, "")
	if rep.Err.FinalStatus != kvapprovals.StatusExpired {
		t.Errorf("410 final_status %q, want expired", rep.Err.FinalStatus)
	}
	ev := findAudit(t, nc, "TIMEOUT_APPROVAL_EXPIRED for late/e1", func(e auditEntry) bool {
		return e.Code == "TIMEOUT_APPROVAL_EXPIRED" && e.AdditionalContext["approval_id"] == "e1" && e.TenantID == tenant
	})
	if ev.Subject != "guardian.v1.audit.late.TIMEOUT_APPROVAL_EXPIRED" || ev.CorrelationID != "sess-e1" {
		t.Errorf("expiry audit event %+v: want subject guardian.v1.audit.late.TIMEOUT_APPROVAL_EXPIRED and correlation id sess-e1", ev)
	}
}

// testCorrelation: the correlation id is taken from the request header or
// generated, and returned in the reply header, on success and on error.
func testCorrelation(t *testing.T, nc *nats.Conn) {
	body := map[string]string{"id": "k1", "session_id": "s", "requested_by": "r"}
	r := request(t, nc, subj("corr", "request"), body, map[string]string{kvapprovals.CorrelationHeader: "corr-123"})
	r.ok(t, nil)
	if got := r.Header.Get(kvapprovals.CorrelationHeader); got != "corr-123" {
		t.Fatalf("reply correlation id %q, want corr-123", got)
	}
	e := request(t, nc, subj("corr", "get"), `{"id":"none"}`, map[string]string{kvapprovals.CorrelationHeader: "corr-err"})
	e.wantError(t, 404, kvapprovals.APINotFound, "")
	if got := e.Header.Get(kvapprovals.CorrelationHeader); got != "corr-err" {
		t.Fatalf("error reply correlation id %q, want corr-err", got)
	}
	seen := map[string]bool{}
	for _, h := range []map[string]string{nil, {kvapprovals.CorrelationHeader: strings.Repeat("c", 200)}, {kvapprovals.CorrelationHeader: "has space"}} {
		r := request(t, nc, subj("corr", "get"), `{"id":"k1"}`, h)
		r.ok(t, nil)
		id := r.Header.Get(kvapprovals.CorrelationHeader)
		if !correlationRE.MatchString(id) || strings.HasPrefix(id, "ccccc") || seen[id] {
			t.Fatalf("generated correlation id %q for header %v: want a new, valid one", id, h)
		}
		seen[id] = true
	}
}

// testAuditReport: a reported timeout reaches the audit stream with the
// tenant of the body and the correlation and trace ids of the headers,
// once, under a deterministic event id.
func testAuditReport(t *testing.T, nc *nats.Conn) {
	body := map[string]any{"timeout_category": "TIMEOUT_KV_GET", "operation": "kv get orders/o1", "timeout_seconds": 5, "elapsed_seconds": 5.2,
		"tenant_id": "rep", "additional_context": map[string]string{"host": "web-1"}, "started_at": "2026-01-02T03:04:05Z", "timestamp": "2026-01-02T03:04:10.2Z"}
	hdr := map[string]string{kvapprovals.CorrelationHeader: "corr-rep", "traceparent": testTraceparent}
	var out struct {
		EventID string `json:"event_id"`
	}
	request(t, nc, "guardian.v1.audit.report", body, hdr).ok(t, &out)
	if len(out.EventID) != 32 {
		t.Fatalf("event_id %q", out.EventID)
	}
	var again struct {
		EventID string `json:"event_id"`
	}
	request(t, nc, "guardian.v1.audit.report", body, hdr).ok(t, &again)
	if again.EventID != out.EventID {
		t.Fatalf("the same report got event ids %s and %s", out.EventID, again.EventID)
	}
	ev := findAudit(t, nc, "reported "+out.EventID, func(e auditEntry) bool { return e.EventID == out.EventID })
	if ev.Subject != "guardian.v1.audit.rep.TIMEOUT_KV_GET" || ev.TenantID != "rep" || ev.CorrelationID != "corr-rep" ||
		ev.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || ev.BudgetSource != jsguard.SourceReported || ev.AdditionalContext["host"] != "web-1" {
		t.Fatalf("reported event %+v", ev)
	}
	n := 0
	for _, e := range auditEvents(t, nc) {
		if e.EventID == out.EventID {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("event %s stored %d times, want once", out.EventID, n)
	}
	// The shape README documents, with the fields guardian sets, is the
	// same report: same event id, still stored once.
	documented := maps.Clone(body)
	documented["event_type"], documented["budget_source"], documented["event_id"] = jsguard.EventType, jsguard.SourceReported, out.EventID
	var fourth struct {
		EventID string `json:"event_id"`
	}
	request(t, nc, "guardian.v1.audit.report", documented, hdr).ok(t, &fourth)
	if fourth.EventID != out.EventID {
		t.Fatalf("the documented shape got event id %s, want %s", fourth.EventID, out.EventID)
	}
	n = 0
	for _, e := range auditEvents(t, nc) {
		if e.EventID == out.EventID {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("event %s stored %d times after the documented shape, want once", out.EventID, n)
	}
	// Ids in the body win over the headers'.
	body["correlation_id"] = "corr-body"
	var third struct {
		EventID string `json:"event_id"`
	}
	request(t, nc, "guardian.v1.audit.report", body, hdr).ok(t, &third)
	ev = findAudit(t, nc, "reported "+third.EventID, func(e auditEntry) bool { return e.EventID == third.EventID })
	if ev.CorrelationID != "corr-body" || ev.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("report with a correlation id in the body: %+v", ev)
	}
}

func testHTTP(t *testing.T, g *guardian) {
	if code, body := httpGet(t, g.httpURL+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, g.httpURL+"/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	fams := scrape(t, g)
	atLeast := func(name string, labels map[string]string, min float64) {
		t.Helper()
		v, ok := metricValue(fams, name, labels)
		if !ok || v < min {
			t.Errorf("%s%v = %v (present %v), want >= %v", name, labels, v, ok, min)
		}
	}
	// Timeouts by code: the expiry and the reports of the subtests above.
	atLeast("guardian_timeouts_total", map[string]string{"code": "TIMEOUT_APPROVAL_EXPIRED"}, 1)
	atLeast("guardian_timeouts_total", map[string]string{"code": "TIMEOUT_KV_GET"}, 2)
	atLeast("guardian_timeouts_total", map[string]string{"code": "TIMEOUT_NATS_PUBLISH"}, 0)
	// Call durations by category, abandoned calls.
	atLeast("guardian_guarded_call_duration_seconds", map[string]string{"category": "API_REQUEST"}, 20)
	atLeast("guardian_guarded_call_duration_seconds", map[string]string{"category": "APPROVAL_GRANT"}, 3)
	atLeast("guardian_abandoned_calls_total", map[string]string{"category": "KV_GET"}, 0)
	// Approvals by status, expiry lateness.
	for st, n := range map[string]float64{"pending": 8, "approved": 1, "denied": 1, "cancelled": 2, "expired": 1} {
		atLeast("guardian_approvals_total", map[string]string{"status": st}, n)
	}
	atLeast("guardian_approval_expiry_lateness_seconds", nil, 1)
	// Audit spooled and dropped.
	atLeast("guardian_audit_published_total", nil, 3)
	atLeast("guardian_audit_spooled_total", nil, 0)
	if v, ok := metricValue(fams, "guardian_audit_dropped_total", nil); !ok || v != 0 {
		t.Errorf("guardian_audit_dropped_total = %v (present %v), want 0", v, ok)
	}
	// Consumer lag, looked up at the scrape.
	for _, c := range []struct{ consumer, stream, durable string }{
		{"expirer", "GUARDIAN_TIMERS", "guardian-expirer"},
		{"notifier", "KV_GUARDIAN_APPROVALS", "guardian-notifier"},
	} {
		labels := map[string]string{"consumer": c.consumer, "stream": c.stream, "durable": c.durable}
		if v, ok := metricValue(fams, "guardian_consumer_up", labels); !ok || v != 1 {
			t.Errorf("guardian_consumer_up%v = %v (present %v), want 1", labels, v, ok)
		}
		atLeast("guardian_consumer_num_pending", labels, 0)
		atLeast("guardian_consumer_num_ack_pending", labels, 0)
	}
	// The notifier has caught up: the lag it reports drops to 0.
	eventually(t, 20*time.Second, func() (bool, string) {
		v, _ := metricValue(scrape(t, g), "guardian_consumer_num_pending", map[string]string{"consumer": "notifier", "stream": "KV_GUARDIAN_APPROVALS", "durable": "guardian-notifier"})
		return v == 0, fmt.Sprintf("notifier num_pending %v", v)
	})
}

// scrape reads and parses /metrics.
func scrape(t *testing.T, g *guardian) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, g.httpURL+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %q", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	return fams
}

// metricValue returns the value of the series of name whose labels include
// labels: a counter's or gauge's value, a histogram's sample count.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func testCLIApprovals(t *testing.T, g *guardian) {
	run := func(wantCode int, args ...string) (string, string) {
		t.Helper()
		out, stderr, code := g.cli(t, args...)
		if code != wantCode {
			t.Fatalf("guardian %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantCode, out, stderr)
		}
		return out, stderr
	}
	out, _ := run(0, "approval", "request", "--tenant", "cli", "--id", "c1", "--session", "s1", "--requested-by", "alice",
		"--timeout", "10m", "--details", `{"cmd":"deploy"}`, "--json")
	var r kvapprovals.Record
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.ID != "c1" || r.Status != kvapprovals.StatusPending || !sameJSON(r.Details, `{"cmd":"deploy"}`) {
		t.Fatalf("request --json = %q (%v)", out, err)
	}
	out, _ = run(0, "approval", "get", "--tenant", "cli", "--id", "c1")
	if !tableHas(out, []string{"ID", "STATUS", "REQUESTED", "BY"}, []string{"c1", "pending", "alice", "s1"}) {
		t.Fatalf("get table:\n%s", out)
	}
	_, stderr := run(1, "approval", "approve", "--tenant", "cli", "--id", "c1", "--by", "alice")
	if !strings.Contains(stderr, "guardian: 403 self_approval:") {
		t.Errorf("self-approval stderr %q", stderr)
	}
	out, _ = run(0, "approval", "approve", "--tenant", "cli", "--id", "c1", "--by", "bob", "--reason", "looks good")
	if !tableHas(out, nil, []string{"c1", "approved", "bob", "looks", "good"}) {
		t.Fatalf("approve table:\n%s", out)
	}
	_, stderr = run(1, "approval", "deny", "--tenant", "cli", "--id", "c1", "--by", "bob")
	if !strings.Contains(stderr, "guardian: 409 already_decided:") {
		t.Errorf("second decision stderr %q", stderr)
	}
	_, stderr = run(1, "approval", "get", "--tenant", "cli", "--id", "nope")
	if !strings.Contains(stderr, "guardian: 404 not_found:") {
		t.Errorf("get missing stderr %q", stderr)
	}
	_, stderr = run(1, "approval", "request", "--tenant", "cli", "--session", "s", "--requested-by", "a", "--timeout", "48h")
	if !strings.Contains(stderr, "guardian: 400 invalid_request:") || !strings.Contains(stderr, "(field timeout)") {
		t.Errorf("bad timeout stderr %q", stderr)
	}
	run(0, "approval", "request", "--tenant", "cli", "--id", "c2", "--session", "s2", "--requested-by", "alice")
	out, _ = run(0, "approval", "cancel", "--tenant", "cli", "--id", "c2", "--by", "alice", "--json")
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Status != kvapprovals.StatusCancelled {
		t.Fatalf("cancel --json = %q", out)
	}
	out, _ = run(0, "approval", "list", "--tenant", "cli", "--json")
	var l kvapprovals.ListResult
	if err := json.Unmarshal([]byte(out), &l); err != nil || !slices.Equal(recordIDs(l.Items), []string{"c1", "c2"}) {
		t.Fatalf("list --json = %q", out)
	}
	out, _ = run(0, "approval", "list", "--tenant", "cli", "--limit", "1")
	if !tableHas(out, []string{"ID", "STATUS"}, []string{"c1", "approved"}) || strings.Contains(out, "c2") || !strings.Contains(out, "more: --cursor ") {
		t.Fatalf("list --limit 1: want c1 and the cursor of the next page:\n%s", out)
	}

	// Two approvals, an extension, and the actor from $USER when --by and
	// --requested-by are left out (asserted identities).
	runAs := func(user string, wantCode int, args ...string) (string, string) {
		t.Helper()
		out, stderr, code := runGuardian(t, append(slicesClone(g.env), "GUARDIAN_NATS_URL="+g.natsURL, "USER="+user), args...)
		if code != wantCode {
			t.Fatalf("USER=%s guardian %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", user, strings.Join(args, " "), code, wantCode, out, stderr)
		}
		return out, stderr
	}
	out, _ = runAs("alice", 0, "approval", "request", "--tenant", "cli", "--id", "c3", "--session", "s3", "--timeout", "10m", "--required-approvals", "2", "--json")
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.RequestedBy != "alice" || r.RequiredApprovals != 2 {
		t.Fatalf("request with $USER and --required-approvals 2: %q", out)
	}
	out, _ = runAs("bob", 0, "approval", "approve", "--tenant", "cli", "--id", "c3", "--reason", "first")
	if !tableHas(out, []string{"APPROVALS"}, []string{"c3", "pending", "1/2"}) {
		t.Fatalf("first of two approvals:\n%s", out)
	}
	_, stderr = runAs("alice", 1, "approval", "extend", "--tenant", "cli", "--id", "c3", "--extend-by", "5m", "--reason", "mine")
	if !strings.Contains(stderr, "guardian: 403 not_eligible:") {
		t.Errorf("requester extending: %q", stderr)
	}
	_, stderr = runAs("carol", 2, "approval", "extend", "--tenant", "cli", "--id", "c3", "--reason", "no amount")
	if !strings.Contains(stderr, "--extend-by or --expires-at") {
		t.Errorf("extend without an amount: %q", stderr)
	}
	out, _ = runAs("carol", 0, "approval", "extend", "--tenant", "cli", "--id", "c3", "--extend-by", "5m", "--reason", "board", "--json")
	if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.Extensions) != 1 || r.Extensions[0].By != "carol" || r.Extensions[0].To.Sub(r.Extensions[0].From) != 5*time.Minute {
		t.Fatalf("extend --json = %q", out)
	}
	out, _ = runAs("carol", 0, "approval", "approve", "--tenant", "cli", "--id", "c3")
	if !tableHas(out, nil, []string{"c3", "approved", "2/2", "carol"}) {
		t.Fatalf("second approval:\n%s", out)
	}

	// Approver rules: stored, shown, applied to the next decision; bad ones
	// refused without writing.
	_, stderr = run(2, "approvers", "set", "--tenant", "cli", "--approver", "bob")
	if !strings.Contains(stderr, "invalid approver rules") {
		t.Errorf("bad rules: %q", stderr)
	}
	run(0, "approvers", "set", "--tenant", "cli", "--approver", "name:dave")
	out, _ = run(0, "approvers", "get", "--tenant", "cli")
	if !tableHas(out, nil, []string{"approvers", "name:dave"}) {
		t.Fatalf("approvers get:\n%s", out)
	}
	runAs("alice", 0, "approval", "request", "--tenant", "cli", "--id", "c4", "--session", "s4")
	_, stderr = runAs("bob", 1, "approval", "approve", "--tenant", "cli", "--id", "c4")
	if !strings.Contains(stderr, "guardian: 403 not_eligible:") {
		t.Errorf("bob under rules naming dave: %q", stderr)
	}
	runAs("dave", 0, "approval", "approve", "--tenant", "cli", "--id", "c4")
}

// tableHas reports whether out has a line with all of header's words and a
// line with all of row's.
func tableHas(out string, header, row []string) bool {
	has := func(words []string) bool {
		if words == nil {
			return true
		}
	line:
		for l := range strings.Lines(out) {
			f := strings.Fields(l)
			for _, w := range words {
				if !slices.Contains(f, w) {
					continue line
				}
			}
			return true
		}
		return false
	}
	return has(header) && has(row)
}

func testCLIAudit(t *testing.T, g *guardian, nc *nats.Conn, sealPub string) {
	// Something to read: a report with a known operation.
	var out struct {
		EventID string `json:"event_id"`
	}
	request(t, nc, "guardian.v1.audit.report", map[string]any{"timeout_category": "TIMEOUT_KV_PUT", "operation": "cli audit check",
		"timeout_seconds": 5, "tenant_id": "cliaudit"}, nil).ok(t, &out)

	stdout, stderr, code := g.cli(t, "audit", "tail", "--follow=false", "--json", "--tenant", "cliaudit")
	if code != 0 || !strings.Contains(stdout, out.EventID) || !strings.Contains(stdout, `"operation":"cli audit check"`) {
		t.Fatalf("audit tail --json: exit %d\n%s\n%s", code, stdout, stderr)
	}
	stdout, _, code = g.cli(t, "audit", "tail", "--since", "10m", "--follow=false", "--code", "TIMEOUT_KV_PUT")
	if code != 0 || !tableHas(stdout, []string{"SEQ", "TIME", "TENANT", "CODE"}, []string{"cliaudit", "TIMEOUT_KV_PUT", out.EventID}) {
		t.Fatalf("audit tail table: exit %d\n%s", code, stdout)
	}
	stdout, _, code = g.cli(t, "audit", "stats", "--window", "10m", "--tenant", "cliaudit")
	if code != 0 || !tableHas(stdout, []string{"MINUTE", "TENANT", "CODE", "COUNT"}, []string{"cliaudit", "TIMEOUT_KV_PUT", "1"}) {
		t.Fatalf("audit stats table: exit %d\n%s", code, stdout)
	}

	// The sealer seals within its interval: the live stream verifies, every
	// event under a seal.
	eventually(t, 30*time.Second, func() (bool, string) {
		stdout, stderr, code := g.cli(t, "audit", "verify", "--public-key", sealPub)
		return code == 0 && strings.Contains(stdout, "OK") && !strings.Contains(stdout, "sealed ranges verified: 0 of") &&
			!strings.Contains(stdout, "unsealed tail"), fmt.Sprintf("exit %d\n%s%s", code, stdout, stderr)
	})
	// Verifying and counting are T5 work: out of time, they print what
	// they did, say so, and exit 3; the timeout's event goes to stderr.
	// (1µs is over before any reply from NATS can arrive.)
	for _, args := range [][]string{
		{"audit", "verify", "--public-key", sealPub, "--max-time", "1us"},
		{"audit", "stats", "--window", "10m", "--max-time", "1us"},
	} {
		stdout, stderr, code := g.cli(t, args...)
		if code != 3 || !strings.Contains(stdout, "ABORTED") || !strings.Contains(stderr, "TIMEOUT_T5_COMPLEX") {
			t.Errorf("%v: exit %d, want 3\n%s%s", args, code, stdout, stderr)
		}
	}
	if _, stderr, code := g.cli(t, "audit", "stats", "--max-time", "0s"); code != 2 || !strings.Contains(stderr, "--max-time 0s is out of range") {
		t.Errorf("audit stats --max-time 0s: exit %d: %s", code, stderr)
	}
	// An export verifies offline; a tampered one does not.
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	if _, stderr, code := g.cli(t, "audit", "export", "--out", file); code != 0 {
		t.Fatalf("audit export: exit %d: %s", code, stderr)
	}
	if stdout, stderr, code := g.cli(t, "audit", "verify", "--file", file, "--public-key", sealPub); code != 0 || !strings.Contains(stdout, "OK") {
		t.Fatalf("audit verify --file: exit %d\n%s%s", code, stdout, stderr)
	}
	// Cut exports are refused: the head, the tail, a middle line, or a
	// header that claims a shorter retention.
	whole, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(strings.TrimSuffix(string(whole), "\n"), "\n")
	if len(lines) < 4 {
		t.Fatalf("export has %d lines", len(lines))
	}
	cuts := map[string]string{
		"head":   lines[0] + strings.Join(lines[2:], ""),
		"tail":   strings.Join(lines[:len(lines)-1], ""),
		"middle": strings.Join(lines[:len(lines)/2], "") + strings.Join(lines[len(lines)/2+1:], ""),
		"retention": strings.Replace(lines[0], `"max_age":7776000000000000`, `"max_age":1000000000`, 1) +
			strings.Join(lines[1:], ""),
	}
	for name, body := range cuts {
		cut := filepath.Join(t.TempDir(), name+".jsonl")
		if body == string(whole) {
			t.Fatalf("cut %s changed nothing", name)
		}
		if err := os.WriteFile(cut, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if stdout, _, code := g.cli(t, "audit", "verify", "--file", cut, "--public-key", sealPub); code != 1 || !strings.Contains(stdout, "FAILED") {
			t.Errorf("an export with its %s cut verified: exit %d\n%s", name, code, stdout)
		}
	}
	if stdout, _, code := g.cli(t, "audit", "verify", "--file", file, "--public-key", sealPub, "--json"); code != 0 || !strings.Contains(stdout, `"problems": []`) && !strings.Contains(stdout, `"problems": null`) {
		t.Errorf("audit verify --json of the whole export: exit %d\n%s", code, stdout)
	}
	if err := os.WriteFile(file, tamper(t, file, "cli audit check", "cli audit chekc"), 0o600); err != nil {
		t.Fatal(err)
	}
	if stdout, _, code := g.cli(t, "audit", "verify", "--file", file, "--public-key", sealPub); code != 1 || !strings.Contains(stdout, "FAILED") {
		t.Fatalf("a tampered export verified: exit %d\n%s", code, stdout)
	}

	// The live stream with its retention shortened (as an administrator
	// could) no longer verifies; restored, it does again.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), "GUARDIAN_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	orig := st.CachedInfo().Config
	short := orig
	short.MaxAge = time.Hour
	if _, err := js.UpdateStream(t.Context(), short); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code = g.cli(t, "audit", "verify", "--public-key", sealPub)
	if _, err := js.UpdateStream(t.Context(), orig); err != nil {
		t.Fatal(err)
	}
	if code != 1 || !strings.Contains(stdout, "retention_changed") {
		t.Fatalf("live stream with MaxAge 1h: exit %d\n%s%s", code, stdout, stderr)
	}
}

// testCLIPolicy changes the policy with the CLI: the running guardian
// applies it, and the bucket keeps the configuration it had.
func testCLIPolicy(t *testing.T, g *guardian, nc *nats.Conn) {
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// An operator tuned the bucket; `policy set` must not reconfigure it.
	if _, err := js.UpdateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: jsguard.PolicyBucket, History: 3,
		Description: "tuned by an operator", Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}

	// Level budgets out of order are refused, naming both entries.
	if _, stderr, code := g.cli(t, "policy", "set", "TIMEOUT_T3_LAYER=400ms"); code == 0 ||
		!strings.Contains(stderr, "TIMEOUT_T2_FILE 500ms must be below TIMEOUT_T3_LAYER 400ms") {
		t.Errorf("policy set TIMEOUT_T3_LAYER=400ms: exit %d: %s", code, stderr)
	}
	if _, stderr, code := g.cli(t, "policy", "set", "breaker.TIMEOUT_KV_GET=window:0s"); code != 2 || !strings.Contains(stderr, "breaker window 0s is out of range") {
		t.Errorf("policy set breaker window 0s: exit %d: %s", code, stderr)
	}
	stdout, stderr, code := g.cli(t, "policy", "set", "TIMEOUT_T1_CACHE=250ms", "max_stale_age=2m", "breaker.TIMEOUT_KV_PUT=timeout_rate:0.25,cooldown:15s")
	if code != 0 || !strings.Contains(stderr, "policy stored in GUARDIAN_POLICY") {
		t.Fatalf("policy set: exit %d\n%s%s", code, stdout, stderr)
	}
	eventually(t, 20*time.Second, func() (bool, string) {
		stdout, _, _ := g.cli(t, "policy", "get", "--json")
		var p jsguard.Policy
		if err := json.Unmarshal([]byte(stdout), &p); err != nil {
			return false, stdout
		}
		b := p.Breakers[jsguard.KVPut]
		return p.Budget(jsguard.T1Cache) == 250*time.Millisecond && p.MaxStaleAge == 2*time.Minute &&
			b.TimeoutRate == 0.25 && b.Cooldown == 15*time.Second && b.Window == jsguard.DefaultBreaker().Window, stdout
	})
	stdout, _, code = g.cli(t, "policy", "get")
	if code != 0 || !tableHas(stdout, nil, []string{"TIMEOUT_T1_CACHE", "250ms"}) || !tableHas(stdout, nil, []string{"strategy", "graceful"}) ||
		!tableHas(stdout, nil, []string{"breaker.TIMEOUT_KV_PUT", "window:30s,min_calls:20,timeout_rate:0.25,slow_call:0s,slow_rate:0,cooldown:15s,probes:3"}) {
		t.Fatalf("policy get table: exit %d\n%s", code, stdout)
	}
	kv, err := js.KeyValue(t.Context(), jsguard.PolicyBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 3 || st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Description != "tuned by an operator" {
		t.Errorf("policy set reconfigured the bucket: history %d, %+v", st.History(), st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config)
	}

	// A refused change writes nothing.
	before, err := kv.Get(t.Context(), jsguard.PolicyKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := g.cli(t, "policy", "set", "TIMEOUT_KV_GET=3s", "strategy=lenient"); code != 2 || !strings.Contains(stderr, "lenient") {
		t.Fatalf("policy set strategy=lenient: exit %d, stderr %q", code, stderr)
	}
	e, err := kv.Get(t.Context(), jsguard.PolicyKey)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(e.Value()), `"TIMEOUT_KV_GET":"3s"`) || e.Revision() != before.Revision() {
		t.Errorf("a refused policy set was stored: revision %d %s", e.Revision(), e.Value())
	}
}

// tamper returns the export in file with old replaced by new in the data of
// the one event that contains it.
func tamper(t *testing.T, file, old, new string) []byte {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	n := 0
	for line := range strings.Lines(string(data)) {
		var l map[string]any
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		if l["export"] != nil {
			out = append(out, line...) // the header
			continue
		}
		var ev []byte
		if err := json.Unmarshal([]byte(fmt.Sprintf("%q", l["data"])), &ev); err != nil {
			t.Fatalf("export data: %v", err)
		}
		if strings.Contains(string(ev), old) {
			n++
			l["data"] = []byte(strings.Replace(string(ev), old, new, 1))
			b, err := json.Marshal(l)
			if err != nil {
				t.Fatal(err)
			}
			line = string(b) + "\n"
		}
		out = append(out, line...)
	}
	if n != 1 {
		t.Fatalf("%d exported events contain %q, want 1", n, old)
	}
	return out
}

// sameJSON reports whether a and b encode the same JSON value.
func sameJSON(a json.RawMessage, b string) bool {
	var va, vb any
	return json.Unmarshal(a, &va) == nil && json.Unmarshal([]byte(b), &vb) == nil && reflect.DeepEqual(va, vb)
}

// TestReportEventDocumentedShape: audit.report takes the event as README's
// table of the audit trail documents it. event_type, budget_source and
// event_id are optional; when given they must be guardian's values
// (timeout_occurred, reported, the derived id), else the 400 names the
// field. No server needed: reportEvent is the endpoint's decoder.
func TestReportEventDocumentedShape(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	ctx := jsguard.WithCorrelationID(t.Context(), "corr-header")
	const base = `"timeout_category":"TIMEOUT_PAYMENT_API","operation":"POST /charge","timeout_seconds":2,"elapsed_seconds":2.004,` +
		`"tenant_id":"acme","correlation_id":"c1","trace_id":"t1","additional_context":{"k":"v"},` +
		`"timestamp":"2026-11-22T11:59:02.004Z","started_at":"2026-11-22T11:59:00Z","level":"T3","abandoned":false,"fallback_used":false`
	plain, err := reportEvent(ctx, []byte(`{`+base+`}`), now)
	if err != nil {
		t.Fatalf("report without the derived fields: %v", err)
	}
	id := plain.EventID
	tests := []struct {
		name, extra string
		field       string // "" when accepted
	}{
		{"event_type", `"event_type":"timeout_occurred"`, ""},
		{"budget_source", `"budget_source":"reported"`, ""},
		{"event_id", `"event_id":"` + id + `"`, ""},
		{"all of README's fields", `"event_id":"` + id + `","event_type":"timeout_occurred","budget_source":"reported"`, ""},
		{"other event_type", `"event_type":"timeout_cleared"`, "event_type"},
		{"empty event_type", `"event_type":""`, "event_type"},
		{"event_type not a string", `"event_type":1`, "event_type"},
		{"other budget_source", `"budget_source":"category"`, "budget_source"},
		{"chosen event_id", `"event_id":"00000000000000000000000000000000"`, "event_id"},
		{"event_id of another report", `"event_id":"` + strings.Repeat("ab", 16) + `"`, "event_id"},
		{"unknown field", `"colour":"red"`, "colour"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := reportEvent(ctx, []byte(`{`+base+`,`+tt.extra+`}`), now)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if ev.EventID != id || ev.EventType != jsguard.EventType || ev.BudgetSource != jsguard.SourceReported {
					t.Errorf("event %+v: want id %s, timeout_occurred, reported", ev, id)
				}
				return
			}
			fe, ok := errors.AsType[*kvapprovals.FieldError](err)
			if !ok || fe.Field != tt.field || !errors.Is(err, kvapprovals.ErrInvalidRequest) || kvapprovals.ToAPIError(err).Code != http.StatusBadRequest {
				t.Fatalf("err %v (%T), want a 400 naming %s", err, err, tt.field)
			}
		})
	}
}

// testCallerDeadline: guardian works no longer than its caller waits. An
// await asked to wait 10s by a caller that sends Guardian-Timeout-Ms: 800
// answers (still pending) before the 800ms are up.
func testCallerDeadline(t *testing.T, nc *nats.Conn) {
	request(t, nc, subj("deadline", "request"), map[string]any{"id": "d1", "session_id": "s", "requested_by": "alice", "timeout": "1m"}, nil).ok(t, nil)
	start := time.Now()
	var rec kvapprovals.Record
	request(t, nc, subj("deadline", "await"), map[string]any{"id": "d1", "wait": "10s"},
		map[string]string{jsguard.TimeoutHeader: "800"}).ok(t, &rec)
	if took := time.Since(start); took >= 800*time.Millisecond || rec.Status != kvapprovals.StatusPending {
		t.Errorf("await with 800ms left answered %s after %s, want pending within 800ms", rec.Status, took)
	}
}
