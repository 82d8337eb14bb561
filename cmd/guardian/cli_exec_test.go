package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// cliRun is a guardian CLI command running in the background.
type cliRun struct {
	cmd            *exec.Cmd
	stdout, stderr lockedBuffer // read while the command writes
	done           chan struct{}
	code           int
}

func (g *guardian) startCLI(t *testing.T, env []string, args ...string) *cliRun {
	t.Helper()
	r := &cliRun{done: make(chan struct{})}
	r.cmd = exec.Command(bin, args...)
	r.cmd.Env = append(append(slicesClone(g.env), "GUARDIAN_NATS_URL="+g.natsURL), env...)
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := r.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		}
		close(r.done)
	}()
	t.Cleanup(func() { _ = r.cmd.Process.Kill(); <-r.done })
	return r
}

// wait waits at most d for the command to end and returns its exit code.
func (r *cliRun) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-r.done:
		return r.code
	case <-time.After(d):
		t.Fatalf("%s did not end within %s\nstdout:\n%s\nstderr:\n%s", strings.Join(r.cmd.Args, " "), d, r.stdout.String(), r.stderr.String())
		return -1
	}
}

// testCLIExec: guardian exec runs the command only when it is approved, with
// the command's exit code; denied, expired and cancelled approvals never
// start it and exit 3, 4 and 5; Ctrl-C while waiting cancels the approval
// (130); a command that ignores SIGTERM is killed at the end of its budget
// (124) with one TIMEOUT_EXECUTION_CONTAINMENT audit event; the start and
// end of a run are the approval's events. approval wait and request --wait
// exit the same way, and a decision made before the wait is reported at
// once.
func testCLIExec(t *testing.T, g *guardian, nc *nats.Conn) {
	const tenant = "cli-exec"
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	user := []string{"USER=agent-7"}
	decide := func(op, id string) {
		t.Helper()
		// the approval exists once the command printed that it waits
		eventually(t, 10*time.Second, func() (bool, string) {
			rep := request(t, nc, subj(tenant, "get"), map[string]string{"id": id}, nil)
			return rep.Code == "", "the approval " + id
		})
		field := "decided_by"
		if op == "cancel" {
			field = "cancelled_by"
		}
		request(t, nc, subj(tenant, op), map[string]string{"id": id, field: "bob", "reason": "tested"}, nil).ok(t, nil)
	}

	// Approved: the command runs, its exit code is exec's.
	run := g.startCLI(t, user, "exec", "--tenant", tenant, "--id", "x-ok", "--timeout", "1m", "--", "sh", "-c", "echo ran; touch "+marker+"; exit 7")
	decide("approve", "x-ok")
	if code := run.wait(t, 20*time.Second); code != 7 || strings.TrimSpace(run.stdout.String()) != "ran" || !strings.Contains(run.stderr.String(), "approved by bob: tested") {
		t.Fatalf("approved exec: exit %d, stdout %q, stderr %q", code, run.stdout.String(), run.stderr.String())
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the approved command did not run: %v", err)
	}
	// Its start and end are events of the approval.
	js, _ := jetstream.New(nc)
	for _, kind := range []string{kvapprovals.KindExecutionStarted, kvapprovals.KindExecutionFinished} {
		eventually(t, 10*time.Second, func() (bool, string) {
			st, err := js.Stream(t.Context(), "GUARDIAN_EVENTS")
			if err != nil {
				return false, err.Error()
			}
			m, err := st.GetLastMsgForSubject(t.Context(), "guardian.v1.events."+tenant+"."+kind)
			if err != nil {
				return false, kind + ": " + err.Error()
			}
			var ev kvapprovals.Event
			if json.Unmarshal(m.Data, &ev) != nil || ev.Execution == nil || ev.ID != "x-ok" || ev.Execution.ApprovedBy != "bob" || ev.Execution.RunBy != "agent-7" {
				return false, kind + ": " + string(m.Data)
			}
			if kind == kvapprovals.KindExecutionFinished && (ev.Execution.ExitCode == nil || *ev.Execution.ExitCode != 7 || ev.Execution.Duration <= 0) {
				return false, "finished: " + string(m.Data)
			}
			return true, ""
		})
	}

	// Denied, expired, cancelled: never started.
	os.Remove(marker)
	for _, tc := range []struct {
		id, op  string
		timeout string
		want    int
	}{{"x-deny", "deny", "1m", exitDenied}, {"x-expire", "", "1s", exitExpired}, {"x-cancel", "cancel", "1m", exitCancelled}} {
		run := g.startCLI(t, user, "exec", "--tenant", tenant, "--id", tc.id, "--timeout", tc.timeout, "--", "touch", marker)
		if tc.op != "" {
			decide(tc.op, tc.id)
		}
		if code := run.wait(t, 30*time.Second); code != tc.want {
			t.Errorf("%s: exit %d, want %d\n%s", tc.id, code, tc.want, run.stderr.String())
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("%s: the command ran", tc.id)
		}
	}

	// Ctrl-C while waiting cancels the approval.
	run = g.startCLI(t, user, "exec", "--tenant", tenant, "--id", "x-int", "--timeout", "1m", "--", "touch", marker)
	eventually(t, 10*time.Second, func() (bool, string) {
		return strings.Contains(run.stderr.String(), "Ctrl-C cancels it"), run.stderr.String()
	})
	_ = run.cmd.Process.Signal(syscall.SIGINT)
	if code := run.wait(t, 20*time.Second); code != exitInterrupted {
		t.Errorf("interrupted exec: exit %d, want %d\n%s", code, exitInterrupted, run.stderr.String())
	}
	var r kvapprovals.Record
	request(t, nc, subj(tenant, "get"), map[string]string{"id": "x-int"}, nil).ok(t, &r)
	if r.Status != kvapprovals.StatusCancelled || r.DecidedBy != "agent-7" {
		t.Errorf("after Ctrl-C: %s by %q, want cancelled by the requester", r.Status, r.DecidedBy)
	}

	// A command that ignores SIGTERM: killed at budget + kill-after.
	run = g.startCLI(t, user, "exec", "--tenant", tenant, "--id", "x-budget", "--timeout", "1m", "--budget", "1s", "--kill-after", "1s",
		"--", "sh", "-c", "trap '' TERM; echo started; sleep 60")
	decide("approve", "x-budget")
	start := time.Now()
	code := run.wait(t, 20*time.Second)
	if code != exitBudget || !strings.Contains(run.stderr.String(), "ran out of its budget of 1s") {
		t.Errorf("budget: exit %d after %s, want %d\n%s", code, time.Since(start), exitBudget, run.stderr.String())
	}
	out, _, c := g.cli(t, "audit", "tail", "--follow=false", "--json", "--tenant", tenant, "--code", "TIMEOUT_EXECUTION_CONTAINMENT")
	if c != 0 || strings.Count(out, "TIMEOUT_EXECUTION_CONTAINMENT") != 1 || !strings.Contains(out, `"approval_id":"x-budget"`) {
		t.Errorf("containment audit events (exit %d):\n%s", c, out)
	}

	// approval wait and request --wait.
	request(t, nc, subj(tenant, "request"), map[string]string{"id": "w-before", "session_id": "s", "requested_by": "alice"}, nil).ok(t, nil)
	request(t, nc, subj(tenant, "approve"), map[string]string{"id": "w-before", "decided_by": "bob"}, nil).ok(t, nil)
	if _, stderr, code := g.cli(t, "approval", "wait", "--tenant", tenant, "--id", "w-before"); code != 0 || !strings.Contains(stderr, "approved by bob") {
		t.Errorf("wait for an approval decided before: exit %d, %q", code, stderr)
	}
	run = g.startCLI(t, user, "approval", "request", "--tenant", tenant, "--id", "w-deny", "--session", "s", "--timeout", "1m", "--wait")
	decide("deny", "w-deny")
	if code := run.wait(t, 20*time.Second); code != exitDenied || !strings.Contains(run.stderr.String(), "denied by bob: tested") {
		t.Errorf("request --wait, denied: exit %d\n%s", code, run.stderr.String())
	}
}
