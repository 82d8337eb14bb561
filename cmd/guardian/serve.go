package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

const serveHelp = `serve

Runs the guardian service: the request/reply API (a NATS micro service named
"guardian"), the approval expirer and notifier, the audit publisher, spool
drainer, sealer and rate alerts, and HTTP /healthz, /readyz and /metrics.

With GUARDIAN_NATS_URL empty it starts an embedded nats-server with JetStream,
storing under GUARDIAN_DATA_DIR and listening on GUARDIAN_EMBEDDED_LISTEN, so
the nats CLI and other clients can connect to it.

Every value is checked at start: a bad one stops guardian with a message that
names the variable, its value and what is allowed.

SIGINT or SIGTERM shut it down gracefully: it stops taking requests, finishes
those in flight, stops the consumers, flushes audit publishes and drains the
NATS connection, all within GUARDIAN_SHUTDOWN_TIMEOUT. A second signal stops
it at once.

Configuration, from the environment:
`

func serveCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", serveHelp, stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: guardian ", serveHelp, "\n")
		printVars(stderr, configVars(&config{}), false)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "guardian: serve takes no arguments (got %q); it is configured by GUARDIAN_* variables, see 'guardian serve --help'\n", fs.Arg(0))
		return exitError{2}
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err := run(ctx, cfg, log); err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			// A signal while starting: stopped as asked.
			log.Info("guardian stopped before it was ready", "cause", context.Cause(ctx))
			return nil
		}
		log.Error("guardian stopped", "err", err)
		return exitError{1}
	}
	return nil
}

