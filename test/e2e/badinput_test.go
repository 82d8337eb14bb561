package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// badCase is one malformed or refused request and the reply it must get.
type badCase struct {
	name    string
	subject string // full subject, or an approvals operation of tenant acme
	body    string
	code    int
	field   string // the field the error names, when it names one
}

func approvalsSubject(tenant, op string) string { return "guardian.v1." + tenant + ".approvals." + op }

// badCases is the table of scenario 8, per endpoint.
func badCases() []badCase {
	big := func(n int) string { return strings.Repeat("x", n) }
	id65 := big(65)
	detailsBig := `{"session_id":"s","requested_by":"alice","details":{"blob":"` + big(17<<10) + `"}}`
	return []badCase{
		// request
		{"request/bad JSON", "request", `{"session_id":`, 400, "body"},
		{"request/not an object", "request", `[1,2]`, 400, "body"},
		{"request/empty body", "request", ``, 400, "body"},
		{"request/null", "request", `null`, 400, "session_id"},
		{"request/trailing data", "request", `{"session_id":"s","requested_by":"alice"}{}`, 400, "body"},
		{"request/invalid UTF-8", "request", "{\"session_id\":\"s\xff\",\"requested_by\":\"alice\"}", 400, "body"},
		{"request/unknown field", "request", `{"session_id":"s","requested_by":"alice","bogus":1}`, 400, "bogus"},
		{"request/session_id wrong type", "request", `{"session_id":1,"requested_by":"alice"}`, 400, "session_id"},
		{"request/timeout a number", "request", `{"session_id":"s","requested_by":"alice","timeout":5}`, 400, "timeout"},
		{"request/timeout not a duration", "request", `{"session_id":"s","requested_by":"alice","timeout":"soon"}`, 400, "timeout"},
		{"request/timeout below min", "request", `{"session_id":"s","requested_by":"alice","timeout":"500ms"}`, 400, "timeout"},
		{"request/timeout above max", "request", `{"session_id":"s","requested_by":"alice","timeout":"48h"}`, 400, "timeout"},
		{"request/timeout negative", "request", `{"session_id":"s","requested_by":"alice","timeout":"-5s"}`, 400, "timeout"},
		{"request/missing session_id", "request", `{"requested_by":"alice"}`, 400, "session_id"},
		{"request/missing requested_by", "request", `{"session_id":"s"}`, 400, "requested_by"},
		{"request/id with .", "request", `{"id":"a.b","session_id":"s","requested_by":"alice"}`, 400, "id"},
		{"request/id *", "request", `{"id":"*","session_id":"s","requested_by":"alice"}`, 400, "id"},
		{"request/id >", "request", `{"id":">","session_id":"s","requested_by":"alice"}`, 400, "id"},
		{"request/id a.>", "request", `{"id":"a.>","session_id":"s","requested_by":"alice"}`, 400, "id"},
		{"request/id with space", "request", `{"id":"a b","session_id":"s","requested_by":"alice"}`, 400, "id"},
		{"request/id too long", "request", `{"id":"` + id65 + `","session_id":"s","requested_by":"alice"}`, 400, "id"},
		{"request/details not an object", "request", `{"session_id":"s","requested_by":"alice","details":[1]}`, 400, "details"},
		{"request/details too large", "request", detailsBig, 400, "details"},
		{"request/session_id too long", "request", `{"session_id":"` + big(257) + `","requested_by":"alice"}`, 400, "session_id"},
		{"request/body over 1 MiB", "request", `{"session_id":"s","requested_by":"alice","details":{"blob":"` + big(1<<20) + `"}}`, 400, "body"},
		{"request/tenant with $", approvalsSubject("ac$me", "request"), `{"session_id":"s","requested_by":"alice"}`, 400, "tenant"},
		{"request/tenant with %", approvalsSubject("ac%2Eme", "request"), `{"session_id":"s","requested_by":"alice"}`, 400, "tenant"},
		{"request/tenant *", approvalsSubject("*", "request"), `{"session_id":"s","requested_by":"alice"}`, 400, "tenant"},
		{"request/tenant too long", approvalsSubject(id65, "request"), `{"session_id":"s","requested_by":"alice"}`, 400, "tenant"},
		// approve
		{"approve/missing decided_by", "approve", `{"id":"pending1"}`, 400, "decided_by"},
		{"approve/empty decided_by", "approve", `{"id":"pending1","decided_by":""}`, 400, "decided_by"},
		{"approve/decided_by wrong type", "approve", `{"id":"pending1","decided_by":7}`, 400, "decided_by"},
		{"approve/missing id", "approve", `{"decided_by":"bob"}`, 400, "id"},
		{"approve/id with .", "approve", `{"id":"pending1.x","decided_by":"bob"}`, 400, "id"},
		{"approve/id *", "approve", `{"id":"*","decided_by":"bob"}`, 400, "id"},
		{"approve/id >", "approve", `{"id":">","decided_by":"bob"}`, 400, "id"},
		{"approve/unknown field", "approve", `{"id":"pending1","approved_by":"bob"}`, 400, "approved_by"},
		{"approve/reason too long", "approve", `{"id":"pending1","decided_by":"bob","reason":"` + big(1025) + `"}`, 400, "reason"},
		{"approve/bad JSON", "approve", `{"id":"pending1",`, 400, "body"},
		{"approve/tenant >", approvalsSubject(">", "approve"), `{"id":"pending1","decided_by":"bob"}`, 400, "tenant"},
		{"approve/unknown id", "approve", `{"id":"nosuch","decided_by":"bob"}`, 404, ""},
		{"approve/self-approval", "approve", `{"id":"pending1","decided_by":"alice"}`, 403, ""},
		{"approve/already decided", "approve", `{"id":"done1","decided_by":"bob"}`, 409, ""},
		// deny
		{"deny/missing decided_by", "deny", `{"id":"pending1"}`, 400, "decided_by"},
		{"deny/id >", "deny", `{"id":">","decided_by":"bob"}`, 400, "id"},
		{"deny/wrong type", "deny", `{"id":["pending1"],"decided_by":"bob"}`, 400, "id"},
		{"deny/already decided", "deny", `{"id":"done1","decided_by":"bob"}`, 409, ""},
		// cancel
		{"cancel/missing cancelled_by", "cancel", `{"id":"pending1"}`, 400, "cancelled_by"},
		{"cancel/decided_by is not a cancel field", "cancel", `{"id":"pending1","decided_by":"bob"}`, 400, "decided_by"},
		{"cancel/id *", "cancel", `{"id":"*","cancelled_by":"bob"}`, 400, "id"},
		{"cancel/already decided", "cancel", `{"id":"done1","cancelled_by":"bob"}`, 409, ""},
		// get
		{"get/missing id", "get", `{}`, 400, "id"},
		{"get/id >", "get", `{"id":">"}`, 400, "id"},
		{"get/id wrong type", "get", `{"id":1}`, 400, "id"},
		{"get/bad JSON", "get", `{`, 400, "body"},
		{"get/unknown id", "get", `{"id":"nosuch"}`, 404, ""},
		// list
		{"list/bad status", "list", `{"status":"bogus"}`, 400, "status"},
		{"list/negative limit", "list", `{"limit":-1}`, 400, "limit"},
		{"list/limit above max", "list", `{"limit":1001}`, 400, "limit"},
		{"list/limit wrong type", "list", `{"limit":"ten"}`, 400, "limit"},
		{"list/garbage cursor", "list", `{"cursor":"!!!"}`, 400, "cursor"},
		{"list/cursor with .", "list", `{"cursor":"` + base64.RawURLEncoding.EncodeToString([]byte("a.>")) + `"}`, 400, "cursor"},
		{"list/unknown field", "list", `{"tenant":"globex"}`, 400, "tenant"},
		// policy.get
		{"policy/unknown field", "guardian.v1.policy.get", `{"x":1}`, 400, "x"},
		{"policy/bad JSON", "guardian.v1.policy.get", `[`, 400, "body"},
		// audit.report
		{"report/empty", "guardian.v1.audit.report", `{}`, 400, "timeout_category"},
		{"report/lower-case code", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_kv","operation":"op","timeout_seconds":1}`, 400, "timeout_category"},
		{"report/code with .", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_A.B","operation":"op","timeout_seconds":1}`, 400, "timeout_category"},
		{"report/missing operation", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","timeout_seconds":1}`, 400, "operation"},
		{"report/zero budget", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":0}`, 400, "timeout_seconds"},
		{"report/budget above 1h", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":7200}`, 400, "timeout_seconds"},
		{"report/budget wrong type", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":"5"}`, 400, "timeout_seconds"},
		{"report/tenant with .", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"tenant_id":"a.b"}`, 400, "tenant_id"},
		{"report/tenant >", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"tenant_id":">"}`, 400, "tenant_id"},
		{"report/bad level", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"level":"T9"}`, 400, "level"},
		{"report/future timestamp", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"timestamp":"2999-01-01T00:00:00Z"}`, 400, "timestamp"},
		{"report/unknown field", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"event_id":"x"}`, 400, "event_id"},
		{"report/too large", "guardian.v1.audit.report", `{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"correlation_id":"` + big(17<<10) + `"}`, 400, "body"},
	}
}

// TestBadInput (scenario 8): every malformed or refused request gets the
// documented error code (Nats-Service-Error-Code header and the JSON body)
// and leaves every bucket and stream as it was. After the table a valid
// request and a valid report change the streams by exactly their own
// messages, which proves the bad ones were fully processed and wrote
// nothing.
func TestBadInput(t *testing.T) {
	ns := startNATS(t, func(o *server.Options) { o.MaxPayload = 4 << 20 })
	g := startGuardian(t, "g1", ns.url, map[string]string{
		"GUARDIAN_APPROVAL_SEND_WARNINGS": "false",
		"GUARDIAN_AUDIT_ALERT_THRESHOLD":  "0",
	})
	nc, js := connect(t, ns.url)
	c := newClient(t, nc, 10*time.Second)
	ctx := t.Context()

	// A pending approval and a decided one to aim at.
	pending := kvapprovals.RequestInput{ID: "pending1", SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(10 * time.Minute)}
	if _, err := c.Request(ctx, "acme", pending); err != nil {
		t.Fatal(err)
	}
	done := pending
	done.ID = "done1"
	if _, err := c.Request(ctx, "acme", done); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Approve(ctx, "acme", kvapprovals.DecisionInput{ID: "done1", DecidedBy: "bob"}); err != nil {
		t.Fatal(err)
	}
	streams := []string{recordsStream, timersStream, eventsStream, auditStream, policyStream}
	// Settle: three events published, the decided approval's timer
	// removed, nothing moving for a second.
	var before map[string][2]uint64
	if !poll(30*time.Second, 500*time.Millisecond, func() bool {
		cs, err := subjectCounts(ctx, js, eventsStream, eventsPrefix+">")
		if err != nil || sum(cs) != 3 || !consumerIdle(ctx, js, recordsStream, notifierName) {
			return false
		}
		cur := states(t, js, streams)
		stable := fmt.Sprint(cur) == fmt.Sprint(before)
		before = cur
		return stable
	}) {
		t.Fatalf("streams did not settle: %v", before)
	}

	for _, tc := range badCases() {
		subject := tc.subject
		if !strings.Contains(subject, ".") {
			subject = approvalsSubject("acme", subject)
		}
		msg := nats.NewMsg(subject)
		msg.Data = []byte(tc.body)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		reply, err := nc.RequestMsgWithContext(rctx, msg)
		cancel()
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		code := reply.Header.Get(micro.ErrorCodeHeader)
		var body struct {
			Error *kvapprovals.APIError `json:"error"`
		}
		_ = json.Unmarshal(reply.Data, &body)
		switch {
		case code != strconv.Itoa(tc.code):
			t.Errorf("%s: %s=%q (%s), want %d; body %.200s", tc.name, micro.ErrorCodeHeader, code, reply.Header.Get(micro.ErrorHeader), tc.code, reply.Data)
		case body.Error == nil || body.Error.Code != tc.code:
			t.Errorf("%s: body %.200s, want an error with code %d", tc.name, reply.Data, tc.code)
		case tc.field != "" && body.Error.Field != tc.field:
			t.Errorf("%s: error names field %q, want %q (%s)", tc.name, body.Error.Field, tc.field, body.Error.Message)
		}
	}

	// Nothing changed...
	after := states(t, js, streams)
	for _, s := range streams {
		if after[s] != before[s] {
			t.Errorf("stream %s changed: msgs/last seq %v before, %v after the bad requests", s, before[s], after[s])
		}
	}
	// ...and guardian processed them all: a valid request and report now
	// add exactly one record, one timer, one event and one audit event.
	if _, err := c.Request(ctx, "sentinel", kvapprovals.RequestInput{ID: "s1", SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Report(ctx, jsguard.Event{Code: "TIMEOUT_KV_GET", Operation: "kv get sentinel", TimeoutSeconds: 1, ElapsedSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{recordsStream: 1, timersStream: 1, eventsStream: 1, auditStream: 1, policyStream: 0}
	var got map[string][2]uint64
	poll(30*time.Second, 100*time.Millisecond, func() bool {
		got = states(t, js, streams)
		for s, d := range want {
			if got[s][1] != before[s][1]+d {
				return false
			}
		}
		return true
	})
	for s, d := range want {
		if got[s][0] != before[s][0]+d || got[s][1] != before[s][1]+d {
			t.Errorf("stream %s: msgs/last seq %v before, %v after one valid request and report; want +%d", s, before[s], got[s], d)
		}
	}
	t.Logf("bad input: %d malformed or refused requests over 8 endpoints; states of %v compared before and after", len(badCases()), streams)
	g.assertAlive()
}

// states returns [msgs, last seq] of each stream.
func states(t testing.TB, js jetstream.JetStream, names []string) map[string][2]uint64 {
	t.Helper()
	out := map[string][2]uint64{}
	for _, n := range names {
		st := streamState(t, js, n)
		out[n] = [2]uint64{st.Msgs, st.LastSeq}
	}
	return out
}
