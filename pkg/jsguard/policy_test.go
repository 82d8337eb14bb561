package jsguard_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

func TestPolicyValidate(t *testing.T) {
	cases := []struct {
		name   string
		change func(p *jsguard.Policy)
		want   []string // substrings of the message: the entry and its range
	}{
		{"zero budget", func(p *jsguard.Policy) { p.Budgets[jsguard.KVGet] = 0 }, []string{"TIMEOUT_KV_GET", "0s", "> 0", "<= 1h0m0s"}},
		{"negative budget", func(p *jsguard.Policy) { p.Budgets[jsguard.T1Cache] = -time.Second }, []string{"TIMEOUT_T1_CACHE", "-1s", "> 0"}},
		{"budget above 1h", func(p *jsguard.Policy) { p.Budgets[jsguard.ReplayProcessing] = 2 * time.Hour }, []string{"TIMEOUT_REPLAY_PROCESSING", "2h0m0s", "<= 1h0m0s"}},
		{"malformed category", func(p *jsguard.Policy) { p.Budgets["kv-get"] = time.Second }, []string{`"TIMEOUT_kv-get"`, "^TIMEOUT_[A-Z0-9_]+$"}},
		{"zero default", func(p *jsguard.Policy) { p.Default = 0 }, []string{"default", "> 0", "<= 1h0m0s"}},
		{"unknown strategy", func(p *jsguard.Policy) { p.Strategy = "lenient" }, []string{`"lenient"`, "graceful, strict, none"}},
		{"empty strategy", func(p *jsguard.Policy) { p.Strategy = "" }, []string{`strategy ""`, "graceful, strict, none"}},
		{"negative max stale age", func(p *jsguard.Policy) { p.MaxStaleAge = -1 }, []string{"max_stale_age", ">= 0", "<= 1h0m0s"}},
		{"max stale age above 1h", func(p *jsguard.Policy) { p.MaxStaleAge = 61 * time.Minute }, []string{"max_stale_age", "1h1m0s"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := jsguard.DefaultPolicy()
			tc.change(&p)
			err := p.Validate()
			if !errors.Is(err, jsguard.ErrInvalidPolicy) {
				t.Fatalf("Validate = %v, want ErrInvalidPolicy", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q does not contain %q", err, w)
				}
			}
		})
	}
	for name, p := range map[string]jsguard.Policy{
		"default":  jsguard.DefaultPolicy(),
		"edges":    {Budgets: map[jsguard.Category]time.Duration{jsguard.KVGet: time.Nanosecond, jsguard.KVPut: time.Hour}, Default: time.Hour, Strategy: jsguard.None, MaxStaleAge: 0},
		"nil map":  {Default: time.Second, Strategy: jsguard.Strict},
		"max ages": {Default: time.Second, Strategy: jsguard.Graceful, MaxStaleAge: time.Hour},
	} {
		if err := p.Validate(); err != nil {
			t.Errorf("%s: Validate = %v, want nil", name, err)
		}
	}
}

func TestDefaultPolicyMatrix(t *testing.T) {
	p := jsguard.DefaultPolicy()
	want := map[jsguard.Category]time.Duration{
		jsguard.NATSConnect: 10 * time.Second, jsguard.NATSPublish: 5 * time.Second, jsguard.NATSSubscribe: 5 * time.Second,
		jsguard.NATSStreamCreate: 15 * time.Second, jsguard.KVCreate: 10 * time.Second, jsguard.KVGet: 5 * time.Second,
		jsguard.KVPut: 5 * time.Second, jsguard.KVDelete: 5 * time.Second, jsguard.ExecutionIntent: 30 * time.Second,
		jsguard.ExecutionContainment: 60 * time.Second, jsguard.ExecutionExpiration: 120 * time.Second,
		jsguard.ApprovalCheck: 5 * time.Second, jsguard.ApprovalGrant: 10 * time.Second,
		jsguard.ReplayProcessing: 300 * time.Second, jsguard.ReplayValidation: 60 * time.Second,
		jsguard.APIRequest: 30 * time.Second, jsguard.APIValidation: 10 * time.Second,
		jsguard.T1Cache: 100 * time.Millisecond, jsguard.T2File: 500 * time.Millisecond, jsguard.T3Layer: 2 * time.Second,
		jsguard.T4Full: 5 * time.Second, jsguard.T5Complex: 10 * time.Second,
	}
	for c, d := range want {
		if got := p.Budget(c); got != d {
			t.Errorf("%s: %s, want %s", c, got, d)
		}
	}
	if p.Default != 30*time.Second || p.Strategy != jsguard.Graceful || p.MaxStaleAge != time.Minute {
		t.Errorf("default %s strategy %s max stale %s", p.Default, p.Strategy, p.MaxStaleAge)
	}
	if got := p.Budget("NEVER_REGISTERED_X"); got != 30*time.Second {
		t.Errorf("unknown category budget %s, want Default 30s", got)
	}
	p.Default = time.Second
	if got := p.Budget("NEVER_REGISTERED_X"); got != time.Second {
		t.Errorf("unknown category budget %s, want the policy's Default 1s", got)
	}
	if d := (&jsguard.Policy{}).Budget("NEVER_REGISTERED_X"); d != jsguard.DefaultBudget {
		t.Errorf("zero policy budget %s, want DefaultBudget", d)
	}
}

