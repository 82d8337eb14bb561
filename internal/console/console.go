// Package console is guardian's operator console: server-rendered pages
// under /ui/ that show pending approvals live (server-sent events fed by the
// lifecycle events), let a person approve, deny or extend them with a
// reason, browse the history and the audit trail. Templates, styles and the
// small script are embedded; the pages load nothing from outside guardian.
//
// Who is acting comes from an OpenID Connect login (authorization code with
// PKCE) in ModeOIDC, or, in ModeLocal (the embedded quick start on a
// loopback address), from a name the person types, shown as unauthenticated
// on every page. Sessions are signed cookies (Secure, HttpOnly,
// SameSite=Lax), so any guardian replica sharing the session key serves
// them; every decision carries the session's CSRF token.
package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/oauth2"

	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Mode says how the console knows who is acting.
type Mode string

// The modes.
const (
	// ModeLocal: no login; the person types a name, recorded as an
	// asserted identity. Only for a console on a loopback address.
	ModeLocal Mode = "local"
	// ModeOIDC: an OpenID Connect login; the ID token's subject, verified
	// email and groups are the identity (kvapprovals.SourceOIDC).
	ModeOIDC Mode = "oidc"
)

// OIDC configures the login of ModeOIDC.
type OIDC struct {
	Issuer       string // the provider's issuer URL (discovery at /.well-known/openid-configuration)
	ClientID     string
	ClientSecret string
	RedirectURL  string // this console's /ui/callback as the provider knows it
}

// Config configures a Console.
type Config struct {
	Mode Mode
	OIDC OIDC
	// SessionKey signs the session cookies (at least 32 bytes). Replicas
	// behind one address must share it. Empty: a random key, so sessions
	// end with the process.
	SessionKey []byte
	// Allow, when not empty, lists who may log in (ModeOIDC), in the form
	// of approver rules (email:, group:, sub:); anyone else at the
	// provider is refused at the callback. Empty: every account of the
	// provider may log in and sees the tenants without approver rules.
	Allow []string
	// Approvals is the approvals service the console reads and decides
	// through.
	Approvals *kvapprovals.Service
	// NC receives the lifecycle events (Approvals.Config().EventsSubjectPrefix).
	NC *nats.Conn
	// JS and Audit read the audit stream; SealPublicKey, when set, is the
	// key its seals are verified with.
	JS            jetstream.JetStream
	Audit         auditstream.Config
	SealPublicKey string
	Log           *slog.Logger
	// Guard runs the console's NATS calls under their budgets (nil:
	// jsguard.Default()).
	Guard *jsguard.Guard
}

// Console serves the pages. It is safe for concurrent use.
type Console struct {
	cfg      Config
	tmpl     *template.Template
	mux      *http.ServeMux
	key      []byte
	provider *oidc.Provider
	verifier *oidc.IDTokenVerifier
	oauth    *oauth2.Config
	hub      *hub
	sub      *nats.Subscription
	verify   verifyCache
}

// ErrConfig is wrapped by New's errors for a bad Config.
var ErrConfig = errors.New("console: invalid config")

