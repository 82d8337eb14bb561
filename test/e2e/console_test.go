package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nkeys"
	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

var screenshotDir = flag.String("console.screenshots", "", "TestConsole writes its screenshots here (e.g. ../../docs); default: the test's temporary directory")

// chromium returns the path of a Chromium or Chrome binary, or skips the
// test saying how to get one.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium found: install Debian's chromium package (apt-get install -y chromium) to run the browser tests")
	return ""
}

// freePort returns a free TCP port on loopback.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newBrowser starts headless Chromium at chrome and returns its context;
// the browser runs (an empty page) when it returns and stops with the test.
func newBrowser(t *testing.T, chrome string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		// closed network here: no background connections
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true),
		chromedp.WindowSize(1280, 900))
	actx, cancelA := chromedp.NewExecAllocator(t.Context(), opts...)
	bctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil { // starts the browser
		t.Fatalf("start %s: %v", chrome, err)
	}
	return bctx
}

// TestConsole drives the operator console in headless Chromium against the
// real guardian binary and a real OpenID Provider (zitadel's example
// provider, with its login page, signed tokens and PKCE): it logs in, sees
// an approval requested over NATS appear within a second without a
// reload, approves it with a reason and sees it leave the pending view,
// appear in the history with its events, watches an expiry happen live,
// and checks that a decision without the CSRF token and a request without
// a session are refused. It takes screenshots of the three views (also at
// phone width).
func TestConsole(t *testing.T) {
	skipShort(t)
	chrome := chromium(t)
	ctx := t.Context()

	// The OpenID Provider.
	opPort, uiPort := freePort(t), freePort(t)
	issuer := fmt.Sprintf("http://127.0.0.1:%d", opPort)
	uiBase := fmt.Sprintf("http://127.0.0.1:%d", uiPort)
	storage.RegisterClients(storage.WebClient("guardian-console", "console-secret", uiBase+"/ui/callback"))
	opStore := storage.NewStorage(storage.NewUserStore(issuer))
	opHandler := exampleop.SetupServer(issuer, opStore, slog.New(slog.NewTextHandler(io.Discard, nil)), false)
	opL, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", opPort))
	if err != nil {
		t.Fatal(err)
	}
	opSrv := &http.Server{Handler: opHandler, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = opSrv.Serve(opL) }()
	t.Cleanup(func() { _ = opSrv.Close() })

	// guardian with the console logging in at that provider.
	ns := startNATS(t, nil)
	env := expiryEnv()
	env["GUARDIAN_HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", uiPort)
	env["GUARDIAN_CONSOLE_OIDC_ISSUER"] = issuer
	env["GUARDIAN_CONSOLE_OIDC_CLIENT_ID"] = "guardian-console"
	env["GUARDIAN_CONSOLE_OIDC_CLIENT_SECRET"] = "console-secret"
	env["GUARDIAN_CONSOLE_OIDC_REDIRECT_URL"] = uiBase + "/ui/callback"
	env["GUARDIAN_CONSOLE_SESSION_KEY"] = strings.Repeat("k", 32)
	env["GUARDIAN_CONSOLE_ALLOW"] = "email:test-user@zitadel.ch,group:guardian-operators"
	sealKey, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := sealKey.Seed()
	env["GUARDIAN_AUDIT_SEAL_SEED"] = string(seed)
	env["GUARDIAN_AUDIT_SEAL_INTERVAL"] = "1s"
	g := startGuardian(t, "g1", ns.url, env)
	if g.find(g.run(), func(l logLine) bool { return l.Msg == "console" && l.Fields["mode"] == "oidc" }) == nil {
		t.Fatalf("guardian did not start the console in oidc mode:\n%s", g.tail(20))
	}
	nc, js := connect(t, ns.url)
	client := newClient(t, nc, 5*time.Second)
	// Tenant initech's approver rules name someone else: its approvals are
	// not shown to the person logging in below.
	policy, err := js.KeyValue(ctx, jsguard.PolicyBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kvapprovals.StoreRules(ctx, jsguard.Default().KV(policy), "initech", kvapprovals.Rules{Approvers: []string{"email:someone-else@example.com"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Request(ctx, "initech", kvapprovals.RequestInput{ID: "hidden-1", SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}

	// Without a session: the event stream and decisions are refused, pages
	// send to the login.
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 5 * time.Second}
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/ui/events", http.StatusUnauthorized},
		{"POST", "/ui/decide", http.StatusUnauthorized},
		{"GET", "/ui/pending", http.StatusSeeOther},
	} {
		req, _ := http.NewRequestWithContext(ctx, tc.method, uiBase+tc.path, strings.NewReader("tenant=acme&id=x&action=approve&reason=r"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s without a session: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}

	bctx := newBrowser(t, chrome)
	fail := func(what string, err error) {
		t.Helper()
		loc, _ := chromedp.Run(bctx, chromedp.Location())
		body, _ := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("body")))
		t.Fatalf("%s: %v\nat %s:\n%.2000s", what, err, loc, body)
	}
	do := func(what string, d time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(bctx, d)
		defer cancel()
		if err := chromedp.Do(c, steps...); err != nil {
			fail(what, err)
		}
	}
	text := func(what string, sel chromedp.CSS) string {
		t.Helper()
		c, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		v, err := chromedp.Run(c, chromedp.Text(sel))
		if err != nil {
			fail(what, err)
		}
		return v
	}
	shots := *screenshotDir
	if shots == "" {
		shots = t.TempDir()
	}
	shot := func(name string) {
		t.Helper()
		c, cancel := context.WithTimeout(bctx, 20*time.Second)
		defer cancel()
		png, err := chromedp.Run(c, chromedp.FullScreenshot(100))
		if err != nil {
			fail("screenshot "+name, err)
		}
		path := filepath.Join(shots, name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s", path)
	}

	// Log in through the provider's own page.
	do("login", 30*time.Second,
		chromedp.Navigate(uiBase+"/ui/pending"),
		chromedp.WaitVisible(chromedp.ID("username")),
		chromedp.SendKeys(chromedp.ID("username"), "test-user@127.0.0.1"),
		chromedp.SendKeys(chromedp.ID("password"), "verysecure"),
		chromedp.Submit(chromedp.ID("password")),
		chromedp.WaitVisible(chromedp.ID("actor")),
	)
	if actor := text("who", "#actor"); actor != "test-user@zitadel.ch" {
		t.Fatalf("signed in as %q, want the provider's verified email test-user@zitadel.ch", actor)
	}
	do("live stream", 10*time.Second, chromedp.WaitVisible(chromedp.CSS("body.live")))

	// An approval requested over NATS appears without a reload.
	requested := time.Now()
	details := json.RawMessage(`{"cmd":"kubectl rollout restart deploy/payments","ticket":"CHG-4711"}`)
	if _, err := client.Request(ctx, "acme", kvapprovals.RequestInput{ID: "console-1", SessionID: "sess-9", RequestedBy: "alice", Details: details, Timeout: kvapprovals.Duration(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	do("the approval appears", 5*time.Second, chromedp.WaitVisible(chromedp.CSS(`.card[data-key="acme.console-1"]`)))
	appeared := time.Since(requested)
	t.Logf("requested over NATS, on the page after %s", ms(appeared))
	if appeared > time.Second {
		t.Errorf("the approval took %s to appear, want at most 1s", ms(appeared))
	}
	for i := range 2 {
		if _, err := client.Request(ctx, []string{"globex", "acme"}[i], kvapprovals.RequestInput{ID: fmt.Sprintf("console-%d", i+2), SessionID: "sess-1" + fmt.Sprint(i), RequestedBy: "bob",
			Details: json.RawMessage(`{"cmd":"terraform apply"}`), Timeout: kvapprovals.Duration(time.Duration(20+i*5) * time.Minute), RequiredApprovals: i + 1}); err != nil {
			t.Fatal(err)
		}
	}
	do("more approvals", 5*time.Second, chromedp.WaitVisible(chromedp.CSS(`.card[data-key="acme.console-3"]`)))
	c0, cancel0 := context.WithTimeout(bctx, 5*time.Second)
	hidden, err := chromedp.Run(c0, chromedp.Evaluate[bool](`document.querySelector('.card[data-key="initech.hidden-1"]') !== null`))
	cancel0()
	if err != nil || hidden {
		t.Errorf("initech's approval, whose rules do not name the person, is on the page (%v)", err)
	}
	// A timeout for the audit view.
	now := time.Now().UTC()
	if _, err := client.Report(ctx, jsguard.Event{Code: "TIMEOUT_KV_GET", Operation: "kv get orders/o1", TimeoutSeconds: 0.2, ElapsedSeconds: 0.2, TenantID: "acme", Timestamp: now, StartedAt: now.Add(-200 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	shot("console-pending.png")

	// A decision without the CSRF token is refused, in the page's own
	// session; nothing changes.
	c, cancel := context.WithTimeout(bctx, 10*time.Second)
	status, err := chromedp.Run(c, chromedp.Evaluate[int](`fetch("/ui/decide", {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded"},
		body: "tenant=acme&id=console-1&action=approve&reason=sneaky"}).then(r => r.status)`, chromedp.EvalAwaitPromise))
	cancel()
	if err != nil {
		fail("decide without CSRF", err)
	}
	if status != http.StatusForbidden {
		t.Errorf("decision without the CSRF token: %d, want 403", status)
	}
	for _, tc := range []struct{ what, script string }{
		{"a decision with a wrong CSRF token", `fetch("/ui/decide", {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": "guessed"},
			body: "tenant=acme&id=console-1&action=approve&reason=sneaky"}).then(r => r.status)`},
		{"a sign-out without the CSRF token", `fetch("/ui/logout", {method: "POST"}).then(r => r.status)`},
	} {
		c, cancel := context.WithTimeout(bctx, 10*time.Second)
		status, err := chromedp.Run(c, chromedp.Evaluate[int](tc.script, chromedp.EvalAwaitPromise))
		cancel()
		if err != nil || status != http.StatusForbidden {
			t.Errorf("%s: %d %v, want 403", tc.what, status, err)
		}
	}
	if r, err := client.Get(ctx, "acme", "console-1"); err != nil || r.Status != kvapprovals.StatusPending {
		t.Fatalf("after the refused decision: %+v %v", r, err)
	}

	// Approve with a reason (double-clicked): it leaves the pending view,
	// its event shows, and it is recorded once, by the logged-in person.
	do("approve", 10*time.Second,
		chromedp.SendKeys(chromedp.CSS(`.card[data-key="acme.console-1"] input[name=reason]`), "change board approved CHG-4711"),
		chromedp.DoubleClick(chromedp.CSS(`.card[data-key="acme.console-1"] button.approve`)),
		chromedp.WaitNotPresent(chromedp.CSS(`.card[data-key="acme.console-1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#recent li[data-key="acme.console-1"]`)),
	)
	rec, err := client.Get(ctx, "acme", "console-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Status != kvapprovals.StatusApproved || rec.DecidedBy != "test-user@zitadel.ch" || rec.Decider == nil || rec.Decider.Source != kvapprovals.SourceOIDC ||
		rec.Decider.Subject != "id1" || rec.Reason != "change board approved CHG-4711" || len(rec.Approvals) != 1 {
		t.Fatalf("approved record %+v, decider %+v: want approved once by the OIDC user with the reason", rec, rec.Decider)
	}
	// A refused decision shows the API's error in place.
	do("refused extend", 10*time.Second,
		chromedp.SetValue(chromedp.CSS(`.card[data-key="acme.console-3"] input[name=extend_by]`), "48h"),
		chromedp.SendKeys(chromedp.CSS(`.card[data-key="acme.console-3"] input[name=reason]`), "later"),
		chromedp.Click(chromedp.CSS(`.card[data-key="acme.console-3"] button.extend`)),
		chromedp.WaitVisible(chromedp.CSS(`.card[data-key="acme.console-3"] p.error`)),
	)
	if errText := text("error text", `.card[data-key="acme.console-3"] p.error`); !strings.Contains(errText, "400 invalid_request") || !strings.Contains(errText, "maximum timeout") {
		t.Errorf("refused extension shows %q, want the API's 400 and why", errText)
	}

	// An expiry, live: a 2 s approval appears, then leaves as expired.
	if _, err := client.Request(ctx, "acme", kvapprovals.RequestInput{ID: "console-4", SessionID: "sess-4", RequestedBy: "carol", Timeout: kvapprovals.Duration(2 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	do("expiry shown live", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`.card[data-key="acme.console-4"]`)),
		chromedp.WaitNotPresent(chromedp.CSS(`.card[data-key="acme.console-4"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#recent li[data-key="acme.console-4"].status-expired`)),
	)

	// History and the detail view: the approval with its events.
	do("history filtered to before the test", 20*time.Second,
		chromedp.Navigate(uiBase+"/ui/history?until="+url.QueryEscape(requested.Add(-time.Hour).UTC().Format(time.RFC3339))),
		chromedp.WaitVisible(chromedp.CSS(`#history`)))
	if h := text("empty history", "#history tbody"); !strings.Contains(h, "No decided approvals match") {
		t.Errorf("history before the test: %q", h)
	}
	do("history", 20*time.Second,
		chromedp.Navigate(uiBase+"/ui/history"),
		chromedp.WaitVisible(chromedp.CSS(`#history tr[data-key="acme.console-1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#history tr[data-key="acme.console-4"]`)),
	)
	shot("console-history.png")
	do("detail", 20*time.Second,
		chromedp.Navigate(uiBase+"/ui/approval?tenant=acme&id=console-1"),
		chromedp.WaitVisible(chromedp.ID("revisions")),
	)
	if revisions := text("revisions", "#revisions"); !strings.Contains(revisions, "requested") || !strings.Contains(revisions, "approved") || !strings.Contains(revisions, "change board approved CHG-4711") {
		t.Errorf("detail revisions:\n%s", revisions)
	}
	do("audit", 20*time.Second,
		chromedp.Navigate(uiBase+"/ui/audit"),
		chromedp.WaitVisible(chromedp.ID("audit")),
		chromedp.WaitVisible(chromedp.CSS(`svg.chart`)),
	)
	if auditText := text("audit", "#audit"); !strings.Contains(auditText, "TIMEOUT_KV_GET") || !strings.Contains(auditText, "TIMEOUT_APPROVAL_EXPIRED") {
		t.Errorf("audit view:\n%s", auditText)
	}
	if seals := text("seals", "#seals"); !strings.HasPrefix(seals, "verified at") {
		t.Errorf("seal chain state %q, want verified", seals)
	}
	shot("console-audit.png")

	// Phone width: the pending view fits without sideways scrolling.
	do("phone", 20*time.Second,
		chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Navigate(uiBase+"/ui/pending"),
		chromedp.WaitVisible(chromedp.CSS(`.card[data-key="acme.console-3"]`)),
	)
	c, cancel = context.WithTimeout(bctx, 10*time.Second)
	overflow, err := chromedp.Run(c, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > document.documentElement.clientWidth`))
	cancel()
	if err != nil || overflow {
		t.Errorf("at phone width the page scrolls sideways (%v)", err)
	}
	shot("console-pending-phone.png")

	// Signing out ends the session: the next page asks to log in again.
	do("sign out", 20*time.Second, chromedp.ResetViewport(), chromedp.Navigate(uiBase+"/ui/pending"),
		chromedp.Click(chromedp.CSS(`form[action="/ui/logout"] button`)),
		chromedp.WaitVisible(chromedp.ID("username")))
	// Another account of the provider, not on GUARDIAN_CONSOLE_ALLOW, is
	// refused after the provider's login.
	do("login of someone not allowed", 20*time.Second,
		chromedp.SendKeys(chromedp.ID("username"), "test-user2"),
		chromedp.SendKeys(chromedp.ID("password"), "verysecure"),
		chromedp.Submit(chromedp.ID("password")),
	)
	var page string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !strings.Contains(page, "not allowed"); time.Sleep(100 * time.Millisecond) {
		c, cancel := context.WithTimeout(bctx, 2*time.Second)
		page, _ = chromedp.Run(c, chromedp.Text(chromedp.CSS("body")))
		cancel()
	}
	if !strings.Contains(page, "not allowed to use this console") {
		t.Errorf("a provider account off the allow list sees %q", page)
	}
}

// TestConsoleLocal: the embedded quick start on a loopback address serves
// the console without a login; every page says so, a decision needs a
// name first, and a person using only the keyboard can approve.
func TestConsoleLocal(t *testing.T) {
	skipShort(t)
	chrome := chromium(t)
	ctx := t.Context()
	port, natsPort := freePort(t), freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	g := &guardian{t: t, name: "local", dataDir: t.TempDir()}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GUARDIAN_") {
			g.env = append(g.env, kv)
		}
	}
	g.env = append(g.env, "GUARDIAN_DATA_DIR="+g.dataDir, "GUARDIAN_HTTP_ADDR="+fmt.Sprintf("127.0.0.1:%d", port),
		"GUARDIAN_EMBEDDED_LISTEN="+fmt.Sprintf("127.0.0.1:%d", natsPort), "GUARDIAN_LOG_FORMAT=json", "GUARDIAN_SHUTDOWN_TIMEOUT=2s")
	t.Cleanup(func() {
		g.kill()
		if t.Failed() {
			t.Logf("last log lines:\n%s", g.tail(30))
		}
	})
	g.start()
	if g.find(g.run(), func(l logLine) bool { return l.Msg == "console" && l.Fields["mode"] == "local" }) == nil {
		t.Fatalf("the embedded quick start did not serve the console in local mode:\n%s", g.tail(20))
	}
	nc, _ := connect(t, fmt.Sprintf("nats://127.0.0.1:%d", natsPort))
	client := newClient(t, nc, 5*time.Second)
	if _, err := client.Request(ctx, "demo", kvapprovals.RequestInput{ID: "local-1", SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}

	bctx := newBrowser(t, chrome)
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(bctx, 20*time.Second)
		defer cancel()
		if err := chromedp.Do(c, steps...); err != nil {
			body, _ := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("body")))
			t.Fatalf("%s: %v\n%.2000s", what, err, body)
		}
	}
	text := func(sel chromedp.CSS) string {
		t.Helper()
		c, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		v, err := chromedp.Run(c, chromedp.Text(sel))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, path := range []string{"/ui/pending", "/ui/history", "/ui/audit"} {
		do("open "+path, chromedp.Navigate(base+path), chromedp.WaitVisible(chromedp.CSS(".banner")))
		if b := text(".banner"); !strings.Contains(b, "nobody is logged in") {
			t.Errorf("%s banner %q", path, b)
		}
	}
	// Without a name, a decision is refused in place.
	do("nameless approve", chromedp.Navigate(base+"/ui/pending"), chromedp.WaitVisible(chromedp.CSS(`.card[data-key="demo.local-1"]`)),
		chromedp.SendKeys(chromedp.CSS(`.card[data-key="demo.local-1"] input[name=reason]`), "ok"),
		chromedp.Click(chromedp.CSS(`.card[data-key="demo.local-1"] button.approve`)),
		chromedp.WaitVisible(chromedp.CSS(`.card[data-key="demo.local-1"] p.error`)))
	if e := text(`.card[data-key="demo.local-1"] p.error`); !strings.Contains(e, "say who you are") {
		t.Errorf("nameless decision: %q", e)
	}
	// The keyboard alone: name, then the reason and Enter (the form's first
	// button, Approve).
	do("name", chromedp.Focus(chromedp.ID("name")), chromedp.KeyEvent("bob\r"),
		chromedp.WaitVisible(chromedp.CSS(`#name[value="bob"]`)), chromedp.WaitVisible(chromedp.CSS("body.live")))
	// Enter in the reason field does not approve: it asks for a button.
	do("enter in the reason", chromedp.Focus(chromedp.CSS(`.card[data-key="demo.local-1"] input[name=reason]`)), chromedp.KeyEvent("by keyboard\r"),
		chromedp.WaitVisible(chromedp.CSS(`.card[data-key="demo.local-1"] p.error`)))
	if e := text(`.card[data-key="demo.local-1"] p.error`); !strings.Contains(e, "Choose Approve, Deny or Extend") {
		t.Errorf("Enter in the reason field: %q", e)
	}
	// Tab from the reason past "extend by" to Approve, then Enter.
	do("keyboard approve", chromedp.KeyEvent("\t\t\r"), chromedp.WaitNotPresent(chromedp.CSS(`.card[data-key="demo.local-1"]`)))
	rec, err := client.Get(ctx, "demo", "local-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Status != kvapprovals.StatusApproved || rec.DecidedBy != "bob" || rec.Decider == nil || rec.Decider.Source != kvapprovals.SourceAsserted || rec.Reason != "by keyboard" {
		t.Errorf("approved %+v by %+v: want approved by the asserted name bob, reason from the keyboard", rec, rec.Decider)
	}
}
