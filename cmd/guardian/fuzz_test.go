package main

// Fuzz targets for what guardian decodes from outside: the configuration
// from GUARDIAN_* variables and the body of guardian.v1.audit.report. Their
// seeds run in every `go test`; to fuzz one for ten minutes:
//
//	go test -run '^$' -fuzz '^FuzzLoadConfig$' -fuzztime 10m ./cmd/guardian/
//
// test/e2e/fuzz.sh runs every target of the repository in turn.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// secretVars are the variables `guardian config` and error messages must
// never show.
var secretVars = []string{"GUARDIAN_NATS_PASSWORD", "GUARDIAN_AUDIT_SEAL_SEED"}

// FuzzLoadConfig sets the variables of its input, one NAME=value per line
// (GUARDIAN_ is added to a name without it), and loads the configuration.
// An error must name a GUARDIAN_ variable and show no secret; a
// configuration loadConfig accepts must be one the approvals, audit and
// policy packages accept too (or guardian would fail later, with a message
// that names no variable), and `guardian config` must print no secret.
func FuzzLoadConfig(f *testing.F) {
	for _, kv := range os.Environ() {
		if name, old, _ := strings.Cut(kv, "="); strings.HasPrefix(name, envPrefix+"_") {
			os.Unsetenv(name)
			f.Cleanup(func() { os.Setenv(name, old) })
		}
	}
	var all strings.Builder
	for _, v := range configVars(&config{}) {
		if v.Default != "" {
			all.WriteString(v.Name + "=" + v.Default + "\n")
		}
	}
	for _, s := range []string{
		"",
		all.String(),
		"GUARDIAN_NATS_URL=nats://n1:4222,nats://n2:4222\nGUARDIAN_REPLICAS=3\nGUARDIAN_HTTP_ADDR=",
		"APPROVAL_GRACE_PERIOD=2m",
		"GUARDIAN_APPROVAL_DEFAULT_TIMEOUT=3h",
		"GUARDIAN_APPROVAL_MIN_TIMEOUT=1500ms\nGUARDIAN_APPROVAL_MAX_TIMEOUT=24h\nGUARDIAN_APPROVAL_RETENTION=25h1s",
		"GUARDIAN_APPROVAL_WARNING_BEFORE=0s\nGUARDIAN_APPROVAL_SEND_WARNINGS=false",
		"GUARDIAN_APPROVAL_WEBHOOK_URL=https://user:pw@hooks.example.com/x",
		"GUARDIAN_NATS_USER=guardian\nGUARDIAN_NATS_PASSWORD=hunter2hunter2",
		"GUARDIAN_NATS_PASSWORD=hunter2hunter2\nGUARDIAN_REPLICAS=9",
		"GUARDIAN_AUDIT_SEAL_SEED=SUnotaseedTOPSECRETVALUE",
		"GUARDIAN_AUDIT_MAX_AGE=1m\nGUARDIAN_AUDIT_DUPLICATES=5m",
		"GUARDIAN_TIMEOUT_KV_GET=2h\nGUARDIAN_TIMEOUT_STRATEGY=strict",
		"GUARDIAN_TIMEOUT_DEFAULT=-1s",
		"GUARDIAN_EMBEDDED=false",
		"GUARDIAN_EMBEDDED=true\nGUARDIAN_EMBEDDED_LISTEN=[::1]:0\nGUARDIAN_DATA_DIR=",
		"GUARDIAN_MAX_IN_FLIGHT=0x10\nGUARDIAN_SHUTDOWN_TIMEOUT=1h",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		set := map[string]string{}
		for line := range strings.SplitSeq(input, "\n") {
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				continue
			}
			k = strings.ToUpper(strings.TrimSpace(k))
			if !strings.HasPrefix(k, envPrefix+"_") {
				k = envPrefix + "_" + k
			}
			if strings.ContainsRune(k+v, 0) {
				continue // not representable in an environment
			}
			t.Setenv(k, v)
			set[k] = v
		}
		// secret returns the secret values long enough to recognise that no
		// other variable holds.
		secrets := func() []string {
			var out []string
			for _, name := range secretVars {
				v := set[name]
				if len(v) < 8 {
					continue
				}
				shared := false
				for k, o := range set {
					shared = shared || (k != name && strings.Contains(o, v))
				}
				if !shared {
					out = append(out, v)
				}
			}
			return out
		}

		cfg, err := loadConfig()
		if err != nil {
			msg := err.Error()
			if !strings.Contains(msg, envPrefix+"_") {
				t.Fatalf("error names no variable: %v", err)
			}
			for _, s := range secrets() {
				if strings.Contains(msg, s) {
					t.Fatalf("error shows a secret: %v", err)
				}
			}
			return
		}
		k := cfg.approvalsConfig()
		if err := k.Validate(); err != nil {
			t.Fatalf("loadConfig accepted an approvals config kvapprovals refuses: %v", err)
		}
		a := cfg.auditStream()
		if err := a.Validate(); err != nil {
			t.Fatalf("loadConfig accepted an audit config auditstream refuses: %v", err)
		}
		p := cfg.policy()
		if err := p.Validate(); err != nil {
			t.Fatalf("loadConfig accepted a policy jsguard refuses: %v", err)
		}
		var out bytes.Buffer
		printVars(&out, configVars(cfg), true)
		for _, s := range secrets() {
			if strings.Contains(out.String(), s) {
				t.Fatalf("guardian config prints a secret:\n%s", out.String())
			}
		}
	})
}

var eventIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// FuzzReportEvent decodes audit.report bodies. A refusal is a 400 naming
// the field; an accepted report must become an event the audit publisher
// can store: a valid five-token subject without wildcards, a 32-hex event
// id, JSON that encodes, and a start no later than its timestamp.
func FuzzReportEvent(f *testing.F) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	for _, s := range []string{
		`{"timeout_category":"TIMEOUT_KV_GET","operation":"kv get cfg/flags","timeout_seconds":5,"elapsed_seconds":5.002,"tenant_id":"acme"}`,
		`{"timeout_category":"TIMEOUT_PAYMENTS_CHARGE","operation":"charge","timeout_seconds":2.5,"level":"T3","correlation_id":"c1","trace_id":"t1",` +
			`"started_at":"2026-11-22T11:59:00Z","timestamp":"2026-11-22T11:59:02.5Z","abandoned":true,"fallback_used":true,"additional_context":{"k":"v"}}`,
		`{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"timestamp":"0001-01-01T00:00:00Z"}`,
		`{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"started_at":"2026-11-22T12:00:00+14:00"}`,
		`{"timeout_category":"TIMEOUT_kv","operation":"op","timeout_seconds":1}`,
		`{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"tenant_id":"a.>"}`,
		`{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":3601}`,
		`{"timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"elapsed_seconds":-1}`,
		`{"event_id":"x"}`, `{}`, ``, `[`,
		// the documented shape: fields guardian sets, given with its values or others
		`{"event_type":"timeout_occurred","budget_source":"reported","timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1,"started_at":"2026-11-22T11:59:59Z","timestamp":"2026-11-22T12:00:00Z"}`,
		`{"event_id":"6d0b6f8c8e0f2f4c1e5b9a7d3c2b1a09","event_type":"timeout_occurred","timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1}`,
		`{"event_type":"other","budget_source":"category","timeout_category":"TIMEOUT_KV_GET","operation":"op","timeout_seconds":1}`,
	} {
		f.Add([]byte(s))
	}
	cfg := auditstream.DefaultConfig()
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := jsguard.WithCorrelationID(context.Background(), "corr-from-header")
		ev, err := reportEvent(ctx, data, now)
		if err != nil {
			var fe *kvapprovals.FieldError
			if !errors.As(err, &fe) || !errors.Is(err, kvapprovals.ErrInvalidRequest) || kvapprovals.ToAPIError(err).Code != 400 {
				t.Fatalf("refusal %v (%T) is not a 400 naming a field", err, err)
			}
			return
		}
		subject, err := cfg.Subject(ev.TenantID, ev.Code)
		if err != nil {
			t.Fatalf("accepted event has no subject: %v", err)
		}
		toks := strings.Split(subject, ".")
		if len(toks) != 5 || strings.ContainsAny(subject, "*> \t\r\n") || strings.Contains(subject, "..") {
			t.Fatalf("accepted event goes to subject %q", subject)
		}
		if !eventIDRE.MatchString(ev.EventID) {
			t.Fatalf("event id %q", ev.EventID)
		}
		if ev.EventType != jsguard.EventType || ev.BudgetSource != jsguard.SourceReported {
			t.Fatalf("accepted report has event_type %q, budget_source %q; want %q, %q", ev.EventType, ev.BudgetSource, jsguard.EventType, jsguard.SourceReported)
		}
		if ev.StartedAt.After(ev.Timestamp) || ev.ElapsedSeconds < 0 {
			t.Fatalf("started %s after timestamp %s (elapsed %v)", ev.StartedAt, ev.Timestamp, ev.ElapsedSeconds)
		}
		if _, err := json.Marshal(ev); err != nil {
			t.Fatalf("accepted report (event_id %s returned to the caller) cannot be encoded for the audit stream: %v", ev.EventID, err)
		}
	})
}
