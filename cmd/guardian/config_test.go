package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// TestConfigValidation runs `guardian config` with one bad variable at a
// time: it must exit 1 with a message naming the variable, its value and
// what is allowed, and print no configuration.
func TestConfigValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env  string
		want []string // substrings of the message, in order; it starts with the first
	}{
		{"GUARDIAN_REPLICAS=9", []string{"GUARDIAN_REPLICAS=9", "between 1 and 5"}},
		{"GUARDIAN_SHUTDOWN_TIMEOUT=0s", []string{"GUARDIAN_SHUTDOWN_TIMEOUT=0s", "between 1s and 5m"}},
		{"GUARDIAN_MAX_IN_FLIGHT=0", []string{"GUARDIAN_MAX_IN_FLIGHT=0", "between 1 and 65536"}},
		{"GUARDIAN_LOG_LEVEL=loud", []string{"GUARDIAN_LOG_LEVEL=loud", "debug, info, warn or error"}},
		{"GUARDIAN_EMBEDDED=maybe", []string{"GUARDIAN_EMBEDDED=maybe", "auto, true or false"}},
		{"GUARDIAN_HTTP_ADDR=8080", []string{"GUARDIAN_HTTP_ADDR=8080", "host:port"}},
		{"GUARDIAN_REPLICAS=three", []string{`GUARDIAN_REPLICAS="three"`, "not a valid whole number"}},
		{"GUARDIAN_APPROVAL_DEFAULT_TIMEOUT=soon", []string{`GUARDIAN_APPROVAL_DEFAULT_TIMEOUT="soon"`, "not a valid duration"}},
		{"GUARDIAN_APPROVAL_GRACE_PERIOD=2m", []string{"GUARDIAN_APPROVAL_GRACE_PERIOD=2m", ">= 0 and <= 1m0s"}},
		{"GUARDIAN_APPROVAL_MIN_TIMEOUT=500ms", []string{"GUARDIAN_APPROVAL_MIN_TIMEOUT=500ms", ">= 1s"}},
		{"GUARDIAN_APPROVAL_DEFAULT_TIMEOUT=3h", []string{"GUARDIAN_APPROVAL_MAX_TIMEOUT=2h0m0s (default)", ">= GUARDIAN_APPROVAL_DEFAULT_TIMEOUT (3h0m0s) and <= 24h0m0s"}},
		{"GUARDIAN_APPROVAL_MAX_TIMEOUT=25h", []string{"GUARDIAN_APPROVAL_MAX_TIMEOUT=25h", "<= 24h0m0s"}},
		{"GUARDIAN_APPROVAL_RETENTION=1h", []string{"GUARDIAN_APPROVAL_RETENTION=1h", ">= GUARDIAN_APPROVAL_MAX_TIMEOUT + GUARDIAN_APPROVAL_GRACE_PERIOD + 10m"}},
		{"GUARDIAN_APPROVAL_MAX_PENDING=-1", []string{"GUARDIAN_APPROVAL_MAX_PENDING=-1", ">= 0"}},
		{"GUARDIAN_APPROVAL_WARNING_BEFORE=0s", []string{"GUARDIAN_APPROVAL_WARNING_BEFORE=0s", ">= 1s"}},
		{"GUARDIAN_APPROVAL_MAX_OUTAGE=0s", []string{"GUARDIAN_APPROVAL_MAX_OUTAGE=0s", ">= 1s"}},
		{"GUARDIAN_APPROVAL_WEBHOOK_URL=ftp://hooks.example.com/x", []string{"GUARDIAN_APPROVAL_WEBHOOK_URL=ftp://hooks.example.com/***", "http:// or https://"}},
		{"GUARDIAN_APPROVAL_WEBHOOK_URL=https:///path", []string{"GUARDIAN_APPROVAL_WEBHOOK_URL=", "must name a host"}},
		{"GUARDIAN_AUDIT_DUPLICATES=0s", []string{"GUARDIAN_AUDIT_DUPLICATES=0s", "1s..24h"}},
		{"GUARDIAN_AUDIT_MAX_AGE=1m", []string{"GUARDIAN_AUDIT_MAX_AGE=1m", ">= GUARDIAN_AUDIT_DUPLICATES (2m0s)"}},
		{"GUARDIAN_AUDIT_SEAL_EVERY=0", []string{"GUARDIAN_AUDIT_SEAL_EVERY=0", "1..50000"}},
		{"GUARDIAN_AUDIT_SEAL_INTERVAL=1ms", []string{"GUARDIAN_AUDIT_SEAL_INTERVAL=1ms", "10ms..24h"}},
		{"GUARDIAN_AUDIT_SPOOL_MAX_BYTES=10", []string{"GUARDIAN_AUDIT_SPOOL_MAX_BYTES=10", "1024..1099511627776"}},
		{"GUARDIAN_AUDIT_ALERT_WINDOW=0s", []string{"GUARDIAN_AUDIT_ALERT_WINDOW=0s", "1s..24h"}},
		{"GUARDIAN_AUDIT_ALERT_THRESHOLD=-1", []string{"GUARDIAN_AUDIT_ALERT_THRESHOLD=-1", "0 (off)..1000000"}},
		{"GUARDIAN_AUDIT_SEAL_SEED=SUnotaseedTOPSECRET", []string{"GUARDIAN_AUDIT_SEAL_SEED=[redacted]", "not an nkeys seed"}},
		{"GUARDIAN_TIMEOUT_KV_GET=2h", []string{"GUARDIAN_TIMEOUT_KV_GET=2h", "> 0 and <= 1h0m0s"}},
		{"GUARDIAN_TIMEOUT_KV_GET=fast", []string{`GUARDIAN_TIMEOUT_KV_GET="fast"`, "not a valid duration"}},
		{"GUARDIAN_TIMEOUT_DEFAULT=0s", []string{"GUARDIAN_TIMEOUT_DEFAULT=0s", "> 0 and <= 1h0m0s"}},
		{"GUARDIAN_TIMEOUT_STRATEGY=lenient", []string{"GUARDIAN_TIMEOUT_STRATEGY=lenient", "graceful, strict or none"}},
		{"GUARDIAN_TIMEOUT_MAX_STALE_AGE=2h", []string{"GUARDIAN_TIMEOUT_MAX_STALE_AGE=2h", ">= 0 and <= 1h0m0s"}},
		{"GUARDIAN_TIMEOUT_KV_GETT=2s", []string{"GUARDIAN_TIMEOUT_KV_GETT is not a guardian variable", "did you mean GUARDIAN_TIMEOUT_KV_GET?"}},
		{"GUARDIAN_NATS_PASSWROD=x", []string{"GUARDIAN_NATS_PASSWROD is not a guardian variable", "did you mean GUARDIAN_NATS_PASSWORD?"}},
		{"GUARDIAN_SOMETHING_ELSE_ENTIRELY=1", []string{"GUARDIAN_SOMETHING_ELSE_ENTIRELY is not a guardian variable", "'guardian serve --help' lists them all"}},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			t.Parallel()
			stdout, stderr, code := runGuardian(t, append(baseEnv(), tt.env), "config")
			if code != 1 {
				t.Fatalf("exit code %d, want 1; stderr %q", code, stderr)
			}
			if stdout != "" {
				t.Errorf("printed a configuration although it is invalid:\n%s", stdout)
			}
			if !strings.HasPrefix(stderr, "guardian: "+tt.want[0]) {
				t.Fatalf("message %q does not start with the variable and value %q", stderr, tt.want[0])
			}
			msg := stderr
			for _, w := range tt.want {
				i := strings.Index(msg, w)
				if i < 0 {
					t.Fatalf("message %q lacks %q (in order %q)", stderr, w, tt.want)
				}
				msg = msg[i+len(w):]
			}
			if strings.Contains(stderr, "TOPSECRET") {
				t.Errorf("message shows the secret: %q", stderr)
			}
		})
	}
}

