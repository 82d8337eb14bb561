package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// readiness collects the checks /readyz reports. It is safe for concurrent
// use.
type readiness struct {
	mu     sync.Mutex
	checks map[string]func() error
}

// add sets the check called name, replacing one of the same name.
func (r *readiness) add(name string, check func() error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.checks == nil {
		r.checks = map[string]func() error{}
	}
	r.checks[name] = check
}

// failing returns the failing checks as "name: error", sorted by name.
func (r *readiness) failing() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.checks) == 0 {
		return []string{"starting"}
	}
	var out []string
	for _, name := range slices.Sorted(maps.Keys(r.checks)) {
		if err := r.checks[name](); err != nil {
			out = append(out, name+": "+err.Error())
		}
	}
	return out
}

// serveHTTP serves /healthz, /readyz, /metrics and, when ui is not nil, the
// console under /ui/ on l until ctx ends, then
// shuts down, giving requests in progress up to 5s. It returns the server's
// error, or nil when ctx ended.
func serveHTTP(ctx context.Context, l net.Listener, ready *readiness, reg *prometheus.Registry, ui http.Handler) error {
	mux := http.NewServeMux()
	if ui != nil {
		mux.Handle("/ui/", ui)
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusSeeOther) })
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if bad := ready.failing(); len(bad) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, b := range bad {
				fmt.Fprintln(w, "not ready:", b)
			}
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, Timeout: 10 * time.Second}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
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

// newRegistry returns a registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