// run wires guardian and runs it until ctx ends or a part fails, then shuts
// down in order: stop taking requests and finish those in flight, stop the
// consumers and the other parts, flush audit publishes and close the audit
// publisher (spooling what is not acknowledged), drain the NATS
// connection, all within cfg.ShutdownTimeout. It returns the error that
// stopped it, nil when ctx ended.
func run(ctx context.Context, cfg *config, log *slog.Logger) error {
	if cfg.InstanceID == "" {
		host, _ := os.Hostname()
		cfg.InstanceID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	log = log.With("instance", cfg.InstanceID)
	reg := newRegistry()
	m := newMetrics(reg)
	hooks := m.hooks()
	onSinkErr := hooks.OnSinkError
	hooks.OnSinkError = func(e jsguard.Event, err error) {
		onSinkErr(e, err)
		log.Error("audit event not delivered", "event_id", e.EventID, "code", e.Code, "err", err)
	}
	g, err := jsguard.New(jsguard.WithPolicy(cfg.policy()), jsguard.WithHooks(hooks), jsguard.WithLogger(log))
	if err != nil {
		return err
	}

	// HTTP first, so that /healthz answers and /readyz says what is missing
	// while the rest starts. It stops last.
	ready := &readiness{}
	var stopping atomicBool
	ready.add("shutdown", func() error {
		if stopping.v.Load() {
			return errors.New("shutting down")
		}
		return nil
	})
	var httpFailed <-chan error // receives when the HTTP server fails by itself
	consoleMode, err := cfg.consoleMode()
	if err != nil {
		return err
	}
	var ui *lateHandler
	var uiHandler http.Handler
	var httpAddr string
	if consoleMode != "" && cfg.HTTPAddr != "" {
		ui = &lateHandler{}
		uiHandler = ui
	}
	if cfg.HTTPAddr != "" {
		l, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("GUARDIAN_HTTP_ADDR=%s: %w", cfg.HTTPAddr, err)
		}
		httpAddr = l.Addr().String()
		paths := "/healthz /readyz /metrics"
		if ui != nil {
			paths += " /ui/"
		}
		log.Info("http listening", "addr", httpAddr, "paths", paths)
		httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
		done, failed := make(chan struct{}), make(chan error, 1)
		go func() {
			defer close(done)
			if err := serveHTTP(httpCtx, l, ready, reg, uiHandler); err != nil && httpCtx.Err() == nil {
				failed <- err
			}
		}()
		httpFailed = failed
		defer func() { stopHTTP(); <-done }()
	}

	if cfg.embeddedMode() && cfg.Identity == string(kvapprovals.IdentityRequired) {
		return errors.New("GUARDIAN_IDENTITY=required needs callers in NATS accounts of their own, importing guardian's API with share: true; " +
			"the embedded server has one account: use GUARDIAN_IDENTITY=asserted, or GUARDIAN_NATS_URL with accounts (deploy/nats/accounts.conf)")
	}
	if cfg.JsAPIPrefix != "" {
		return errors.New("GUARDIAN_JS_API_PREFIX is for the CLI of users outside guardian's account; guardian serve uses JetStream in its own account: unset it")
	}
	url := cfg.NatsURL
	if cfg.embeddedMode() {
		ns, err := startEmbedded(cfg, log)
		if err != nil {
			return err
		}
		defer func() { ns.Shutdown(); ns.WaitForShutdown(); log.Info("embedded nats-server stopped") }()
		url = ns.ClientURL()
		log.Info("embedded nats-server started", "url", url, "store", filepath.Join(cfg.DataDir, "nats"))
	}
	opts, err := natsOptions(cfg, "guardian "+cfg.InstanceID, log)
	if err != nil {
		return err
	}
	nc, err := connect(ctx, g, url, opts)
	if err != nil {
		return err
	}
	defer nc.Close()
	log.Info("connected to NATS", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName())
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}

	// The API has a connection of its own, so that shutdown can tell when
	// every request NATS delivered has been handed to a handler: when that
	// connection has no subscriptions left.
	apiOpts, err := natsOptions(cfg, "guardian "+cfg.InstanceID+" api", log)
	if err != nil {
		return err
	}
	apiNC, err := connect(ctx, g, url, apiOpts)
	if err != nil {
		return err
	}
	defer apiNC.Close()
	var own string
	if cfg.Identity == string(kvapprovals.IdentityRequired) {
		if err := checkIdentityServer(apiNC.ConnectedServerVersion()); err != nil {
			return err
		}
		if own, err = ownAccount(ctx, g, apiNC); err != nil {
			return fmt.Errorf("GUARDIAN_IDENTITY=required: cannot learn guardian's own NATS account (allow it to publish to %s): %w", userInfoSubject, err)
		}
		log.Info("identities required: tenant requests must come through a service import with share: true", "own_account", own)
	}

	ready.add("nats", func() error {
		for _, c := range []*nats.Conn{nc, apiNC} {
			if !c.IsConnected() {
				return errors.New(c.Status().String())
			}
		}
		return nil
	})
	var setupDone atomicBool
	ready.add("setup", func() error { return setupDone.err("streams and buckets not ensured yet") })
	ready.add("consumers", func() error { return errors.New("consumers not started yet") })
	var apiUp atomicBool
	ready.add("api", func() error { return apiUp.err("the API is not answering yet") })

	w, err := wire(ctx, cfg, g, js, log, reg, m)
	if err != nil {
		return err
	}
	defer w.publisher.Close() // on the early returns; the shutdown below closes it (a second Close is a no-op)
	setupDone.set()

	// The long-running parts run until stopParts, not until ctx ends: at a
	// shutdown the consumers keep running while requests finish.
	partsCtx, stopParts := context.WithCancel(context.WithoutCancel(ctx))
	defer stopParts()
	var parts group
	for _, p := range w.parts {
		parts.add(p.name, p.run)
	}
	partsDone := make(chan error, 1)
	go func() { partsDone <- parts.run(partsCtx) }()
	ready.add("consumers", consumersReady(g, js, w.consumers))

	if cfg.beforeAPI != nil {
		cfg.beforeAPI()
	}
	a := &api{g: g, approvals: w.approvals, log: log, nc: apiNC, sem: make(chan struct{}, cfg.MaxInFlight), awaitSem: make(chan struct{}, 4*cfg.MaxInFlight),
		identity: kvapprovals.IdentityMode(cfg.Identity), ownAccount: own}
	svc, err := micro.AddService(apiNC, micro.Config{
		Name:         "guardian",
		Version:      serviceVersion(),
		Description:  "guardian: approvals that expire, timeout policy and audit reports",
		Metadata:     map[string]string{"instance": cfg.InstanceID},
		StatsHandler: a.statsData,
	})
	if err != nil {
		return fmt.Errorf("micro service: %w", err)
	}
	if err := a.addEndpoints(svc); err != nil {
		return err
	}
	// Ready means answering: the server has the subscriptions, and a
	// client on another connection finds this instance and every endpoint
	// through discovery and gets an answer from it.
	if err := g.Do(ctx, jsguard.NATSSubscribe, "flush api subscriptions", apiNC.FlushWithContext); err != nil {
		return fmt.Errorf("micro service: %w", err)
	}
	if err := probeAPI(ctx, g, nc, svc, log); err != nil {
		return fmt.Errorf("micro service: %w", err)
	}
	apiUp.set()
	if ui != nil {
		c, err := startConsole(ctx, cfg, consoleMode, w, g, nc, js, log)
		switch {
		case err == nil:
			defer c.Close()
			ui.h.Store(c)
			log.Info("console", "mode", consoleMode, "url", "http://"+httpAddr+"/ui/")
		case ctx.Err() == nil:
			return err
		default:
			// Stopped while the console was starting: shut down in
			// order below, without the console.
		}
	}
	if cfg.onReady != nil {
		cfg.onReady(url)
	}
	log.Info("guardian ready", "service", "guardian", "subjects", "guardian.v1.<tenant>.approvals.*, guardian.v1.policy.get, guardian.v1.audit.report")

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "cause", context.Cause(ctx), "timeout", cfg.ShutdownTimeout.String())
	case runErr = <-partsDone:
		partsDone = nil
		log.Info("shutting down", "cause", runErr)
	case err := <-httpFailed:
		runErr = fmt.Errorf("http: %w", err)
		log.Info("shutting down", "cause", runErr)
	}
	stopping.set()
	deadline := time.Now().Add(cfg.ShutdownTimeout)

	// 1. Stop taking requests; finish those in flight.
	a.shutdown(svc, apiNC, deadline)
	// 2. Stop the consumers and the other parts; consumers let the messages
	// they are processing finish.
	stopParts()
	if partsDone != nil {
		select {
		case err := <-partsDone:
			if runErr == nil {
				runErr = err
			}
		case <-time.After(time.Until(deadline)):
			log.Warn("consumers still stopping at the shutdown timeout")
		}
	}
	// 3. Flush audit publishes (and publish what the spool holds, as time
	// allows), then close the publisher: whatever still awaits its ack goes
	// to the spool, fsynced, for the next start. 4. Drain the connection.
	fctx, cancel := context.WithDeadline(context.Background(), later(deadline, time.Second))
	defer cancel()
	if err := w.publisher.Flush(fctx); err != nil {
		log.Warn("flush audit publishes; the rest goes to the spool", "err", err, "stats", fmt.Sprintf("%+v", w.publisher.Stats()))
	}
	if err := w.publisher.Close(); err != nil {
		log.Error("close audit publisher: spooled events may not survive a power failure", "err", err)
	}
	drainConn(nc, time.Until(later(deadline, time.Second)), log)
	log.Info("guardian stopped")
	return runErr
}