func TestPolicyJSON(t *testing.T) {
	t.Run("round trip", func(t *testing.T) {
		for name, p := range map[string]jsguard.Policy{
			"default": jsguard.DefaultPolicy(),
			"custom":  policyWith(map[jsguard.Category]time.Duration{jsguard.KVGet: 1500 * time.Millisecond, jsguard.T1Cache: 50 * time.Millisecond}),
		} {
			p.Strategy, p.MaxStaleAge, p.Default = jsguard.Strict, 90*time.Second, 45*time.Second
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			var back jsguard.Policy
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("%s: Unmarshal(%s) = %v", name, b, err)
			}
			if !reflect.DeepEqual(back, p) {
				t.Fatalf("%s: round trip changed the policy:\n%+v\n%+v", name, p, back)
			}
		}
	})
	t.Run("wire form", func(t *testing.T) {
		p := jsguard.Policy{Budgets: map[jsguard.Category]time.Duration{jsguard.KVGet: 5 * time.Second}, Default: 30 * time.Second, Strategy: jsguard.Graceful, MaxStaleAge: time.Minute}
		b, _ := p.MarshalJSON()
		if want := `{"budgets":{"TIMEOUT_KV_GET":"5s"},"default":"30s","strategy":"graceful","max_stale_age":"1m0s"}`; string(b) != want {
			t.Fatalf("MarshalJSON = %s, want %s", b, want)
		}
	})
	t.Run("partial document keeps defaults", func(t *testing.T) {
		var p jsguard.Policy
		if err := json.Unmarshal([]byte(`{"budgets":{"TIMEOUT_KV_GET":"2s"},"strategy":"strict"}`), &p); err != nil {
			t.Fatal(err)
		}
		if p.Budget(jsguard.KVGet) != 2*time.Second || p.Budget(jsguard.KVPut) != 5*time.Second || p.Strategy != jsguard.Strict ||
			p.Default != 30*time.Second || p.MaxStaleAge != time.Minute || p.Validate() != nil {
			t.Fatalf("policy = %+v", p)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		for doc, want := range map[string]string{
			`{"budgets":{"KV_GET":"2s"}}`:           "KV_GET",
			`{"budgets":{"TIMEOUT_KV_GET":"soon"}}`: "budgets.TIMEOUT_KV_GET",
			`{"default":"30"}`:                      "default",
			`{"max_stale_age":"1 minute"}`:          "max_stale_age",
			`{"budgets":[]}`:                        "budgets",
			`not json`:                              "invalid",
		} {
			var p jsguard.Policy
			err := json.Unmarshal([]byte(doc), &p)
			if !errors.Is(err, jsguard.ErrInvalidPolicy) && !strings.Contains(doc, "not json") {
				t.Errorf("%s: err = %v, want ErrInvalidPolicy", doc, err)
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: err = %v, want it to name %q", doc, err, want)
			}
		}
		var p jsguard.Policy
		if err := p.UnmarshalJSON([]byte(`not json`)); !errors.Is(err, jsguard.ErrInvalidPolicy) {
			t.Errorf("UnmarshalJSON(not json) = %v, want ErrInvalidPolicy", err)
		}
	})
}

