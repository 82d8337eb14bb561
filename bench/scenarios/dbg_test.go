package scenarios

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jsguardian/guardian/bench/internal/natsrv"
)

func TestDbgRaw(t *testing.T) {
	if os.Getenv("DBG") == "" {
		t.Skip()
	}
	dir := t.TempDir()
	srv, err := natsrv.Start(filepath.Join(dir, "nats"), -1)
	if err != nil {
		t.Fatal(err)
	}
	defer natsrv.Stop(srv)
	nc, js, err := natsrv.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var run ExpiryRun
	cfg := ExpiryConfig{MinTimeout: time.Second, MaxTimeout: 10 * time.Second, Creators: 8}
	start := time.Now()
	if err := rawMarkers(t.Context(), js, cfg, 10000, &run); err != nil {
		t.Fatal(err)
	}
	t.Logf("create %.0f/s span %s; %+v (took %s)", run.RawCreate, run.RawDueSpan, run.Raw, time.Since(start))
	// lateness by arrival order
	for i := 0; i < len(run.RawLate); i += 500 {
		t.Logf("arrival %5d: late %s", i, run.RawLate[i])
	}
}
