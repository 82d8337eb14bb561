package kvapprovals

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

func TestIdentityFromRequestInfo(t *testing.T) {
	for _, tc := range []struct {
		name, header, own string
		want              Identity
		err               string
	}{
		{"shared import", `{"acc":"ACME","user":"alice","name_tag":"Alice","tags":["approver"],"rtt":1000}`, "GUARDIAN",
			Identity{Source: SourceNATS, Account: "ACME", User: "alice", Name: "Alice", Tags: []string{"approver"}}, ""},
		{"connection name is not the user's name", `{"acc":"OPS","user":"UABC","name":"carol"}`, "GUARDIAN",
			Identity{Source: SourceNATS, Account: "OPS", User: "UABC"}, ""},
		{"token auth", `{"acc":"OPS","user":"[REDACTED]"}`, "GUARDIAN", Identity{}, "token"},
		{"own account: written by a client", `{"acc":"GUARDIAN","user":"mallory"}`, "GUARDIAN", Identity{}, "own account"},
		{"import without share", `{"acc":"ACME","rtt":1000}`, "GUARDIAN", Identity{}, "share: true"},
		{"no account", `{"user":"alice"}`, "GUARDIAN", Identity{}, "no account"},
		{"not JSON", `alice`, "GUARDIAN", Identity{}, "invalid character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := IdentityFromRequestInfo(tc.header, tc.own)
			if tc.err != "" {
				if !errors.Is(err, ErrIdentityHeader) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want ErrIdentityHeader mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tc.want.String() || got.Name != tc.want.Name || fmt.Sprint(got.Tags) != fmt.Sprint(tc.want.Tags) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func natsID(acc, user string, tags ...string) Identity {
	return Identity{Source: SourceNATS, Account: acc, User: user, Tags: tags}
}

// TestIdentityActor: with an authenticated identity in the context the
// actor is that identity, a body naming someone else is refused and
// changes nothing; in required mode a call without one is refused; the
// self-approval check compares identities.
func TestIdentityActor(t *testing.T) {
	e := newEnv(t, nil)
	ctx := t.Context()
	alice := WithIdentity(ctx, natsID("ACME", "alice"))

	in := req("i1")
	in.RequestedBy = ""
	r, err := e.svc.Request(alice, "acme", in)
	if err != nil {
		t.Fatal(err)
	}
	if r.RequestedBy != "alice" || r.Requester == nil || r.Requester.Account != "ACME" || r.Requester.Source != SourceNATS {
		t.Fatalf("requester %q %+v, want alice of ACME from nats", r.RequestedBy, r.Requester)
	}
	stored := e.get("acme", "i1")
	if stored.Requester == nil || stored.Requester.Account != "ACME" {
		t.Errorf("stored requester %+v", stored.Requester)
	}

	// A body that names someone else.
	in = req("i2")
	in.RequestedBy = "bob"
	if _, err := e.svc.Request(alice, "acme", in); !errors.Is(err, ErrIdentityMismatch) || ToAPIError(err).Code != 403 {
		t.Fatalf("request as alice naming bob: %v, want ErrIdentityMismatch (403)", err)
	}
	if _, err := e.svc.Get(ctx, "acme", "i2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("refused request was written: %v", err)
	}
	if _, err := e.svc.Approve(WithIdentity(ctx, natsID("OPS", "bob")), "acme", DecisionInput{ID: "i1", DecidedBy: "carol"}); !errors.Is(err, ErrIdentityMismatch) {
		t.Fatalf("approve as bob naming carol: %v", err)
	}
	if got := e.get("acme", "i1"); got.Status != StatusPending || got.Revision != r.Revision {
		t.Errorf("refused decision changed the record: %+v", got)
	}

	// Self-approval is checked on the identity, whatever the body says.
	if _, err := e.svc.Approve(alice, "acme", DecisionInput{ID: "i1"}); !errors.Is(err, ErrSelfApproval) {
		t.Fatalf("alice approving her own: %v, want ErrSelfApproval", err)
	}
	// The same user name in another account is someone else.
	got, err := e.svc.Approve(WithIdentity(ctx, natsID("OPS", "alice")), "acme", DecisionInput{ID: "i1"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusApproved || got.DecidedBy != "alice" || got.Decider == nil || got.Decider.Account != "OPS" {
		t.Errorf("decided %+v by %+v, want approved by OPS/alice", got.Status, got.Decider)
	}

	// An asserted requester named like an authenticated approver.
	r3 := e.request("acme", req("i3")) // requested_by alice, asserted
	if _, err := e.svc.Approve(WithIdentity(ctx, natsID("OPS", "alice")), "acme", DecisionInput{ID: r3.ID}); !errors.Is(err, ErrSelfApproval) {
		t.Errorf("OPS/alice approving a request asserted by alice: %v, want ErrSelfApproval", err)
	}

	// Required mode: no identity, no call.
	e.cfg.Identity = IdentityRequired
	strict := e.open()
	if _, err := strict.Request(ctx, "acme", req("i4")); !errors.Is(err, ErrUnauthenticated) || ToAPIError(err).Code != 401 {
		t.Fatalf("request without identity in required mode: %v, want ErrUnauthenticated (401)", err)
	}
	if _, err := strict.Deny(ctx, "acme", DecisionInput{ID: "i3", DecidedBy: "bob"}); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("deny without identity in required mode: %v", err)
	}
	if _, err := strict.Request(alice, "acme", req("i4")); err != nil {
		t.Fatalf("request with identity in required mode: %v", err)
	}
}

// rulesEnv is an env whose Service reads approver rules from a policy
// bucket.
func rulesEnv(t *testing.T, mutate func(*Config)) (*env, *Service) {
	e := newEnv(t, mutate)
	kv, err := jsguard.EnsurePolicyBucket(t.Context(), e.g, e.js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return e, e.open(WithRules(kv))
}

func TestRulesValidate(t *testing.T) {
	good := []string{"user:OPS/bob", "user:*/bob", "account:OPS", "tag:approver", "sub:1234", "email:a@example.com", "group:sre", "name:carol"}
	r := Rules{Approvers: good, RequiredApprovals: 2}
	if err := r.Validate(); err != nil {
		t.Fatalf("valid rules: %v", err)
	}
	for _, bad := range []Rules{
		{Approvers: []string{"bob"}},
		{Approvers: []string{"user:bob"}},
		{Approvers: []string{"role:admin"}},
		{Approvers: []string{"tag:"}},
		{RequiredApprovals: 17},
		{RequiredDenials: -1},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalidRules) {
			t.Errorf("%+v: %v, want ErrInvalidRules", bad, err)
		}
	}
	if _, err := DecodeRules([]byte(`{"approvers":["tag:x"],"extra":1}`)); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("unknown field: %v", err)
	}
}

// TestRulesEligible: only the principals a tenant's rules name may approve
// or deny (the requester may always withdraw by denying); a change of the
// rules applies to the next decision; broken rules fail closed.
func TestRulesEligible(t *testing.T) {
	e, svc := rulesEnv(t, nil)
	ctx := t.Context()
	if err := svc.SetTenantRules(ctx, "acme", Rules{Approvers: []string{"user:OPS/bob", "tag:approver", "group:sre"}}); err != nil {
		t.Fatal(err)
	}
	if err := svc.SetTenantRules(ctx, "acme", Rules{Approvers: []string{"bob"}}); !errors.Is(err, ErrInvalidRules) {
		t.Fatalf("storing bad rules: %v, want ErrInvalidRules", err)
	}
	alice := WithIdentity(ctx, natsID("ACME", "alice"))
	mk := func(id string) Record {
		t.Helper()
		in := req(id)
		in.RequestedBy = ""
		r, err := svc.Request(alice, "acme", in)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := mk("e1")
	carol := WithIdentity(ctx, natsID("OPS", "carol"))
	if _, err := svc.Approve(carol, "acme", DecisionInput{ID: r.ID}); !errors.Is(err, ErrNotEligible) || ToAPIError(err).Code != 403 || ToAPIError(err).Status != APINotEligible {
		t.Fatalf("carol approving: %v, want ErrNotEligible (403 not_eligible)", err)
	}
	if _, err := svc.Deny(carol, "acme", DecisionInput{ID: r.ID}); !errors.Is(err, ErrNotEligible) {
		t.Fatalf("carol denying: %v, want ErrNotEligible", err)
	}
	if _, err := svc.Approve(WithIdentity(ctx, natsID("ACME", "bob")), "acme", DecisionInput{ID: r.ID}); !errors.Is(err, ErrNotEligible) {
		t.Fatalf("bob of the wrong account approving: %v, want ErrNotEligible", err)
	}
	if got := e.get("acme", r.ID); got.Status != StatusPending || got.Revision != r.Revision {
		t.Fatalf("refused decisions changed the record: %+v", got)
	}
	if got, err := svc.Approve(WithIdentity(ctx, natsID("OPS", "dave", "approver")), "acme", DecisionInput{ID: r.ID}); err != nil || got.Status != StatusApproved {
		t.Fatalf("dave with the approver tag: %v %v", got.Status, err)
	}
	r = mk("e2")
	if got, err := svc.Approve(WithIdentity(ctx, Identity{Source: SourceOIDC, User: "erin@example.com", Subject: "sub-9", Email: "erin@example.com", Groups: []string{"SRE"}}), "acme", DecisionInput{ID: r.ID}); err != nil || got.Status != StatusApproved {
		t.Fatalf("a browser login in group sre: %v %v", got.Status, err)
	}
	r = mk("e3")
	if got, err := svc.Deny(alice, "acme", DecisionInput{ID: r.ID, Reason: "withdrawn"}); err != nil || got.Status != StatusDenied {
		t.Fatalf("the requester withdrawing: %v %v", got.Status, err)
	}
	r = mk("e3c")
	if _, err := svc.Cancel(carol, "acme", CancelInput{ID: r.ID}); !errors.Is(err, ErrNotEligible) {
		t.Fatalf("carol cancelling alice's approval: %v, want ErrNotEligible", err)
	}
	if got, err := svc.Cancel(alice, "acme", CancelInput{ID: r.ID}); err != nil || got.Status != StatusCancelled {
		t.Fatalf("the requester cancelling: %v %v", got.Status, err)
	}

	// Live change: carol added.
	r = mk("e4")
	if err := svc.SetTenantRules(ctx, "acme", Rules{Approvers: []string{"user:OPS/carol"}}); err != nil {
		t.Fatal(err)
	}
	if got, err := svc.Approve(carol, "acme", DecisionInput{ID: r.ID}); err != nil || got.Status != StatusApproved {
		t.Fatalf("carol after the change: %v %v", got.Status, err)
	}
	// A tenant without rules: anyone but the requester.
	if got, err := svc.Approve(carol, "globex", DecisionInput{ID: e.request("globex", req("g1")).ID}); err != nil || got.Status != StatusApproved {
		t.Fatalf("tenant without rules: %v %v", got.Status, err)
	}

	// Broken rules written behind guardian's back: decisions fail closed.
	r = mk("e5")
	if _, err := svc.rules.Put(ctx, RulesKeyPrefix+"acme", []byte(`{"approvers":["everyone"]}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Approve(carol, "acme", DecisionInput{ID: r.ID}); !errors.Is(err, ErrInvalidRules) || ToAPIError(err).Code != 500 {
		t.Fatalf("approve under broken rules: %v, want ErrInvalidRules (500)", err)
	}
	if got := e.get("acme", r.ID); got.Status != StatusPending {
		t.Errorf("decision under broken rules was written: %+v", got)
	}
}

// TestNOfM: an approval that needs two approvals stays pending after the
// first (recorded, with an approval_added event), counts the same approver
// once, never counts the requester, and is approved by the second; the
// tenant's rules raise the count and set how many denials deny.
func TestNOfM(t *testing.T) {
	e, svc := rulesEnv(t, nil)
	ctx := t.Context()
	stop := startConsumers(t, svc)
	defer stop()
	alice := WithIdentity(ctx, natsID("ACME", "alice"))
	bob := WithIdentity(ctx, natsID("OPS", "bob"))
	carol := WithIdentity(ctx, natsID("OPS", "carol"))
	dave := WithIdentity(ctx, natsID("OPS", "dave"))

	in := req("n1")
	in.RequestedBy, in.RequiredApprovals, in.Timeout = "", 2, Duration(time.Minute)
	r, err := svc.Request(alice, "acme", in)
	if err != nil {
		t.Fatal(err)
	}
	if r.RequiredApprovals != 2 {
		t.Fatalf("required_approvals %d", r.RequiredApprovals)
	}
	first, err := svc.Approve(bob, "acme", DecisionInput{ID: "n1", Reason: "looks fine"})
	if err != nil || first.Status != StatusPending || len(first.Approvals) != 1 || first.Kind() != KindApprovalAdded {
		t.Fatalf("first approval: %+v %v", first, err)
	}
	again, err := svc.Approve(bob, "acme", DecisionInput{ID: "n1"})
	if err != nil || again.Revision != first.Revision || len(again.Approvals) != 1 {
		t.Fatalf("bob again: revision %d (was %d), %d approvals, %v: want unchanged", again.Revision, first.Revision, len(again.Approvals), err)
	}
	if _, err := svc.Approve(alice, "acme", DecisionInput{ID: "n1"}); !errors.Is(err, ErrSelfApproval) {
		t.Fatalf("requester approving: %v", err)
	}
	e.cfg.AllowSelfApproval = true
	lax := e.open()
	if _, err := lax.Approve(alice, "acme", DecisionInput{ID: "n1"}); !errors.Is(err, ErrSelfApproval) {
		t.Fatalf("requester approving an N-of-M with AllowSelfApproval: %v, want ErrSelfApproval", err)
	}
	done, err := svc.Approve(carol, "acme", DecisionInput{ID: "n1", Reason: "ok"})
	if err != nil || done.Status != StatusApproved || len(done.Approvals) != 2 || done.DecidedBy != "carol" {
		t.Fatalf("second approval: %+v %v", done, err)
	}
	if done.Approvals[0].Reason != "looks fine" || done.Approvals[0].Identity.User != "bob" || done.Approvals[1].Identity.User != "carol" {
		t.Errorf("votes %+v", done.Approvals)
	}
	waitFor(t, 10*time.Second, "events of n1", func() bool { return e.countEvents("guardian.v1.events.acme.>") >= 3 })
	waitFor(t, 10*time.Second, "the decision's audit event", func() bool { return len(e.audit.byCode(DecidedCode)) >= 1 })
	if evs := e.audit.byCode(DecidedCode); len(evs) != 1 || evs[0].AdditionalContext["decider_account"] != "OPS" || evs[0].AdditionalContext["decider_user"] != "carol" ||
		evs[0].AdditionalContext["approvals"] != "OPS/bob,OPS/carol" || evs[0].AdditionalContext["requester_account"] != "ACME" || evs[0].AdditionalContext["status"] != "approved" {
		t.Errorf("decision audit events %+v", evs)
	}
	var kinds []string
	for _, ev := range e.events("guardian.v1.events.acme.>") {
		kinds = append(kinds, ev.Kind)
	}
	if fmt.Sprint(kinds) != "[requested approval_added approved]" {
		t.Errorf("events %v", kinds)
	}

	// Rules: two approvals and two denials for every request of acme.
	if err := svc.SetTenantRules(ctx, "acme", Rules{RequiredApprovals: 2, RequiredDenials: 2}); err != nil {
		t.Fatal(err)
	}
	in = req("n2")
	in.RequestedBy, in.Timeout = "", Duration(time.Minute)
	if r, err = svc.Request(alice, "acme", in); err != nil || r.RequiredApprovals != 2 || r.RequiredDenials != 2 {
		t.Fatalf("request under rules: %+v %v", r, err)
	}
	if got, err := svc.Deny(bob, "acme", DecisionInput{ID: "n2"}); err != nil || got.Status != StatusPending || got.Kind() != KindDenialAdded {
		t.Fatalf("first denial: %+v %v", got, err)
	}
	if got, err := svc.Deny(dave, "acme", DecisionInput{ID: "n2"}); err != nil || got.Status != StatusDenied || len(got.Denials) != 2 {
		t.Fatalf("second denial: %+v %v", got, err)
	}
	if _, err := svc.Approve(carol, "acme", DecisionInput{ID: "n2"}); !errors.Is(err, ErrAlreadyDecided) {
		t.Fatalf("approve after denied: %v", err)
	}
	in = req("n3")
	in.RequiredApprovals = 17
	if _, err := svc.Request(alice, "acme", in); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("17 approvals: %v", err)
	}
}

// TestNOfMRace: 2-of-3 approvals where bob approves twice, carol approves
// and dave denies, all at once, through two Services: every approval ends
// in exactly one terminal state, the replies agree with it, and an approved
// one has exactly bob's and carol's approvals.
func TestNOfMRace(t *testing.T) {
	e, svc := rulesEnv(t, nil)
	svc2 := e.open(WithRules(svc.rules))
	ctx := t.Context()
	n := 200
	if testing.Short() {
		n = 40
	}
	alice := WithIdentity(ctx, natsID("ACME", "alice"))
	ids := map[string]context.Context{"bob": WithIdentity(ctx, natsID("OPS", "bob")), "carol": WithIdentity(ctx, natsID("OPS", "carol")), "dave": WithIdentity(ctx, natsID("OPS", "dave"))}
	var approved, denied int
	for i := range n {
		id := fmt.Sprintf("race%04d", i)
		in := RequestInput{ID: id, SessionID: "s", RequiredApprovals: 2, Timeout: Duration(time.Minute)}
		if _, err := svc.Request(alice, "acme", in); err != nil {
			t.Fatal(err)
		}
		type reply struct {
			who string
			rec Record
			err error
		}
		var mu sync.Mutex
		var replies []reply
		var wg sync.WaitGroup
		for k, call := range []struct {
			who  string
			deny bool
		}{{"bob", false}, {"bob", false}, {"carol", false}, {"dave", true}} {
			s := svc
			if k%2 == 1 {
				s = svc2
			}
			wg.Go(func() {
				var rec Record
				var err error
				if call.deny {
					rec, err = s.Deny(ids[call.who], "acme", DecisionInput{ID: id})
				} else {
					rec, err = s.Approve(ids[call.who], "acme", DecisionInput{ID: id})
				}
				mu.Lock()
				replies = append(replies, reply{call.who, rec, err})
				mu.Unlock()
			})
		}
		wg.Wait()
		final := e.get("acme", id)
		terminal := 0
		for _, rev := range e.history("acme." + id) {
			if rev.Status.Terminal() {
				terminal++
			}
		}
		if terminal != 1 {
			t.Fatalf("%s: %d terminal revisions, want 1", id, terminal)
		}
		claims := 0
		for _, r := range replies {
			switch {
			case r.err == nil && r.rec.Status.Terminal():
				claims++
				if r.rec.Status != final.Status {
					t.Fatalf("%s: %s was told %s, final %s", id, r.who, r.rec.Status, final.Status)
				}
			case r.err != nil && !errors.Is(r.err, ErrAlreadyDecided):
				t.Fatalf("%s: %s: %v", id, r.who, r.err)
			}
		}
		if claims != 1 {
			t.Fatalf("%s: %d replies reported the terminal state, want 1: %+v", id, claims, replies)
		}
		switch final.Status {
		case StatusApproved:
			approved++
			if len(final.Approvals) != 2 || final.Approvals[0].Identity.User == final.Approvals[1].Identity.User {
				t.Fatalf("%s approved with %+v", id, final.Approvals)
			}
		case StatusDenied:
			denied++
		default:
			t.Fatalf("%s ended %s", id, final.Status)
		}
	}
	t.Logf("%d races: approved %d, denied %d", n, approved, denied)
}

// TestExtend: an eligible approver moves the deadline later with a reason;
// the approval expires at the new deadline, once, with an extended event
// and an AUDIT_APPROVAL_EXTENDED audit event; the requester, a missing
// reason, a deadline that is not later or beyond MaxTimeout from the
// request, and an extension after expires_at + grace are refused.
func TestExtend(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.GracePeriod = 0; c.MaxTimeout = 2 * time.Minute; c.WarningBefore = 2 * time.Second })
	ctx := t.Context()
	stop := startConsumers(t, e.svc)
	defer stop()
	alice := WithIdentity(ctx, natsID("ACME", "alice"))
	bob := WithIdentity(ctx, natsID("OPS", "bob"))
	in := req("x1")
	in.RequestedBy, in.Timeout = "", Duration(3*time.Second)
	r, err := e.svc.Request(alice, "acme", in)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		ctx  context.Context
		in   ExtendInput
		want error
	}{
		{alice, ExtendInput{ID: "x1", ExtendBy: Duration(time.Second), Reason: "mine"}, ErrNotEligible},
		{bob, ExtendInput{ID: "x1", ExtendBy: Duration(time.Second)}, ErrInvalidRequest},
		{bob, ExtendInput{ID: "x1", Reason: "r"}, ErrInvalidRequest},
		{bob, ExtendInput{ID: "x1", ExtendBy: Duration(time.Second), ExpiresAt: &r.ExpiresAt, Reason: "r"}, ErrInvalidRequest},
		{bob, ExtendInput{ID: "x1", ExpiresAt: &r.ExpiresAt, Reason: "not later"}, ErrInvalidRequest},
		{bob, ExtendInput{ID: "x1", ExtendBy: Duration(3 * time.Minute), Reason: "too far"}, ErrInvalidRequest},
		{bob, ExtendInput{ID: "nope", ExtendBy: Duration(time.Second), Reason: "r"}, ErrNotFound},
	} {
		if _, err := e.svc.Extend(bad.ctx, "acme", bad.in); !errors.Is(err, bad.want) {
			t.Errorf("extend %+v: %v, want %v", bad.in, err, bad.want)
		}
	}
	if got := e.get("acme", "x1"); got.Revision != r.Revision {
		t.Fatalf("refused extensions changed the record")
	}
	// The warning (2s before expires_at) is sent; the extension sends it
	// again before the new deadline.
	waitFor(t, 5*time.Second, "x1 warned", func() bool { return e.get("acme", "x1").WarnedAt != nil })
	x, err := e.svc.Extend(bob, "acme", ExtendInput{ID: "x1", ExtendBy: Duration(3 * time.Second), Reason: "needs a second look"})
	if err != nil {
		t.Fatal(err)
	}
	if !x.ExpiresAt.Equal(r.ExpiresAt.Add(3*time.Second)) || len(x.Extensions) != 1 || x.Kind() != KindExtended || x.Extensions[0].By != "bob" {
		t.Fatalf("extended %+v", x)
	}
	waitFor(t, 15*time.Second, "x1 expired", func() bool { return e.get("acme", "x1").Status == StatusExpired })
	final := e.get("acme", "x1")
	if final.DecidedAt.Before(x.ExpiresAt) {
		t.Errorf("expired at %s, before the extended deadline %s", final.DecidedAt, x.ExpiresAt)
	}
	waitFor(t, 10*time.Second, "audit events", func() bool {
		return len(e.audit.byCode(ExtendedCode)) >= 1 && len(e.audit.byCode(jsguard.ApprovalExpired.Code())) >= 1
	})
	ext := e.audit.byCode(ExtendedCode)[0]
	if ext.AdditionalContext["extended_by"] != "bob" || ext.AdditionalContext["extender_account"] != "OPS" || ext.AdditionalContext["reason"] != "needs a second look" {
		t.Errorf("extension audit %+v", ext.AdditionalContext)
	}
	if exp := e.audit.byCode(jsguard.ApprovalExpired.Code())[0]; exp.AdditionalContext["requester_account"] != "ACME" {
		t.Errorf("expiry audit without the requester's account: %+v", exp.AdditionalContext)
	}
	var kinds []string
	for _, ev := range e.events("guardian.v1.events.acme.>") {
		kinds = append(kinds, ev.Kind)
	}
	if fmt.Sprint(kinds) != "[requested warning extended warning expired]" {
		t.Errorf("events %v, want requested, warning, extended, warning, expired", kinds)
	}
	if _, err := e.svc.Extend(bob, "acme", ExtendInput{ID: "x1", ExtendBy: Duration(time.Second), Reason: "late"}); !errors.Is(err, ErrAlreadyDecided) {
		t.Errorf("extend after expiry: %v", err)
	}
	// At most MaxExtensions, each of at least a second.
	in = req("x3")
	in.RequestedBy, in.Timeout = "", Duration(time.Minute)
	if _, err := e.svc.Request(alice, "acme", in); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Extend(bob, "acme", ExtendInput{ID: "x3", ExtendBy: Duration(time.Millisecond), Reason: "tiny"}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("extend by 1ms: %v", err)
	}
	for i := range MaxExtensions {
		if _, err := e.svc.Extend(bob, "acme", ExtendInput{ID: "x3", ExtendBy: Duration(time.Second), Reason: fmt.Sprint("again ", i)}); err != nil {
			t.Fatalf("extension %d: %v", i+1, err)
		}
	}
	if _, err := e.svc.Extend(bob, "acme", ExtendInput{ID: "x3", ExtendBy: Duration(time.Second), Reason: "once more"}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("extension %d: %v, want ErrInvalidRequest", MaxExtensions+1, err)
	}
	// Pending but past its deadline (the expirer has not run): refused.
	stop()
	in = req("x2")
	in.RequestedBy, in.Timeout = "", Duration(time.Second)
	if _, err := e.svc.Request(alice, "acme", in); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if _, err := e.svc.Extend(bob, "acme", ExtendInput{ID: "x2", ExtendBy: Duration(time.Minute), Reason: "too late"}); !errors.Is(err, ErrExpired) {
		t.Errorf("extend after expires_at: %v, want ErrExpired", err)
	}
}

// TestExtendStaleTimer: a timer armed for the deadline before an extension
// that fires finds the later deadline and makes sure the approval's next
// timer exists, even when the extension's own timer was lost (a warn
// handler took the key between the extension's purge and create, or the
// timer was removed behind guardian's back); then it is acknowledged.
func TestExtendStaleTimer(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.GracePeriod = 0; c.MaxTimeout = 10 * time.Minute; c.SendTimeoutWarnings = false })
	ctx := t.Context()
	alice := WithIdentity(ctx, natsID("ACME", "alice"))
	in := req("s1")
	in.RequestedBy, in.Timeout = "", Duration(10*time.Second)
	if _, err := e.svc.Request(alice, "acme", in); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Extend(WithIdentity(ctx, natsID("OPS", "bob")), "acme", ExtendInput{ID: "s1", ExtendBy: Duration(time.Minute), Reason: "r"}); err != nil {
		t.Fatal(err)
	}
	key := "acme.s1." + timerExpire
	if err := e.svc.timers.disarm(ctx, key); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(e.timerKeys(), key) {
		t.Fatalf("timer %s still there after the purge", key)
	}
	// The old expire timer fires.
	wrote, err := e.svc.expire(ctx, "acme.s1", nil)
	if err != nil || wrote {
		t.Fatalf("stale timer: wrote %v, err %v; want neither", wrote, err)
	}
	if !slices.Contains(e.timerKeys(), key) {
		t.Fatalf("timers %v: the stale timer did not re-arm %s", e.timerKeys(), key)
	}
	if got := e.get("acme", "s1"); got.Status != StatusPending {
		t.Fatalf("stale timer changed the record: %+v", got)
	}
}