// New builds a console. In ModeOIDC it fetches the provider's discovery
// document (under ctx). It returns an error wrapping ErrConfig for a bad
// Config, the discovery's error, or the error of subscribing to the
// lifecycle events.
func New(ctx context.Context, cfg Config) (*Console, error) {
	if cfg.Approvals == nil || cfg.NC == nil || cfg.JS == nil {
		return nil, fmt.Errorf("%w: Approvals, NC and JS are required", ErrConfig)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Guard == nil {
		cfg.Guard = jsguard.Default()
	}
	c := &Console{cfg: cfg, mux: http.NewServeMux(), hub: newHub()}
	switch {
	case len(cfg.SessionKey) == 0:
		c.key = make([]byte, 32)
		_, _ = rand.Read(c.key)
	case len(cfg.SessionKey) < 32:
		return nil, fmt.Errorf("%w: the session key has %d bytes, want at least 32", ErrConfig, len(cfg.SessionKey))
	default:
		c.key = cfg.SessionKey
	}
	if err := (&kvapprovals.Rules{Approvers: cfg.Allow}).Validate(); err != nil {
		return nil, fmt.Errorf("%w: the allow list: %v", ErrConfig, err)
	}
	switch cfg.Mode {
	case ModeLocal:
	case ModeOIDC:
		o := cfg.OIDC
		if o.Issuer == "" || o.ClientID == "" || o.RedirectURL == "" {
			return nil, fmt.Errorf("%w: OIDC needs an issuer, a client id and a redirect URL", ErrConfig)
		}
		p, err := oidc.NewProvider(ctx, o.Issuer)
		if err != nil {
			return nil, fmt.Errorf("console: OIDC discovery at %s: %w", o.Issuer, err)
		}
		c.provider = p
		c.verifier = p.Verifier(&oidc.Config{ClientID: o.ClientID})
		c.oauth = &oauth2.Config{ClientID: o.ClientID, ClientSecret: o.ClientSecret, RedirectURL: o.RedirectURL,
			Endpoint: p.Endpoint(), Scopes: []string{oidc.ScopeOpenID, "email", "profile", "groups"}}
	default:
		return nil, fmt.Errorf("%w: mode %q, want local or oidc", ErrConfig, cfg.Mode)
	}
	t, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("console: templates: %w", err)
	}
	c.tmpl = t
	prefix := cfg.Approvals.Config().EventsSubjectPrefix + ".>"
	c.sub, err = cfg.Guard.Subscribe(ctx, cfg.NC, prefix, c.onEvent)
	if err != nil {
		return nil, fmt.Errorf("console: subscribe %s: %w", prefix, err)
	}
	c.routes()
	return c, nil
}

// Close stops the console's subscription and ends its event streams.
func (c *Console) Close() {
	_ = c.sub.Unsubscribe()
	c.hub.close()
}

// ServeHTTP serves the console's paths under /ui/.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self' "+c.formActions())
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	c.mux.ServeHTTP(w, r)
}

// formActions allows the login form to go to the provider.
func (c *Console) formActions() string {
	if c.provider == nil {
		return ""
	}
	return c.cfg.OIDC.Issuer
}

func (c *Console) routes() {
	static, _ := fs.Sub(staticFS, "static")
	c.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/pending", http.StatusSeeOther)
	})
	c.mux.HandleFunc("GET /ui/login", c.login)
	c.mux.HandleFunc("GET /ui/callback", c.callback)
	c.mux.HandleFunc("POST /ui/logout", c.withSession(true, c.logout))
	c.mux.HandleFunc("GET /ui/pending", c.withSession(false, c.pendingPage))
	c.mux.HandleFunc("GET /ui/history", c.withSession(false, c.historyPage))
	c.mux.HandleFunc("GET /ui/approval", c.withSession(false, c.detailPage))
	c.mux.HandleFunc("GET /ui/audit", c.withSession(false, c.auditPage))
	c.mux.HandleFunc("GET /ui/events", c.withSession(false, c.events))
	c.mux.HandleFunc("POST /ui/decide", c.withSession(true, c.decide))
	c.mux.HandleFunc("POST /ui/name", c.withSession(true, c.setName))
}

// ---- sessions ---------------------------------------------------------------

const (
	sessionCookie = "guardian_console"
	loginCookie   = "guardian_console_login"
	sessionTTL    = 12 * time.Hour
)

// session is what the signed cookie carries.
type session struct {
	Subject string   `json:"sub,omitempty"`
	Email   string   `json:"email,omitempty"`
	Name    string   `json:"name,omitempty"`
	Groups  []string `json:"groups,omitempty"`
	CSRF    string   `json:"csrf"`
	Expires int64    `json:"exp"`
}

