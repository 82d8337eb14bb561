package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var fullFlag = flag.Bool("e2e.full", false, "run the end-to-end scenarios at full scale (10,000 approvals, 30 s outages); also GUARDIAN_E2E_FULL=1")

// full reports whether the scenarios run at full scale.
func full() bool { return *fullFlag || os.Getenv("GUARDIAN_E2E_FULL") == "1" }

// scale returns def in the default run and fullN in the full run.
func scale[T any](def, fullN T) T {
	if full() {
		return fullN
	}
	return def
}

// binDir holds the guardian binary built for this run.
var binDir string

var build struct {
	once sync.Once
	path string
	err  error
	took time.Duration
}

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "guardian-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// guardianBinary builds cmd/guardian once per run and returns its path.
func guardianBinary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		start := time.Now()
		path := filepath.Join(binDir, "guardian")
		out, err := exec.Command(goTool(), "build", "-o", path, "../../cmd/guardian").CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("go build ../../cmd/guardian: %v\n%s", err, out)
			return
		}
		build.path, build.took = path, time.Since(start)
		fmt.Printf("e2e: built guardian in %s\n", build.took.Round(time.Millisecond))
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

// goTool returns the go command's path.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// skipShort skips a slow scenario under -short.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("slow end-to-end scenario; skipped with -short")
	}
}
