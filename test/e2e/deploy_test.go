package e2e

// Tests of the deployment: docker-compose.yml, deploy/nats/*.conf, the
// Dockerfile and deploy/prometheus. No container engine runs here, so the
// tests load the very same files: the NATS configs through nats-server's own
// config parser, the compose file through a small YAML reader (no YAML
// library is among the module's dependencies). They rewrite only ports,
// hosts, routes and store paths, start the 3-node cluster in process and run
// the real guardian binary twice with the compose file's environment.
//
// Helpers shared with security_test.go start with dep.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// depRoot is the repository root, relative to this package.
const depRoot = "../.."

// ---- the compose file -------------------------------------------------------

// depCompose is docker-compose.yml, parsed and interpolated.
type depCompose struct {
	doc      map[string]any
	services map[string]any
}

// depLoadCompose parses docker-compose.yml and interpolates ${VAR} with
// lookup (compose reads .env and the shell environment; tests choose).
func depLoadCompose(t *testing.T, lookup func(string) (string, bool)) *depCompose {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(depRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := depParseYAML(string(src))
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	if v, err = depInterpolateAll(v, lookup); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	doc, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("docker-compose.yml: top level is %T, want a mapping", v)
	}
	services, ok := doc["services"].(map[string]any)
	if !ok {
		t.Fatal("docker-compose.yml: no services mapping")
	}
	return &depCompose{doc: doc, services: services}
}

// natsServices returns the names of the services running the nats image.
func (c *depCompose) natsServices() []string {
	var out []string
	for _, name := range depSortedKeys(c.services) {
		if img, _ := depPath(c.services[name], "image").(string); strings.HasPrefix(img, "nats:") {
			out = append(out, name)
		}
	}
	return out
}

// env returns a service's environment.
func (c *depCompose) env(t *testing.T, service string) map[string]string {
	t.Helper()
	env, err := depEnvironment(c.services[service])
	if err != nil {
		t.Fatalf("service %s: %v", service, err)
	}
	return env
}

// hostPath maps a path inside a service's container to the repository
// through the service's bind mounts (SOURCE:TARGET[:MODE], SOURCE starting
// with . or /).
func (c *depCompose) hostPath(t *testing.T, service, inContainer string) string {
	t.Helper()
	for _, v := range depStrings(depPath(c.services[service], "volumes")) {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || !strings.HasPrefix(parts[0], ".") && !strings.HasPrefix(parts[0], "/") {
			continue
		}
		if rel, err := filepath.Rel(parts[1], inContainer); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join(depRoot, parts[0], rel)
		}
	}
	t.Fatalf("service %s: %s is not inside a bind mount", service, inContainer)
	return ""
}

// guardianServices returns the services that run guardian (built from the
// Dockerfile), the first one first: the one the others depend on.
func (c *depCompose) guardianServices() []string {
	var out []string
	for _, name := range depSortedKeys(c.services) {
		if depPath(c.services[name], "build") != nil {
			out = append(out, name)
		}
	}
	slices.SortStableFunc(out, func(a, b string) int {
		switch {
		case depPath(c.services[b], "depends_on", a) != nil:
			return -1
		case depPath(c.services[a], "depends_on", b) != nil:
			return 1
		}
		return 0
	})
	return out
}

// depGuardianEnvOverrides are the values the in-process tests change in the
// compose file's guardian environment besides hosts, ports and paths:
// expiry within seconds instead of the production grace period of 30s.
var depGuardianEnvOverrides = map[string]string{
	"GUARDIAN_APPROVAL_GRACE_PERIOD": "0s",
}

// depPasswords returns a lookup that gives every NATS_PASSWORD_* variable a
// fresh random value, as a .env file would, and the values it gave.
func depPasswords() (func(string) (string, bool), map[string]string) {
	var mu sync.Mutex
	pw := map[string]string{}
	return func(name string) (string, bool) {
		if !strings.HasPrefix(name, "NATS_PASSWORD_") {
			return "", false
		}
		mu.Lock()
		defer mu.Unlock()
		if _, ok := pw[name]; !ok {
			pw[name] = "p" + strings.ToLower(nuid.Next())
		}
		return pw[name], true
	}, pw
}

// ---- NATS nodes from deploy/nats -------------------------------------------

// depNode is one NATS service of the compose file with the options its
// config file gives.
type depNode struct {
	service string
	file    string
	opts    *server.Options
	srv     *server.Server
}

// depLoadNodes loads the config file of every NATS service with that
// service's environment, exactly as nats-server in the container would.
func depLoadNodes(t *testing.T, c *depCompose) []*depNode {
	t.Helper()
	var nodes []*depNode
	for _, name := range c.natsServices() {
		cmd := depStrings(depPath(c.services[name], "command"))
		i := slices.IndexFunc(cmd, func(s string) bool { return s == "--config" || s == "-c" })
		if i < 0 || i+1 >= len(cmd) {
			t.Fatalf("service %s: command %q has no --config FILE", name, cmd)
		}
		file := c.hostPath(t, name, cmd[i+1])
		for k, v := range c.env(t, name) {
			t.Setenv(k, v)
		}
		opts, err := server.ProcessConfigFile(file)
		if err != nil {
			t.Fatalf("service %s: %s: %v", name, file, err)
		}
		nodes = append(nodes, &depNode{service: name, file: file, opts: opts})
	}
	return nodes
}

// depFreePorts returns n distinct free TCP ports on loopback.
func depFreePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// depRewrite moves the nodes to loopback: free client, monitoring and
// cluster ports, routes to the other nodes' new cluster ports (by compose
// service name), and a temporary store. Nothing else changes.
func depRewrite(t *testing.T, nodes []*depNode) {
	t.Helper()
	ports := depFreePorts(t, 3*len(nodes))
	clusterPort := map[string]int{}
	for i, n := range nodes {
		clusterPort[n.service] = ports[3*i+2]
	}
	for i, n := range nodes {
		o := n.opts
		o.Host, o.Port = "127.0.0.1", ports[3*i]
		o.HTTPHost, o.HTTPPort = "127.0.0.1", ports[3*i+1]
		o.Cluster.Host, o.Cluster.Port = "127.0.0.1", ports[3*i+2]
		var routes []*url.URL
		for _, r := range o.Routes {
			p, ok := clusterPort[r.Hostname()]
			if !ok {
				t.Fatalf("%s: route %s names no NATS service of the compose file", n.file, r)
			}
			nr := *r
			nr.Host = fmt.Sprintf("127.0.0.1:%d", p)
			routes = append(routes, &nr)
		}
		o.Routes = routes
		o.StoreDir = t.TempDir()
		o.NoSigs = true
	}
}

// depStartNodes starts the nodes and waits until each reports healthy on
// the compose health check's endpoint.
func depStartNodes(t *testing.T, nodes []*depNode) {
	t.Helper()
	for _, n := range nodes {
		s, err := server.NewServer(n.opts)
		if err != nil {
			t.Fatalf("%s: %v", n.service, err)
		}
		n.srv = s
		go s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	for _, n := range nodes {
		if !n.srv.ReadyForConnections(15 * time.Second) {
			t.Fatalf("%s: not ready for connections", n.service)
		}
		depWaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/healthz?js-enabled-only=true", n.opts.HTTPPort), 20*time.Second)
	}
	if !nodes[0].srv.JetStreamIsClustered() {
		return
	}
	// The health check passes once JetStream is on, before the nodes have
	// elected a meta leader; JetStream API requests sent before that go
	// unanswered. In compose the first check runs after its 5s interval,
	// by which time the election is over; here, wait for it.
	depEventually(t, 20*time.Second, "a JetStream meta leader", func() bool {
		return slices.ContainsFunc(nodes, func(n *depNode) bool { return n.srv.JetStreamIsLeader() })
	})
}

// depWaitHTTP polls url until it answers 200.
func depWaitHTTP(t *testing.T, url string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			body := new(bytes.Buffer)
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(body.String()))
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not 200 within %s: %s", url, d, last)
}

