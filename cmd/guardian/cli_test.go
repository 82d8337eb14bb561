package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// TestCLIUsage checks what the CLI does before it talks to anyone: help
// exits 0 and describes the command, bad usage exits 2 with a message, and
// an unreachable server exits 1 saying what to do.
func TestCLIUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		code int
		want []string // in stdout or stderr
	}{
		{nil, 2, []string{"Usage:", "guardian serve"}},
		{[]string{"bogus"}, 2, []string{`unknown command "bogus"`}},
		{[]string{"version"}, 0, []string{"guardian dev"}},
		{[]string{"--help"}, 0, []string{"guardian approval <command>", "guardian audit <command>"}},
		{[]string{"approval"}, 2, []string{"Usage: guardian approval <command>"}},
		{[]string{"approval", "--help"}, 0, []string{"request", "approve", "deny", "cancel", "get", "list"}},
		{[]string{"approval", "frobnicate"}, 2, []string{`unknown approval command "frobnicate"`}},
		{[]string{"approval", "get", "--tenant", "x"}, 2, []string{"--id is required"}},
		{[]string{"approval", "get", "--id", "c1", "extra"}, 2, []string{`unexpected argument "extra"`}},
		{[]string{"approval", "get", "--no-such-flag"}, 2, []string{"flag provided but not defined: -no-such-flag"}},
		{[]string{"approval", "request", "--details", "[1]"}, 2, []string{"--details must be a JSON object"}},
		{[]string{"approval", "request", "--timeout", "soon"}, 2, []string{`--timeout "soon": not a duration`}},
		{[]string{"approval", "request", "--help"}, 0, []string{"Usage: guardian approval request", "-session", "-requested-by", "-timeout", "-details", "-id", "-server", "-request-timeout", "-wait", "-json", "-tenant"}},
		{[]string{"approval", "approve", "--help"}, 0, []string{"Usage: guardian approval approve", "403", "-by", "-reason", "-server", "-request-timeout", "-json"}},
		{[]string{"approval", "deny", "--help"}, 0, []string{"Usage: guardian approval deny", "-by", "-reason", "-server"}},
		{[]string{"approval", "cancel", "--help"}, 0, []string{"Usage: guardian approval cancel", "-by", "-reason", "-server"}},
		{[]string{"approval", "get", "--help"}, 0, []string{"Usage: guardian approval get", "-id", "-server", "-json"}},
		{[]string{"approval", "list", "--help"}, 0, []string{"Usage: guardian approval list", "-status", "-limit", "-cursor", "partial"}},
		{[]string{"audit"}, 2, []string{"Usage: guardian audit <command>"}},
		{[]string{"audit", "bogus"}, 2, []string{`unknown audit command "bogus"`}},
		{[]string{"audit", "verify"}, 2, []string{"--public-key is required"}},
		{[]string{"audit", "tail", "--help"}, 0, []string{"Usage: guardian audit tail", "-since", "-follow", "-code", "-tenant"}},
		{[]string{"audit", "stats", "--help"}, 0, []string{"Usage: guardian audit stats", "-window"}},
		{[]string{"audit", "verify", "--help"}, 0, []string{"Usage: guardian audit verify", "-public-key", "-file"}},
		{[]string{"audit", "export", "--help"}, 0, []string{"Usage: guardian audit export", "-out"}},
		{[]string{"policy"}, 2, []string{"Usage: guardian policy <command>"}},
		{[]string{"policy", "get", "--help"}, 0, []string{"Usage: guardian policy get", "-json"}},
		{[]string{"policy", "set", "--help"}, 0, []string{"Usage: guardian policy set", "TIMEOUT_KV_GET=3s"}},
		{[]string{"policy", "get", "extra"}, 2, []string{`unexpected argument "extra"`}},
		{[]string{"policy", "set"}, 2, []string{"nothing to set"}},
		{[]string{"policy", "set", "nonsense"}, 2, []string{"want NAME=VALUE"}},
		{[]string{"policy", "set", "TIMEOUT_KV_GET=2h"}, 2, []string{"TIMEOUT_KV_GET budget 2h0m0s is out of range"}},
		{[]string{"policy", "set", "TIMEOUT_KV_GET=soon"}, 2, []string{"TIMEOUT_KV_GET=soon: not a duration"}},
		{[]string{"policy", "set", "strategy=lenient"}, 2, []string{`strategy "lenient"`}},
		{[]string{"policy", "set", "KV_GET=1s"}, 2, []string{"KV_GET: not an audit code"}},
		{[]string{"demo", "--help"}, 0, []string{"Usage: guardian demo", "-expire-after"}},
		{[]string{"config", "--help"}, 0, []string{"Usage: guardian config"}},
		{[]string{"serve", "extra"}, 2, []string{"serve takes no arguments"}},
		{[]string{"approval", "get", "--server", "nats://127.0.0.1:1", "--id", "c1", "--request-timeout", "3s"}, 1, []string{"connect to nats://127.0.0.1:1", "is 'guardian serve' running?"}},
		{[]string{"approval", "get", "--server", "nats://bob:s3cret@127.0.0.1:1", "--id", "c1", "--request-timeout", "3s"}, 1, []string{"connect to nats://bob:***@127.0.0.1:1"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			stdout, stderr, code := runGuardian(t, baseEnv(), tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stdout+stderr, w) {
					t.Errorf("output lacks %q\nstdout:\n%s\nstderr:\n%s", w, stdout, stderr)
				}
			}
			if strings.Contains(stdout+stderr, "s3cret") {
				t.Errorf("output shows the password in the URL:\n%s", stderr)
			}
			if strings.Contains(stderr, "panic:") {
				t.Errorf("panic:\n%s", stderr)
			}
		})
	}
}

