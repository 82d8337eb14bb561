package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

const demoHelp = `demo [flags]

A five-minute tour. It requests three approvals for tenant "demo", approves
one, denies one and lets the third run through its warning into expiry,
printing every lifecycle event and audit entry as it arrives.

It uses the guardian at --server when one answers there; otherwise, unless
--server or GUARDIAN_NATS_URL was given, it starts its own guardian with an
embedded NATS server in a temporary directory, and removes it at the end.`

func demoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlags("demo", demoHelp, stderr)
	cf.register(fs)
	expireAfter := fs.Duration("expire-after", 6*time.Second, "timeout of the approval left to expire")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	serverSet := false
	fs.Visit(func(f *flag.Flag) { serverSet = serverSet || f.Name == "server" })

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := cf.dial(ctx)
	if err == nil {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = s.client.Policy(pctx)
		pcancel()
		if err != nil {
			s.close()
		}
	}
	var own sync.WaitGroup
	defer own.Wait()
	if err != nil {
		if serverSet || os.Getenv("GUARDIAN_NATS_URL") != "" {
			return fmt.Errorf("no guardian answers at %s: %w", cf.server, err)
		}
		fmt.Fprintf(stdout, "No guardian at %s; starting one of our own (embedded NATS, temporary data).\n", cf.server)
		url, stop, err := startDemoGuardian(ctx, &own)
		if err != nil {
			return err
		}
		defer stop()
		cf.server = url
		if s, err = cf.dial(ctx); err != nil {
			return err
		}
	}
	defer s.close()
	return runDemo(ctx, s, *expireAfter, stdout)
}

// startDemoGuardian runs guardian in process with demo settings: short
// warning and grace, a random port, a temporary data directory.
func startDemoGuardian(ctx context.Context, wg *sync.WaitGroup) (string, func(), error) {
	dir, err := os.MkdirTemp("", "guardian-demo-")
	if err != nil {
		return "", nil, err
	}
	for k, v := range map[string]string{
		"GUARDIAN_DATA_DIR": dir, "GUARDIAN_EMBEDDED": "true", "GUARDIAN_EMBEDDED_LISTEN": "127.0.0.1:0",
		"GUARDIAN_HTTP_ADDR": "", "GUARDIAN_APPROVAL_WARNING_BEFORE": "3s", "GUARDIAN_APPROVAL_GRACE_PERIOD": "1s",
	} {
		os.Setenv(k, v)
	}
	cfg, err := loadConfig()
	if err != nil {
		return "", nil, err
	}
	ready := make(chan string, 1)
	cfg.onReady = func(url string) { ready <- url }
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	errc := make(chan error, 1)
	wg.Go(func() { errc <- run(rctx, cfg, newLogger(io.Discard, "error", "json")) })
	stop := func() { cancel(); wg.Wait(); os.RemoveAll(dir) }
	select {
	case url := <-ready:
		return url, stop, nil
	case err := <-errc:
		stop()
		return "", nil, fmt.Errorf("start demo guardian: %w", err)
	case <-time.After(60 * time.Second):
		stop()
		return "", nil, errors.New("start demo guardian: not ready within 60s")
	}
}

func runDemo(ctx context.Context, s *session, expireAfter time.Duration, w io.Writer) error {
	const tenant = "demo"
	start := time.Now()
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	run := nuid.Next()[16:]
	ids := map[string]string{"approve": "deploy-" + run + "-a", "deny": "deploy-" + run + "-b", "expire": "deploy-" + run + "-c"}
	expired := make(chan struct{})
	audited := make(chan struct{})
	var once1, once2 sync.Once

	// Lifecycle events and audit entries, as they arrive.
	evSub, err := s.g.Subscribe(ctx, s.nc, "guardian.v1.events."+tenant+".>", func(m *nats.Msg) {
		var ev struct {
			Kind   string             `json:"kind"`
			Record kvapprovals.Record `json:"record"`
		}
		_ = json.Unmarshal(m.Data, &ev)
		kind := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		if !strings.Contains(ev.Record.ID, run) {
			return
		}
		say("event  %-9s %s (status %s)", kind, ev.Record.ID, ev.Record.Status)
		if kind == "expired" && ev.Record.ID == ids["expire"] {
			once1.Do(func() { close(expired) })
		}
	})
	if err != nil {
		return err
	}
	defer evSub.Unsubscribe()
	auSub, err := s.g.Subscribe(ctx, s.nc, "guardian.v1.audit."+tenant+".>", func(m *nats.Msg) {
		var ev jsguard.Event
		if json.Unmarshal(m.Data, &ev) != nil || !strings.Contains(ev.Operation+fmt.Sprint(ev.AdditionalContext), run) {
			return
		}
		say("audit  %s %q event_id=%s", ev.Code, ev.Operation, ev.EventID)
		if ev.Code == jsguard.ApprovalExpired.Code() {
			once2.Do(func() { close(audited) }) // the expiry's, not a decision's
		}
	})
	if err != nil {
		return err
	}
	defer auSub.Unsubscribe()

	req := func(key string, timeout time.Duration) error {
		r, err := s.client.Request(ctx, tenant, kvapprovals.RequestInput{
			ID: ids[key], SessionID: "demo-session", RequestedBy: "alice",
			Details: json.RawMessage(`{"action":"deploy","service":"payments"}`), Timeout: kvapprovals.Duration(timeout),
		})
		if err != nil {
			return fmt.Errorf("request %s: %w", ids[key], err)
		}
		say("request %s: %s, expires at %s", r.ID, r.Status, r.ExpiresAt.Format(time.TimeOnly))
		return nil
	}
	for _, k := range []string{"approve", "deny"} {
		if err := req(k, time.Minute); err != nil {
			return err
		}
	}
	if err := req("expire", expireAfter); err != nil {
		return err
	}
	r, err := s.client.Approve(ctx, tenant, kvapprovals.DecisionInput{ID: ids["approve"], DecidedBy: "bob", Reason: "change ticket 42"})
	if err != nil {
		return fmt.Errorf("approve: %w", err)
	}
	say("approve %s by %s: %s", r.ID, r.DecidedBy, r.Status)
	r, err = s.client.Deny(ctx, tenant, kvapprovals.DecisionInput{ID: ids["deny"], DecidedBy: "bob", Reason: "outside the change window"})
	if err != nil {
		return fmt.Errorf("deny: %w", err)
	}
	say("deny    %s by %s: %s", r.ID, r.DecidedBy, r.Status)
	_, err = s.client.Approve(ctx, tenant, kvapprovals.DecisionInput{ID: ids["approve"], DecidedBy: "carol"})
	say("approve %s again: refused: %v", ids["approve"], err)
	say("waiting for %s to expire (timeout %s, plus the grace period)...", ids["expire"], expireAfter)

	wait := time.After(expireAfter + 2*time.Minute)
	for _, ch := range []chan struct{}{expired, audited} {
		select {
		case <-ch:
		case <-wait:
			return errors.New("the approval did not expire in time: is the expirer running?")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	_, err = s.client.Approve(ctx, tenant, kvapprovals.DecisionInput{ID: ids["expire"], DecidedBy: "bob"})
	say("approve %s after expiry: refused: %v", ids["expire"], err)
	fmt.Fprintln(w, "\nDone. Try: guardian approval list --tenant demo   and   guardian audit tail --since 10m --follow=false")
	return nil
}
