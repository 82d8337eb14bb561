package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

const approversUsage = `approvers <command> [flags]

Commands:
  get       print a tenant's approver rules              --tenant
  set       replace a tenant's approver rules            --tenant [--approver ... --required-approvals N --required-denials N]

The rules live in the GUARDIAN_POLICY bucket under approvers.<tenant>; every
guardian reads them on each decision, so a change applies to the next one.
Setting them needs write access to that bucket (guardian's own NATS user, or
an administrator of its account). Every command also takes --server, --request-timeout
and --json.`

var approversHelp = map[string]string{
	"get": `approvers get --tenant T [flags]

Prints who may approve, deny and extend the tenant's approvals, and how many
approvals approve and denials deny. A tenant without rules lets anyone but the
requester decide, and needs one approval or denial.`,
	"set": `approvers set --tenant T [--approver WHO ...] [--required-approvals N] [--required-denials N] [flags]

Replaces the tenant's approver rules. WHO is one of:
  user:ACCOUNT/USER   a NATS user of an account (ACCOUNT * for any account)
  account:ACCOUNT     every user of a NATS account
  tag:TAG             a NATS user whose JWT carries the tag
  sub:SUBJECT         a browser login's OIDC subject
  email:ADDRESS       a browser login's verified email
  group:GROUP         a browser login in the group
  name:NAME           a name written in the request body (asserted identities only)
No --approver lets anyone but the requester decide. Bad rules are refused
(exit 2) and nothing is written.

Example:
  guardian approvers set --tenant acme --approver account:OPS --approver tag:approver \
      --required-approvals 2`,
}

// multiFlag collects a repeated flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func approversCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	op, fs, cf, err := subcommand("approvers", approversUsage, approversHelp, args, stderr)
	if err != nil {
		return err
	}
	tenant := fs.String("tenant", envOr("GUARDIAN_TENANT", "default"), "tenant: GUARDIAN_TENANT when set, else default")
	var approvers multiFlag
	var required, denials *int
	if op == "set" {
		fs.Var(&approvers, "approver", "who may decide (repeat for more); see --help")
		required = fs.Int("required-approvals", 0, "distinct approvals that approve, 1-16 (0: one)")
		denials = fs.Int("required-denials", 0, "distinct denials that deny, 1-16 (0: one)")
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "guardian: unexpected argument %q\n", fs.Arg(0))
		return exitError{2}
	}
	if err := kvapprovals.ValidateTenant(*tenant); err != nil {
		fmt.Fprintln(stderr, "guardian:", err)
		return exitError{2}
	}
	var rules kvapprovals.Rules
	if op == "set" {
		rules = kvapprovals.Rules{Approvers: approvers, RequiredApprovals: *required, RequiredDenials: *denials}
		if err := rules.Validate(); err != nil {
			fmt.Fprintln(stderr, "guardian:", err)
			return exitError{2}
		}
	}
	s, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer s.close()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	kv, err := openPolicyBucket(ctx, s.g, s.js)
	if err != nil {
		return err
	}
	if op == "set" {
		if err := kvapprovals.StoreRules(ctx, kv, *tenant, rules); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "approver rules of %s stored in %s; the next decision applies them\n", *tenant, kv.Bucket())
	} else if rules, err = kvapprovals.LoadRules(ctx, kv, *tenant); err != nil {
		if errors.Is(err, kvapprovals.ErrInvalidRules) {
			fmt.Fprintln(stderr, "guardian:", err, "(decisions are refused until 'guardian approvers set' replaces them)")
			return exitError{1}
		}
		return err
	}
	if cf.json {
		return printJSON(stdout, rules)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	who := "anyone but the requester"
	if len(rules.Approvers) > 0 {
		who = strings.Join(rules.Approvers, " ")
	}
	fmt.Fprintf(tw, "tenant\t%s\n", *tenant)
	fmt.Fprintf(tw, "approvers\t%s\n", who)
	fmt.Fprintf(tw, "required_approvals\t%d\n", max(1, rules.RequiredApprovals))
	fmt.Fprintf(tw, "required_denials\t%d\n", max(1, rules.RequiredDenials))
	return tw.Flush()
}