// identity is who the session acts as; ok is false when nobody is named
// yet (ModeLocal before the person typed a name).
func (c *Console) identity(s *session) (kvapprovals.Identity, bool) {
	if c.cfg.Mode == ModeLocal {
		return kvapprovals.Identity{Source: kvapprovals.SourceAsserted, User: s.Name}, s.Name != ""
	}
	user := s.Subject
	if s.Email != "" {
		user = s.Email
	}
	return kvapprovals.Identity{Source: kvapprovals.SourceOIDC, User: user, Subject: s.Subject, Email: s.Email, Name: s.Name, Groups: s.Groups}, s.Subject != ""
}

func (c *Console) sign(b []byte) string {
	m := hmac.New(sha256.New, c.key)
	m.Write(b)
	return base64.RawURLEncoding.EncodeToString(b) + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (c *Console) unsign(v string) ([]byte, bool) {
	p, sig, ok := strings.Cut(v, ".")
	if !ok {
		return nil, false
	}
	b, err1 := base64.RawURLEncoding.DecodeString(p)
	s, err2 := base64.RawURLEncoding.DecodeString(sig)
	if err1 != nil || err2 != nil {
		return nil, false
	}
	m := hmac.New(sha256.New, c.key)
	m.Write(b)
	return b, hmac.Equal(s, m.Sum(nil))
}

func (c *Console) setCookie(w http.ResponseWriter, name, value string, ttl time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/ui/", MaxAge: int(ttl.Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

func (c *Console) readSession(r *http.Request) (*session, bool) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, false
	}
	b, ok := c.unsign(ck.Value)
	if !ok {
		return nil, false
	}
	var s session
	if json.Unmarshal(b, &s) != nil || time.Now().Unix() > s.Expires || s.CSRF == "" {
		return nil, false
	}
	return &s, true
}

func (c *Console) writeSession(w http.ResponseWriter, s *session) {
	b, _ := json.Marshal(s)
	c.setCookie(w, sessionCookie, c.sign(b), sessionTTL)
}

// withSession runs h with the request's session. Without one, ModeLocal
// starts one; ModeOIDC sends pages to the login and refuses everything else
// with 401. A state-changing request (post) must carry the session's CSRF
// token (header X-CSRF-Token or form field csrf), else it is refused with
// 403.
func (c *Console) withSession(post bool, h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, ok := c.readSession(r)
		if !ok {
			if c.cfg.Mode == ModeOIDC {
				if r.Method == http.MethodGet && r.URL.Path != "/ui/events" {
					http.Redirect(w, r, "/ui/login?next="+template.URLQueryEscaper(r.URL.RequestURI()), http.StatusSeeOther)
					return
				}
				httpError(w, http.StatusUnauthorized, "not logged in")
				return
			}
			s = &session{CSRF: rand.Text(), Expires: time.Now().Add(sessionTTL).Unix()}
			c.writeSession(w, s)
		}
		if post {
			token := r.Header.Get("X-CSRF-Token")
			if token == "" {
				token = r.PostFormValue("csrf")
			}
			if !hmac.Equal([]byte(token), []byte(s.CSRF)) {
				httpError(w, http.StatusForbidden, "missing or wrong CSRF token: reload the page")
				return
			}
		}
		h(w, r, s)
	}
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// ---- OIDC login -----------------------------------------------------------

// loginState is the short-lived cookie that carries a login across the
// provider: the state, the PKCE verifier, the nonce and where to go after.
type loginState struct {
	State, Verifier, Nonce, Next string
	Expires                      int64
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if c.cfg.Mode != ModeOIDC {
		http.Redirect(w, r, "/ui/pending", http.StatusSeeOther)
		return
	}
	next := r.URL.Query().Get("next")
	if !strings.HasPrefix(next, "/ui/") || strings.HasPrefix(next, "//") {
		next = "/ui/pending"
	}
	ls := loginState{State: rand.Text(), Verifier: oauth2.GenerateVerifier(), Nonce: rand.Text(), Next: next, Expires: time.Now().Add(10 * time.Minute).Unix()}
	b, _ := json.Marshal(ls)
	c.setCookie(w, loginCookie, c.sign(b), 10*time.Minute)
	http.Redirect(w, r, c.oauth.AuthCodeURL(ls.State, oauth2.S256ChallengeOption(ls.Verifier), oidc.Nonce(ls.Nonce)), http.StatusFound)
}