// depClientURLs rewrites a GUARDIAN_NATS_URL of the compose file (URLs of
// NATS services) to the nodes' loopback client ports.
func depClientURLs(t *testing.T, list string, nodes []*depNode) string {
	t.Helper()
	var out []string
	for u := range strings.SplitSeq(list, ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil {
			t.Fatalf("GUARDIAN_NATS_URL %q: %v", list, err)
		}
		i := slices.IndexFunc(nodes, func(n *depNode) bool { return n.service == pu.Hostname() })
		if i < 0 {
			t.Fatalf("GUARDIAN_NATS_URL %q: %s is not a NATS service", list, pu.Host)
		}
		pu.Host = fmt.Sprintf("127.0.0.1:%d", nodes[i].opts.Port)
		out = append(out, pu.String())
	}
	return strings.Join(out, ",")
}

// ---- the guardian binary ----------------------------------------------------

// depBuildGuardian returns the guardian binary of this test run, built
// once per run by guardianBinary (main_test.go).
func depBuildGuardian(t *testing.T) string {
	t.Helper()
	return guardianBinary(t)
}

// depEnvList turns env into KEY=VALUE entries: the whole environment of a
// guardian process, so nothing leaks in from the test's.
func depEnvList(env map[string]string) []string {
	out := []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range depSortedKeys(env) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// depBuffer is a bytes.Buffer safe for concurrent use.
type depBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *depBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *depBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// depProc is a running guardian process.
type depProc struct {
	name   string
	cmd    *exec.Cmd
	out    *depBuffer
	exited chan struct{}
	code   int
}

// depStart starts bin with args and exactly env; the process is stopped
// when the test ends.
func depStart(t *testing.T, name, bin string, env map[string]string, args ...string) *depProc {
	t.Helper()
	p := &depProc{name: name, cmd: exec.Command(bin, args...), out: &depBuffer{}, exited: make(chan struct{})}
	p.cmd.Env = depEnvList(env)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.exited)
	}()
	t.Cleanup(func() {
		if p.stop(15*time.Second) < 0 {
			t.Logf("%s: killed after 15s", name)
		}
	})
	return p
}

// waitLog waits until the output contains s; it fails the test, with the
// output, when the process exits first or d passes.
func (p *depProc) waitLog(t *testing.T, s string, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for !strings.Contains(p.out.String(), s) {
		select {
		case <-p.exited:
			if strings.Contains(p.out.String(), s) {
				return
			}
			t.Fatalf("%s exited with %d before logging %q:\n%s", p.name, p.code, s, p.out)
		case <-deadline:
			t.Fatalf("%s did not log %q within %s:\n%s", p.name, s, d, p.out)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits at most d; it kills the process then. It
// returns the exit code, -1 when killed.
func (p *depProc) stop(d time.Duration) int {
	select {
	case <-p.exited:
		return p.code
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.code
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return -1
	}
}

// depRun runs bin to completion (at most 60s) and returns its combined
// output and exit code.
func depRun(t *testing.T, bin string, env map[string]string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = depEnvList(env)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %v: %v\n%s", bin, args, err, out)
	}
	return string(out), 0
}

// depLogHasNoPermissionErrors fails the test if a guardian log reports a
// NATS permissions violation: the shipped permissions must cover all that
// guardian does.
func depLogHasNoPermissionErrors(t *testing.T, p *depProc) {
	t.Helper()
	if out := p.out.String(); strings.Contains(strings.ToLower(out), "permissions violation") {
		t.Errorf("%s hit a permissions violation with the shipped config:\n%s", p.name, out)
	}
}

// ---- NATS users -------------------------------------------------------------

// depUser is a NATS connection as one user of the shipped config, with the
// asynchronous errors (permission violations) it received.
type depUser struct {
	name string
	nc   *nats.Conn
	js   jetstream.JetStream
	errs chan error
}

func depConnect(t *testing.T, urls, user, password string, opts ...nats.Option) *depUser {
	t.Helper()
	u := &depUser{name: user, errs: make(chan error, 128)}
	opts = append([]nats.Option{
		nats.UserInfo(user, password),
		nats.Name("e2e " + user),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case u.errs <- err:
			default:
			}
		}),
	}, opts...)
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	u.nc = nc
	if u.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return u
}

// drain forgets errors received so far.
func (u *depUser) drain() {
	for {
		select {
		case <-u.errs:
		default:
			return
		}
	}
}

// expectDenied runs do, which publishes to or subscribes to subject, and
// fails the test unless the server answers with a permissions violation
// naming that subject. kind is "Publish" or "Subscription".
func (u *depUser) expectDenied(t *testing.T, kind, subject string, do func() error) {
	t.Helper()
	u.drain()
	if err := do(); err != nil && !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("%s: %s %s: %v", u.name, kind, subject, err)
	}
	if err := u.nc.Flush(); err != nil {
		t.Fatalf("%s: flush: %v", u.name, err)
	}
	want := strings.ToLower(fmt.Sprintf("permissions violation for %s to %q", kind, subject))
	deadline := time.After(3 * time.Second)
	for {
		select {
		case err := <-u.errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(strings.ToLower(err.Error()), want) {
				return
			}
		case <-deadline:
			t.Fatalf("%s: %s to %s was not refused with a permissions violation", u.name, kind, subject)
		}
	}
}

// expectNoViolations fails the test if u received a permissions violation.
func (u *depUser) expectNoViolations(t *testing.T) {
	t.Helper()
	if err := u.nc.Flush(); err != nil {
		t.Fatalf("%s: flush: %v", u.name, err)
	}
	time.Sleep(50 * time.Millisecond)
	for {
		select {
		case err := <-u.errs:
			if errors.Is(err, nats.ErrPermissionViolation) {
				t.Errorf("%s: unexpected %v", u.name, err)
			}
		default:
			return
		}
	}
}

// client returns a kvapprovals client speaking guardian's API as u.
func (u *depUser) client() *kvapprovals.Client { return kvapprovals.NewClient(u.nc) }

// depEvents collects lifecycle events a user receives on a subject.
type depEvents struct {
	mu     sync.Mutex
	events []kvapprovals.Event
}

// kinds returns the kinds of the events about approval id in the order of
// the record's revisions, each revision once (a redelivered notification
// may be published twice; the stream stores it once).
func (e *depEvents) kinds(id string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	byRev := map[uint64]string{}
	for _, ev := range e.events {
		if ev.ID == id {
			byRev[ev.Revision] = ev.Kind
		}
	}
	revs := slices.Sorted(maps.Keys(byRev))
	out := make([]string, 0, len(revs))
	for _, r := range revs {
		out = append(out, byRev[r])
	}
	return out
}

