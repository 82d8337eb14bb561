package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// envPrefix starts every configuration variable.
const envPrefix = "GUARDIAN"

// config is guardian's configuration, read from GUARDIAN_* variables. Field
// names become variable names by split_words: NATSURL -> GUARDIAN_NATS_URL.
// Fields tagged secret:"true" are redacted by `guardian config`; fields
// tagged secret:"url" show their URLs without passwords, tokens, paths or
// queries.
type config struct {
	NatsURL         string        `split_words:"true" desc:"NATS server URL(s), comma-separated; empty: start an embedded server (see GUARDIAN_EMBEDDED)" secret:"url"`
	NatsUser        string        `split_words:"true" desc:"user name for NATS"`
	NatsPassword    string        `split_words:"true" desc:"password for NATS" secret:"true"`
	NatsCreds       string        `split_words:"true" desc:"path of a NATS .creds file (JWT and nkey seed)"`
	NatsNkeySeed    string        `split_words:"true" desc:"path of a file holding an nkey user seed"`
	TLSCa           string        `split_words:"true" desc:"path of a PEM CA bundle that signs the NATS server certificate"`
	TLSCert         string        `split_words:"true" desc:"path of the PEM client certificate for NATS (mutual TLS)"`
	TLSKey          string        `split_words:"true" desc:"path of the PEM client key for NATS (mutual TLS)"`
	DataDir         string        `split_words:"true" default:"./guardian-data" desc:"directory for the embedded server's store and the audit spool"`
	Embedded        string        `default:"auto" desc:"auto (embedded when GUARDIAN_NATS_URL is empty), true or false"`
	EmbeddedListen  string        `split_words:"true" default:"127.0.0.1:4222" desc:"host:port where the embedded server listens for clients"`
	HTTPAddr        string        `split_words:"true" default:"127.0.0.1:8080" desc:"host:port for /healthz, /readyz, /metrics and the console (/ui/); empty disables HTTP"`
	LogLevel        string        `split_words:"true" default:"info" desc:"debug, info, warn or error"`
	LogFormat       string        `split_words:"true" default:"auto" desc:"auto (coloured text on a terminal, JSON otherwise), text or json"`
	InstanceID      string        `split_words:"true" desc:"this process's name in logs and the micro service metadata (default: host name and pid)"`
	Replicas        int           `default:"1" desc:"replicas of every stream and bucket: 1 on one server, 3 in a cluster (1-5)"`
	ShutdownTimeout time.Duration `split_words:"true" default:"10s" desc:"how long a shutdown waits for requests in flight (1s-5m)"`
	LatencyInterval time.Duration `split_words:"true" default:"1m" desc:"how often this guardian publishes its calls' latency histograms to GUARDIAN_LATENCY, for 'guardian policy suggest' (100ms-1h; 0 turns it off)"`
	MaxInFlight     int           `split_words:"true" default:"256" desc:"requests handled at once; more wait in NATS (1-65536)"`
	JsAPIPrefix     string        `split_words:"true" desc:"for the CLI of a user outside guardian's account: the prefix under which that account imports guardian's JetStream API, e.g. $JS.GUARDIAN.API (guardian serve refuses it)"`
	Identity        string        `default:"asserted" desc:"who decides: asserted (the body's requested_by/decided_by, for one account) or required (the server-stamped Nats-Request-Info of a service import with share: true; requests without it are refused)"`

	TimeoutDefault     time.Duration `split_words:"true" default:"30s" desc:"budget of any operation without its own (>0, <=1h)"`
	TimeoutStrategy    string        `split_words:"true" default:"graceful" desc:"fallback strategy: graceful, strict or none"`
	TimeoutMaxStaleAge time.Duration `split_words:"true" default:"60s" desc:"oldest cached value served when a load times out (0-1h)"`

	Approval approvalConfig `desc:"-"`
	Audit    auditConfig    `desc:"-"`
	Console  consoleConfig  `desc:"-"`

	// timeouts holds GUARDIAN_TIMEOUT_<CATEGORY> overrides, read by loadConfig.
	timeouts map[jsguard.Category]time.Duration
	// onReady, when set, is called with the NATS URL once the service
	// answers requests.
	onReady func(url string)
	// beforeAPI, when set, is called after the consumers started and before
	// the API service is added (tests hold the start there).
	beforeAPI func()
}

// embeddedMode reports whether guardian starts its own nats-server.
func (c *config) embeddedMode() bool {
	switch c.Embedded {
	case "true":
		return true
	case "false":
		return false
	}
	return c.NatsURL == ""
}

// policy returns the jsguard policy the config describes.
func (c *config) policy() jsguard.Policy {
	p := jsguard.DefaultPolicy()
	p.Default = c.TimeoutDefault
	p.Strategy = jsguard.Strategy(c.TimeoutStrategy)
	p.MaxStaleAge = c.TimeoutMaxStaleAge
	for cat, d := range c.timeouts {
		p.Budgets[cat] = d
	}
	return p
}