// TestServeRejectsBadConfig: serve checks the configuration before it
// starts anything, and exits non-zero naming the variable.
func TestServeRejectsBadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, stderr, code := runGuardian(t, append(baseEnv(), "GUARDIAN_DATA_DIR="+dir, "GUARDIAN_APPROVAL_GRACE_PERIOD=90s",
		"GUARDIAN_EMBEDDED_LISTEN=127.0.0.1:0", "GUARDIAN_HTTP_ADDR=127.0.0.1:0"), "serve")
	if code != 1 || !strings.Contains(stderr, "GUARDIAN_APPROVAL_GRACE_PERIOD=90s: out of range: must be >= 0 and <= 1m0s") {
		t.Fatalf("exit %d, stderr %q; want 1 and the variable, value and range", code, stderr)
	}
	if strings.Contains(stderr, "embedded nats-server started") {
		t.Errorf("serve started NATS before refusing the configuration:\n%s", stderr)
	}
}

// envconfigVars lists the variables envconfig itself reads for config,
// with their defaults: the ground truth for the help and config listings.
func envconfigVars(t *testing.T) map[string]string {
	t.Helper()
	var b bytes.Buffer
	tmpl := template.Must(template.New("").Parse(`{{range .}}{{.Key}}	{{.Tags.Get "default"}}	{{.Field.Kind}}
{{end}}`))
	if err := envconfig.Usaget(envPrefix, &config{}, &b, tmpl); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for line := range strings.Lines(b.String()) {
		f := strings.Split(strings.TrimSuffix(line, "\n"), "\t")
		if f[2] != "struct" { // not the nested structs themselves (GUARDIAN_APPROVAL)
			vars[f[0]] = f[1]
		}
	}
	p := jsguard.DefaultPolicy()
	for _, c := range jsguard.Categories() {
		if c != jsguard.ApprovalExpired {
			vars["GUARDIAN_TIMEOUT_"+string(c)] = p.Budget(c).String()
		}
	}
	return vars
}

