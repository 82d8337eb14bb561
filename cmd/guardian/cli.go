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
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// defaultClientURL is where CLI commands look for NATS without
// GUARDIAN_NATS_URL or GUARDIAN_EMBEDDED_LISTEN: the embedded server's
// default address.
const defaultClientURL = "nats://127.0.0.1:4222"

// clientURL is the default of --server: GUARDIAN_NATS_URL, else the address
// of the embedded server that 'guardian serve' starts with the same
// environment.
func clientURL() string {
	if u := os.Getenv("GUARDIAN_NATS_URL"); u != "" {
		return u
	}
	if l := os.Getenv("GUARDIAN_EMBEDDED_LISTEN"); l != "" {
		return "nats://" + l
	}
	return defaultClientURL
}

// clientFlags are the flags every client command shares.
type clientFlags struct {
	server  string
	timeout time.Duration
	json    bool
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", clientURL(), "NATS URL of the guardian to talk to: GUARDIAN_NATS_URL when set, else nats://$GUARDIAN_EMBEDDED_LISTEN")
	fs.DurationVar(&c.timeout, "request-timeout", 10*time.Second, "how long to wait for each answer of the service")
	fs.BoolVar(&c.json, "json", false, "print JSON instead of a table")
}

// session is a connected client.
type session struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	client *kvapprovals.Client
	g      *jsguard.Guard
}

// dial connects to NATS with the credentials of the GUARDIAN_* variables.
func (c *clientFlags) dial(ctx context.Context) (*session, error) {
	cfg, err := loadConfig()
	if err != nil {
		return nil, err
	}
	g, err := jsguard.New(jsguard.WithPolicy(cfg.policy()))
	if err != nil {
		return nil, err
	}
	opts, err := natsOptions(cfg, "guardian-cli", newLogger(io.Discard, "error", "json"))
	if err != nil {
		return nil, err
	}
	opts = append(opts, nats.MaxReconnects(0))
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	nc, err := g.Connect(cctx, c.server, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w (is 'guardian serve' running? set --server or GUARDIAN_NATS_URL)", redactURL(c.server), err)
	}
	js, err := jetstream.New(nc)
	if cfg.JsAPIPrefix != "" {
		js, err = jetstream.NewWithAPIPrefix(nc, cfg.JsAPIPrefix)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &session{nc: nc, js: js, client: kvapprovals.NewClient(nc, kvapprovals.WithClientGuard(g)), g: g}, nil
}

func (s *session) close() { s.nc.Close() }

// subcommand picks the subcommand of a command group (approval, audit,
// policy) from args and returns it with a flag set for it that has the client
// flags registered. It prints the group's usage and returns flag.ErrHelp
// (exit 0) when args ask for help, and exit status 2 when they name no known
// subcommand.
func subcommand(group, usage string, helps map[string]string, args []string, stderr io.Writer) (string, *flag.FlagSet, *clientFlags, error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, "Usage: guardian", usage)
		if len(args) == 0 {
			return "", nil, nil, exitError{2}
		}
		return "", nil, nil, flag.ErrHelp
	}
	op := args[0]
	help, ok := helps[op]
	if !ok {
		fmt.Fprintf(stderr, "guardian: unknown %s command %q\n\nUsage: guardian %s\n", group, op, usage)
		return "", nil, nil, exitError{2}
	}
	cf := &clientFlags{}
	fs := newFlags(group+" "+op, help, stderr)
	cf.register(fs)
	return op, fs, cf, nil
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// apiFailure prints an API error readably and returns exit code 1.
func apiFailure(stderr io.Writer, err error) error {
	var ae *kvapprovals.APIError
	if errors.As(err, &ae) {
		msg := fmt.Sprintf("guardian: %d %s: %s", ae.Code, ae.Status, ae.Message)
		if ae.Field != "" {
			msg += " (field " + ae.Field + ")"
		}
		if ae.TimeoutCode != "" {
			msg += " [" + ae.TimeoutCode + "]"
		}
		fmt.Fprintln(stderr, msg)
		return exitError{1}
	}
	return err
}

