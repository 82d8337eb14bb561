package e2e

// Security tests: guardian's NATS credentials (user/password, nkey seed,
// creds file, mutual TLS) against embedded servers configured for them; the
// shipped users and permissions of deploy/nats; secrets kept out of logs and
// 'guardian config'. Helpers come from deploy_test.go (dep*).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// secServer starts a JetStream server with opts completed for a test.
func secServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.JetStream, opts.StoreDir = true, t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// secEnv is the environment of a guardian that joins url: no HTTP, JSON
// logs, a fresh data directory, plus extra.
func secEnv(t *testing.T, url string, extra map[string]string) map[string]string {
	env := map[string]string{
		"GUARDIAN_NATS_URL":   url,
		"GUARDIAN_EMBEDDED":   "false",
		"GUARDIAN_HTTP_ADDR":  "",
		"GUARDIAN_DATA_DIR":   t.TempDir(),
		"GUARDIAN_LOG_FORMAT": "json",
	}
	maps.Copy(env, extra)
	return env
}

// secWrite writes data to a new file in dir, readable by its owner only.
func secWrite(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// secServes starts guardian with env, waits until it is ready and stops it;
// it must exit 0.
func secServes(t *testing.T, bin string, env map[string]string) {
	t.Helper()
	g := depStart(t, "guardian", bin, env, "serve")
	g.waitLog(t, `"msg":"guardian ready"`, 30*time.Second)
	if code := g.stop(15 * time.Second); code != 0 {
		t.Fatalf("guardian exit %d after SIGTERM, want 0:\n%s", code, g.out)
	}
}

// secRefused runs guardian serve with env and checks that it exits with 1,
// never ready, with a message containing each of want (case-insensitive).
func secRefused(t *testing.T, bin string, env map[string]string, want ...string) string {
	t.Helper()
	out, code := depRun(t, bin, env, "serve")
	if code != 1 {
		t.Fatalf("guardian serve: exit %d, want 1:\n%s", code, out)
	}
	if strings.Contains(out, "guardian ready") {
		t.Fatalf("guardian became ready:\n%s", out)
	}
	for _, w := range want {
		if !strings.Contains(strings.ToLower(out), strings.ToLower(w)) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	return out
}

// TestSecurityCredentials connects guardian with each kind of credential to
// a server that requires it, and checks that wrong or missing credentials
// stop guardian at start with a message naming the problem.
func TestSecurityCredentials(t *testing.T) {
	bin := depBuildGuardian(t)

	t.Run("user and password", func(t *testing.T) {
		s := secServer(t, &server.Options{Users: []*server.User{{Username: "guardian", Password: "pw-right"}}})
		url := s.ClientURL()
		secServes(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_NATS_USER": "guardian", "GUARDIAN_NATS_PASSWORD": "pw-right"}))
		secRefused(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_NATS_USER": "guardian", "GUARDIAN_NATS_PASSWORD": "pw-wrong"}), "authorization violation")
		secRefused(t, bin, secEnv(t, url, nil), "authorization violation")
	})

	t.Run("nkey seed", func(t *testing.T) {
		dir := t.TempDir()
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		other, _ := nkeys.CreateUser()
		otherSeed, _ := other.Seed()
		s := secServer(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
		url := s.ClientURL()
		secServes(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_NATS_NKEY_SEED": secWrite(t, dir, "guardian.nk", seed)}))
		secRefused(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_NATS_NKEY_SEED": secWrite(t, dir, "other.nk", otherSeed)}), "authorization violation")
		missing := filepath.Join(dir, "missing.nk")
		secRefused(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_NATS_NKEY_SEED": missing}), "GUARDIAN_NATS_NKEY_SEED="+missing, "no such file")
		secRefused(t, bin, secEnv(t, url, nil), "authorization violation")
	})

	t.Run("creds file", func(t *testing.T) {
		dir := t.TempDir()
		op, _ := nkeys.CreateOperator()
		opPub, _ := op.PublicKey()
		oc := jwt.NewOperatorClaims(opPub)
		oc.Name = "test-operator"
		if _, err := oc.Encode(op); err != nil {
			t.Fatal(err)
		}
		// An account with JetStream, and a user of it.
		acc, _ := nkeys.CreateAccount()
		accPub, _ := acc.PublicKey()
		ac := jwt.NewAccountClaims(accPub)
		ac.Name = "GUARDIAN"
		ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		accJWT, err := ac.Encode(op)
		if err != nil {
			t.Fatal(err)
		}
		creds := func(name string, signer nkeys.KeyPair) string {
			u, _ := nkeys.CreateUser()
			uPub, _ := u.PublicKey()
			uc := jwt.NewUserClaims(uPub)
			uc.Name = name
			uJWT, err := uc.Encode(signer)
			if err != nil {
				t.Fatal(err)
			}
			seed, _ := u.Seed()
			b, err := jwt.FormatUserConfig(uJWT, seed)
			if err != nil {
				t.Fatal(err)
			}
			return secWrite(t, dir, name+".creds", b)
		}
		// The system account operator mode needs.
		sys, _ := nkeys.CreateAccount()
		sysPub, _ := sys.PublicKey()
		sc := jwt.NewAccountClaims(sysPub)
		sc.Name = "SYS"
		sysJWT, err := sc.Encode(op)
		if err != nil {
			t.Fatal(err)
		}
		resolver := &server.MemAccResolver{}
		for pub, claims := range map[string]string{accPub: accJWT, sysPub: sysJWT} {
			if err := resolver.Store(pub, claims); err != nil {
				t.Fatal(err)
			}
		}
		s := secServer(t, &server.Options{TrustedOperators: []*jwt.OperatorClaims{oc}, AccountResolver: resolver, SystemAccount: sysPub})
		url := s.ClientURL()
		secServes(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_NATS_CREDS": creds("guardian", acc)}))
		// A user of an account the server does not know.
		stranger, _ := nkeys.CreateAccount()
		secRefused(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_NATS_CREDS": creds("stranger", stranger)}), "authorization violation")
		missing := filepath.Join(dir, "missing.creds")
		secRefused(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_NATS_CREDS": missing}), "GUARDIAN_NATS_CREDS="+missing, "no such file")
	})

	t.Run("mutual TLS", func(t *testing.T) {
		dir := t.TempDir()
		ca := secNewCA(t, "test CA")
		srvCert, srvKey := ca.issue(t, dir, "server", true)
		cliCert, cliKey := ca.issue(t, dir, "guardian", false)
		caFile := secWrite(t, dir, "ca.pem", ca.pem)
		otherCA := secWrite(t, dir, "other-ca.pem", secNewCA(t, "other CA").pem)
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: caFile, Verify: true, Timeout: 2})
		if err != nil {
			t.Fatal(err)
		}
		s := secServer(t, &server.Options{TLS: true, TLSVerify: true, TLSConfig: tc, TLSTimeout: 2})
		url := fmt.Sprintf("tls://127.0.0.1:%d", s.Addr().(*net.TCPAddr).Port)
		secServes(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_TLS_CA": caFile, "GUARDIAN_TLS_CERT": cliCert, "GUARDIAN_TLS_KEY": cliKey}))
		// The server's certificate is not signed by the CA guardian trusts.
		secRefused(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_TLS_CA": otherCA, "GUARDIAN_TLS_CERT": cliCert, "GUARDIAN_TLS_KEY": cliKey}), "certificate signed by unknown authority")
		// No client certificate: the server refuses the connection. The
		// client sees the alert or, when its write comes first, the close.
		out := secRefused(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_TLS_CA": caFile}), "connect to NATS at "+url)
		if !strings.Contains(out, "tls: certificate required") && !strings.Contains(out, "closed by remote after TLS handshake") {
			t.Errorf("without a client certificate: want the TLS refusal in the message:\n%s", out)
		}
		missing := filepath.Join(dir, "missing.pem")
		secRefused(t, bin, secEnv(t, url, map[string]string{"GUARDIAN_TLS_CA": missing}), "GUARDIAN_TLS_CA="+missing, "no such file")
	})
}

// secCA is a throw-away certificate authority.
type secCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func secNewCA(t *testing.T, name string) *secCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &secCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate for 127.0.0.1 (server) or a client
// certificate, and its key, into dir.
func (ca *secCA) issue(t *testing.T, dir, name string, isServer bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if isServer {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = secWrite(t, dir, name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyFile = secWrite(t, dir, name+"-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return certFile, keyFile
}

// TestSecuritySecretsStayOut checks that the NATS password and the audit
// seal seed appear neither in guardian's logs (at debug level, on success
// and on failure) nor in 'guardian config'.
func TestSecuritySecretsStayOut(t *testing.T) {
	bin := depBuildGuardian(t)
	secret := "pw-" + strings.ToLower(nats.NewInbox()[7:])
	s := secServer(t, &server.Options{Users: []*server.User{{Username: "guardian", Password: secret}}})
	sealKP, _ := nkeys.CreateAccount()
	sealSeed, _ := sealKP.Seed()
	env := secEnv(t, s.ClientURL(), map[string]string{
		"GUARDIAN_NATS_USER":        "guardian",
		"GUARDIAN_NATS_PASSWORD":    secret,
		"GUARDIAN_AUDIT_SEAL_SEED":  string(sealSeed),
		"GUARDIAN_AUDIT_SEAL_EVERY": "1",
		"GUARDIAN_LOG_LEVEL":        "debug",
	})
	secrets := []string{secret, string(sealSeed)}
	leaks := func(what, out string) {
		t.Helper()
		for _, sec := range secrets {
			if strings.Contains(out, sec) {
				t.Errorf("%s shows a secret:\n%s", what, out)
			}
		}
	}

	g := depStart(t, "guardian", bin, env, "serve")
	g.waitLog(t, `"msg":"guardian ready"`, 30*time.Second)
	// Some traffic: a request and an audit report, which gets sealed.
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo("guardian", secret))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := kvapprovals.NewClient(nc)
	if _, err := c.Request(t.Context(), "acme", kvapprovals.RequestInput{SessionID: "s", RequestedBy: "alice"}); err != nil {
		t.Fatal(err)
	}
	g.waitLog(t, `"msg":"audit seals on"`, 5*time.Second)
	if code := g.stop(15 * time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, g.out)
	}
	leaks("the serve log", g.out.String())

	out, code := depRun(t, bin, env, "config")
	if code != 0 {
		t.Fatalf("guardian config: exit %d\n%s", code, out)
	}
	for _, v := range []string{"GUARDIAN_NATS_PASSWORD", "GUARDIAN_AUDIT_SEAL_SEED"} {
		if !regexp.MustCompile(`(?m)^` + v + `\s+\[redacted\]\s`).MatchString(out) {
			t.Errorf("guardian config does not show %s as [redacted]:\n%s", v, out)
		}
	}
	leaks("guardian config", out)
	inURL := maps.Clone(env)
	inURL["GUARDIAN_NATS_URL"] = fmt.Sprintf("nats://guardian:%s@127.0.0.1:%d", secret, s.Addr().(*net.TCPAddr).Port)
	delete(inURL, "GUARDIAN_NATS_PASSWORD")
	out, code = depRun(t, bin, inURL, "config")
	if code != 0 || !strings.Contains(out, "GUARDIAN_NATS_URL") {
		t.Fatalf("guardian config: exit %d\n%s", code, out)
	}
	leaks("guardian config with the password in GUARDIAN_NATS_URL", out)

	// Refused credentials: the log names the problem, not the password, also
	// when the password is part of the URL.
	wrong := "pw-wrong-" + strings.ToLower(nats.NewInbox()[7:])
	secrets = append(secrets, wrong)
	bad := maps.Clone(env)
	bad["GUARDIAN_NATS_PASSWORD"] = wrong
	leaks("a refused start", secRefused(t, bin, bad, "authorization violation"))
	bad = maps.Clone(env)
	delete(bad, "GUARDIAN_NATS_USER")
	delete(bad, "GUARDIAN_NATS_PASSWORD")
	bad["GUARDIAN_NATS_URL"] = fmt.Sprintf("nats://guardian:%s@127.0.0.1:%d", wrong, s.Addr().(*net.TCPAddr).Port)
	leaks("a refused start with the password in the URL", secRefused(t, bin, bad, "authorization violation"))
}

// TestSecurityShippedPermissions runs guardian as its own user on the
// shipped config (deploy/nats/nats-1.conf alone: cluster and routes removed,
// ports and store rewritten) and checks what tenants, operators and
// auditors may and may not do.
func TestSecurityShippedPermissions(t *testing.T) {
	bin := depBuildGuardian(t)
	lookup, pw := depPasswords()
	c := depLoadCompose(t, lookup)
	nodes := depLoadNodes(t, c)[:1]
	nodes[0].opts.Routes = nil
	depRewrite(t, nodes)
	nodes[0].opts.Cluster = server.ClusterOpts{}
	depStartNodes(t, nodes)
	url := nodes[0].srv.ClientURL()

	gsvc := c.guardianServices()[0]
	env := maps.Clone(c.env(t, gsvc))
	maps.Copy(env, depGuardianEnvOverrides)
	env["GUARDIAN_NATS_URL"] = url
	env["GUARDIAN_REPLICAS"] = "1" // one server here
	env["GUARDIAN_HTTP_ADDR"] = ""
	env["GUARDIAN_DATA_DIR"] = t.TempDir()
	g := depStart(t, gsvc, bin, env, "serve")
	g.waitLog(t, `"msg":"guardian ready"`, 30*time.Second)

	admin := depConnect(t, url, env["GUARDIAN_NATS_USER"], env["GUARDIAN_NATS_PASSWORD"])
	acme := depConnect(t, url, "alice", pw["NATS_PASSWORD_ALICE"])
	globex := depConnect(t, url, "gina", pw["NATS_PASSWORD_GINA"])
	op := depConnect(t, url, "bob", pw["NATS_PASSWORD_BOB"])
	auditor := depConnect(t, url, "auditor", pw["NATS_PASSWORD_AUDITOR"])
	ctx := t.Context()
	pub := func(u *depUser, subject string) func() error {
		return func() error { return u.nc.PublishRequest(subject, nats.NewInbox(), []byte(`{"id":"x"}`)) }
	}
	sub := func(u *depUser, subject string) func() error {
		return func() error { _, err := u.nc.SubscribeSync(subject); return err }
	}
	// shortCall runs an API call that must fail: a denied request gets no
	// reply, so it ends at a short deadline.
	shortCall := func(what string, call func(ctx2 context.Context) error) {
		t.Helper()
		ctx2, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		if err := call(ctx2); err == nil {
			t.Errorf("%s succeeded", what)
		}
	}

	// Tenants ask for their own approvals and see their own events; the
	// requester is the user the server authenticated.
	acmeEvents := depSubscribeEvents(t, acme, "guardian.v1.events.acme.>")
	a1, err := acme.client().Request(ctx, "acme", kvapprovals.RequestInput{ID: "sec-a1", SessionID: "s", Timeout: kvapprovals.Duration(10 * time.Minute)})
	if err != nil {
		t.Fatalf("acme request: %v", err)
	}
	if a1.RequestedBy != "alice" || a1.Requester == nil || a1.Requester.Account != "ACME" || a1.Requester.Source != kvapprovals.SourceNATS {
		t.Fatalf("acme request: requested_by %q, requester %+v; want alice of ACME from the server", a1.RequestedBy, a1.Requester)
	}
	if _, err := acme.client().Request(ctx, "acme", kvapprovals.RequestInput{ID: "sec-a2", SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(time.Second)}); err != nil {
		t.Fatalf("acme request: %v", err)
	}
	if _, err := globex.client().Request(ctx, "globex", kvapprovals.RequestInput{ID: "sec-g1", SessionID: "s", Timeout: kvapprovals.Duration(10 * time.Minute)}); err != nil {
		t.Fatalf("globex request: %v", err)
	}
	if r, err := acme.client().Get(ctx, "acme", "sec-a1"); err != nil || r.Revision != a1.Revision {
		t.Fatalf("acme get own: %+v, %v", r, err)
	}
	depEventually(t, 5*time.Second, "acme's requested event", func() bool { return len(acmeEvents.kinds("sec-a1")) > 0 })
	acme.expectNoViolations(t)
	globex.expectNoViolations(t)

	t.Run("tenant A cannot touch tenant B", func(t *testing.T) {
		for _, verb := range []string{"request", "get", "list", "approve", "deny", "cancel", "extend"} {
			subject := "guardian.v1.globex.approvals." + verb
			acme.expectDenied(t, "Publish", subject, pub(acme, subject))
		}
		acme.expectDenied(t, "Subscription", "guardian.v1.events.globex.>", sub(acme, "guardian.v1.events.globex.>"))
		shortCall("acme requesting for globex", func(ctx2 context.Context) error {
			_, err := acme.client().Request(ctx2, "globex", kvapprovals.RequestInput{ID: "sec-x1", SessionID: "s", RequestedBy: "mallory"})
			return err
		})
		shortCall("acme reading globex's approval", func(ctx2 context.Context) error {
			_, err := acme.client().Get(ctx2, "globex", "sec-g1")
			return err
		})
		// Nothing changed at globex.
		if _, err := op.client().Get(ctx, "globex", "sec-x1"); !errors.Is(err, kvapprovals.ErrNotFound) {
			t.Errorf("globex/sec-x1: err %v, want ErrNotFound", err)
		}
		if r, err := op.client().Get(ctx, "globex", "sec-g1"); err != nil || r.Status != kvapprovals.StatusPending {
			t.Errorf("globex/sec-g1 = %+v, %v; want still pending", r, err)
		}
	})

	t.Run("tenants do not decide", func(t *testing.T) {
		for _, verb := range []string{"approve", "deny", "extend"} {
			subject := "guardian.v1.acme.approvals." + verb
			acme.expectDenied(t, "Publish", subject, pub(acme, subject))
		}
	})

	t.Run("tenants cannot touch the buckets", func(t *testing.T) {
		for _, subject := range []string{
			"$KV.GUARDIAN_APPROVALS.acme.sec-a1",
			"$TIMERS.GUARDIAN_TIMERS.sched.acme.sec-a1.expire",
			"$JS.API.STREAM.INFO.KV_GUARDIAN_APPROVALS",
			"$JS.API.DIRECT.GET.KV_GUARDIAN_APPROVALS.$KV.GUARDIAN_APPROVALS.acme.sec-a1",
			"$JS.API.STREAM.PURGE.KV_GUARDIAN_APPROVALS",
			"$JS.API.CONSUMER.CREATE.KV_GUARDIAN_APPROVALS",
		} {
			acme.expectDenied(t, "Publish", subject, pub(acme, subject))
		}
		acme.expectDenied(t, "Subscription", "$KV.GUARDIAN_APPROVALS.>", sub(acme, "$KV.GUARDIAN_APPROVALS.>"))
		shortCall("acme opening the records bucket", func(ctx2 context.Context) error {
			_, err := acme.js.KeyValue(ctx2, "GUARDIAN_APPROVALS")
			return err
		})
		if r, err := op.client().Get(ctx, "acme", "sec-a1"); err != nil || r.Revision != a1.Revision || r.Status != kvapprovals.StatusPending {
			t.Errorf("acme/sec-a1 = %+v, %v; want unchanged", r, err)
		}
	})

	t.Run("operators decide any tenant as themselves but do not ask or write streams", func(t *testing.T) {
		if _, err := op.client().Approve(ctx, "acme", kvapprovals.DecisionInput{ID: "sec-a1", DecidedBy: "carol"}); !errors.Is(err, kvapprovals.ErrIdentityMismatch) {
			t.Errorf("bob approving as carol: err %v, want ErrIdentityMismatch", err)
		}
		r, err := op.client().Approve(ctx, "globex", kvapprovals.DecisionInput{ID: "sec-g1"})
		if err != nil || r.Status != kvapprovals.StatusApproved || r.DecidedBy != "bob" || r.Decider == nil || r.Decider.Account != "OPS" {
			t.Errorf("operator approve globex: %+v, %v; want approved by OPS/bob", r, err)
		}
		for _, subject := range []string{
			"guardian.v1.acme.approvals.request",
			"guardian.v1.acme.approvals.cancel",
			// "*" in the allowed subjects must not reach the streams' subjects
			"guardian.v1.audit.approvals.approve",
			"guardian.v1.events.approvals.deny",
			"$JS.API.STREAM.INFO.GUARDIAN_AUDIT",
		} {
			op.expectDenied(t, "Publish", subject, pub(op, subject))
		}
	})

	auditStream, err := admin.js.Stream(ctx, "GUARDIAN_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	// Both audit events are in before the auditor's checks: the expiry of
	// sec-a2 and the decision on sec-g1 (AUDIT_APPROVAL_DECIDED).
	depEventually(t, 15*time.Second, "the expiry of sec-a2 and the decision on sec-g1 in GUARDIAN_AUDIT", func() bool {
		info, err := auditStream.Info(ctx)
		return err == nil && info.State.Msgs >= 2
	})

	t.Run("auditors read the audit stream and cannot change it", func(t *testing.T) {
		before, err := auditStream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, subject := range []string{
			"guardian.v1.audit.acme.TIMEOUT_APPROVAL_EXPIRED",
			"guardian.v1.audit.report",
			"$JS.API.STREAM.PURGE.GUARDIAN_AUDIT",
			"$JS.API.STREAM.INFO.GUARDIAN_AUDIT",
		} {
			auditor.expectDenied(t, "Publish", subject, pub(auditor, subject))
		}
		// Under the prefix only the read-only slice is imported: a purge,
		// a delete or an update finds no responder.
		ajs, err := jetstream.NewWithAPIPrefix(auditor.nc, "$JS.GUARDIAN.API")
		if err != nil {
			t.Fatal(err)
		}
		shortCall("an auditor's JetStream publish", func(ctx2 context.Context) error {
			_, err := ajs.Publish(ctx2, "guardian.v1.audit.acme.TIMEOUT_FORGED", []byte(`{}`))
			return err
		})
		s, err := ajs.Stream(ctx, "GUARDIAN_AUDIT")
		if err != nil {
			t.Fatalf("an auditor may look up the audit stream: %v", err)
		}
		shortCall("an auditor's purge", func(ctx2 context.Context) error { return s.Purge(ctx2) })
		shortCall("an auditor's message delete", func(ctx2 context.Context) error { return s.DeleteMsg(ctx2, 1) })
		shortCall("an auditor's stream delete", func(ctx2 context.Context) error { return ajs.DeleteStream(ctx2, "GUARDIAN_AUDIT") })
		shortCall("an auditor's stream update", func(ctx2 context.Context) error {
			cfg := s.CachedInfo().Config
			cfg.MaxAge = time.Second
			_, err := ajs.UpdateStream(ctx2, cfg)
			return err
		})
		shortCall("an auditor reading the records stream", func(ctx2 context.Context) error {
			_, err := ajs.Stream(ctx2, "KV_GUARDIAN_APPROVALS")
			return err
		})
		after, err := auditStream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.State.Msgs != before.State.Msgs || after.State.FirstSeq != before.State.FirstSeq || after.Config.MaxAge != before.Config.MaxAge {
			t.Errorf("GUARDIAN_AUDIT changed: %d msgs from %d, was %d from %d", after.State.Msgs, after.State.FirstSeq, before.State.Msgs, before.State.FirstSeq)
		}
		// Reading works: an ordered consumer, as 'guardian audit tail' uses.
		cons, err := ajs.OrderedConsumer(ctx, "GUARDIAN_AUDIT", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"guardian.v1.audit.acme.TIMEOUT_APPROVAL_EXPIRED"}})
		if err != nil {
			t.Fatalf("auditor ordered consumer: %v", err)
		}
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("auditor read: %v", err)
		}
		var ev struct {
			Code              string            `json:"timeout_category"`
			AdditionalContext map[string]string `json:"additional_context"`
		}
		if err := json.Unmarshal(msg.Data(), &ev); err != nil || ev.AdditionalContext["approval_id"] != "sec-a2" || ev.AdditionalContext["requester_account"] != "ACME" {
			t.Errorf("auditor read %s: %v; want the expiry of sec-a2, requested by ACME/alice", msg.Data(), err)
		}
		// The audit commands work with the auditor's account.
		auditEnv := map[string]string{"GUARDIAN_NATS_URL": url, "GUARDIAN_NATS_USER": "auditor", "GUARDIAN_NATS_PASSWORD": pw["NATS_PASSWORD_AUDITOR"],
			"GUARDIAN_JS_API_PREFIX": "$JS.GUARDIAN.API"}
		for _, args := range [][]string{
			{"audit", "export"},
			{"audit", "stats", "--json"},
			{"audit", "tail", "--follow=false", "--json"},
		} {
			out, code := depRun(t, bin, auditEnv, args...)
			if code != 0 || !strings.Contains(out, "TIMEOUT_APPROVAL_EXPIRED") {
				t.Errorf("guardian %s as auditor: exit %d, want 0 and the expiry:\n%s", strings.Join(args, " "), code, out)
			}
		}
	})

	if code := g.stop(15 * time.Second); code != 0 {
		t.Errorf("guardian exit %d after SIGTERM", code)
	}
	depLogHasNoPermissionErrors(t, g)
	admin.expectNoViolations(t)
}

// TestSecurityAuditTrailCannotBeShortened runs guardian as its own user on
// the shipped config (deploy/nats/nats-1.conf alone, as in
// TestSecurityShippedPermissions) and checks that this user cannot shorten
// GUARDIAN_AUDIT: an update to MaxAge 1s, a purge, a message delete and a
// stream delete are each a permissions violation that changes nothing.
// guardian itself restarts on the stream without updating it, keeps a
// stored MaxAge longer than configured, and refuses to start, saying why,
// when the stored MaxAge is shorter than configured.
func TestSecurityAuditTrailCannotBeShortened(t *testing.T) {
	bin := depBuildGuardian(t)
	lookup, pw := depPasswords()
	c := depLoadCompose(t, lookup)
	nodes := depLoadNodes(t, c)[:1]
	nodes[0].opts.Routes = nil
	depRewrite(t, nodes)
	nodes[0].opts.Cluster = server.ClusterOpts{}
	depStartNodes(t, nodes)
	url := nodes[0].srv.ClientURL()

	gsvc := c.guardianServices()[0]
	env := maps.Clone(c.env(t, gsvc))
	maps.Copy(env, depGuardianEnvOverrides)
	env["GUARDIAN_NATS_URL"] = url
	env["GUARDIAN_REPLICAS"] = "1" // one server here
	env["GUARDIAN_HTTP_ADDR"] = ""
	env["GUARDIAN_DATA_DIR"] = t.TempDir()
	const configured = 90 * 24 * time.Hour // GUARDIAN_AUDIT_MAX_AGE's default
	if v, ok := env["GUARDIAN_AUDIT_MAX_AGE"]; ok {
		t.Fatalf("the compose file sets GUARDIAN_AUDIT_MAX_AGE=%s; this test assumes the default", v)
	}
	// serve starts guardian with env, waits until it is ready, stops it
	// and returns its log, which must show no permissions violation.
	serve := func(env map[string]string) string {
		t.Helper()
		g := depStart(t, gsvc, bin, env, "serve")
		g.waitLog(t, `"msg":"guardian ready"`, 30*time.Second)
		if code := g.stop(15 * time.Second); code != 0 {
			t.Fatalf("guardian exit %d after SIGTERM, want 0:\n%s", code, g.out)
		}
		depLogHasNoPermissionErrors(t, g)
		return g.out.String()
	}
	serve(env) // creates GUARDIAN_AUDIT

	admin := depConnect(t, url, env["GUARDIAN_NATS_USER"], env["GUARDIAN_NATS_PASSWORD"])
	ctx := t.Context()
	audit, err := admin.js.Stream(ctx, "GUARDIAN_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	// A marker event, so that a purge or delete would show.
	if _, err := admin.js.Publish(ctx, "guardian.v1.audit.acme.TIMEOUT_E2E_MARKER", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	before, err := audit.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.Config.MaxAge != configured || before.State.Msgs == 0 {
		t.Fatalf("GUARDIAN_AUDIT: MaxAge %s, %d messages; want %s and the marker", before.Config.MaxAge, before.State.Msgs, configured)
	}
	unchanged := func(what string) {
		t.Helper()
		after, err := audit.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// guardian may add events; nothing may go
		if after.Config.MaxAge != configured || after.State.Msgs < before.State.Msgs ||
			after.State.FirstSeq != before.State.FirstSeq || after.State.NumDeleted != 0 {
			t.Errorf("%s changed GUARDIAN_AUDIT: MaxAge %s, %d messages from %d, %d deleted; was %s, %d from %d", what,
				after.Config.MaxAge, after.State.Msgs, after.State.FirstSeq, after.State.NumDeleted, configured, before.State.Msgs, before.State.FirstSeq)
		}
	}

	t.Run("guardian's user cannot shorten the stream", func(t *testing.T) {
		short := before.Config
		short.MaxAge = time.Second
		admin.expectDenied(t, "Publish", "$JS.API.STREAM.UPDATE.GUARDIAN_AUDIT", func() error {
			ctx2, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			if _, err := admin.js.UpdateStream(ctx2, short); err == nil {
				t.Error("the update to MaxAge 1s succeeded")
			}
			return nil
		})
		for _, subject := range []string{
			"$JS.API.STREAM.PURGE.GUARDIAN_AUDIT",
			"$JS.API.STREAM.MSG.DELETE.GUARDIAN_AUDIT",
			"$JS.API.STREAM.DELETE.GUARDIAN_AUDIT",
		} {
			admin.expectDenied(t, "Publish", subject, func() error {
				return admin.nc.PublishRequest(subject, nats.NewInbox(), []byte(`{"seq":1}`))
			})
		}
		unchanged("guardian's user")
	})

	t.Run("guardian restarts without updating the stream", func(t *testing.T) {
		serve(env)
		// A shorter configured MaxAge keeps the stored one.
		shorter := maps.Clone(env)
		shorter["GUARDIAN_AUDIT_MAX_AGE"] = "720h"
		out := serve(shorter)
		if !strings.Contains(out, "keeps its stored setting") || !strings.Contains(out, `"setting":"MaxAge","stored":"2160h0m0s","configured":"720h0m0s"`) {
			t.Errorf("guardian with GUARDIAN_AUDIT_MAX_AGE=720h does not log that it keeps MaxAge 2160h:\n%s", out)
		}
		unchanged("guardian's restarts")
	})

	t.Run("guardian refuses a stream that keeps less than configured", func(t *testing.T) {
		longer := maps.Clone(env)
		longer["GUARDIAN_AUDIT_MAX_AGE"] = "4320h"
		start := time.Now()
		secRefused(t, bin, longer, "GUARDIAN_AUDIT keeps less than configured", "MaxAge is 2160h0m0s, want 4320h0m0s",
			"permissions violation", "STREAM.UPDATE.GUARDIAN_AUDIT", "identity that provisions it")
		// No waiting for the update's 15s budget, nor retrying it.
		if d := time.Since(start); d > 14*time.Second {
			t.Errorf("the refusal took %s", d)
		}
		unchanged("the refused start")
	})

	t.Run("the system user cannot purge guardian's account", func(t *testing.T) {
		// $JS.API.ACCOUNT.PURGE.<account> is the system account's: it
		// removes every stream of the account, GUARDIAN_AUDIT included.
		sys := depConnect(t, url, "sys", pw["NATS_PASSWORD_SYS"])
		sys.expectDenied(t, "Publish", "$JS.API.ACCOUNT.PURGE.GUARDIAN", func() error {
			return sys.nc.PublishRequest("$JS.API.ACCOUNT.PURGE.GUARDIAN", nats.NewInbox(), nil)
		})
		unchanged("the system user")
		// Monitoring ('nats server ...') still works.
		if _, err := sys.nc.Request("$SYS.REQ.SERVER.PING.JSZ", nil, 5*time.Second); err != nil {
			t.Errorf("sys: $SYS.REQ.SERVER.PING.JSZ: %v", err)
		}
		sys.expectNoViolations(t)
	})
	admin.expectNoViolations(t)
}
