package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// Exit codes of the commands that wait for a decision (approval request
// --wait, approval wait, exec). Approved is 0; exec then exits with the
// command's own code.
const (
	exitDenied      = 3
	exitExpired     = 4
	exitCancelled   = 5
	exitInterrupted = 130 // Ctrl-C while waiting
	exitBudget      = 124 // exec: the command ran out of its budget (as timeout(1))
)

// outcomeCode is the exit code of a final status.
func outcomeCode(st kvapprovals.Status) int {
	switch st {
	case kvapprovals.StatusApproved:
		return 0
	case kvapprovals.StatusDenied:
		return exitDenied
	case kvapprovals.StatusExpired:
		return exitExpired
	case kvapprovals.StatusCancelled:
		return exitCancelled
	}
	return 1
}

// describe says how an approval ended, for people.
func describe(r *kvapprovals.Record) string {
	who := r.DecidedBy
	if r.Decider != nil && r.Decider.Source != kvapprovals.SourceAsserted {
		who = r.Decider.String()
	}
	s := fmt.Sprintf("%s.%s %s", r.Tenant, r.ID, r.Status)
	if who != "" {
		s += " by " + who
	}
	if r.Reason != "" {
		s += ": " + r.Reason
	}
	return s
}

// awaitDecision waits until the approval is final and prints how it ended
// on stderr (and the record on stdout with asJSON). It returns the record,
// or the wait's error: ctx's when it ends first.
func awaitDecision(ctx context.Context, s *session, tenant, id string, asJSON bool, stdout, stderr io.Writer) (kvapprovals.Record, error) {
	r, err := s.client.Await(ctx, tenant, id)
	if err != nil {
		return r, err
	}
	fmt.Fprintln(stderr, describe(&r))
	if asJSON {
		_ = printJSON(stdout, r)
	}
	return r, nil
}

const execUsage = `exec --tenant T [flags] -- COMMAND [ARG...]

Asks for an approval to run COMMAND and runs it only when it is approved.
The approval's details carry the command (argv), the working directory and
the host. While waiting, Ctrl-C cancels the approval. Once approved, the
command runs with stdin, stdout and stderr passed through, under a budget
(--budget, default the EXECUTION_CONTAINMENT budget of the timeout policy,
60s): at its end the command's whole process group gets SIGTERM, then
SIGKILL after --kill-after, and one TIMEOUT_EXECUTION_CONTAINMENT audit
event is recorded. The start and the end of the run (exit code, duration,
who approved) are lifecycle events of the approval (execution_started,
execution_finished).

Exit status: the command's own when it ran; 124 when it ran out of its
budget; 3 denied, 4 expired, 5 cancelled (the command never started); 130
interrupted while waiting (the approval is cancelled); 1 for an error; 2 for
bad usage.

Example:
  guardian exec --tenant acme --requested-by agent-7 --timeout 15m --budget 10m \
      -- kubectl rollout restart deploy/payments`

func execCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("exec", execUsage, stderr)
	var cf clientFlags
	cf.register(fs)
	tenant := fs.String("tenant", envOr("GUARDIAN_TENANT", "default"), "tenant: GUARDIAN_TENANT when set, else default")
	requestedBy := fs.String("requested-by", "", "who asks (default: your NATS user where guardian requires identities, else $USER)")
	id := fs.String("id", "", "approval id (default: a random one); reuse it to retry safely")
	session := fs.String("session", "", "session id (default: exec-HOST-PID)")
	timeout := fs.Duration("timeout", 0, "how long the approval may take (default: the service's)")
	budget := fs.Duration("budget", 0, "how long the command may run once approved (default: the EXECUTION_CONTAINMENT budget)")
	killAfter := fs.Duration("kill-after", 5*time.Second, "how long after SIGTERM the command's process group gets SIGKILL")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 {
		fmt.Fprintln(stderr, "guardian: exec needs a command after --, e.g. guardian exec --tenant acme -- kubectl get pods")
		return exitError{2}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(stderr, "guardian: %s: %v\n", argv[0], err)
		return exitError{2}
	}
	host, _ := os.Hostname()
	cwd, _ := os.Getwd()
	if *session == "" {
		*session = fmt.Sprintf("exec-%s-%d", host, os.Getpid())
	}
	details, _ := json.Marshal(map[string]any{"argv": argv, "cwd": cwd, "host": host})

	s, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer s.close()
	if *budget == 0 {
		p := s.g.Policy()
		*budget = p.Budget(jsguard.ExecutionContainment)
	}

	// Ask.
	var in any = kvapprovals.RequestInput{ID: *id, SessionID: *session, RequestedBy: *requestedBy, Details: details, Timeout: kvapprovals.Duration(*timeout)}
	rctx, cancel := context.WithTimeout(ctx, cf.timeout)
	out, err := withActor(&in, func() (any, error) { return s.client.Request(rctx, *tenant, in.(kvapprovals.RequestInput)) })
	cancel()
	if err != nil {
		return apiFailure(stderr, err)
	}
	rec := out.(kvapprovals.Record)
	fmt.Fprintf(stderr, "guardian: waiting for approval %s.%s (expires at %s); Ctrl-C cancels it\n", rec.Tenant, rec.ID, rec.ExpiresAt.Format(time.RFC3339))

	// Wait; Ctrl-C cancels the approval. The signal is caught here rather
	// than through main's context, so that the cancellation can still go
	// out.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	wctx, stopWait := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWait()
	interrupted := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			close(interrupted)
			stopWait()
		case <-ctx.Done():
			close(interrupted)
			stopWait()
		case <-wctx.Done():
		}
	}()
	final, err := awaitDecision(wctx, s, rec.Tenant, rec.ID, cf.json, stdout, stderr)
	select {
	case <-interrupted:
		cctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
		defer cancel()
		cin := any(kvapprovals.CancelInput{ID: rec.ID, CancelledBy: rec.RequestedBy, Reason: "interrupted while waiting (guardian exec)"})
		if _, cerr := withActor(&cin, func() (any, error) { return s.client.Cancel(cctx, rec.Tenant, cin.(kvapprovals.CancelInput)) }); cerr != nil {
			fmt.Fprintf(stderr, "guardian: interrupted; cancelling %s.%s failed: %v\n", rec.Tenant, rec.ID, cerr)
		} else {
			fmt.Fprintf(stderr, "guardian: interrupted; %s.%s cancelled\n", rec.Tenant, rec.ID)
		}
		return exitError{exitInterrupted}
	default:
	}
	if err != nil {
		return apiFailure(stderr, err)
	}
	if final.Status != kvapprovals.StatusApproved {
		fmt.Fprintf(stderr, "guardian: not running %s\n", filepath.Base(argv[0]))
		return exitError{outcomeCode(final.Status)}
	}

	// Run.
	report := func(phase string, code *int, took time.Duration, timedOut bool) {
		rctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
		defer cancel()
		ein := any(kvapprovals.ExecutionInput{ID: final.ID, Phase: phase, Argv: argv, Host: host, ExitCode: code, Duration: kvapprovals.Duration(took), TimedOut: timedOut, RunBy: final.RequestedBy})
		if _, err := withActor(&ein, func() (any, error) {
			return s.client.RecordExecution(rctx, final.Tenant, ein.(kvapprovals.ExecutionInput))
		}); err != nil {
			fmt.Fprintf(stderr, "guardian: recording the execution's %s: %v\n", phase, err)
		}
	}
	cmd := exec.Command(path, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", argv[0], err)
	}
	report("started", nil, 0, false)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	pgid := cmd.Process.Pid
	deadline := time.NewTimer(*budget)
	defer deadline.Stop()
	var timedOut bool
	var waitErr error
wait:
	for {
		select {
		case waitErr = <-done:
			break wait
		case sig := <-sigs:
			_ = syscall.Kill(-pgid, sig.(syscall.Signal)) // passed on to the command
		case <-deadline.C:
			timedOut = true
			fmt.Fprintf(stderr, "guardian: %s ran out of its budget of %s: SIGTERM, SIGKILL after %s\n", filepath.Base(argv[0]), *budget, *killAfter)
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			select {
			case waitErr = <-done:
			case <-time.After(*killAfter):
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				waitErr = <-done
			}
			break wait
		}
	}
	took := time.Since(start)
	code := cmd.ProcessState.ExitCode()
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) && code < 0 {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	if timedOut {
		code = exitBudget
		now := time.Now().UTC()
		ev := jsguard.Event{Code: jsguard.ExecutionContainment.Code(), Operation: "exec " + filepath.Base(argv[0]) + " (approval " + final.Tenant + "/" + final.ID + ")",
			TimeoutSeconds: budget.Seconds(), ElapsedSeconds: took.Seconds(), TenantID: final.Tenant, CorrelationID: final.SessionID,
			Timestamp: now, StartedAt: now.Add(-took), Abandoned: true,
			AdditionalContext: map[string]string{"approval_id": final.ID, "host": host, "approved_by": final.DecidedBy}}
		actx, cancel := context.WithTimeout(context.Background(), cf.timeout)
		if _, err := s.client.Report(actx, ev); err != nil {
			fmt.Fprintf(stderr, "guardian: recording the %s audit event: %v\n", ev.Code, err)
		}
		cancel()
	}
	report("finished", &code, took, timedOut)
	if code != 0 {
		return exitError{code}
	}
	return nil
}