const approvalUsage = `approval <command> [flags]

Commands:
  request   ask for an approval          --tenant --session [--requested-by --id --operator --timeout --details --required-approvals]
  approve   approve a pending approval   --tenant --id [--by --reason]
  deny      deny a pending approval      --tenant --id [--by --reason]
  cancel    cancel a pending approval    --tenant --id [--by --reason]
  extend    move the deadline later      --tenant --id --reason (--extend-by | --expires-at) [--by]
  get       show one approval            --tenant --id
  list      list a tenant's approvals    --tenant [--status --limit --cursor]
  wait      wait for the decision        --tenant --id

request --wait and wait block until the approval is final and exit 0 when
it is approved, 3 denied, 4 expired, 5 cancelled (1 for an error, 130 when
interrupted). To run a command only once it is approved, see 'guardian exec'.

Every command also takes --server, --request-timeout and --json; 'guardian approval
<command> --help' lists its flags. A refusal exits with status 1 and the
API's error, e.g. "guardian: 410 expired: ...".

Who asks or decides: where guardian requires authenticated identities
(GUARDIAN_IDENTITY=required), it is the NATS user you connect as, and
--requested-by/--by may be left out (when given, they must name that
user). Otherwise they name you, and default to $USER.`

// approvalHelp describes each approval command for its --help.
var approvalHelp = map[string]string{
	"request": `approval request --session ID [flags]

Asks for an approval in a tenant and prints the pending record. Give --id to
make retries safe: the same request again returns the same approval, and
different content under that id is refused (409 conflict).
--required-approvals N asks for N distinct approvers (the tenant's approver
rules may require more).

Example:
  guardian approval request --tenant acme --session s-1 --requested-by alice \
      --timeout 15m --details '{"cmd":"deploy payments"}'`,
	"approve": `approval approve --id ID [--by WHO] [flags]

Adds your approval. With more than one required, the approval stays pending
until enough distinct approvers approved; approving twice counts once.
Refused with 403 when you requested it (self_approval), when the tenant's
approver rules do not name you (not_eligible) or when --by names someone
else than your NATS user (identity_mismatch); 409 when it is already
decided, 410 when it has expired.`,
	"deny": `approval deny --id ID [--by WHO] [flags]

Denies a pending approval (or adds your denial, when the tenant's rules
require several). Refused with 403 not_eligible when the tenant's approver
rules do not name you (the requester may always deny, withdrawing the
request), 409 when it is already decided, 410 when it has expired.`,
	"cancel": `approval cancel --id ID [--by WHO] [flags]

Withdraws a pending approval. Refused with 409 when it is already decided,
410 when it has expired.`,
	"extend": `approval extend --id ID --reason WHY (--extend-by D | --expires-at T) [flags]

Moves a pending approval's deadline later, by a duration from the current
expires_at or to an RFC 3339 time, and re-arms its timers. The new deadline
may be at most the service's maximum timeout after the request. Only an
eligible approver may extend, never the requester (403 not_eligible); 410
once expires_at + grace has passed.

Example:
  guardian approval extend --tenant acme --id deploy-45 --extend-by 30m --reason "waiting for the change board"`,
	"wait": `approval wait --id ID [flags]

Waits until the approval is final, prints who decided and why, and exits 0
when it is approved, 3 denied, 4 expired, 5 cancelled (1 for an error, 130
when interrupted). A decision made before the command started is reported at
once; waiting survives a guardian restart or a NATS reconnect.

Example:
  guardian approval wait --tenant acme --id deploy-45 && ./deploy.sh`,
	"get": `approval get --id ID [flags]

Prints one approval; 404 when the tenant has none with that id.`,
	"list": `approval list [flags]

Lists a tenant's approvals ordered by id, a page at a time. When the listing
runs out of time it prints what it found and says the result is partial.`,
}

func approvalCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	op, fs, cf, err := subcommand("approval", approvalUsage, approvalHelp, args, stderr)
	if err != nil {
		return err
	}
	tenant := fs.String("tenant", envOr("GUARDIAN_TENANT", "default"), "tenant, 1-64 of A-Z a-z 0-9 _ -: GUARDIAN_TENANT when set, else default")
	var (
		id, session, requestedBy, operator, timeout, details *string
		by, reason, status, cursor, extendBy, expiresAt      *string
		limit, required                                      *int
		waitDecision                                         *bool
	)
	actorHelp := "(default: your NATS user where guardian requires identities, else $USER)"
	switch op {
	case "request":
		id = fs.String("id", "", "approval id, 1-64 of A-Z a-z 0-9 _ - (default: a random one)")
		session = fs.String("session", "", "session id (required)")
		requestedBy = fs.String("requested-by", "", "who asks "+actorHelp)
		operator = fs.String("operator", "", "operator expected to decide (optional)")
		timeout = fs.String("timeout", "", "how long until it expires, e.g. 90s or 15m (default: the service's)")
		details = fs.String("details", "", "a JSON object with details, e.g. '{\"cmd\":\"rm -rf /tmp/x\"}'")
		required = fs.Int("required-approvals", 0, "distinct approvals needed, 1-16 (default: the tenant's rule, else 1)")
		waitDecision = fs.Bool("wait", false, "wait for the decision: exit 0 approved, 3 denied, 4 expired, 5 cancelled")
	case "approve", "deny", "cancel":
		id = fs.String("id", "", "approval id (required)")
		by = fs.String("by", "", "who decides "+actorHelp)
		reason = fs.String("reason", "", "why")
	case "extend":
		id = fs.String("id", "", "approval id (required)")
		by = fs.String("by", "", "who extends "+actorHelp)
		reason = fs.String("reason", "", "why (required)")
		extendBy = fs.String("extend-by", "", "move expires_at later by this much, e.g. 30m")
		expiresAt = fs.String("expires-at", "", "the new expires_at, RFC 3339, e.g. 2026-12-01T18:00:00Z")
	case "get", "wait":
		id = fs.String("id", "", "approval id (required)")
	case "list":
		status = fs.String("status", "", "only this status: pending, approved, denied, cancelled or expired")
		limit = fs.Int("limit", 0, "at most this many (default 100, at most 1000)")
		cursor = fs.String("cursor", "", "continue after this cursor (next_cursor of the previous page)")
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "guardian: unexpected argument %q (values go in flags, e.g. --id %s)\n", fs.Arg(0), fs.Arg(0))
		return exitError{2}
	}
	if op != "request" && op != "list" && *id == "" {
		fmt.Fprintln(stderr, "guardian: --id is required")
		return exitError{2}
	}
	var in any
	switch op {
	case "request":
		r := kvapprovals.RequestInput{ID: *id, SessionID: *session, RequestedBy: *requestedBy, OperatorID: *operator, RequiredApprovals: *required}
		if *timeout != "" {
			d, err := time.ParseDuration(*timeout)
			if err != nil {
				fmt.Fprintf(stderr, "guardian: --timeout %q: not a duration like 90s or 15m\n", *timeout)
				return exitError{2}
			}
			r.Timeout = kvapprovals.Duration(d)
		}
		if *details != "" {
			var obj map[string]any
			if json.Unmarshal([]byte(*details), &obj) != nil {
				fmt.Fprintln(stderr, "guardian: --details must be a JSON object, like '{\"cmd\":\"deploy\"}'")
				return exitError{2}
			}
			r.Details = json.RawMessage(*details)
		}
		in = r
	case "approve", "deny":
		in = kvapprovals.DecisionInput{ID: *id, DecidedBy: *by, Reason: *reason}
	case "cancel":
		in = kvapprovals.CancelInput{ID: *id, CancelledBy: *by, Reason: *reason}
	case "extend":
		x := kvapprovals.ExtendInput{ID: *id, ExtendedBy: *by, Reason: *reason}
		switch {
		case (*extendBy == "") == (*expiresAt == ""):
			fmt.Fprintln(stderr, "guardian: give --extend-by or --expires-at (one of them)")
			return exitError{2}
		case *extendBy != "":
			d, err := time.ParseDuration(*extendBy)
			if err != nil || d <= 0 {
				fmt.Fprintf(stderr, "guardian: --extend-by %q: not a positive duration like 30m\n", *extendBy)
				return exitError{2}
			}
			x.ExtendBy = kvapprovals.Duration(d)
		default:
			at, err := time.Parse(time.RFC3339, *expiresAt)
			if err != nil {
				fmt.Fprintf(stderr, "guardian: --expires-at %q: not an RFC 3339 time like 2026-12-01T18:00:00Z\n", *expiresAt)
				return exitError{2}
			}
			x.ExpiresAt = &at
		}
		in = x
	case "list":
		in = kvapprovals.ListInput{Status: kvapprovals.Status(*status), Limit: *limit, Cursor: *cursor}
	}
	s, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer s.close()
	if op == "wait" {
		r, err := awaitDecision(ctx, s, *tenant, *id, cf.json, stdout, stderr)
		if err != nil {
			if ctx.Err() != nil {
				return exitError{exitInterrupted}
			}
			return apiFailure(stderr, err)
		}
		if code := outcomeCode(r.Status); code != 0 {
			return exitError{code}
		}
		return nil
	}
	waitCtx := ctx
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()

	var out any
	switch op {
	case "request":
		out, err = withActor(&in, func() (any, error) { return s.client.Request(ctx, *tenant, in.(kvapprovals.RequestInput)) })
	case "approve":
		out, err = withActor(&in, func() (any, error) { return s.client.Approve(ctx, *tenant, in.(kvapprovals.DecisionInput)) })
	case "deny":
		out, err = withActor(&in, func() (any, error) { return s.client.Deny(ctx, *tenant, in.(kvapprovals.DecisionInput)) })
	case "cancel":
		out, err = withActor(&in, func() (any, error) { return s.client.Cancel(ctx, *tenant, in.(kvapprovals.CancelInput)) })
	case "extend":
		out, err = withActor(&in, func() (any, error) { return s.client.Extend(ctx, *tenant, in.(kvapprovals.ExtendInput)) })
	case "get":
		out, err = s.client.Get(ctx, *tenant, *id)
	case "list":
		out, err = s.client.List(ctx, *tenant, in.(kvapprovals.ListInput))
	}
	if err != nil {
		return apiFailure(stderr, err)
	}
	if op == "request" && *waitDecision {
		r := out.(kvapprovals.Record)
		fmt.Fprintf(stderr, "guardian: waiting for the decision on %s.%s (expires at %s)\n", r.Tenant, r.ID, r.ExpiresAt.Format(time.RFC3339))
		final, err := awaitDecision(waitCtx, s, r.Tenant, r.ID, cf.json, stdout, stderr)
		if err != nil {
			if waitCtx.Err() != nil {
				return exitError{exitInterrupted}
			}
			return apiFailure(stderr, err)
		}
		if code := outcomeCode(final.Status); code != 0 {
			return exitError{code}
		}
		return nil
	}
	if cf.json {
		return printJSON(stdout, out)
	}
	switch v := out.(type) {
	case kvapprovals.Record:
		printRecords(stdout, []kvapprovals.Record{v})
	case kvapprovals.ListResult:
		printRecords(stdout, v.Items)
		if v.Partial {
			fmt.Fprintln(stdout, "(partial: the listing ran out of time; results may be incomplete)")
		}
		if v.NextCursor != "" {
			fmt.Fprintf(stdout, "more: --cursor %s\n", v.NextCursor)
		}
	}
	return nil
}