// later returns deadline, or now + floor when that is later: the last
// shutdown steps get a moment even when the earlier ones used up the time.
func later(deadline time.Time, floor time.Duration) time.Time {
	if least := time.Now().Add(floor); deadline.Before(least) {
		return least
	}
	return deadline
}

// drainConn drains nc and waits for it to close, at most d.
func drainConn(nc *nats.Conn, d time.Duration, log *slog.Logger) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		if !errors.Is(err, nats.ErrConnectionClosed) {
			log.Warn("drain nats connection", "err", err)
		}
		return
	}
	select {
	case <-closed:
	case <-time.After(d):
		log.Warn("nats drain did not finish in time")
	}
}

// probeAPI asks, over nc, for this instance's discovery info
// ($SRV.INFO.guardian.<id>) and checks that it lists every endpoint, then
// pings the instance; it retries until both answer or the NATSSubscribe
// budget ends. It returns the last failure then. When guardian's NATS user
// may not publish to $SRV subjects, it cannot probe: it logs that and
// returns nil (the endpoints' subscriptions are flushed already).
func probeAPI(ctx context.Context, g *jsguard.Guard, nc *nats.Conn, svc micro.Service, log *slog.Logger) error {
	info := svc.Info()
	want := make([]string, 0, len(info.Endpoints))
	for _, e := range info.Endpoints {
		want = append(want, e.Name)
	}
	infoSubj, err := micro.ControlSubject(micro.InfoVerb, info.Name, info.ID)
	if err != nil {
		return err
	}
	pingSubj, err := micro.ControlSubject(micro.PingVerb, info.Name, info.ID)
	if err != nil {
		return err
	}
	return g.Do(ctx, jsguard.NATSSubscribe, "probe api "+info.ID, func(ctx context.Context) error {
		for {
			err := func() error {
				ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				defer cancel()
				m, err := nc.RequestWithContext(ctx, infoSubj, nil)
				if err != nil {
					return fmt.Errorf("discovery %s: %w", infoSubj, err)
				}
				var got micro.Info
				if err := json.Unmarshal(m.Data, &got); err != nil {
					return fmt.Errorf("discovery %s: %w", infoSubj, err)
				}
				for _, name := range want {
					if !slices.ContainsFunc(got.Endpoints, func(e micro.EndpointInfo) bool { return e.Name == name }) {
						return fmt.Errorf("discovery %s does not list endpoint %s", infoSubj, name)
					}
				}
				if _, err := nc.RequestWithContext(ctx, pingSubj, nil); err != nil {
					return fmt.Errorf("ping %s: %w", pingSubj, err)
				}
				return nil
			}()
			if last := nc.LastError(); err != nil && errors.Is(last, nats.ErrPermissionViolation) && strings.Contains(last.Error(), "$SRV.") {
				log.Warn("cannot probe the API through discovery: this NATS user may not publish to $SRV subjects; ready once the endpoints are subscribed",
					"err", last)
				return nil
			}
			if err == nil || ctx.Err() != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return err
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
}

func serviceVersion() string {
	if version == "dev" {
		return "0.0.0-dev"
	}
	return version
}

type atomicBool struct{ v atomic.Bool }

func (b *atomicBool) set() { b.v.Store(true) }
func (b *atomicBool) err(msg string) error {
	if b.v.Load() {
		return nil
	}
	return errors.New(msg)
}