// TestServeHelpListsEveryVariable: `guardian serve --help` lists every
// variable envconfig reads, with its default, and `guardian config` prints
// every one with its effective value.
func TestServeHelpListsEveryVariable(t *testing.T) {
	t.Parallel()
	vars := envconfigVars(t)
	if len(vars) < 40 {
		t.Fatalf("only %d variables found; the listing is broken", len(vars))
	}
	_, help, code := runGuardian(t, baseEnv(), "serve", "--help")
	if code != 0 {
		t.Fatalf("serve --help exited %d:\n%s", code, help)
	}
	rows := map[string][]string{}
	for line := range strings.Lines(help) {
		if f := strings.Fields(line); len(f) >= 3 && strings.HasPrefix(f[0], "GUARDIAN_") {
			rows[f[0]] = f
		}
	}
	for name, def := range vars {
		f, ok := rows[name]
		if !ok {
			t.Errorf("serve --help does not list %s", name)
			continue
		}
		if want := orDash(def); f[2] != want {
			t.Errorf("serve --help: %s default %q, want %q", name, f[2], want)
		}
		if len(f) < 4 {
			t.Errorf("serve --help: %s has no description", name)
		}
	}
	if len(rows) != len(vars) {
		t.Errorf("serve --help lists %d variables, envconfig reads %d", len(rows), len(vars))
	}

	stdout, stderr, code := runGuardian(t, append(baseEnv(), "GUARDIAN_APPROVAL_GRACE_PERIOD=5s"), "config")
	if code != 0 {
		t.Fatalf("config exited %d: %s", code, stderr)
	}
	got := map[string]string{}
	for line := range strings.Lines(stdout) {
		if f := strings.Fields(line); len(f) == 3 {
			got[f[0]] = f[1]
		}
	}
	for name, def := range vars {
		v, ok := got[name]
		switch {
		case !ok:
			t.Errorf("config does not print %s", name)
		case name == "GUARDIAN_APPROVAL_GRACE_PERIOD":
			if v != "5s" {
				t.Errorf("config: %s = %q, want the effective 5s", name, v)
			}
		case def != "" && v != orDash(def) && !sameDuration(v, def):
			t.Errorf("config: %s = %q, want the default %q", name, v, def)
		}
	}
}