// withActor sends a call whose actor field (requested_by, decided_by,
// cancelled_by, extended_by) may be empty. A guardian that requires
// identities takes the actor from the NATS user; one that does not refuses
// the empty field with 400 naming it, and nothing is written, so the call
// is sent again with $USER.
func withActor(in *any, call func() (any, error)) (any, error) {
	out, err := call()
	var ae *kvapprovals.APIError
	if err == nil || !errors.As(err, &ae) || ae.Status != kvapprovals.APIInvalidRequest || os.Getenv("USER") == "" {
		return out, err
	}
	user := os.Getenv("USER")
	switch v := (*in).(type) {
	case kvapprovals.RequestInput:
		if ae.Field != "requested_by" || v.RequestedBy != "" {
			return out, err
		}
		v.RequestedBy = user
		*in = v
	case kvapprovals.DecisionInput:
		if ae.Field != "decided_by" || v.DecidedBy != "" {
			return out, err
		}
		v.DecidedBy = user
		*in = v
	case kvapprovals.CancelInput:
		if ae.Field != "cancelled_by" || v.CancelledBy != "" {
			return out, err
		}
		v.CancelledBy = user
		*in = v
	case kvapprovals.ExtendInput:
		if ae.Field != "extended_by" || v.ExtendedBy != "" {
			return out, err
		}
		v.ExtendedBy = user
		*in = v
	default:
		return out, err
	}
	return call()
}

func printRecords(w io.Writer, recs []kvapprovals.Record) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tREQUESTED BY\tSESSION\tEXPIRES AT\tAPPROVALS\tDECIDED BY\tREASON")
	for _, r := range recs {
		requester, decider := r.RequestedBy, r.DecidedBy
		if r.Requester != nil && r.Requester.Source != kvapprovals.SourceAsserted {
			requester = r.Requester.String()
		}
		if r.Decider != nil && r.Decider.Source != kvapprovals.SourceAsserted {
			decider = r.Decider.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", r.ID, r.Status, requester, r.SessionID,
			r.ExpiresAt.Format(time.RFC3339), len(r.Approvals), max(1, r.RequiredApprovals), orDash(decider), orDash(r.Reason))
	}
	tw.Flush()
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// splitAssignments parses CODE=duration arguments.
func splitAssignments(args []string) (map[string]string, error) {
	m := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want NAME=VALUE, e.g. TIMEOUT_KV_GET=3s or strategy=strict", a)
		}
		m[k] = v
	}
	return m, nil
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
