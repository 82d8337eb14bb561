package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

const serveHelp = `serve

Runs the guardian service: the request/reply API (a NATS micro service named
"guardian"), the approval expirer and notifier, the audit publisher, spool
drainer, sealer and rate alerts, and HTTP /healthz, /readyz and /metrics.

With GUARDIAN_NATS_URL empty it starts an embedded nats-server with JetStream,
storing under GUARDIAN_DATA_DIR and listening on GUARDIAN_EMBEDDED_LISTEN, so
the nats CLI and other clients can connect to it.

SIGINT or SIGTERM shut it down gracefully: it stops taking requests, finishes
those in flight (GUARDIAN_SHUTDOWN_TIMEOUT), stops the consumers, flushes
audit publishes and drains the NATS connection.

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
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err := run(ctx, cfg, log); err != nil {
		log.Error("guardian stopped", "err", err)
		return exitError{1}
	}
	return nil
}

// run wires guardian and runs it until ctx ends.
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

	ready := &readiness{}
	ready.add("nats", func() error {
		if !nc.IsConnected() {
			return errors.New(nc.Status().String())
		}
		return nil
	})
	var setupDone, consumersRunning atomicBool
	ready.add("setup", func() error { return setupDone.err("streams and buckets not ensured yet") })
	ready.add("consumers", func() error { return consumersRunning.err("consumers not running") })

	// HTTP first so that /healthz answers while the rest starts.
	var parts group
	if cfg.HTTPAddr != "" {
		parts.add("http", httpServer(cfg.HTTPAddr, ready, reg, log))
	}

	w, err := wire(ctx, cfg, g, nc, js, log, reg, m)
	if err != nil {
		return err
	}
	setupDone.set()

	consumerCtx, stopConsumers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsumers()
	for _, p := range w.parts {
		parts.add(p.name, func(context.Context) error { return p.run(consumerCtx) })
	}
	consumersRunning.set()

	svc, err := micro.AddService(nc, micro.Config{
		Name:        "guardian",
		Version:     serviceVersion(),
		Description: "guardian: approvals that expire, timeout policy and audit reports",
		Metadata:    map[string]string{"instance": cfg.InstanceID},
	})
	if err != nil {
		return fmt.Errorf("micro service: %w", err)
	}
	a := &api{g: g, approvals: w.approvals, log: log, sem: make(chan struct{}, cfg.MaxInFlight)}
	if err := a.addEndpoints(svc); err != nil {
		return err
	}
	if cfg.onReady != nil {
		cfg.onReady(url)
	}
	log.Info("guardian ready", "service", "guardian", "subjects", "guardian.v1.<tenant>.approvals.*, guardian.v1.policy.get, guardian.v1.audit.report")

	// Run until ctx ends or a part fails; then shut down in order.
	partsDone := make(chan error, 1)
	partsCtx, stopParts := context.WithCancel(ctx)
	defer stopParts()
	go func() { partsDone <- parts.run(partsCtx) }()
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "cause", context.Cause(ctx))
	case runErr = <-partsDone:
		log.Error("a part stopped", "err", runErr)
	}

	// 1. Stop taking requests; finish those in flight.
	if err := svc.Stop(); err != nil {
		log.Warn("stop micro service", "err", err)
	}
	if left := a.wait(cfg.ShutdownTimeout); left > 0 {
		log.Warn("requests still running at shutdown timeout", "count", left)
	}
	// 2. Stop consumers and the other parts.
	stopConsumers()
	stopParts()
	if runErr == nil {
		runErr = <-partsDone
	}
	// 3. Flush audit publishes, 4. drain the connection.
	fctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := w.publisher.Flush(fctx); err != nil {
		log.Warn("flush audit publishes", "err", err)
	}
	drainConn(nc, cfg.ShutdownTimeout, log)
	log.Info("guardian stopped")
	return runErr
}

func drainConn(nc *nats.Conn, d time.Duration, log *slog.Logger) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		log.Warn("drain nats connection", "err", err)
		return
	}
	select {
	case <-closed:
	case <-time.After(d):
		log.Warn("nats drain did not finish in time")
	}
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