func sameDuration(a, b string) bool {
	da, err1 := time.ParseDuration(a)
	db, err2 := time.ParseDuration(b)
	return err1 == nil && err2 == nil && da == db
}

// TestConfigRedactsSecrets: `guardian config` never prints a password, a
// seal seed, or the credentials, path and query of a URL.
func TestConfigRedactsSecrets(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	secrets := []string{"pw-in-the-variable", string(seed), "pw-in-the-url", "SECRETPATH", "querytoken"}
	stdout, stderr, code := runGuardian(t, append(baseEnv(),
		"GUARDIAN_NATS_USER=alice",
		"GUARDIAN_NATS_PASSWORD=pw-in-the-variable",
		"GUARDIAN_AUDIT_SEAL_SEED="+string(seed),
		"GUARDIAN_NATS_URL=nats://alice:pw-in-the-url@127.0.0.1:4222,nats://127.0.0.1:4223",
		"GUARDIAN_APPROVAL_WEBHOOK_URL=https://hooks.example.com/services/SECRETPATH?token=querytoken",
	), "config")
	if code != 0 {
		t.Fatalf("config exited %d: %s", code, stderr)
	}
	for _, s := range secrets {
		if strings.Contains(stdout+stderr, s) {
			t.Errorf("config output shows secret %q:\n%s", s, stdout)
		}
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^GUARDIAN_NATS_PASSWORD\s+\[redacted\]`),
		regexp.MustCompile(`(?m)^GUARDIAN_AUDIT_SEAL_SEED\s+\[redacted\]`),
		regexp.MustCompile(`(?m)^GUARDIAN_NATS_URL\s+nats://alice:\*\*\*@127\.0\.0\.1:4222,nats://127\.0\.0\.1:4223\s`),
		regexp.MustCompile(`(?m)^GUARDIAN_APPROVAL_WEBHOOK_URL\s+https://hooks\.example\.com/\*\*\*\?\*\*\*\s`),
		regexp.MustCompile(`(?m)^GUARDIAN_NATS_USER\s+alice\s`),
	} {
		if !want.MatchString(stdout) {
			t.Errorf("config output lacks %s:\n%s", want, stdout)
		}
	}
}

func TestSplitWords(t *testing.T) {
	for in, want := range map[string]string{
		"NatsURL":         "Nats_URL",
		"HTTPAddr":        "HTTP_Addr",
		"TLSCa":           "TLS_Ca",
		"InstanceID":      "Instance_ID",
		"MaxInFlight":     "Max_In_Flight",
		"ShutdownTimeout": "Shutdown_Timeout",
		"SpoolMaxBytes":   "Spool_Max_Bytes",
		"Replicas":        "Replicas",
	} {
		if got := splitWords(in); got != want {
			t.Errorf("splitWords(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"":                                   "",
		"nats://127.0.0.1:4222":              "nats://127.0.0.1:4222",
		"nats://bob:pw@h:4222":               "nats://bob:***@h:4222",
		"nats://token@h:4222":                "nats://***@h:4222",
		"bob:pw@h:4222":                      "bob:***@h:4222",
		"nats://a:1@h1:1, nats://h2:2":       "nats://a:***@h1:1,nats://h2:2",
		"https://hooks.example.com/T0/B1/xx": "https://hooks.example.com/***",
		"https://h.example.com/?token=abc":   "https://h.example.com?***",
		"https://h.example.com?token=abc":    "https://h.example.com?***",
		"https://u:p@h.example.com:8443/":    "https://u:***@h.example.com:8443",
		"::not a url::secret":                "[redacted]",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestApprovalVarsExist: every variable the package errors are translated
// to is one guardian reads.
func TestApprovalVarsExist(t *testing.T) {
	vars := envconfigVars(t)
	for _, m := range []map[string]string{approvalVars, auditVars} {
		for field, name := range m {
			if _, ok := vars[name]; !ok {
				t.Errorf("%s maps to %s, which is not a variable guardian reads", field, name)
			}
		}
	}
}
