// Command guardian runs the guardian service and talks to it.
//
//	guardian serve                 run the service (embedded NATS unless GUARDIAN_NATS_URL is set)
//	guardian config                print the effective configuration, secrets redacted
//	guardian approval ...          request, approve, deny, cancel, get and list approvals
//	guardian audit ...             tail, stats, verify and export the audit stream
//	guardian policy get|set        read or change the timeout policy
//	guardian demo                  a short tour against a running guardian
//
// Every command takes --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `guardian: timeouts, approvals that expire, and a durable audit trail on NATS JetStream.

Usage:
  guardian serve                 run the service (embedded NATS unless GUARDIAN_NATS_URL is set)
  guardian config                print the effective configuration, secrets redacted
  guardian approval <command>    request | approve | deny | cancel | extend | get | list | wait
  guardian exec -- COMMAND...    ask for an approval and run COMMAND only when it is approved
  guardian approvers <command>   get | set: who may decide a tenant's approvals
  guardian audit <command>       tail | stats | verify | export
  guardian policy <command>      get | set
  guardian demo                  request a few approvals and watch them approve, deny and expire
  guardian version               print the version

Run 'guardian <command> --help' for a command's flags. The service is configured
from GUARDIAN_* variables: 'guardian serve --help' lists them all.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal starts a graceful stop; a second one gets the
	// default behaviour and ends the process at once.
	go func() { <-ctx.Done(); stop() }()
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitError carries a process exit code.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// dispatch runs one command and returns the process exit code: 0 on success,
// 1 when the command failed, 2 for bad usage.
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serveCmd(ctx, args[1:], stdout, stderr)
	case "config":
		err = configCmd(args[1:], stdout, stderr)
	case "approval", "approvals":
		err = approvalCmd(ctx, args[1:], stdout, stderr)
	case "audit":
		err = auditCmd(ctx, args[1:], stdout, stderr)
	case "policy":
		err = policyCmd(ctx, args[1:], stdout, stderr)
	case "approvers":
		err = approversCmd(ctx, args[1:], stdout, stderr)
	case "exec":
		err = execCmd(ctx, args[1:], stdout, stderr)
	case "demo":
		err = demoCmd(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "guardian", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "guardian: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	return exitCode(err, stderr)
}

func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintln(stderr, "guardian:", err)
	return 1
}

// newFlags returns a flag set that prints usage to stderr and returns
// errors instead of exiting.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: guardian %s\n", synopsis)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(stderr, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args; bad usage becomes exit code 2.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return exitError{2}
	}
	return nil
}

func configCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config", "config\n\nPrints the effective configuration read from GUARDIAN_* variables; secrets are redacted.", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	printVars(stdout, configVars(cfg), true)
	return nil
}