// TestDemoOwnGuardian: with nobody at the default address, `guardian demo`
// starts a guardian of its own and runs the tour to its end.
func TestDemoOwnGuardian(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := l.Addr().String()
	l.Close()
	// The CLI's default server is the embedded server's address.
	stdout, stderr, code := runGuardian(t, append(baseEnv(), "GUARDIAN_EMBEDDED_LISTEN="+free, "TMPDIR="+t.TempDir()),
		"demo", "--expire-after", "1s")
	if code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"No guardian at nats://" + free + "; starting one of our own", "event  expired", "audit  TIMEOUT_APPROVAL_EXPIRED", "Done."} {
		if !strings.Contains(stdout, want) {
			t.Errorf("demo output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestReportEvent(t *testing.T) {
	ctx := jsguard.WithTraceID(jsguard.WithCorrelationID(context.Background(), "corr-hdr"), "trace-hdr")
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	valid := `"timeout_category":"TIMEOUT_KV_GET","operation":"kv get b/k","timeout_seconds":5`
	ev, err := reportEvent(ctx, []byte(`{`+valid+`,"elapsed_seconds":5.5,"tenant_id":"acme","level":"T3","additional_context":{"k":"v"}}`), now)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Code != "TIMEOUT_KV_GET" || ev.Operation != "kv get b/k" || ev.TimeoutSeconds != 5 || ev.TenantID != "acme" ||
		ev.CorrelationID != "corr-hdr" || ev.TraceID != "trace-hdr" || ev.Level != "T3" || ev.AdditionalContext["k"] != "v" ||
		!ev.Timestamp.Equal(now) || !ev.StartedAt.Equal(now.Add(-5500*time.Millisecond)) || ev.ElapsedSeconds != 5.5 ||
		ev.BudgetSource != jsguard.SourceReported || ev.EventType != jsguard.EventType {
		t.Fatalf("event %+v", ev)
	}
	if want := jsguard.EventID(ev.Code, ev.Operation, ev.TenantID, ev.CorrelationID, ev.TraceID, ev.StartedAt); ev.EventID != want {
		t.Fatalf("event id %s, want %s", ev.EventID, want)
	}
	// Ids in the body win over the context's.
	ev, err = reportEvent(ctx, []byte(`{`+valid+`,"correlation_id":"c-body","trace_id":"t-body"}`), now)
	if err != nil || ev.CorrelationID != "c-body" || ev.TraceID != "t-body" {
		t.Fatalf("ids from the body: %+v, %v", ev, err)
	}

	bad := []struct {
		name, body, field string
	}{
		{"oversized", `{"operation":"` + strings.Repeat("x", maxReportBytes) + `"}`, "body"},
		{"malformed", `{"timeout_category":`, "body"},
		{"unknown field", `{` + valid + `,"colour":"red"}`, "colour"},
		{"event_id given", `{` + valid + `,"event_id":"x"}`, "event_id"},
		{"bad code", `{"timeout_category":"KV_GET","operation":"o","timeout_seconds":5}`, "timeout_category"},
		{"lowercase code", `{"timeout_category":"TIMEOUT_kv","operation":"o","timeout_seconds":5}`, "timeout_category"},
		{"no operation", `{"timeout_category":"TIMEOUT_KV_GET","timeout_seconds":5}`, "operation"},
		{"long operation", `{"timeout_category":"TIMEOUT_KV_GET","operation":"` + strings.Repeat("o", 257) + `","timeout_seconds":5}`, "operation"},
		{"zero budget", `{"timeout_category":"TIMEOUT_KV_GET","operation":"o","timeout_seconds":0}`, "timeout_seconds"},
		{"budget over an hour", `{"timeout_category":"TIMEOUT_KV_GET","operation":"o","timeout_seconds":3601}`, "timeout_seconds"},
		{"negative elapsed", `{` + valid + `,"elapsed_seconds":-1}`, "elapsed_seconds"},
		{"elapsed over a week", `{` + valid + `,"elapsed_seconds":700000}`, "elapsed_seconds"},
		{"bad level", `{` + valid + `,"level":"T9"}`, "level"},
		{"bad tenant", `{` + valid + `,"tenant_id":"a.b"}`, "tenant_id"},
		{"long correlation", `{` + valid + `,"correlation_id":"` + strings.Repeat("c", 129) + `"}`, "correlation_id"},
		{"long trace", `{` + valid + `,"trace_id":"` + strings.Repeat("t", 129) + `"}`, "trace_id"},
		{"big context", `{` + valid + `,"additional_context":{` + manyEntries(33) + `}}`, "additional_context"},
		{"future timestamp", `{` + valid + `,"timestamp":"2026-03-04T05:08:08Z"}`, "timestamp"},
		{"started after timestamp", `{` + valid + `,"timestamp":"2026-03-04T05:00:00Z","started_at":"2026-03-04T05:00:01Z"}`, "started_at"},
		{"ancient timestamp", `{` + valid + `,"timestamp":"0001-01-01T00:00:00Z"}`, "timestamp"},
		{"started over a week earlier", `{` + valid + `,"timestamp":"2026-03-04T05:00:00Z","started_at":"2026-02-20T05:00:00Z"}`, "started_at"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := reportEvent(ctx, []byte(tt.body), now)
			var fe *kvapprovals.FieldError
			if !errors.Is(err, kvapprovals.ErrInvalidRequest) || !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("err %v, want a FieldError for %s", err, tt.field)
			}
			if ae := kvapprovals.ToAPIError(err); ae.Code != 400 || ae.Field != tt.field {
				t.Fatalf("API error %+v, want 400 with field %s", ae, tt.field)
			}
		})
	}
}

