package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/internal/console"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// consoleConfig is GUARDIAN_CONSOLE_*.
type consoleConfig struct {
	Mode             string `default:"auto" desc:"the operator console under /ui/ on GUARDIAN_HTTP_ADDR: auto (oidc when GUARDIAN_CONSOLE_OIDC_ISSUER is set, else local on the embedded server with a loopback HTTP address, else off), off, local (no login: for a loopback address only) or oidc"`
	OidcIssuer       string `split_words:"true" desc:"OpenID Provider issuer URL for console logins (authorization code with PKCE)"`
	OidcClientID     string `split_words:"true" desc:"the console's client id at the OpenID Provider"`
	OidcClientSecret string `split_words:"true" desc:"the console's client secret at the OpenID Provider" secret:"true"`
	OidcRedirectURL  string `split_words:"true" desc:"the console's callback as the provider knows it, e.g. https://guardian.example.com/ui/callback"`
	SessionKey       string `split_words:"true" desc:"signs console session cookies, at least 32 bytes, the same on every replica (default: random, sessions end with the process)" secret:"true"`
	Allow            string `desc:"who may log in to the console (oidc), comma-separated approver entries such as group:sre,email:ana@example.com; empty: every account of the provider (which sees the tenants without approver rules)"`
}

// consoleMode decides the console's mode, or "" when it is off. It returns
// an error naming the variable when the settings do not fit together.
func (c *config) consoleMode() (console.Mode, error) {
	cc := c.Console
	loopback := false
	if host, _, err := net.SplitHostPort(c.HTTPAddr); err == nil {
		ip := net.ParseIP(host)
		loopback = host == "localhost" || (ip != nil && ip.IsLoopback())
	}
	switch cc.Mode {
	case "off":
		return "", nil
	case "auto":
		switch {
		case cc.OidcIssuer != "":
			return console.ModeOIDC, nil
		case c.embeddedMode() && loopback:
			return console.ModeLocal, nil
		}
		return "", nil
	case "local":
		if !loopback {
			return "", fmt.Errorf("GUARDIAN_CONSOLE_MODE=local: the console has no login, so GUARDIAN_HTTP_ADDR must be a loopback address (it is %q); use oidc", c.HTTPAddr)
		}
		return console.ModeLocal, nil
	case "oidc":
		if cc.OidcIssuer == "" || cc.OidcClientID == "" || cc.OidcRedirectURL == "" {
			return "", errors.New("GUARDIAN_CONSOLE_MODE=oidc needs GUARDIAN_CONSOLE_OIDC_ISSUER, GUARDIAN_CONSOLE_OIDC_CLIENT_ID and GUARDIAN_CONSOLE_OIDC_REDIRECT_URL")
		}
		return console.ModeOIDC, nil
	}
	return "", fmt.Errorf("GUARDIAN_CONSOLE_MODE=%s: must be auto, off, local or oidc", cc.Mode)
}

// lateHandler serves /ui/ once the console exists (503 before).
type lateHandler struct {
	h atomic.Pointer[console.Console]
}

func (l *lateHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := l.h.Load()
	if c == nil {
		http.Error(w, "the console is starting", http.StatusServiceUnavailable)
		return
	}
	c.ServeHTTP(w, r)
}

// startConsole builds the console on the wired services.
func startConsole(ctx context.Context, cfg *config, mode console.Mode, w *wired, g *jsguard.Guard, nc *nats.Conn, js jetstream.JetStream, log *slog.Logger) (*console.Console, error) {
	var sealPub string
	if seed := cfg.Audit.SealSeed; seed != "" {
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(seed)))
		if err != nil {
			return nil, fmt.Errorf("console: GUARDIAN_AUDIT_SEAL_SEED: %w", err)
		}
		sealPub, _ = kp.PublicKey()
	}
	cc := cfg.Console
	c, err := console.New(ctx, console.Config{
		Mode:          mode,
		OIDC:          console.OIDC{Issuer: cc.OidcIssuer, ClientID: cc.OidcClientID, ClientSecret: cc.OidcClientSecret, RedirectURL: cc.OidcRedirectURL},
		SessionKey:    []byte(cc.SessionKey),
		Allow:         splitList(cc.Allow),
		Approvals:     w.approvals,
		NC:            nc,
		JS:            js,
		Audit:         cfg.auditStream(),
		SealPublicKey: sealPub,
		Log:           log.With("component", "console"),
		Guard:         g,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// splitList splits a comma-separated list, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