var regSeq atomic.Int64

// uniqueCategory returns a category not registered before in this process
// (the registry is global and -count may repeat tests).
func uniqueCategory(prefix string) jsguard.Category {
	return jsguard.Category(prefix + "_" + strconv.FormatInt(regSeq.Add(1), 10))
}

func TestRegister(t *testing.T) {
	c := uniqueCategory("BILLING_EXPORT")
	if jsguard.Known(c) {
		t.Fatalf("%s known before Register", c)
	}
	if err := jsguard.Register(c, 42*time.Second); err != nil {
		t.Fatalf("Register(%s) = %v", c, err)
	}
	if p := jsguard.DefaultPolicy(); !jsguard.Known(c) || p.Budget(c) != 42*time.Second || p.Budgets[c] != 42*time.Second {
		t.Fatalf("registered category not in the default policy")
	}
	g, _ := newGuard(t) // a guard made before or after uses the registered default
	if jsguard.Default().Budget(c) != 42*time.Second || g.Budget(c) != 42*time.Second {
		t.Fatalf("guards do not see the registered budget")
	}
	found := false
	cats := jsguard.Categories()
	for i, x := range cats {
		found = found || x == c
		if i > 0 && cats[i-1] >= x {
			t.Fatalf("Categories not sorted: %v", cats)
		}
	}
	if !found {
		t.Fatalf("Categories() lacks %s", c)
	}
	if c.Code() != "TIMEOUT_"+string(c) {
		t.Fatalf("Code = %s", c.Code())
	}

	if err := jsguard.Register(c, time.Second); !errors.Is(err, jsguard.ErrInvalidCategory) || !strings.Contains(err.Error(), "already registered") {
		t.Fatalf("duplicate Register = %v, want ErrInvalidCategory", err)
	}
	if err := jsguard.Register(jsguard.KVGet, time.Second); !errors.Is(err, jsguard.ErrInvalidCategory) {
		t.Fatalf("Register of a seed category = %v, want ErrInvalidCategory", err)
	}
	for _, bad := range []jsguard.Category{"", "lower", "WITH-DASH", "WITH SPACE", "ÜNICODE"} {
		if err := jsguard.Register(bad, time.Second); !errors.Is(err, jsguard.ErrInvalidCategory) || !strings.Contains(err.Error(), "^TIMEOUT_[A-Z0-9_]+$") {
			t.Errorf("Register(%q) = %v, want ErrInvalidCategory naming the pattern", bad, err)
		}
		if jsguard.Known(bad) {
			t.Errorf("malformed %q became known", bad)
		}
	}
	d := uniqueCategory("BAD_BUDGET")
	if err := jsguard.Register(d, 2*time.Hour); !errors.Is(err, jsguard.ErrInvalidPolicy) || jsguard.Known(d) {
		t.Fatalf("Register with 2h = %v, want ErrInvalidPolicy and nothing registered", err)
	}
}

func TestParseCode(t *testing.T) {
	if c, err := jsguard.ParseCode("TIMEOUT_KV_GET"); err != nil || c != jsguard.KVGet {
		t.Fatalf("ParseCode = %q, %v", c, err)
	}
	if c, err := jsguard.ParseCode("TIMEOUT_SOMETHING_NEW_2"); err != nil || c != "SOMETHING_NEW_2" {
		t.Fatalf("ParseCode of an unregistered code = %q, %v", c, err)
	}
	for _, bad := range []string{"", "TIMEOUT_", "KV_GET", "timeout_kv_get", "TIMEOUT_KV-GET"} {
		if _, err := jsguard.ParseCode(bad); !errors.Is(err, jsguard.ErrInvalidCategory) {
			t.Errorf("ParseCode(%q) = %v, want ErrInvalidCategory", bad, err)
		}
	}
	ev := jsguard.Event{Code: "TIMEOUT_KV_PUT"}
	if ev.Category() != jsguard.KVPut || (&jsguard.Event{Code: "x"}).Category() != "" {
		t.Fatal("Event.Category misreads the code")
	}
}
