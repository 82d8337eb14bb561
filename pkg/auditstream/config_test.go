package auditstream

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
)

func TestConfigValidate(t *testing.T) {
	seed, _ := testSeed(t)
	tests := []struct {
		name  string
		edit  func(*Config)
		field string // "" means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"with seed", func(c *Config) { c.SealSeed = seed }, ""},
		{"forever", func(c *Config) { c.MaxAge = 0 }, ""},
		{"alerts off", func(c *Config) { c.AlertThreshold = 0 }, ""},
		{"empty stream", func(c *Config) { c.Stream = "" }, "Stream"},
		{"dotted stream", func(c *Config) { c.Stream = "A.B" }, "Stream"},
		{"wildcard prefix", func(c *Config) { c.SubjectPrefix = "a.*" }, "SubjectPrefix"},
		{"empty token prefix", func(c *Config) { c.SubjectPrefix = "a..b" }, "SubjectPrefix"},
		{"replicas 0", func(c *Config) { c.Replicas = 0 }, "Replicas"},
		{"replicas 6", func(c *Config) { c.Replicas = 6 }, "Replicas"},
		{"duplicates 0", func(c *Config) { c.Duplicates = 0 }, "Duplicates"},
		{"max age below duplicates", func(c *Config) { c.MaxAge = time.Minute }, "MaxAge"},
		{"negative max age", func(c *Config) { c.MaxAge = -time.Hour }, "MaxAge"},
		{"tiny spool", func(c *Config) { c.SpoolMaxBytes = 100 }, "SpoolMaxBytes"},
		{"in flight 0", func(c *Config) { c.MaxInFlight = 0 }, "MaxInFlight"},
		{"seal every 0", func(c *Config) { c.SealEvery = 0 }, "SealEvery"},
		{"seal every too many", func(c *Config) { c.SealEvery = maxSealEvery + 1 }, "SealEvery"},
		{"seal interval 1ms", func(c *Config) { c.SealInterval = time.Millisecond }, "SealInterval"},
		{"bad seed", func(c *Config) { c.SealSeed = "SAnotaseed" }, "SealSeed"},
		{"operator seed", func(c *Config) { c.SealSeed = operatorSeed(t) }, "SealSeed"},
		{"bad alert prefix", func(c *Config) { c.AlertPrefix = "a.>" }, "AlertPrefix"},
		{"alert window 0", func(c *Config) { c.AlertWindow = 0 }, "AlertWindow"},
		{"negative threshold", func(c *Config) { c.AlertThreshold = -1 }, "AlertThreshold"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.edit(&cfg)
			err := cfg.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tt.field+" ") && !strings.Contains(err.Error(), tt.field+":") {
				t.Errorf("error %q does not name %s", err, tt.field)
			}
		})
	}
}

func operatorSeed(t *testing.T) string {
	t.Helper()
	kp, _ := nkeys.CreateOperator()
	s, _ := kp.Seed()
	return string(s)
}

func TestTenantToken(t *testing.T) {
	tests := []struct{ tenant, token string }{
		{"", NoTenant},
		{NoTenant, NoTenant},
		{"acme", "acme"},
		{"Acme-1_x", "Acme-1_x"},
		{"acme.eu", "acme%2Eeu"},
		{"a*b>c", "a%2Ab%3Ec"},
		{"a b", "a%20b"},
		{"100%", "100%25"},
		{"é", "%C3%A9"},
	}
	for _, tt := range tests {
		if got := TenantToken(tt.tenant); got != tt.token {
			t.Errorf("TenantToken(%q) = %q, want %q", tt.tenant, got, tt.token)
		}
		want := tt.tenant
		if want == NoTenant {
			want = ""
		}
		if got := TenantFromToken(tt.token); got != want {
			t.Errorf("TenantFromToken(%q) = %q, want %q", tt.token, got, want)
		}
	}
}

func TestSubject(t *testing.T) {
	cfg := DefaultConfig()
	tests := []struct {
		tenant, code, want string
		err                error
	}{
		{"acme", "TIMEOUT_KV_GET", "guardian.v1.audit.acme.TIMEOUT_KV_GET", nil},
		{"", "TIMEOUT_NATS_PUBLISH", "guardian.v1.audit._none.TIMEOUT_NATS_PUBLISH", nil},
		{"a.b", "TIMEOUT_X", "guardian.v1.audit.a%2Eb.TIMEOUT_X", nil},
		{"acme", "", "", ErrInvalidEvent},
		{"acme", "KV_GET", "", ErrInvalidEvent},
		{"acme", "TIMEOUT_a.b", "", ErrInvalidEvent},
	}
	for _, tt := range tests {
		got, err := cfg.Subject(tt.tenant, tt.code)
		if !errors.Is(err, tt.err) || got != tt.want {
			t.Errorf("Subject(%q, %q) = %q, %v; want %q, %v", tt.tenant, tt.code, got, err, tt.want, tt.err)
		}
	}
	if got := cfg.SealSubject(); got != "guardian.v1.audit.seal" {
		t.Errorf("SealSubject = %q", got)
	}
}