// loadConfig reads the environment. Its errors name the variable, the value
// and what is allowed.
func loadConfig() (*config, error) {
	var c config
	if err := envconfig.Process(envPrefix, &c); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			// KeyName is the whole variable name, prefix included.
			return nil, fmt.Errorf("%s=%q: not a valid %s", pe.KeyName, pe.Value, typeHint(pe.TypeName))
		}
		return nil, err
	}
	if err := checkUnknownVars(&c); err != nil {
		return nil, err
	}
	c.timeouts = map[jsguard.Category]time.Duration{}
	for _, cat := range jsguard.Categories() {
		name := envPrefix + "_TIMEOUT_" + string(cat)
		v, ok := os.LookupEnv(name)
		if !ok {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: not a valid duration (like 5s or 1m30s)", name, v)
		}
		c.timeouts[cat] = d
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// clientVars are GUARDIAN_* variables that only the client commands read.
var clientVars = []string{"GUARDIAN_AUDIT_SEAL_PUBLIC_KEY", "GUARDIAN_TENANT"}

// checkUnknownVars refuses a GUARDIAN_* variable that guardian does not
// read, such as a misspelt one, naming the nearest known variable.
func checkUnknownVars(c *config) error {
	var known []string
	for _, v := range configVars(c) {
		known = append(known, v.Name)
	}
	for _, cat := range jsguard.Categories() {
		known = append(known, envPrefix+"_TIMEOUT_"+string(cat))
	}
	known = append(known, clientVars...)
	var unknown []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, envPrefix+"_") && !slices.Contains(known, name) {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	name := unknown[0]
	nearest := slices.MinFunc(known, func(a, b string) int { return cmp.Compare(editDistance(name, a), editDistance(name, b)) })
	msg := fmt.Sprintf("%s is not a guardian variable", name)
	if editDistance(name, nearest) <= max(3, len(name)/4) {
		msg += fmt.Sprintf("; did you mean %s?", nearest)
	}
	if len(unknown) > 1 {
		msg += fmt.Sprintf(" (unknown too: %s)", strings.Join(unknown[1:], ", "))
	}
	return errors.New(msg + "; 'guardian serve --help' lists them all")
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func typeHint(t string) string {
	switch t {
	case "time.Duration":
		return "duration (like 90s, 15m or 2h)"
	case "int", "int64":
		return "whole number"
	case "bool":
		return "boolean (true or false)"
	}
	return t
}

// validate checks every value; the error names the variable, value and range.
func (c *config) validate() error {
	bad := func(name string, v any, allowed string) error {
		return fmt.Errorf("%s_%s=%v: %s", envPrefix, name, v, allowed)
	}
	switch c.Embedded {
	case "auto", "true", "false":
	default:
		return bad("EMBEDDED", c.Embedded, "must be auto, true or false")
	}
	if c.Embedded == "false" && c.NatsURL == "" {
		return bad("EMBEDDED", c.Embedded, "needs GUARDIAN_NATS_URL to be set")
	}
	if c.embeddedMode() {
		if _, _, err := net.SplitHostPort(c.EmbeddedListen); err != nil {
			return bad("EMBEDDED_LISTEN", c.EmbeddedListen, "must be host:port, like 127.0.0.1:4222")
		}
		if c.DataDir == "" {
			return bad("DATA_DIR", `""`, "must name a directory for the embedded server's store")
		}
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return bad("HTTP_ADDR", c.HTTPAddr, "must be host:port, like 127.0.0.1:8080, or empty")
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("LOG_LEVEL", c.LogLevel, "must be debug, info, warn or error")
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		return bad("LOG_FORMAT", c.LogFormat, "must be auto, text or json")
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return bad("REPLICAS", c.Replicas, "must be between 1 and 5")
	}
	if c.LatencyInterval != 0 && (c.LatencyInterval < 100*time.Millisecond || c.LatencyInterval > time.Hour) {
		return bad("LATENCY_INTERVAL", c.LatencyInterval, "must be 0 (off) or between 100ms and 1h")
	}
	if c.ShutdownTimeout < time.Second || c.ShutdownTimeout > 5*time.Minute {
		return bad("SHUTDOWN_TIMEOUT", c.ShutdownTimeout, "must be between 1s and 5m")
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > 65536 {
		return bad("MAX_IN_FLIGHT", c.MaxInFlight, "must be between 1 and 65536")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return bad("TLS_CERT", c.TLSCert, "GUARDIAN_TLS_CERT and GUARDIAN_TLS_KEY go together")
	}
	if c.NatsCreds != "" && (c.NatsUser != "" || c.NatsNkeySeed != "") {
		return bad("NATS_CREDS", c.NatsCreds, "use one of GUARDIAN_NATS_CREDS, GUARDIAN_NATS_USER or GUARDIAN_NATS_NKEY_SEED")
	}
	if err := c.validatePolicy(); err != nil {
		return err
	}
	if err := c.validateApproval(); err != nil {
		return err
	}
	return c.validateAudit()
}

// validatePolicy checks the GUARDIAN_TIMEOUT_* variables; the error names
// the variable, its value and the allowed range.
func (c *config) validatePolicy() error {
	budget := func(name string, d time.Duration) error {
		if d <= 0 || d > jsguard.MaxBudget {
			return fmt.Errorf("%s=%s: must be > 0 and <= %s", name, envValue(name, d), jsguard.MaxBudget)
		}
		return nil
	}
	for _, cat := range jsguard.Categories() {
		if d, ok := c.timeouts[cat]; ok {
			if err := budget(envPrefix+"_TIMEOUT_"+string(cat), d); err != nil {
				return err
			}
		}
	}
	if err := budget(envPrefix+"_TIMEOUT_DEFAULT", c.TimeoutDefault); err != nil {
		return err
	}
	switch jsguard.Strategy(c.TimeoutStrategy) {
	case jsguard.Graceful, jsguard.Strict, jsguard.None:
	default:
		return fmt.Errorf("%s_TIMEOUT_STRATEGY=%s: must be graceful, strict or none", envPrefix, c.TimeoutStrategy)
	}
	if d := c.TimeoutMaxStaleAge; d < 0 || d > jsguard.MaxBudget {
		name := envPrefix + "_TIMEOUT_MAX_STALE_AGE"
		return fmt.Errorf("%s=%s: must be >= 0 and <= %s", name, envValue(name, d), jsguard.MaxBudget)
	}
	p := c.policy()
	if err := p.Validate(); err != nil {
		return fmt.Errorf("GUARDIAN_TIMEOUT_*: %w", err)
	}
	return nil
}

// envValue returns the variable as set in the environment, or v followed
// by "(default)".
func envValue(name string, v any) string {
	if s, ok := os.LookupEnv(name); ok {
		return s
	}
	return fmt.Sprint(v) + " (default)"
}

// configVar is one documented variable.
type configVar struct {
	Name, Type, Default, Desc string
	Secret                    bool
	Value                     string
}

// configVars lists every variable of c with its default and current value,
// secrets redacted.
func configVars(c *config) []configVar {
	var out []configVar
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() || f.Tag.Get("ignored") == "true" {
				continue
			}
			name := f.Name
			if f.Tag.Get("split_words") == "true" {
				name = splitWords(name)
			}
			name = prefix + "_" + strings.ToUpper(name)
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[time.Duration]() {
				walk(v.Field(i), name)
				continue
			}
			cv := configVar{Name: name, Type: typeName(f.Type), Default: f.Tag.Get("default"), Desc: f.Tag.Get("desc"), Secret: f.Tag.Get("secret") != ""}
			cv.Value = fmt.Sprint(v.Field(i).Interface())
			switch f.Tag.Get("secret") {
			case "true":
				if cv.Value != "" {
					cv.Value = "[redacted]"
				}
			case "url":
				cv.Value = redactURL(cv.Value)
			}
			out = append(out, cv)
		}
	}
	walk(reflect.ValueOf(c).Elem(), envPrefix)
	p := jsguard.DefaultPolicy()
	for _, cat := range jsguard.Categories() {
		if cat == jsguard.ApprovalExpired {
			continue
		}
		cv := configVar{Name: envPrefix + "_TIMEOUT_" + string(cat), Type: "duration", Default: p.Budget(cat).String(), Desc: "budget of " + cat.Code()}
		if l := cat.Level(); l != jsguard.LevelNone {
			cv.Desc += " (" + l.String() + ", fallback: " + l.DefaultFallback() + ")"
		}
		cv.Value = cv.Default
		if d, ok := c.timeouts[cat]; ok {
			cv.Value = d.String()
		}
		out = append(out, cv)
	}
	return out
}

// splitWords mirrors envconfig's split_words: NatsURL -> NATS_URL.
func splitWords(name string) string {
	var words []string
	for _, w := range gatherRE.FindAllString(name, -1) {
		if m := acronymRE.FindStringSubmatch(w); len(m) == 3 {
			words = append(words, m[1], m[2])
		} else {
			words = append(words, w)
		}
	}
	return strings.Join(words, "_")
}

func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "duration"
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		return "integer"
	case t.Kind() == reflect.Bool:
		return "true|false"
	}
	return "string"
}

// printVars writes a table of variables; withValues adds the effective value.
func printVars(w io.Writer, vars []configVar, withValues bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if withValues {
		fmt.Fprintln(tw, "VARIABLE\tVALUE\tDEFAULT")
		for _, v := range vars {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, orDash(v.Value), orDash(v.Default))
		}
	} else {
		fmt.Fprintln(tw, "VARIABLE\tTYPE\tDEFAULT\tDESCRIPTION")
		for _, v := range vars {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Name, v.Type, orDash(v.Default), v.Desc)
		}
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

var (
	gatherRE  = regexp.MustCompile("([^A-Z]+|[A-Z]+[^A-Z]+|[A-Z]+)")
	acronymRE = regexp.MustCompile("([A-Z]+)([A-Z][^A-Z]+)")
)