func depSubscribeEvents(t *testing.T, u *depUser, subject string) *depEvents {
	t.Helper()
	e := &depEvents{}
	_, err := u.nc.Subscribe(subject, func(m *nats.Msg) {
		var ev kvapprovals.Event
		if json.Unmarshal(m.Data, &ev) == nil {
			e.mu.Lock()
			e.events = append(e.events, ev)
			e.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// depEventually polls cond every 100ms until it holds or d passes.
func depEventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---- tests ------------------------------------------------------------------

// TestDeployComposeConsistent checks docker-compose.yml against the NATS
// configs, guardian's configuration, the Dockerfile and the Prometheus config.
func TestDeployComposeConsistent(t *testing.T) {
	lookup, pw := depPasswords()
	c := depLoadCompose(t, lookup)
	names := c.natsServices()
	if len(names) != 3 {
		t.Fatalf("NATS services = %v, want 3", names)
	}
	nodes := depLoadNodes(t, c)

	t.Run("cluster", func(t *testing.T) {
		// The image runs the nats-server version the tests run.
		minor := regexp.MustCompile(`^\d+\.\d+`).FindString(server.VERSION)
		for _, n := range nodes {
			img, _ := depPath(c.services[n.service], "image").(string)
			if want := "nats:" + minor + "-"; !strings.HasPrefix(img, want) && img != "nats:"+minor {
				t.Errorf("%s: image %s, want %s* (nats-server %s in go.mod)", n.service, img, want, server.VERSION)
			}
		}
		for _, n := range nodes {
			o := n.opts
			if o.ServerName != n.service {
				t.Errorf("%s: server_name %q, want the service name", n.file, o.ServerName)
			}
			if !o.JetStream {
				t.Errorf("%s: JetStream is off", n.file)
			}
			if o.Cluster.Name == "" || o.Cluster.Name != nodes[0].opts.Cluster.Name {
				t.Errorf("%s: cluster name %q, want one name on every node (%q)", n.file, o.Cluster.Name, nodes[0].opts.Cluster.Name)
			}
			var routed []string
			for _, r := range o.Routes {
				i := slices.IndexFunc(nodes, func(m *depNode) bool { return m.service == r.Hostname() })
				if i < 0 {
					t.Errorf("%s: route %s is not a NATS service", n.file, r)
					continue
				}
				if r.Port() != fmt.Sprint(nodes[i].opts.Cluster.Port) {
					t.Errorf("%s: route %s, but %s's cluster port is %d", n.file, r, nodes[i].service, nodes[i].opts.Cluster.Port)
				}
				routed = append(routed, r.Hostname())
			}
			slices.Sort(routed)
			others := slices.DeleteFunc(slices.Clone(names), func(s string) bool { return s == n.service })
			if !slices.Equal(routed, others) {
				t.Errorf("%s: routes to %v, want each of the others %v", n.file, routed, others)
			}
			// The store is on a named volume of this service.
			onVolume := false
			for _, v := range depStrings(depPath(c.services[n.service], "volumes")) {
				src, target, _ := strings.Cut(v, ":")
				target, _, _ = strings.Cut(target, ":")
				if _, declared := depPath(c.doc, "volumes").(map[string]any)[src]; declared && (o.StoreDir == target || strings.HasPrefix(o.StoreDir, target+"/")) {
					onVolume = true
				}
			}
			if !onVolume {
				t.Errorf("%s: store_dir %s is not on a named volume of service %s", n.file, o.StoreDir, n.service)
			}
			// The health check asks this node's monitoring port.
			hc := strings.Join(depStrings(depPath(c.services[n.service], "healthcheck", "test")), " ")
			if want := fmt.Sprintf(":%d/healthz?js-enabled-only=true", o.HTTPPort); !strings.Contains(hc, want) || o.HTTPPort == 0 {
				t.Errorf("%s: healthcheck %q, want a request to %s (http port %d)", n.service, hc, want, o.HTTPPort)
			}
		}
	})

	gsvcs := c.guardianServices()
	if len(gsvcs) == 0 {
		t.Fatal("no guardian service (one with a build section)")
	}
	genv := c.env(t, gsvcs[0])
	t.Run("guardian environment", func(t *testing.T) {
		bin := depBuildGuardian(t)
		// Every GUARDIAN_* variable of the compose file is one guardian reads.
		help, code := depRun(t, bin, nil, "serve", "--help")
		if code != 0 {
			t.Fatalf("guardian serve --help: exit %d\n%s", code, help)
		}
		known := map[string]bool{}
		for line := range strings.SplitSeq(help, "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "GUARDIAN_") {
				known[f[0]] = true
			}
		}
		if len(known) < 20 || !known["GUARDIAN_NATS_URL"] {
			t.Fatalf("guardian serve --help lists %d variables; the parser is out of date:\n%s", len(known), help)
		}
		for _, k := range depSortedKeys(genv) {
			if !known[k] {
				t.Errorf("compose sets %s, which guardian does not read", k)
			}
		}
		for _, k := range depSortedKeys(depGuardianEnvOverrides) {
			if !known[k] {
				t.Errorf("the test overrides %s, which guardian does not read", k)
			}
		}
		// guardian accepts the environment as it is.
		out, code := depRun(t, bin, genv, "config")
		if code != 0 {
			t.Fatalf("guardian config with the compose environment: exit %d\n%s", code, out)
		}
		if !regexp.MustCompile(`(?m)^GUARDIAN_REPLICAS\s+3\s`).MatchString(out) {
			t.Errorf("guardian config does not show GUARDIAN_REPLICAS 3:\n%s", out)
		}
		if strings.Contains(out, genv["GUARDIAN_NATS_PASSWORD"]) {
			t.Errorf("guardian config shows the NATS password:\n%s", out)
		}

		if genv["GUARDIAN_REPLICAS"] != fmt.Sprint(len(nodes)) {
			t.Errorf("GUARDIAN_REPLICAS=%q, want %d (one replica per NATS node)", genv["GUARDIAN_REPLICAS"], len(nodes))
		}
		var hosts []string
		for u := range strings.SplitSeq(genv["GUARDIAN_NATS_URL"], ",") {
			pu, err := url.Parse(strings.TrimSpace(u))
			if err != nil || pu.Scheme != "nats" {
				t.Fatalf("GUARDIAN_NATS_URL entry %q: want nats://host:port", u)
			}
			hosts = append(hosts, pu.Host)
		}
		var want []string
		for _, n := range nodes {
			want = append(want, fmt.Sprintf("%s:%d", n.service, n.opts.Port))
		}
		slices.Sort(hosts)
		if !slices.Equal(hosts, want) {
			t.Errorf("GUARDIAN_NATS_URL lists %v, want every node's client address %v", hosts, want)
		}
		if genv["GUARDIAN_HTTP_ADDR"] != "0.0.0.0:8080" {
			t.Errorf("GUARDIAN_HTTP_ADDR=%q, want 0.0.0.0:8080", genv["GUARDIAN_HTTP_ADDR"])
		}
		if genv["GUARDIAN_EMBEDDED"] != "false" {
			t.Errorf("GUARDIAN_EMBEDDED=%q, want false: a guardian without NATS must fail, not run alone", genv["GUARDIAN_EMBEDDED"])
		}
		// guardian's user exists in the shipped config, with the password
		// compose gives it.
		user := genv["GUARDIAN_NATS_USER"]
		found := false
		for _, u := range nodes[0].opts.Users {
			if u.Username == user {
				found = true
				if u.Password != genv["GUARDIAN_NATS_PASSWORD"] || u.Password != pw["NATS_PASSWORD_GUARDIAN"] {
					t.Errorf("user %s: password in the NATS config and GUARDIAN_NATS_PASSWORD differ", user)
				}
				if u.Account == nil || u.Account.Name != "GUARDIAN" {
					t.Errorf("user %s: account %v, want GUARDIAN", user, u.Account)
				}
			}
		}
		if !found {
			t.Errorf("GUARDIAN_NATS_USER=%q is not a user of %s", user, nodes[0].file)
		}
	})

	t.Run("guardian services", func(t *testing.T) {
		// Two guardians: the first one, then a replica once it is healthy.
		total := 0
		for _, name := range gsvcs {
			n := 1
			if r, ok := depPath(c.services[name], "deploy", "replicas").(string); ok {
				fmt.Sscan(r, &n)
			}
			total += n
		}
		if total != 2 || len(gsvcs) != 2 {
			t.Errorf("guardian services %v run %d containers, want 2 services with one each", gsvcs, total)
		}
		for _, n := range names {
			if cond, _ := depPath(c.services[gsvcs[0]], "depends_on", n, "condition").(string); cond != "service_healthy" {
				t.Errorf("%s depends_on %s: condition %q, want service_healthy", gsvcs[0], n, cond)
			}
		}
		for _, name := range gsvcs[1:] {
			if cond, _ := depPath(c.services[name], "depends_on", gsvcs[0], "condition").(string); cond != "service_healthy" {
				t.Errorf("%s depends_on %s: condition %q, want service_healthy (one guardian provisions JetStream first)", name, gsvcs[0], cond)
			}
		}
		for _, name := range gsvcs {
			g := c.services[name]
			if env := c.env(t, name); !maps.Equal(env, genv) {
				t.Errorf("%s: environment differs from %s's", name, gsvcs[0])
			}
			if cmd := depStrings(depPath(g, "command")); !slices.Equal(cmd, []string{"serve"}) {
				t.Errorf("%s: command %q, want [serve]", name, cmd)
			}
			ctx, _ := depPath(g, "build", "context").(string)
			df, _ := depPath(g, "build", "dockerfile").(string)
			if df == "" {
				df = "Dockerfile"
			}
			if _, err := os.Stat(filepath.Join(depRoot, ctx, "go.mod")); err != nil || ctx == "" {
				t.Errorf("%s: build context %q is not the module root", name, ctx)
			}
			if _, err := os.Stat(filepath.Join(depRoot, ctx, df)); err != nil {
				t.Errorf("%s: dockerfile: %v", name, err)
			}
			if ports := depStrings(depPath(g, "ports")); len(ports) != 1 || !strings.HasSuffix(ports[0], "::8080") {
				t.Errorf("%s: ports %q, want one ephemeral host port for 8080 per container", name, ports)
			}
			if hc := depStrings(depPath(g, "healthcheck", "test")); len(hc) < 3 || hc[0] != "CMD" || hc[1] != "/usr/local/bin/guardian" {
				t.Errorf("%s: healthcheck %q, want [CMD /usr/local/bin/guardian ...] (no shell in the image)", name, hc)
			}
		}
	})

	t.Run("dockerfile", func(t *testing.T) {
		src, err := os.ReadFile(filepath.Join(depRoot, "Dockerfile"))
		if err != nil {
			t.Fatal(err)
		}
		mod, err := os.ReadFile(filepath.Join(depRoot, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		goMinor := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
		if goMinor == nil {
			t.Fatal("go.mod has no go directive")
		}
		var froms []string
		for line := range strings.SplitSeq(string(src), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "FROM" {
				froms = append(froms, f[1])
			}
		}
		if len(froms) != 2 || !strings.HasPrefix(froms[0], "golang:"+string(goMinor[1])) {
			t.Errorf("stages %v: want a golang:%s builder and one final stage", froms, goMinor[1])
		}
		if len(froms) > 0 && froms[len(froms)-1] != "gcr.io/distroless/static:nonroot" && froms[len(froms)-1] != "scratch" {
			t.Errorf("final stage %s: want distroless static nonroot or scratch", froms[len(froms)-1])
		}
		for _, want := range []string{
			"CGO_ENABLED=0",
			"./cmd/guardian",
			"USER 65532:65532",
			`ENTRYPOINT ["/usr/local/bin/guardian"]`,
			`CMD ["serve"]`,
			"EXPOSE 8080",
			"COPY --from=build /out/guardian /usr/local/bin/guardian",
		} {
			if !strings.Contains(string(src), want) {
				t.Errorf("Dockerfile lacks %q", want)
			}
		}
		if _, err := os.Stat(filepath.Join(depRoot, "cmd", "guardian", "main.go")); err != nil {
			t.Errorf("the Dockerfile builds ./cmd/guardian: %v", err)
		}
		ignore, err := os.ReadFile(filepath.Join(depRoot, ".dockerignore"))
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for l := range strings.SplitSeq(string(ignore), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		for _, need := range []string{"go.mod", "go.sum", "cmd", "pkg", "internal"} {
			if slices.Contains(lines, need) || slices.Contains(lines, need+"/") {
				t.Errorf(".dockerignore excludes %s, which the build needs", need)
			}
		}
		if !slices.Contains(lines, ".git") || !slices.Contains(lines, ".env") {
			t.Errorf(".dockerignore must exclude .git and .env")
		}
	})

	t.Run("prometheus", func(t *testing.T) {
		p := c.services["prometheus"]
		if prof := depStrings(depPath(p, "profiles")); !slices.Equal(prof, []string{"metrics"}) {
			t.Errorf("prometheus profiles %v, want [metrics]", prof)
		}
		file := c.hostPath(t, "prometheus", "/etc/prometheus/prometheus.yml")
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := depParseYAML(string(src))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		job := depPath(doc, "scrape_configs", "0")
		if name, _ := depPath(job, "job_name").(string); name != "guardian" {
			t.Fatalf("%s: first job %q, want guardian", file, name)
		}
		if mp, _ := depPath(job, "metrics_path").(string); mp != "/metrics" {
			t.Errorf("metrics_path %q", mp)
		}
		sd := depPath(job, "dns_sd_configs", "0")
		_, httpPort, _ := net.SplitHostPort(genv["GUARDIAN_HTTP_ADDR"])
		if !slices.Equal(depStrings(depPath(sd, "names")), gsvcs) || depPath(sd, "port") != httpPort {
			t.Errorf("dns_sd_configs %v: want names %v and port %s (GUARDIAN_HTTP_ADDR)", sd, gsvcs, httpPort)
		}
	})
}

// TestDeployCluster runs the compose stack in process: the three nodes from
// deploy/nats with their shipped users, two guardians with the compose
// environment, and a request → approve → expire → audit scenario through
// tenant, operator and auditor users.
func TestDeployCluster(t *testing.T) {
	start := time.Now()
	lookup, pw := depPasswords()
	c := depLoadCompose(t, lookup)
	nodes := depLoadNodes(t, c)
	depRewrite(t, nodes)
	bin := depBuildGuardian(t)
	depStartNodes(t, nodes)
	t.Logf("cluster up after %s", time.Since(start).Round(time.Millisecond))

	// Start the guardian services in compose's order: the first one, its
	// health check passing (run as compose runs it), then the replica.
	gsvcs := c.guardianServices()
	genv := c.env(t, gsvcs[0])
	urls := depClientURLs(t, genv["GUARDIAN_NATS_URL"], nodes)
	var gs []*depProc
	httpPorts := depFreePorts(t, len(gsvcs))
	for i, name := range gsvcs {
		env := maps.Clone(c.env(t, name))
		maps.Copy(env, depGuardianEnvOverrides)
		env["GUARDIAN_NATS_URL"] = urls
		env["GUARDIAN_HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", httpPorts[i])
		env["GUARDIAN_DATA_DIR"] = t.TempDir()
		g := depStart(t, name, bin, env, "serve")
		gs = append(gs, g)
		g.waitLog(t, `"msg":"guardian ready"`, 45*time.Second)
		depWaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPorts[i]), 10*time.Second)
		hc := depStrings(depPath(c.services[name], "healthcheck", "test"))
		if len(hc) < 3 || hc[0] != "CMD" {
			t.Fatalf("%s: healthcheck %q", name, hc)
		}
		if out, code := depRun(t, bin, env, hc[2:]...); code != 0 {
			t.Fatalf("%s: health check %q failed with exit %d:\n%s", name, hc[1:], code, out)
		}
	}
	t.Logf("guardians ready after %s", time.Since(start).Round(time.Millisecond))
	replicas := len(gs)

	admin := depConnect(t, urls, genv["GUARDIAN_NATS_USER"], genv["GUARDIAN_NATS_PASSWORD"])
	acme := depConnect(t, urls, "alice", pw["NATS_PASSWORD_ALICE"])
	op := depConnect(t, urls, "bob", pw["NATS_PASSWORD_BOB"])
	ctx := t.Context()

	// Both guardians serve the micro service (an operator may look).
	inbox := nats.NewInbox()
	sub, err := op.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := op.nc.PublishRequest("$SRV.PING.guardian", inbox, nil); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for len(ids) < replicas {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("$SRV.PING.guardian: %d of %d instances answered: %v", len(ids), replicas, err)
		}
		var ping struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(m.Data, &ping) == nil && ping.ID != "" {
			ids[ping.ID] = true
		}
	}

	// Streams and buckets are replicated on the three nodes; the audit
	// stream denies delete and purge.
	for _, name := range []string{"GUARDIAN_AUDIT", "GUARDIAN_EVENTS", "KV_GUARDIAN_APPROVALS", "GUARDIAN_TIMERS", "KV_GUARDIAN_POLICY"} {
		s, err := admin.js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info := s.CachedInfo()
		if info.Config.Replicas != len(nodes) {
			t.Errorf("stream %s: %d replicas, want %d", name, info.Config.Replicas, len(nodes))
		}
		if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != len(nodes)-1 {
			t.Errorf("stream %s: cluster %+v, want a leader and %d peers", name, info.Cluster, len(nodes)-1)
		}
		if name == "GUARDIAN_AUDIT" && (!info.Config.DenyDelete || !info.Config.DenyPurge) {
			t.Errorf("stream %s: DenyDelete=%v DenyPurge=%v, want both", name, info.Config.DenyDelete, info.Config.DenyPurge)
		}
	}

	// A tenant asks (the requester is the user NATS authenticated); an
	// operator may not decide as someone else, approves as himself and is
	// recorded with his account.
	acmeEvents := depSubscribeEvents(t, acme, "guardian.v1.events.acme.>")
	a1, err := acme.client().Request(ctx, "acme", kvapprovals.RequestInput{ID: "deploy-a1", SessionID: "s1", Timeout: kvapprovals.Duration(10 * time.Minute)})
	if err != nil {
		t.Fatalf("acme request: %v", err)
	}
	if a1.Status != kvapprovals.StatusPending || a1.Tenant != "acme" || a1.RequestedBy != "alice" || a1.Requester == nil || a1.Requester.Account != "ACME" {
		t.Fatalf("request: %+v", a1)
	}
	if _, err := op.client().Approve(ctx, "acme", kvapprovals.DecisionInput{ID: "deploy-a1", DecidedBy: "alice"}); !errors.Is(err, kvapprovals.ErrIdentityMismatch) {
		t.Fatalf("bob approving as alice: err %v, want ErrIdentityMismatch", err)
	}
	a1, err = op.client().Approve(ctx, "acme", kvapprovals.DecisionInput{ID: "deploy-a1", Reason: "looks fine"})
	if err != nil {
		t.Fatalf("operator approve: %v", err)
	}
	if a1.Status != kvapprovals.StatusApproved || a1.DecidedBy != "bob" || a1.DecidedAt == nil || a1.Decider == nil || a1.Decider.Account != "OPS" {
		t.Fatalf("approved record %+v: want approved, decided_by bob of OPS", a1)
	}

	// A short approval; the first replica goes away gracefully and the
	// second one expires it.
	a2, err := acme.client().Request(ctx, "acme", kvapprovals.RequestInput{ID: "deploy-a2", SessionID: "s2", Timeout: kvapprovals.Duration(2 * time.Second)})
	if err != nil {
		t.Fatalf("acme request a2: %v", err)
	}
	if code := gs[0].stop(20 * time.Second); code != 0 {
		t.Fatalf("guardian-1 exit %d after SIGTERM, want 0:\n%s", code, gs[0].out)
	}
	var lastA2 string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("deploy-a2 last read: %s\n%s:\n%s", lastA2, gs[1].name, gs[1].out.String())
		}
	})
	depEventually(t, 20*time.Second, "deploy-a2 expired", func() bool {
		r, err := acme.client().Get(ctx, "acme", "deploy-a2")
		lastA2 = fmt.Sprintf("%+v %v", r, err)
		return err == nil && r.Status == kvapprovals.StatusExpired
	})
	if time.Now().Before(a2.ExpiresAt) {
		t.Fatalf("deploy-a2 expired before expires_at %s", a2.ExpiresAt)
	}
	if _, err := op.client().Approve(ctx, "acme", kvapprovals.DecisionInput{ID: "deploy-a2"}); !errors.Is(err, kvapprovals.ErrExpired) {
		t.Fatalf("late approve: err %v, want ErrExpired", err)
	}
	depEventually(t, 10*time.Second, "lifecycle events for acme", func() bool {
		return slices.Equal(acmeEvents.kinds("deploy-a1"), []string{"requested", "approved"}) &&
			slices.Equal(acmeEvents.kinds("deploy-a2"), []string{"requested", "expired"})
	})

	// An auditor reads the expiry from the audit stream with the CLI.
	auditEnv := map[string]string{
		"GUARDIAN_NATS_URL":      urls,
		"GUARDIAN_NATS_USER":     "auditor",
		"GUARDIAN_NATS_PASSWORD": pw["NATS_PASSWORD_AUDITOR"],
		"GUARDIAN_JS_API_PREFIX": "$JS.GUARDIAN.API",
	}
	var tail string
	depEventually(t, 15*time.Second, "the expiry in 'guardian audit tail'", func() bool {
		out, code := depRun(t, bin, auditEnv, "audit", "tail", "--follow=false", "--json", "--tenant", "acme", "--code", "TIMEOUT_APPROVAL_EXPIRED")
		tail = out
		return code == 0 && strings.Contains(out, `"approval_id":"deploy-a2"`)
	})
	if strings.Contains(tail, `"approval_id":"deploy-a1"`) {
		t.Errorf("audit tail shows an expiry of the approved deploy-a1:\n%s", tail)
	}

	// Even guardian's own user cannot purge the audit stream, delete its
	// messages (the shipped permissions, and the stream's DenyPurge and
	// DenyDelete) or delete it (the shipped permissions). A denied request
	// gets no reply: a short deadline ends it.
	audit, err := admin.js.Stream(ctx, "GUARDIAN_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	before := audit.CachedInfo().State.Msgs
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, time.Second)
		t.Cleanup(cancel)
		return c
	}
	if err := audit.Purge(short()); err == nil {
		t.Error("purge of GUARDIAN_AUDIT succeeded; the stream must deny purge")
	}
	if err := audit.DeleteMsg(short(), 1); err == nil {
		t.Error("message delete in GUARDIAN_AUDIT succeeded; the stream must deny delete")
	}
	admin.expectDenied(t, "Publish", "$JS.API.STREAM.DELETE.GUARDIAN_AUDIT", func() error {
		return admin.nc.PublishRequest("$JS.API.STREAM.DELETE.GUARDIAN_AUDIT", nats.NewInbox(), nil)
	})
	info, err := audit.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs < before || before == 0 {
		t.Errorf("GUARDIAN_AUDIT held %d messages, now %d", before, info.State.Msgs)
	}

	if code := gs[1].stop(20 * time.Second); code != 0 {
		t.Errorf("guardian-2 exit %d after SIGTERM, want 0", code)
	}
	for _, g := range gs {
		depLogHasNoPermissionErrors(t, g)
	}
	for _, u := range []*depUser{admin, acme, op} {
		u.expectNoViolations(t)
	}
	t.Logf("done after %s", time.Since(start).Round(time.Millisecond))
}

