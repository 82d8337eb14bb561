package auditstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
)

// permServer starts a server with two users: "admin", who may do anything,
// and "runtime", who may not update, purge or delete GUARDIAN_AUDIT nor
// delete its messages, like guardian's user in deploy/nats/accounts.conf.
// It returns both users' connections.
func permServer(t *testing.T) (admin, runtime *nats.Conn, adminJS, runtimeJS jetstream.JetStream) {
	t.Helper()
	opts := natstest.Options(t.TempDir())
	opts.Users = []*server.User{
		{Username: "admin", Password: "admin-pw"},
		{Username: "runtime", Password: "runtime-pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{
				Allow: []string{">"},
				Deny: []string{
					"$JS.API.STREAM.UPDATE.GUARDIAN_AUDIT",
					"$JS.API.STREAM.PURGE.GUARDIAN_AUDIT",
					"$JS.API.STREAM.DELETE.GUARDIAN_AUDIT",
					"$JS.API.STREAM.MSG.DELETE.GUARDIAN_AUDIT",
				},
			},
		}},
	}
	s := natstest.Start(t, opts)
	admin, adminJS = natstest.Connect(t, s, nats.UserInfo("admin", "admin-pw"))
	// The handler only keeps the test's output quiet: Ensure sees a
	// violation through the connection's last error, whatever the handler.
	quietErrs := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	runtime, runtimeJS = natstest.Connect(t, s, nats.UserInfo("runtime", "runtime-pw"), quietErrs)
	return admin, runtime, adminJS, runtimeJS
}

// updates counts the STREAM.UPDATE requests for GUARDIAN_AUDIT that reach
// the server from permitted users, as seen by a subscriber in the account.
func updates(t *testing.T, nc *nats.Conn) func() int {
	t.Helper()
	sub, err := nc.SubscribeSync("$JS.API.STREAM.UPDATE.GUARDIAN_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return func() int {
		t.Helper()
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		n, _, err := sub.Pending()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
}

// bufLogger returns a logger writing text to a buffer safe for concurrent
// use.
func bufLogger() (Option, func() string) {
	var mu sync.Mutex
	var b bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return b.Write(p) })
	return WithLogger(slog.New(slog.NewTextHandler(w, nil))), func() string { mu.Lock(); defer mu.Unlock(); return b.String() }
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// streamInfo returns the stored config of GUARDIAN_AUDIT.
func streamInfo(t *testing.T, js jetstream.JetStream) jetstream.StreamConfig {
	t.Helper()
	s, err := js.Stream(t.Context(), "GUARDIAN_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().Config
}

// TestEnsureExistingMatchSendsNoUpdate: on a stream that already keeps what
// the Config asks, Ensure sends no STREAM.UPDATE, so a user denied it
// passes, without a permissions violation.
func TestEnsureExistingMatchSendsNoUpdate(t *testing.T) {
	admin, runtime, adminJS, runtimeJS := permServer(t)
	cfg := DefaultConfig()
	if _, err := Ensure(t.Context(), nil, adminJS, cfg, quiet); err != nil {
		t.Fatalf("Ensure as admin (create): %v", err)
	}
	n := updates(t, admin)
	for _, c := range []struct {
		who string
		js  jetstream.JetStream
	}{{"admin", adminJS}, {"runtime", runtimeJS}} {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		st, err := Ensure(ctx, nil, c.js, cfg, quiet)
		cancel()
		if err != nil {
			t.Fatalf("Ensure as %s on a matching stream: %v", c.who, err)
		}
		if got := st.CachedInfo().Config; got.MaxAge != cfg.MaxAge || !got.DenyPurge {
			t.Errorf("Ensure as %s returned config %+v", c.who, got)
		}
	}
	if got := n(); got != 0 {
		t.Errorf("Ensure sent %d STREAM.UPDATE requests for a matching stream, want 0", got)
	}
	if err := runtime.LastError(); err != nil {
		t.Errorf("runtime user's connection: %v, want no error", err)
	}
}

// TestEnsureShortenedMaxAge: a stored MaxAge shorter than the Config's is
// raised when the user may update the stream, and otherwise stops Ensure
// at once with an error naming the setting, both values and what to do.
func TestEnsureShortenedMaxAge(t *testing.T) {
	_, _, adminJS, runtimeJS := permServer(t)
	short := DefaultConfig()
	short.MaxAge = time.Hour
	if _, err := Ensure(t.Context(), nil, adminJS, short, quiet); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()

	start := time.Now()
	_, err := Ensure(t.Context(), nil, runtimeJS, cfg, quiet)
	if !errors.Is(err, ErrIncompatibleStream) || !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("Ensure as runtime = %v, want ErrIncompatibleStream and nats.ErrPermissionViolation", err)
	}
	// Well below the 15s budget of the update: the violation ends it.
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Ensure took %s to report the refusal", d)
	}
	for _, want := range []string{"GUARDIAN_AUDIT", "MaxAge is 1h0m0s, want 2160h0m0s", "STREAM.UPDATE.GUARDIAN_AUDIT", "identity that provisions it", "configuration"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if got := streamInfo(t, adminJS).MaxAge; got != time.Hour {
		t.Errorf("MaxAge %s after the refused update, want 1h", got)
	}
	// The same connection, asked again, is refused again (no stale state).
	if _, err := Ensure(t.Context(), nil, runtimeJS, cfg, quiet); !errors.Is(err, nats.ErrPermissionViolation) {
		t.Errorf("second Ensure as runtime = %v, want a permissions violation", err)
	}

	// The configuration may accept the stored value...
	if _, err := Ensure(t.Context(), nil, runtimeJS, short, quiet); err != nil {
		t.Errorf("Ensure as runtime with MaxAge 1h: %v", err)
	}
	// ...or the provisioning identity raises it.
	st, err := Ensure(t.Context(), nil, adminJS, cfg, quiet)
	if err != nil {
		t.Fatalf("Ensure as admin: %v", err)
	}
	if got := st.CachedInfo().Config.MaxAge; got != cfg.MaxAge {
		t.Errorf("MaxAge %s after Ensure as admin, want %s", got, cfg.MaxAge)
	}
	if _, err := Ensure(t.Context(), nil, runtimeJS, cfg, quiet); err != nil {
		t.Errorf("Ensure as runtime after the fix: %v", err)
	}
}

