package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestReadyMeansAnswering: /readyz stays 503, naming the API, while the
// consumers run but the API service is not added yet; once it is 200,
// discovery lists every endpoint and a request is answered.
func TestReadyMeansAnswering(t *testing.T) {
	natsAddr, httpAddr := freeAddr(t), freeAddr(t)
	for k, v := range map[string]string{
		"GUARDIAN_DATA_DIR": t.TempDir(), "GUARDIAN_EMBEDDED": "true", "GUARDIAN_EMBEDDED_LISTEN": natsAddr,
		"GUARDIAN_HTTP_ADDR": httpAddr, "GUARDIAN_SHUTDOWN_TIMEOUT": "2s",
	} {
		t.Setenv(k, v)
	}
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	reached, gate := make(chan struct{}), make(chan struct{})
	cfg.beforeAPI = func() { close(reached); <-gate }
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		t.Fatal("the start did not reach the API")
	}
	// The consumers run; the API is not added: not ready, and it says why.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := readyz()
		if code == http.StatusOK {
			close(gate)
			t.Fatalf("/readyz is 200 before the API service exists: %q", body)
		}
		if !strings.Contains(body, "consumers") {
			if !strings.Contains(body, "api: the API is not answering yet") {
				close(gate)
				t.Fatalf("/readyz %d %q: want the API named", code, body)
			}
			break
		}
		if time.Now().After(deadline) {
			close(gate)
			t.Fatalf("consumers not ready: %d %q", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(gate)

	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if code, _ := readyz(); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Ready: discovery lists the service with every endpoint, and it answers.
	m, err := nc.Request("$SRV.INFO.guardian", nil, 2*time.Second)
	if err != nil {
		t.Fatalf("$SRV.INFO.guardian right after ready: %v", err)
	}
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil || len(info.Endpoints) < 8 {
		t.Fatalf("discovery right after ready: %v, %+v", err, info)
	}
	if m, err := nc.Request("guardian.v1.policy.get", []byte("{}"), 2*time.Second); err != nil || m.Header.Get(micro.ErrorHeader) != "" {
		t.Fatalf("policy.get right after ready: %v, %v", err, m)
	}
}