// ---- YAML and compose interpolation ------------------------------------------

// A small YAML reader for docker-compose.yml and prometheus.yml, and compose's
// ${VAR} interpolation. The module has no YAML parser among its
// dependencies, and these tests must not add one. It understands what the
// project's files use and refuses everything else with an error naming the
// line, so a new construct fails the tests instead of being misread:
//
//   - block mappings and sequences (a sequence may sit at its key's indent)
//   - single-line flow sequences and mappings: [a, "b"], { k: v }
//   - plain, 'single' and "double" quoted scalars; every scalar is a string,
//     an empty value is nil
//   - comments, anchors (&name), aliases (*name) and merge keys (<<)

type depLine struct {
	num, indent int
	text        string
}

type depYAML struct {
	lines   []depLine
	i       int
	anchors map[string]any
}

// depParseYAML parses src into map[string]any, []any, string and nil values.
func depParseYAML(src string) (any, error) {
	p := &depYAML{anchors: map[string]any{}}
	for n, raw := range strings.Split(src, "\n") {
		raw = strings.TrimRight(raw, " \r")
		body := strings.TrimLeft(raw, " ")
		if strings.HasPrefix(body, "\t") {
			return nil, fmt.Errorf("line %d: tab in indentation", n+1)
		}
		text, err := depStripComment(body)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		text = strings.TrimRight(text, " \t")
		if text == "" || text == "---" {
			continue
		}
		if text == "..." || strings.HasPrefix(text, "%") {
			return nil, fmt.Errorf("line %d: directives and document ends are not supported", n+1)
		}
		p.lines = append(p.lines, depLine{num: n + 1, indent: len(raw) - len(body), text: text})
	}
	if len(p.lines) == 0 {
		return nil, nil
	}
	if p.lines[0].indent != 0 {
		return nil, fmt.Errorf("line %d: the document must start at column 1", p.lines[0].num)
	}
	v, err := p.block(0)
	if err != nil {
		return nil, err
	}
	if p.i < len(p.lines) {
		return nil, fmt.Errorf("line %d: unexpected indentation or content", p.lines[p.i].num)
	}
	return v, nil
}

