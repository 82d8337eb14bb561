package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// TestDeployIdentity runs the shipped account configs on a 3-node cluster
// with one guardian (GUARDIAN_IDENTITY=required, as compose runs it) and
// checks what accounts and the server's identity stamp promise:
//
//   - tenant globex, even with a user allowed to subscribe to everything
//     (">" and "_INBOX.>"), receives nothing while tenant acme requests,
//     reads and gets decisions: accounts, not permissions, isolate tenants;
//   - a Nats-Request-Info header that the client wrote, naming someone
//     else (also twice), is replaced by the server's: the record names the
//     user who connected;
//   - an operator who names someone else in decided_by is refused (403
//     identity_mismatch) and nothing changes;
//   - 2-of-3 approvals under the tenant's approver rules (account OPS, two
//     approvals), where bob approves twice, carol approves and dave denies
//     at the same moment, resolve to exactly one terminal state each, the
//     one the replies report, with two distinct approvers when approved
//     (1,000 such races; 100 with -short).
func TestDeployIdentity(t *testing.T) {
	skipShort(t)
	start := time.Now()
	lookup, pw := depPasswords()
	c := depLoadCompose(t, lookup)
	nodes := depLoadNodes(t, c)
	depRewrite(t, nodes)
	// gina may subscribe to anything in her account: only the account
	// boundary keeps acme's traffic away from her.
	for _, n := range nodes {
		for _, u := range n.opts.Users {
			if u.Username == "gina" {
				u.Permissions.Subscribe = &server.SubjectPermission{Allow: []string{">"}}
			}
		}
	}
	bin := depBuildGuardian(t)
	depStartNodes(t, nodes)
	gsvc := c.guardianServices()[0]
	env := maps.Clone(c.env(t, gsvc))
	if env["GUARDIAN_IDENTITY"] != "required" {
		t.Fatalf("compose runs %s with GUARDIAN_IDENTITY=%q, want required", gsvc, env["GUARDIAN_IDENTITY"])
	}
	maps.Copy(env, depGuardianEnvOverrides)
	urls := depClientURLs(t, env["GUARDIAN_NATS_URL"], nodes)
	env["GUARDIAN_NATS_URL"] = urls
	env["GUARDIAN_HTTP_ADDR"] = ""
	env["GUARDIAN_DATA_DIR"] = t.TempDir()
	g := depStart(t, gsvc, bin, env, "serve")
	g.waitLog(t, `"msg":"guardian ready"`, 45*time.Second)
	t.Logf("cluster and guardian ready after %s", time.Since(start).Round(time.Millisecond))

	// The tenant's approver rules, set as an administrator of guardian's
	// account would.
	adminEnv := map[string]string{"GUARDIAN_NATS_URL": urls, "GUARDIAN_NATS_USER": env["GUARDIAN_NATS_USER"], "GUARDIAN_NATS_PASSWORD": env["GUARDIAN_NATS_PASSWORD"]}
	if out, code := depRun(t, bin, adminEnv, "approvers", "set", "--tenant", "acme", "--approver", "account:OPS", "--required-approvals", "2"); code != 0 {
		t.Fatalf("approvers set: exit %d\n%s", code, out)
	}

	alice := depConnect(t, urls, "alice", pw["NATS_PASSWORD_ALICE"])
	gina := depConnect(t, urls, "gina", pw["NATS_PASSWORD_GINA"])
	ops := map[string]*depUser{}
	for _, name := range []string{"bob", "carol", "dave"} {
		ops[name] = depConnect(t, urls, name, pw["NATS_PASSWORD_"+strings.ToUpper(name)])
	}
	ctx := t.Context()

	var leaked atomic.Int64
	var firstLeak atomic.Value
	for _, subject := range []string{">", "_INBOX.>"} {
		if _, err := gina.nc.Subscribe(subject, func(m *nats.Msg) {
			leaked.Add(1)
			firstLeak.CompareAndSwap(nil, m.Subject)
		}); err != nil {
			t.Fatalf("gina subscribing to %s: %v", subject, err)
		}
	}
	if err := gina.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// A forged identity header is replaced by the server's.
	forged, _ := json.Marshal(map[string]any{"acc": "OPS", "user": "bob", "tags": []string{"approver"}})
	body, _ := json.Marshal(kvapprovals.RequestInput{ID: "forged", SessionID: "s", Timeout: kvapprovals.Duration(10 * time.Minute)})
	msg := nats.NewMsg("guardian.v1.acme.approvals.request")
	msg.Data = body
	msg.Header[kvapprovals.RequestInfoHeader] = []string{string(forged), string(forged)}
	reply, err := alice.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	var rec kvapprovals.Record
	if err := json.Unmarshal(reply.Data, &rec); err != nil || rec.Requester == nil {
		t.Fatalf("request with a forged header: %s %v", reply.Data, err)
	}
	if rec.RequestedBy != "alice" || rec.Requester.Account != "ACME" || rec.Requester.User != "alice" || len(rec.Requester.Tags) != 0 {
		t.Fatalf("request with a forged header naming OPS/bob: recorded %q %+v, want alice of ACME", rec.RequestedBy, rec.Requester)
	}

	// Requests without the server's stamp are refused: from guardian's own
	// account (no import, so no stamp), with or without a header naming
	// that account.
	admin := depConnect(t, urls, env["GUARDIAN_NATS_USER"], env["GUARDIAN_NATS_PASSWORD"])
	if _, err := admin.client().Request(ctx, "acme", kvapprovals.RequestInput{ID: "unstamped", SessionID: "s", RequestedBy: "alice"}); !errors.Is(err, kvapprovals.ErrUnauthenticated) {
		t.Fatalf("request from guardian's account: %v, want ErrUnauthenticated", err)
	}
	own := nats.NewMsg("guardian.v1.acme.approvals.request")
	own.Data = []byte(`{"id":"unstamped","session_id":"s"}`)
	own.Header[kvapprovals.RequestInfoHeader] = []string{`{"acc":"GUARDIAN","user":"bob"}`}
	if reply, err := admin.nc.RequestMsgWithContext(ctx, own); err != nil || reply.Header.Get("Nats-Service-Error-Code") != "401" {
		t.Fatalf("request with a header naming guardian's account: %v %v %s", err, reply.Header, reply.Data)
	}
	if _, err := alice.client().Get(ctx, "acme", "unstamped"); !errors.Is(err, kvapprovals.ErrNotFound) {
		t.Fatalf("a refused request was written: %v", err)
	}
	// An audit report records who sent it.
	now := time.Now().UTC()
	eventID, err := alice.client().Report(ctx, jsguard.Event{Code: "TIMEOUT_KV_GET", Operation: "kv get orders/o1", TimeoutSeconds: 1, ElapsedSeconds: 1, TenantID: "acme", Timestamp: now, StartedAt: now.Add(-time.Second)})
	if err != nil {
		t.Fatalf("alice's audit report: %v", err)
	}

	// An operator naming someone else is refused; nothing changes.
	if _, err := ops["bob"].client().Approve(ctx, "acme", kvapprovals.DecisionInput{ID: "forged", DecidedBy: "carol"}); !errors.Is(err, kvapprovals.ErrIdentityMismatch) {
		t.Fatalf("bob approving as carol: %v, want ErrIdentityMismatch", err)
	}
	if r, err := alice.client().Get(ctx, "acme", "forged"); err != nil || r.Revision != rec.Revision || len(r.Approvals) != 0 {
		t.Fatalf("after the refused approval: %+v %v", r, err)
	}

	// 2-of-3 races.
	n := 1000
	if testing.Short() {
		n = 100
	}
	type outcome struct {
		claims  int // replies that reported a terminal state
		claimed kvapprovals.Status
		errs    []error
	}
	outcomes := make([]outcome, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	raceStart := time.Now()
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				id := fmt.Sprintf("race%04d", i)
				if _, err := alice.client().Request(ctx, "acme", kvapprovals.RequestInput{ID: id, SessionID: "s", Timeout: kvapprovals.Duration(10 * time.Minute)}); err != nil {
					outcomes[i].errs = append(outcomes[i].errs, fmt.Errorf("request: %w", err))
					continue
				}
				var mu sync.Mutex
				var calls sync.WaitGroup
				for _, call := range []struct {
					who  string
					deny bool
				}{{"bob", false}, {"bob", false}, {"carol", false}, {"dave", true}} {
					calls.Go(func() {
						cl := ops[call.who].client()
						var r kvapprovals.Record
						var err error
						if call.deny {
							r, err = cl.Deny(ctx, "acme", kvapprovals.DecisionInput{ID: id})
						} else {
							r, err = cl.Approve(ctx, "acme", kvapprovals.DecisionInput{ID: id})
						}
						mu.Lock()
						defer mu.Unlock()
						switch {
						case err == nil && r.Status.Terminal():
							outcomes[i].claims++
							outcomes[i].claimed = r.Status
						case err != nil && !errors.Is(err, kvapprovals.ErrAlreadyDecided):
							outcomes[i].errs = append(outcomes[i].errs, fmt.Errorf("%s: %w", call.who, err))
						}
					})
				}
				calls.Wait()
			}
		})
	}
	wg.Wait()
	raceTook := time.Since(raceStart)

	// Every revision, read as guardian's user (operators have no JetStream).
	l := readLedger(t, admin.js)
	var reported bool
	readStream(t, admin.js, auditStream, auditPrefix+"acme.TIMEOUT_KV_GET", func(m jetstream.Msg) {
		var ev jsguard.Event
		if json.Unmarshal(m.Data(), &ev) == nil && ev.EventID == eventID {
			reported = ev.AdditionalContext["reporter_account"] == "ACME" && ev.AdditionalContext["reporter_user"] == "alice"
		}
	})
	if !reported {
		t.Errorf("audit report %s not stored with its reporter ACME/alice", eventID)
	}
	var approved, denied, bad int
	for i := range n {
		id := fmt.Sprintf("race%04d", i)
		o := outcomes[i]
		revs := l.revs["acme."+id]
		terminal := 0
		var final kvapprovals.Record
		for _, r := range revs {
			if r.Status.Terminal() {
				terminal++
				final = r
			}
		}
		fail := func(format string, args ...any) {
			bad++
			if bad <= 5 {
				t.Errorf("%s: "+format, append([]any{id}, args...)...)
			}
		}
		switch {
		case len(o.errs) > 0:
			fail("errors %v", o.errs)
		case terminal != 1:
			fail("%d terminal revisions, want 1", terminal)
		case o.claims != 1 || o.claimed != final.Status:
			fail("%d replies reported a terminal state (%s), final %s; want exactly one, agreeing", o.claims, o.claimed, final.Status)
		case final.Status == kvapprovals.StatusApproved:
			approved++
			if len(final.Approvals) != 2 || final.Approvals[0].Identity.User == final.Approvals[1].Identity.User ||
				final.Approvals[0].Identity.Account != "OPS" || final.Approvals[1].Identity.Account != "OPS" {
				fail("approved with %+v", final.Approvals)
			}
		case final.Status == kvapprovals.StatusDenied:
			denied++
			if final.Decider == nil || final.Decider.User != "dave" {
				fail("denied by %+v, want dave", final.Decider)
			}
		default:
			fail("ended %s", final.Status)
		}
	}
	t.Logf("%d 2-of-3 races in %s (%.0f/s): approved %d, denied %d, wrong %d", n, raceTook.Round(time.Millisecond), float64(n)/raceTook.Seconds(), approved, denied, bad)

	// Nothing of acme's reached globex.
	if err := gina.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if k := leaked.Load(); k != 0 {
		t.Errorf("gina (globex) received %d messages while acme worked, the first on %v", k, firstLeak.Load())
	}
	// Her subscriptions do work: her own request and its reply reach them.
	if _, err := gina.client().Get(ctx, "globex", "nope"); !errors.Is(err, kvapprovals.ErrNotFound) {
		t.Fatalf("gina's get: %v", err)
	}
	depEventually(t, 5*time.Second, "gina's own request on her subscriptions", func() bool { return leaked.Load() >= 2 })
	for _, u := range append([]*depUser{alice, gina}, ops["bob"], ops["carol"], ops["dave"]) {
		u.expectNoViolations(t)
	}
	if code := g.stop(20 * time.Second); code != 0 {
		t.Errorf("guardian exit %d after SIGTERM", code)
	}
	depLogHasNoPermissionErrors(t, g)
}
