package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// readiness collects the checks /readyz reports.
type readiness struct {
	mu     sync.Mutex
	checks map[string]func() error
}

func (r *readiness) add(name string, check func() error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.checks == nil {
		r.checks = map[string]func() error{}
	}
	r.checks[name] = check
}

// failing returns the failing checks, name: error.
func (r *readiness) failing() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	if len(r.checks) == 0 {
		return []string{"starting"}
	}
	for name, c := range r.checks {
		if err := c(); err != nil {
			out = append(out, name+": "+err.Error())
		}
	}
	return out
}

// httpServer serves /healthz, /readyz and /metrics on addr until ctx ends.
func httpServer(addr string, ready *readiness, reg *prometheus.Registry, log *slog.Logger) func(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if bad := ready.failing(); len(bad) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, b := range bad {
				fmt.Fprintln(w, "not ready:", b)
			}
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return func(ctx context.Context) error {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("GUARDIAN_HTTP_ADDR=%s: %w", addr, err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		log.Info("http listening", "addr", l.Addr().String(), "paths", "/healthz /readyz /metrics")
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(l) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}

// newRegistry returns a registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