// depStripComment removes a comment: '#' at the start or after a blank,
// outside quotes.
func depStripComment(s string) (string, error) {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '"':
			if c == '\\' {
				i++
			} else if c == '"' {
				quote = 0
			}
		case quote == '\'':
			if c == '\'' {
				if i+1 < len(s) && s[i+1] == '\'' {
					i++
				} else {
					quote = 0
				}
			}
		case c == '"' || c == '\'':
			if i == 0 || strings.IndexByte(" [{,:-", s[i-1]) >= 0 {
				quote = c
			}
		case c == '#':
			if i == 0 || s[i-1] == ' ' || s[i-1] == '\t' {
				return s[:i], nil
			}
		}
	}
	if quote != 0 {
		return "", errors.New("unterminated quoted string (multi-line strings are not supported)")
	}
	return s, nil
}

func depIsSeqItem(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

// block parses the node starting at the current line if it is indented at
// least minIndent; otherwise the node is nil.
func (p *depYAML) block(minIndent int) (any, error) {
	if p.i >= len(p.lines) || p.lines[p.i].indent < minIndent {
		return nil, nil
	}
	l := p.lines[p.i]
	if depIsSeqItem(l.text) {
		return p.seq(l.indent)
	}
	return p.mapping(l.indent)
}

func (p *depYAML) mapping(indent int) (any, error) {
	m := map[string]any{}
	var merges []any
	for p.i < len(p.lines) && p.lines[p.i].indent == indent && !depIsSeqItem(p.lines[p.i].text) {
		l := p.lines[p.i]
		key, rest, ok, err := depSplitKey(l.text)
		if err != nil || !ok {
			return nil, fmt.Errorf("line %d: expected \"key: value\" in a mapping: %q", l.num, l.text)
		}
		p.i++
		v, err := p.value(l, rest, true)
		if err != nil {
			return nil, err
		}
		if key == "<<" {
			merges = append(merges, v)
			continue
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("line %d: duplicate key %q", l.num, key)
		}
		m[key] = v
	}
	if p.i < len(p.lines) && p.lines[p.i].indent > indent {
		return nil, fmt.Errorf("line %d: unexpected indentation", p.lines[p.i].num)
	}
	// Merge keys: keys of the mapping itself win, then earlier merges.
	for _, mv := range merges {
		srcs := []any{mv}
		if list, ok := mv.([]any); ok {
			srcs = list
		}
		for _, s := range srcs {
			sm, ok := s.(map[string]any)
			if !ok {
				return nil, errors.New("a merge key (<<) needs a mapping or a list of mappings")
			}
			for k, v := range sm {
				if _, ok := m[k]; !ok {
					m[k] = v
				}
			}
		}
	}
	return m, nil
}

func (p *depYAML) seq(indent int) (any, error) {
	out := []any{}
	for p.i < len(p.lines) && p.lines[p.i].indent == indent && depIsSeqItem(p.lines[p.i].text) {
		l := p.lines[p.i]
		rest := strings.TrimLeft(l.text[1:], " ")
		if _, _, isMap, err := depSplitKey(rest); err == nil && isMap && !strings.HasPrefix(rest, "&") {
			// "- key: value": a mapping whose keys line up with "key".
			p.lines[p.i] = depLine{num: l.num, indent: indent + len(l.text) - len(rest), text: rest}
			v, err := p.mapping(p.lines[p.i].indent)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			continue
		}
		p.i++
		v, err := p.value(l, rest, false)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if p.i < len(p.lines) && p.lines[p.i].indent > indent {
		return nil, fmt.Errorf("line %d: unexpected indentation", p.lines[p.i].num)
	}
	return out, nil
}

// value parses what follows "key:" or "-" on line l; a nested block follows
// on the next lines when rest is empty.
func (p *depYAML) value(l depLine, rest string, inMapping bool) (any, error) {
	anchor := ""
	if strings.HasPrefix(rest, "&") {
		name, after, _ := strings.Cut(rest, " ")
		anchor, rest = name[1:], strings.TrimSpace(after)
		if anchor == "" {
			return nil, fmt.Errorf("line %d: empty anchor name", l.num)
		}
	}
	var v any
	var err error
	switch {
	case rest == "":
		switch {
		case p.i < len(p.lines) && p.lines[p.i].indent > l.indent:
			v, err = p.block(l.indent + 1)
		case inMapping && p.i < len(p.lines) && p.lines[p.i].indent == l.indent && depIsSeqItem(p.lines[p.i].text):
			v, err = p.seq(l.indent)
		}
	case strings.HasPrefix(rest, "*"):
		var ok bool
		if v, ok = p.anchors[rest[1:]]; !ok {
			return nil, fmt.Errorf("line %d: unknown alias %q", l.num, rest)
		}
	case strings.HasPrefix(rest, "|") || strings.HasPrefix(rest, ">"):
		return nil, fmt.Errorf("line %d: block scalars (| and >) are not supported", l.num)
	case strings.HasPrefix(rest, "!"):
		return nil, fmt.Errorf("line %d: tags are not supported", l.num)
	case strings.HasPrefix(rest, "[") || strings.HasPrefix(rest, "{"):
		v, err = depParseFlow(rest)
	default:
		v, err = depScalar(rest)
	}
	if err != nil {
		return nil, fmt.Errorf("line %d: %w", l.num, err)
	}
	if anchor != "" {
		p.anchors[anchor] = v
	}
	return v, nil
}

// depSplitKey splits "key: rest". ok is false when text is not a mapping
// entry (a scalar, possibly containing ':' without a blank after it).
func depSplitKey(text string) (key, rest string, ok bool, err error) {
	if text == "" || strings.IndexByte("[{&*|>!", text[0]) >= 0 {
		return "", "", false, nil
	}
	if text[0] == '"' || text[0] == '\'' {
		end := depQuotedEnd(text)
		if end < 0 {
			return "", "", false, errors.New("unterminated quote")
		}
		after := text[end+1:]
		if after != ":" && !strings.HasPrefix(after, ": ") {
			return "", "", false, nil
		}
		k, err := depScalar(text[:end+1])
		if err != nil {
			return "", "", false, err
		}
		return k.(string), strings.TrimSpace(after[1:]), true, nil
	}
	for i := 0; i < len(text); i++ {
		if text[i] == ':' && (i+1 == len(text) || text[i+1] == ' ') {
			return strings.TrimSpace(text[:i]), strings.TrimSpace(text[i+1:]), true, nil
		}
	}
	return "", "", false, nil
}

// depQuotedEnd returns the index of the quote closing the string s starts
// with, or -1.
func depQuotedEnd(s string) int {
	q := s[0]
	for i := 1; i < len(s); i++ {
		switch {
		case q == '"' && s[i] == '\\':
			i++
		case s[i] == q && q == '\'' && i+1 < len(s) && s[i+1] == '\'':
			i++
		case s[i] == q:
			return i
		}
	}
	return -1
}

// depScalar returns the string a scalar stands for; "" is nil.
func depScalar(s string) (any, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "~" || s == "null" {
		return nil, nil
	}
	if s[0] != '"' && s[0] != '\'' {
		if strings.HasPrefix(s, "*") || strings.HasPrefix(s, "&") {
			return nil, fmt.Errorf("anchors and aliases are supported only as whole values: %q", s)
		}
		return s, nil
	}
	end := depQuotedEnd(s)
	if end != len(s)-1 {
		return nil, fmt.Errorf("bad quoted string %s", s)
	}
	body := s[1:end]
	if s[0] == '\'' {
		return strings.ReplaceAll(body, "''", "'"), nil
	}
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		if body[i] != '\\' {
			b.WriteByte(body[i])
			continue
		}
		i++
		if i == len(body) {
			return nil, fmt.Errorf("bad escape in %s", s)
		}
		switch body[i] {
		case '\\', '"', '/':
			b.WriteByte(body[i])
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		default:
			return nil, fmt.Errorf("unsupported escape \\%c in %s", body[i], s)
		}
	}
	return b.String(), nil
}

// depParseFlow parses a single-line flow sequence or mapping.
func depParseFlow(s string) (any, error) {
	f := &depFlow{s: s}
	v, err := f.value("")
	if err != nil {
		return nil, err
	}
	f.space()
	if f.i != len(f.s) {
		return nil, fmt.Errorf("unexpected %q after a flow collection (flow collections must fit on one line)", f.s[f.i:])
	}
	return v, nil
}

type depFlow struct {
	s string
	i int
}

func (f *depFlow) space() {
	for f.i < len(f.s) && f.s[f.i] == ' ' {
		f.i++
	}
}

// value parses one value; stops are the bytes that end a plain scalar.
func (f *depFlow) value(stops string) (any, error) {
	f.space()
	if f.i == len(f.s) {
		return nil, errors.New("unterminated flow collection (flow collections must fit on one line)")
	}
	switch c := f.s[f.i]; c {
	case '[':
		f.i++
		out := []any{}
		for {
			f.space()
			if f.i < len(f.s) && f.s[f.i] == ']' {
				f.i++
				return out, nil
			}
			v, err := f.value(",]")
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			f.space()
			if f.i < len(f.s) && f.s[f.i] == ',' {
				f.i++
			} else if f.i >= len(f.s) || f.s[f.i] != ']' {
				return nil, errors.New("expected , or ] in a flow sequence")
			}
		}
	case '{':
		f.i++
		out := map[string]any{}
		for {
			f.space()
			if f.i < len(f.s) && f.s[f.i] == '}' {
				f.i++
				return out, nil
			}
			k, err := f.value(":,}")
			if err != nil {
				return nil, err
			}
			ks, ok := k.(string)
			if !ok || f.i >= len(f.s) || f.s[f.i] != ':' {
				return nil, errors.New("expected key: value in a flow mapping")
			}
			f.i++
			v, err := f.value(",}")
			if err != nil {
				return nil, err
			}
			out[ks] = v
			f.space()
			if f.i < len(f.s) && f.s[f.i] == ',' {
				f.i++
			} else if f.i >= len(f.s) || f.s[f.i] != '}' {
				return nil, errors.New("expected , or } in a flow mapping")
			}
		}
	case '"', '\'':
		end := depQuotedEnd(f.s[f.i:])
		if end < 0 {
			return nil, errors.New("unterminated quote")
		}
		v, err := depScalar(f.s[f.i : f.i+end+1])
		f.i += end + 1
		return v, err
	default:
		start := f.i
		for f.i < len(f.s) && strings.IndexByte(stops, f.s[f.i]) < 0 && strings.IndexByte("[]{}", f.s[f.i]) < 0 {
			f.i++
		}
		return depScalar(f.s[start:f.i])
	}
}

// depInterpolate expands compose variables in s: $$, $NAME, ${NAME},
// ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error},
// ${NAME:+alt} and ${NAME+alt}; defaults may hold variables themselves.
func depInterpolate(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			b.WriteByte('$')
			continue
		}
		switch next := s[i+1]; {
		case next == '$':
			b.WriteByte('$')
			i++
		case next == '{':
			depth, end := 0, -1
			for j := i + 1; j < len(s) && end < 0; j++ {
				switch s[j] {
				case '{':
					depth++
				case '}':
					if depth--; depth == 0 {
						end = j
					}
				}
			}
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ in %q", s)
			}
			v, err := depExpand(s[i+2:end], lookup)
			if err != nil {
				return "", err
			}
			b.WriteString(v)
			i = end
		case next == '_' || 'A' <= next && next <= 'Z' || 'a' <= next && next <= 'z':
			j := i + 1
			for j < len(s) && depNameByte(s[j]) {
				j++
			}
			v, _ := lookup(s[i+1 : j])
			b.WriteString(v)
			i = j - 1
		default:
			b.WriteByte('$')
		}
	}
	return b.String(), nil
}

