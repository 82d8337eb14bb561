package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// startEmbedded starts an in-process nats-server with JetStream storing under
// the data directory, logging through log. It returns the server, ready for
// connections, or an error that names the variable to change.
func startEmbedded(cfg *config, log *slog.Logger) (*server.Server, error) {
	host, portStr, _ := net.SplitHostPort(cfg.EmbeddedListen)
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("GUARDIAN_EMBEDDED_LISTEN=%s: port must be 0-65535", cfg.EmbeddedListen)
	}
	store := filepath.Join(cfg.DataDir, "nats")
	if err := os.MkdirAll(store, 0o750); err != nil {
		return nil, fmt.Errorf("GUARDIAN_DATA_DIR=%s: %w", cfg.DataDir, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	// Probe the port first: nats-server would only log the failure.
	l, err := net.Listen("tcp", cfg.EmbeddedListen)
	if err != nil {
		return nil, fmt.Errorf("GUARDIAN_EMBEDDED_LISTEN=%s: %w (is another guardian or nats-server running? set another address, or GUARDIAN_NATS_URL to use it)", cfg.EmbeddedListen, err)
	}
	l.Close()
	opts := &server.Options{
		ServerName: "guardian-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   store,
		NoSigs:     true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	s.SetLoggerV2(natsLogger{log.With("component", "nats-server")}, cfg.LogLevel == "debug", false, false)
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, errors.New("embedded nats-server: not ready within 30s")
	}
	return s, nil
}

// natsOptions returns the client options for the configured credentials.
func natsOptions(cfg *config, name string, log *slog.Logger) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Error("nats async error", "subject", subj, "err", err)
		}),
	}
	if cfg.NatsUser != "" {
		opts = append(opts, nats.UserInfo(cfg.NatsUser, cfg.NatsPassword))
	}
	if cfg.NatsCreds != "" {
		if _, err := os.Stat(cfg.NatsCreds); err != nil {
			return nil, fmt.Errorf("GUARDIAN_NATS_CREDS=%s: %w", cfg.NatsCreds, err)
		}
		opts = append(opts, nats.UserCredentials(cfg.NatsCreds))
	}
	if cfg.NatsNkeySeed != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NatsNkeySeed)
		if err != nil {
			return nil, fmt.Errorf("GUARDIAN_NATS_NKEY_SEED=%s: %w", cfg.NatsNkeySeed, err)
		}
		opts = append(opts, o)
	}
	if cfg.TLSCa != "" {
		if _, err := os.Stat(cfg.TLSCa); err != nil {
			return nil, fmt.Errorf("GUARDIAN_TLS_CA=%s: %w", cfg.TLSCa, err)
		}
		opts = append(opts, nats.RootCAs(cfg.TLSCa))
	}
	if cfg.TLSCert != "" {
		for v, p := range map[string]string{"GUARDIAN_TLS_CERT": cfg.TLSCert, "GUARDIAN_TLS_KEY": cfg.TLSKey} {
			if _, err := os.Stat(p); err != nil {
				return nil, fmt.Errorf("%s=%s: %w", v, p, err)
			}
		}
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	return opts, nil
}

// connect dials NATS under jsguard's NATS_CONNECT budget.
func connect(ctx context.Context, g *jsguard.Guard, url string, opts []nats.Option) (*nats.Conn, error) {
	nc, err := g.Connect(ctx, url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redactURL(url), err)
	}
	return nc, nil
}
