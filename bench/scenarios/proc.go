package scenarios

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// BuildGuardian builds guardian's binary from the repository root into dir
// and returns its path. It returns the build's output as the error when
// the build fails.
func BuildGuardian(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "guardian")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/guardian")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/guardian in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}

// Proc is a child process whose stderr (and stdout) go to a log file.
type Proc struct {
	Cmd  *exec.Cmd
	Log  string
	done chan struct{}
	err  error
}

// StartProc starts bin with args and env (added to the environment
// without GUARDIAN_* variables), logging to logPath.
func StartProc(bin string, args []string, env []string, logPath string) (*Proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GUARDIAN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &Proc{Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM and waits up to d, then kills the process.
func (p *Proc) Stop(d time.Duration) error {
	if ok, err := p.Exited(); ok {
		return err
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		_ = p.Cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %s: killed", filepath.Base(p.Cmd.Path), d)
	}
}

// Tail returns the last n lines of the log.
func (p *Proc) Tail(n int) string {
	b, _ := os.ReadFile(p.Log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitGuardian connects to url and waits until the guardian micro service
// answers a ping, or the process ends, or d passes.
func WaitGuardian(p *Proc, url string, d time.Duration) (*nats.Conn, error) {
	deadline := time.Now().Add(d)
	var nc *nats.Conn
	for {
		if ok, err := p.Exited(); ok {
			return nil, fmt.Errorf("guardian exited (%v):\n%s", err, p.Tail(15))
		}
		if time.Now().After(deadline) {
			if nc != nil {
				nc.Close()
			}
			return nil, fmt.Errorf("guardian not ready within %s:\n%s", d, p.Tail(15))
		}
		if nc == nil {
			c, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			nc = c
		}
		if _, err := nc.Request("$SRV.PING.guardian", nil, time.Second); err == nil {
			return nc, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitNATS waits until a server process accepts connections at url.
func waitNATS(p *Proc, url string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if ok, err := p.Exited(); ok {
			return fmt.Errorf("nats-server exited (%v):\n%s", err, p.Tail(15))
		}
		nc, err := nats.Connect(url)
		if err == nil {
			nc.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats-server not ready within %s: %w", d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ProcCPU returns the user plus system CPU time pid has used, from
// /proc/<pid>/stat (clock ticks of 10ms).
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("malformed /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed /proc stat")
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// RSS returns the resident set size and its peak (VmRSS, VmHWM) of pid in
// bytes, from /proc.
func RSS(pid int) (rss, hwm float64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return 0, 0, err
		}
		if k == "VmRSS" {
			rss = kb * 1024
		} else {
			hwm = kb * 1024
		}
	}
	return rss, hwm, sc.Err()
}

// ScrapeMetrics returns the named gauges of a Prometheus text endpoint.
func ScrapeMetrics(url string, names ...string) (map[string]float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		for _, n := range names {
			if v, ok := strings.CutPrefix(line, n+" "); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err == nil {
					out[n] = f
				}
			}
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return out, errors.New("metric " + n + " not found")
		}
	}
	return out, nil
}