func depNameByte(c byte) bool {
	return c == '_' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
}

// depExpand expands the inside of ${...}.
func depExpand(expr string, lookup func(string) (string, bool)) (string, error) {
	n := 0
	for n < len(expr) && depNameByte(expr[n]) {
		n++
	}
	name, op := expr[:n], expr[n:]
	if name == "" || '0' <= name[0] && name[0] <= '9' {
		return "", fmt.Errorf("bad variable name in ${%s}", expr)
	}
	val, set := lookup(name)
	for _, o := range []string{":-", ":?", ":+", "-", "?", "+"} {
		if !strings.HasPrefix(op, o) {
			continue
		}
		arg, err := depInterpolate(op[len(o):], lookup)
		if err != nil {
			return "", err
		}
		empty := !set || (strings.HasPrefix(o, ":") && val == "")
		switch strings.TrimPrefix(o, ":") {
		case "-":
			if empty {
				return arg, nil
			}
		case "?":
			if empty {
				return "", fmt.Errorf("variable %s: %s", name, arg)
			}
		case "+":
			if empty {
				return "", nil
			}
			return arg, nil
		}
		return val, nil
	}
	if op != "" {
		return "", fmt.Errorf("unsupported expansion ${%s}", expr)
	}
	return val, nil
}

// depInterpolateAll applies depInterpolate to every string in v.
func depInterpolateAll(v any, lookup func(string) (string, bool)) (any, error) {
	switch x := v.(type) {
	case string:
		return depInterpolate(x, lookup)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			var err error
			if out[i], err = depInterpolateAll(e, lookup); err != nil {
				return nil, err
			}
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			var err error
			if out[k], err = depInterpolateAll(e, lookup); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return v, nil
}

// depPath walks v along keys (mapping keys, or decimal indexes of lists).
func depPath(v any, keys ...string) any {
	for _, k := range keys {
		switch x := v.(type) {
		case map[string]any:
			v = x[k]
		case []any:
			i := -1
			fmt.Sscan(k, &i)
			if i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

// depStrings returns v as a list of strings: a list of scalars, or one
// scalar.
func depStrings(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// depEnvironment returns a compose service's environment, given as a mapping
// or as a list of KEY=VALUE.
func depEnvironment(svc any) (map[string]string, error) {
	out := map[string]string{}
	switch env := depPath(svc, "environment").(type) {
	case nil:
	case map[string]any:
		for k, v := range env {
			s, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("environment %s: want a string value, got %T (pass-through variables are not used here)", k, v)
			}
			out[k] = s
		}
	case []any:
		for _, e := range env {
			s, _ := e.(string)
			k, v, ok := strings.Cut(s, "=")
			if !ok {
				return nil, fmt.Errorf("environment entry %q: want KEY=VALUE", s)
			}
			out[k] = v
		}
	default:
		return nil, fmt.Errorf("environment: want a mapping or a list, got %T", env)
	}
	return out, nil
}

// depSortedKeys returns m's keys in order.
func depSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestDeployYAMLReader checks the YAML reader on the constructs the
// project's files use, and that it refuses what it does not understand.
func TestDeployYAMLReader(t *testing.T) {
	tests := []struct {
		name, src string
		want      any
		wantErr   string
	}{
		{"scalars and nesting", "a: 1\nb:\n  c: x y # comment\n  d: \"q # not a comment\"\n  e: 'it''s'\n  f:\n",
			map[string]any{"a": "1", "b": map[string]any{"c": "x y", "d": "q # not a comment", "e": "it's", "f": nil}}, ""},
		{"sequences", "l:\n  - ./a:/b:ro\n  - \"127.0.0.1::8080\"\nm:\n- x\n- y\n",
			map[string]any{"l": []any{"./a:/b:ro", "127.0.0.1::8080"}, "m": []any{"x", "y"}}, ""},
		{"sequence of mappings", "s:\n  - name: a\n    port: 1\n  - name: b\n",
			map[string]any{"s": []any{map[string]any{"name": "a", "port": "1"}, map[string]any{"name": "b"}}}, ""},
		{"flow collections", "t: [\"CMD\", wget, 'q', \"http://h:1/p?x=true\"]\nd: { condition: service_healthy }\ne: []\n",
			map[string]any{"t": []any{"CMD", "wget", "q", "http://h:1/p?x=true"}, "d": map[string]any{"condition": "service_healthy"}, "e": []any{}}, ""},
		{"anchors, aliases and merges", "x: &base\n  a: 1\n  b: 2\ny:\n  <<: *base\n  b: 3\nz: *base\n",
			map[string]any{"x": map[string]any{"a": "1", "b": "2"}, "y": map[string]any{"a": "1", "b": "3"}, "z": map[string]any{"a": "1", "b": "2"}}, ""},
		{"escapes", `k: "a\"b\\c"`, map[string]any{"k": `a"b\c`}, ""},
		{"block scalar", "k: |\n  text\n", nil, "block scalars"},
		{"multi-line flow", "k: [a,\n  b]\n", nil, "one line"},
		{"unterminated quote", "k: \"abc\n", nil, "unterminated"},
		{"bad indentation", "a:\n    b: 1\n  c: 2\n", nil, "indentation"},
		{"tab", "a:\n\tb: 1\n", nil, "tab"},
		{"duplicate key", "a: 1\na: 2\n", nil, "duplicate"},
		{"unknown alias", "a: *nope\n", nil, "unknown alias"},
		{"not a mapping entry", "a: 1\njust text\n", nil, "expected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := depParseYAML(tt.src)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q (got %#v)", err, tt.wantErr, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g, w := fmt.Sprintf("%#v", got), fmt.Sprintf("%#v", tt.want); g != w {
				t.Errorf("got  %s\nwant %s", g, w)
			}
		})
	}
}

// TestDeployInterpolate checks compose's variable syntax.
func TestDeployInterpolate(t *testing.T) {
	vars := map[string]string{"SET": "v", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	tests := []struct{ in, want, wantErr string }{
		{"plain", "plain", ""},
		{"$SET/${SET}", "v/v", ""},
		{"${UNSET:-d}|${EMPTY:-d}|${SET:-d}", "d|d|v", ""},
		{"${UNSET-d}|${EMPTY-d}|${SET-d}", "d||v", ""},
		{"${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}|${UNSET+alt}", "alt||alt|", ""},
		{"${UNSET:-${SET}x}", "vx", ""},
		{"$$SET and $", "$SET and $", ""},
		{"${UNSET:?must be set}", "", "must be set"},
		{"${EMPTY:?must not be empty}", "", "must not be empty"},
		{"${EMPTY?unset}", "", ""},
		{"${SET", "", "unterminated"},
		{"${1X}", "", "bad variable"},
		{"${SET/x/y}", "", "unsupported"},
	}
	for _, tt := range tests {
		got, err := depInterpolate(tt.in, lookup)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: err %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	// The environment may also be a list of KEY=VALUE.
	env, err := depEnvironment(map[string]any{"environment": []any{"A=1", "B=x=y"}})
	if err != nil || !maps.Equal(env, map[string]string{"A": "1", "B": "x=y"}) {
		t.Errorf("list environment = %v, %v", env, err)
	}
	if _, err := depEnvironment(map[string]any{"environment": map[string]any{"A": nil}}); err == nil {
		t.Error("a pass-through variable (no value) was accepted")
	}
}