func (c *Console) callback(w http.ResponseWriter, r *http.Request) {
	if c.cfg.Mode != ModeOIDC {
		http.NotFound(w, r)
		return
	}
	ck, err := r.Cookie(loginCookie)
	var ls loginState
	if err == nil {
		if b, ok := c.unsign(ck.Value); ok {
			_ = json.Unmarshal(b, &ls)
		}
	}
	q := r.URL.Query()
	if ls.State == "" || time.Now().Unix() > ls.Expires || q.Get("state") != ls.State {
		http.Error(w, "login expired or tampered with: start again at /ui/login", http.StatusBadRequest)
		return
	}
	if e := q.Get("error"); e != "" {
		http.Error(w, "login refused by the provider: "+e+": "+q.Get("error_description"), http.StatusForbidden)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	tok, err := c.oauth.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(ls.Verifier))
	if err != nil {
		c.cfg.Log.Warn("console login: code exchange failed", "err", err)
		http.Error(w, "login failed: the code exchange was refused", http.StatusBadGateway)
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := c.verifier.Verify(ctx, raw)
	if err != nil || idt.Nonce != ls.Nonce {
		c.cfg.Log.Warn("console login: ID token refused", "err", err)
		http.Error(w, "login failed: the ID token did not verify", http.StatusForbidden)
		return
	}
	var claims struct {
		Email         string   `json:"email"`
		EmailVerified bool     `json:"email_verified"`
		Name          string   `json:"name"`
		Groups        []string `json:"groups"`
	}
	_ = idt.Claims(&claims)
	if claims.Email == "" {
		// Many providers put the profile in the userinfo endpoint only.
		if ui, err := c.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok)); err == nil && ui.Subject == idt.Subject {
			_ = ui.Claims(&claims)
		}
	}
	s := &session{Subject: idt.Subject, Name: claims.Name, Groups: claims.Groups, CSRF: rand.Text(), Expires: time.Now().Add(sessionTTL).Unix()}
	if claims.EmailVerified {
		s.Email = claims.Email
	}
	if id, _ := c.identity(s); len(c.cfg.Allow) > 0 && !(&kvapprovals.Rules{Approvers: c.cfg.Allow}).Eligible(&id) {
		c.cfg.Log.Warn("console login refused: not on the allow list", "subject", s.Subject, "email", s.Email)
		http.Error(w, "you are not allowed to use this console (GUARDIAN_CONSOLE_ALLOW)", http.StatusForbidden)
		return
	}
	c.writeSession(w, s)
	c.setCookie(w, loginCookie, "", -time.Second)
	c.cfg.Log.Info("console login", "subject", s.Subject, "email", s.Email)
	http.Redirect(w, r, ls.Next, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, _ *session) {
	c.setCookie(w, sessionCookie, "", -time.Second)
	http.Redirect(w, r, "/ui/pending", http.StatusSeeOther)
}

// setName records the name a person acts under in ModeLocal.
func (c *Console) setName(w http.ResponseWriter, r *http.Request, s *session) {
	if c.cfg.Mode != ModeLocal {
		httpError(w, http.StatusNotFound, "names come from the login")
		return
	}
	name := strings.TrimSpace(r.PostFormValue("name"))
	if name == "" || len(name) > kvapprovals.MaxTextBytes {
		httpError(w, http.StatusBadRequest, "give a name of 1-256 bytes")
		return
	}
	s.Name = name
	c.writeSession(w, s)
	http.Redirect(w, r, "/ui/pending", http.StatusSeeOther)
}

// ---- verification cache ---------------------------------------------------

// verifyCache keeps the last verification of the audit stream for a while:
// it reads the whole stream.
type verifyCache struct {
	mu     sync.Mutex
	at     time.Time
	report *auditstream.Report
	err    error
}