func manyEntries(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":"v"`, i)
	}
	return b.String()
}

func TestApplyPolicyChanges(t *testing.T) {
	p := jsguard.DefaultPolicy()
	err := applyPolicyChanges(&p, map[string]string{"TIMEOUT_KV_GET": "3s", "TIMEOUT_MY_OWN_CALL": "7s", "default": "20s",
		"strategy": "strict", "max_stale_age": "0s"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Budget(jsguard.KVGet) != 3*time.Second || p.Budget("MY_OWN_CALL") != 7*time.Second || p.Default != 20*time.Second ||
		p.Strategy != jsguard.Strict || p.MaxStaleAge != 0 || p.Budget(jsguard.KVPut) != 5*time.Second {
		t.Fatalf("policy %+v", p)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []map[string]string{
		{"TIMEOUT_KV_GET": "soon"},
		{"KV_GET": "3s"},
		{"timeout_kv_get": "3s"},
		{"default": "x"},
		{"max_stale_age": ""},
	} {
		q := jsguard.DefaultPolicy()
		if err := applyPolicyChanges(&q, bad); err == nil {
			t.Errorf("applyPolicyChanges(%v) accepted it", bad)
		}
	}
	// Values out of range are left to Validate.
	q := jsguard.DefaultPolicy()
	if err := applyPolicyChanges(&q, map[string]string{"strategy": "lenient"}); err != nil || q.Validate() == nil {
		t.Errorf("strategy=lenient: apply %v, then Validate accepted it", err)
	}
}

func TestTraceID(t *testing.T) {
	for in, want := range map[string]string{
		testTraceparent: "4bf92f3577b34da6a3ce929d0e0e4736",
		"":              "",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7":                 "",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01":              "",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01":              "",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01":              "",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":              "",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra-fields": "",
	} {
		if got := traceID(in); got != want {
			t.Errorf("traceID(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOpenPolicyBucket: `policy set` opens the bucket as it is and creates
// it, with one replica, only when it is missing.
func TestOpenPolicyBucket(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Run(t))
	g, err := jsguard.New()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	kv, err := openPolicyBucket(ctx, g, js)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Raw().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Bucket() != jsguard.PolicyBucket || st.History() != 10 || st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas != 1 {
		t.Fatalf("created bucket %+v", st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config)
	}

	// An existing bucket keeps its configuration.
	if _, err := js.UpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: jsguard.PolicyBucket, History: 3, Description: "tuned", Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	kv, err = openPolicyBucket(ctx, g, js)
	if err != nil {
		t.Fatal(err)
	}
	if err := jsguard.NewPolicyStore(g, kv).Save(ctx, jsguard.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	st, err = kv.Raw().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config; st.History() != 3 || cfg.Description != "tuned" || st.Values() != 1 {
		t.Fatalf("existing bucket changed: history %d, %+v", st.History(), cfg)
	}
}