// TestEnsureKeepsLongerRetention: a stored MaxAge, Duplicates window and
// replica count above the Config's stay as they are, logged, with no
// update sent.
func TestEnsureKeepsLongerRetention(t *testing.T) {
	admin, _, adminJS, runtimeJS := permServer(t)
	long := DefaultConfig()
	long.MaxAge, long.Duplicates = 180*24*time.Hour, 10*time.Minute
	if _, err := Ensure(t.Context(), nil, adminJS, long, quiet); err != nil {
		t.Fatal(err)
	}
	n := updates(t, admin)
	for _, cfg := range []Config{DefaultConfig(), func() Config { c := DefaultConfig(); c.MaxAge = 0; return c }()} {
		logOpt, logs := bufLogger()
		_, err := Ensure(t.Context(), nil, runtimeJS, cfg, logOpt)
		if cfg.MaxAge == 0 {
			// forever is longer than 180 days: raising is refused
			if !errors.Is(err, ErrIncompatibleStream) || !strings.Contains(err.Error(), "MaxAge is 4320h0m0s, want 0 (forever)") {
				t.Errorf("Ensure with MaxAge 0 = %v, want ErrIncompatibleStream naming MaxAge", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Ensure with a shorter MaxAge: %v", err)
		}
		for _, want := range []string{"setting=MaxAge stored=4320h0m0s configured=2160h0m0s", "setting=Duplicates stored=10m0s configured=2m0s"} {
			if !strings.Contains(logs(), want) {
				t.Errorf("log lacks %q:\n%s", want, logs())
			}
		}
	}
	if got := n(); got != 0 {
		t.Errorf("%d STREAM.UPDATE requests, want 0", got)
	}
	if got := streamInfo(t, adminJS); got.MaxAge != long.MaxAge || got.Duplicates != long.Duplicates {
		t.Errorf("stored MaxAge %s, Duplicates %s; want %s, %s", got.MaxAge, got.Duplicates, long.MaxAge, long.Duplicates)
	}
}

// TestEnsureRaisesWeakerRetention: every stored setting that removes events
// early is raised by one update when allowed, names itself when refused,
// and settings guardian does not manage stay as stored.
func TestEnsureRaisesWeakerRetention(t *testing.T) {
	admin, _, adminJS, runtimeJS := permServer(t)
	cfg := DefaultConfig()
	weak := streamConfig(cfg)
	weak.Description = "kept by the operator"
	weak.Compression = jetstream.S2Compression
	weak.MaxAge = time.Hour
	weak.Duplicates = time.Second
	weak.MaxMsgs, weak.MaxBytes, weak.MaxMsgsPerSubject, weak.MaxMsgSize = 10, 1<<20, 5, 1024
	weak.Discard = jetstream.DiscardNew
	weak.DenyDelete, weak.DenyPurge, weak.AllowRollup = false, false, true
	if _, err := adminJS.CreateStream(t.Context(), weak); err != nil {
		t.Fatal(err)
	}
	_, err := Ensure(t.Context(), nil, runtimeJS, cfg, quiet)
	if !errors.Is(err, ErrIncompatibleStream) || !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("Ensure as runtime = %v, want ErrIncompatibleStream and a permissions violation", err)
	}
	for _, want := range []string{
		"MaxAge is 1h0m0s, want 2160h0m0s", "Duplicates is 1s, want 2m0s",
		"MaxMsgs is 10, want -1 (unlimited)", "MaxBytes is 1048576, want -1 (unlimited)",
		"MaxMsgsPerSubject is 5, want -1 (unlimited)", "MaxMsgSize is 1024, want -1 (unlimited)",
		"Discard is DiscardNew, want DiscardOld", "DenyDelete is false, want true", "DenyPurge is false, want true", "AllowRollup is true, want false",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if got := streamInfo(t, adminJS); got.MaxAge != time.Hour || got.DenyPurge {
		t.Errorf("stream changed by a refused update: %+v", got)
	}

	n := updates(t, admin)
	st, err := Ensure(t.Context(), nil, adminJS, cfg, quiet)
	if err != nil {
		t.Fatalf("Ensure as admin: %v", err)
	}
	got := st.CachedInfo().Config
	if got.MaxAge != cfg.MaxAge || got.Duplicates != cfg.Duplicates || got.MaxMsgs != -1 || got.MaxBytes != -1 ||
		got.MaxMsgsPerSubject != -1 || got.MaxMsgSize != -1 || got.Discard != jetstream.DiscardOld ||
		!got.DenyDelete || !got.DenyPurge || got.AllowRollup {
		t.Errorf("after Ensure as admin: %+v", got)
	}
	if got.Description != "kept by the operator" || got.Compression != jetstream.S2Compression {
		t.Errorf("unmanaged settings changed: description %q, compression %v", got.Description, got.Compression)
	}
	if u := n(); u != 1 {
		t.Errorf("%d STREAM.UPDATE requests, want 1", u)
	}
	if _, err := Ensure(t.Context(), nil, runtimeJS, cfg, quiet); err != nil {
		t.Errorf("Ensure as runtime after the fix: %v", err)
	}
}

// TestEnsureUnfixableRetention: a stream that allows per-message TTLs
// cannot be updated to forbid them; Ensure says so instead of starting.
func TestEnsureUnfixableRetention(t *testing.T) {
	_, _, adminJS, _ := permServer(t)
	cfg := DefaultConfig()
	ttl := streamConfig(cfg)
	ttl.AllowMsgTTL = true
	if _, err := adminJS.CreateStream(t.Context(), ttl); err != nil {
		t.Fatal(err)
	}
	_, err := Ensure(t.Context(), nil, adminJS, cfg, quiet)
	if _, ok := errors.AsType[*jetstream.APIError](err); !ok || !errors.Is(err, ErrIncompatibleStream) {
		t.Fatalf("Ensure = %v, want ErrIncompatibleStream wrapping the server's *jetstream.APIError", err)
	}
	if !strings.Contains(err.Error(), "AllowMsgTTL is true, want false") || !strings.Contains(err.Error(), "refused") {
		t.Errorf("error %q does not name AllowMsgTTL and the refusal", err)
	}
}

// TestEnsureConcurrentCreate: processes that start together with different
// MaxAges all start, whoever creates the stream first, and the stream ends
// with the longest MaxAge (the loser of a create sees the name in use and
// checks the stream it finds).
func TestEnsureConcurrentCreate(t *testing.T) {
	s := natstest.Run(t)
	_, js := natstest.Connect(t, s)
	for i := range 20 {
		short, long := DefaultConfig(), DefaultConfig()
		short.Stream, long.Stream = fmt.Sprintf("AUDIT_%d", i), fmt.Sprintf("AUDIT_%d", i)
		short.SubjectPrefix, long.SubjectPrefix = fmt.Sprintf("a%d", i), fmt.Sprintf("a%d", i)
		short.MaxAge = time.Hour
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, c := range []Config{short, long} {
			wg.Go(func() { _, errs[j] = Ensure(t.Context(), nil, js, c, quiet) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		st, err := js.Stream(t.Context(), short.Stream)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.CachedInfo().Config.MaxAge; got != long.MaxAge {
			t.Fatalf("round %d: MaxAge %s, want the longer %s", i, got, long.MaxAge)
		}
	}
}
