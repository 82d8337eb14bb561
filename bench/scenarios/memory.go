package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/bench/internal/natsrv"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// MemoryConfig sizes scenario 5.
type MemoryConfig struct {
	Guardian string // the guardian binary
	Self     string // this program, re-run as the nats-server and the in-memory baseline
	WorkDir  string
	Levels   []int // pending approvals at which to measure (0, 10k, 100k; 1M in full mode)
	InFlight int   // requests in flight while filling
}

// MemPoint is one measurement.
type MemPoint struct {
	Pending int
	// Guardian process (no nats-server inside): resident set, its peak,
	// and the Go heap from its /metrics (go_memstats_heap_alloc_bytes and
	// _inuse_bytes), each the minimum of three samples a second apart.
	RSS, HWM, HeapAlloc, HeapInuse float64
	// The nats-server process, for context.
	ServerRSS float64
	// The in-memory baseline: a map of pending approvals and a Go timer
	// each, in a process of its own, after GC.
	BaseRSS, BaseHeap float64
	FillRate          float64 // approvals per second while filling up to Pending
}

// MemoryResult is scenario 5's outcome.
type MemoryResult struct{ Points []MemPoint }

// Memory measures scenario 5. A nats-server runs in a process of its own
// (this program with -role natsd); the guardian binary connects to it
// (GUARDIAN_NATS_URL, so no embedded server) with its expirer, notifier
// and API running; this process fills it with pending approvals (1h
// timeouts, warnings on) through the API and samples the guardian
// process's RSS and Go heap at each level once the notifier has caught
// up. The baseline runs this program with -role memseed: a map of the same
// number of pending approvals with one Go timer each.
func Memory(ctx context.Context, cfg MemoryConfig, progress func(string)) (MemoryResult, error) {
	var res MemoryResult
	port, err := natsrv.FreePort()
	if err != nil {
		return res, err
	}
	httpPort, err := natsrv.FreePort()
	if err != nil {
		return res, err
	}
	dir := filepath.Join(cfg.WorkDir, "memory")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	ns, err := StartProc(cfg.Self, []string{"-role", "natsd", "-port", strconv.Itoa(port), "-store", filepath.Join(dir, "nats")}, nil, filepath.Join(cfg.WorkDir, "natsd-memory.log"))
	if err != nil {
		return res, err
	}
	defer ns.Stop(30 * time.Second)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	if err := waitNATS(ns, url, 60*time.Second); err != nil {
		return res, err
	}
	gp, err := StartProc(cfg.Guardian, []string{"serve"}, []string{
		"GUARDIAN_NATS_URL=" + url,
		"GUARDIAN_HTTP_ADDR=127.0.0.1:" + strconv.Itoa(httpPort),
		"GUARDIAN_DATA_DIR=" + filepath.Join(dir, "guardian"),
		"GUARDIAN_LOG_FORMAT=json",
		"GUARDIAN_LOG_LEVEL=warn",
		"GUARDIAN_APPROVAL_MAX_PENDING=0",
		"GUARDIAN_APPROVAL_DEFAULT_TIMEOUT=1h",
	}, filepath.Join(cfg.WorkDir, "guardian-memory.log"))
	if err != nil {
		return res, err
	}
	defer gp.Stop(30 * time.Second)
	nc, err := WaitGuardian(gp, url, 90*time.Second)
	if err != nil {
		return res, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return res, err
	}
	events, err := js.Stream(ctx, "GUARDIAN_EVENTS")
	if err != nil {
		return res, err
	}
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)
	filled := 0
	for _, level := range cfg.Levels {
		pt := MemPoint{Pending: level}
		if level > filled {
			progress(fmt.Sprintf("memory: filling to %s pending", count(level)))
			start := time.Now()
			if err := fill(ctx, nc, filled, level, cfg.InFlight); err != nil {
				return res, fmt.Errorf("fill to %d: %w", level, err)
			}
			if err := waitUntil(ctx, 10*time.Minute, func() bool {
				info, err := events.Info(ctx)
				return err == nil && info.State.Msgs >= uint64(level)
			}); err != nil {
				return res, fmt.Errorf("notifier catching up to %d: %w", level, err)
			}
			pt.FillRate = float64(level-filled) / time.Since(start).Seconds()
			filled = level
		}
		time.Sleep(2 * time.Second)
		pt.RSS, pt.HWM, pt.HeapAlloc, pt.HeapInuse = -1, 0, -1, -1
		for range 3 {
			rss, hwm, err := RSS(gp.Cmd.Process.Pid)
			if err != nil {
				return res, err
			}
			m, err := ScrapeMetrics(metrics, "go_memstats_heap_alloc_bytes", "go_memstats_heap_inuse_bytes")
			if err != nil {
				return res, fmt.Errorf("guardian /metrics: %w", err)
			}
			pt.RSS, pt.HWM = minPos(pt.RSS, rss), max(pt.HWM, hwm)
			pt.HeapAlloc = minPos(pt.HeapAlloc, m["go_memstats_heap_alloc_bytes"])
			pt.HeapInuse = minPos(pt.HeapInuse, m["go_memstats_heap_inuse_bytes"])
			time.Sleep(time.Second)
		}
		pt.ServerRSS, _, _ = RSS(ns.Cmd.Process.Pid)
		progress(fmt.Sprintf("memory: in-memory baseline at %s", count(level)))
		base, err := memSeedChild(ctx, cfg.Self, level)
		if err != nil {
			return res, fmt.Errorf("in-memory baseline %d: %w", level, err)
		}
		pt.BaseRSS, pt.BaseHeap = base.RSS, base.HeapAlloc
		res.Points = append(res.Points, pt)
	}
	if ok, err := gp.Exited(); ok {
		return res, fmt.Errorf("guardian exited during the run (%v):\n%s", err, gp.Tail(15))
	}
	return res, nil
}

func minPos(a, b float64) float64 {
	if a < 0 || b < a {
		return b
	}
	return a
}

// fill requests approvals from index from to to, inFlight at a time,
// round-robin over 16 tenants.
func fill(ctx context.Context, nc *nats.Conn, from, to, inFlight int) error {
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	errs := make(chan error, inFlight)
	for range inFlight {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(to) {
					return
				}
				body := fmt.Appendf(nil, `{"id":"m%d","session_id":"s-%d","requested_by":"bench"}`, i, i)
				var err error
				// Same id on a retry: guardian returns the same approval.
				for attempt := 0; attempt < 5 && ctx.Err() == nil; attempt++ {
					rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					var m *nats.Msg
					m, err = nc.RequestWithContext(rctx, fmt.Sprintf("guardian.v1.m%02d.approvals.request", i%16), body)
					cancel()
					if err == nil && m.Header.Get(micro.ErrorCodeHeader) != "" {
						err = fmt.Errorf("%s: %s", m.Header.Get(micro.ErrorCodeHeader), m.Data)
					}
					if err == nil {
						break
					}
				}
				if err != nil {
					errs <- fmt.Errorf("approval %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// MemSeed is what the in-memory baseline process reports.
type MemSeed struct {
	N         int     `json:"n"`
	HeapAlloc float64 `json:"heap_alloc"`
	RSS       float64 `json:"rss"`
}

// pendingEntry is the in-memory design's per-approval state: the record
// and its expiry timer.
type pendingEntry struct {
	rec   kvapprovals.Record
	timer *time.Timer
}

// RunMemSeed is the body of the in-memory baseline process: it holds n
// pending approvals in a map, each with its own time.AfterFunc timer (1h),
// collects garbage and reports heap and RSS as JSON on stdout.
func RunMemSeed(n int) error {
	var expired atomic.Int64
	var mu sync.Mutex
	m := make(map[string]*pendingEntry)
	now := time.Now().UTC()
	for i := range n {
		id := fmt.Sprintf("m%d", i)
		tenant := fmt.Sprintf("m%02d", i%16)
		key := tenant + "." + id
		e := &pendingEntry{rec: kvapprovals.Record{
			ID: id, Tenant: tenant, SessionID: fmt.Sprintf("s-%d", i), RequestedBy: "bench",
			Status: kvapprovals.StatusPending, Timeout: kvapprovals.Duration(time.Hour),
			RequestedAt: now, ExpiresAt: now.Add(time.Hour),
		}}
		e.timer = time.AfterFunc(time.Hour, func() {
			mu.Lock()
			delete(m, key)
			mu.Unlock()
			expired.Add(1)
		})
		mu.Lock()
		m[key] = e
		mu.Unlock()
	}
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _, err := RSS(os.Getpid())
	if err != nil {
		return err
	}
	runtime.KeepAlive(m)
	return json.NewEncoder(os.Stdout).Encode(MemSeed{N: n, HeapAlloc: float64(ms.HeapAlloc), RSS: rss})
}

func memSeedChild(ctx context.Context, self string, n int) (MemSeed, error) {
	out, err := exec.CommandContext(ctx, self, "-role", "memseed", "-n", strconv.Itoa(n)).Output()
	if err != nil {
		return MemSeed{}, err
	}
	var s MemSeed
	if err := json.Unmarshal(out, &s); err != nil {
		return MemSeed{}, fmt.Errorf("%w: %q", err, out)
	}
	return s, nil
}

// RunNatsd is the body of the nats-server process: a JetStream node on
// 127.0.0.1:port storing under store, until ctx ends.
func RunNatsd(ctx context.Context, port int, store string) error {
	s, err := natsrv.Start(store, port)
	if err != nil {
		return err
	}
	fmt.Println("ready", s.ClientURL())
	<-ctx.Done()
	natsrv.Stop(s)
	return nil
}

// Rows returns scenario 5's rows; target: guardian's RSS flat and ≤ 64 MiB.
func (r MemoryResult) Rows() []Row {
	var rows []Row
	if len(r.Points) == 0 {
		return rows
	}
	prev := r.Points[0]
	for _, pt := range r.Points {
		sc := fmt.Sprintf("5 Memory, %s pending", count(pt.Pending))
		g := fmt.Sprintf("RSS %s (peak %s), heap %s", mib(pt.RSS), mib(pt.HWM), mib(pt.HeapAlloc))
		b := fmt.Sprintf("RSS %s, heap %s", mib(pt.BaseRSS), mib(pt.BaseHeap))
		growth := ""
		if added := float64(pt.Pending - prev.Pending); added > 0 {
			growth = fmt.Sprintf("heap %+.1f B per added approval (in-memory %+.0f B)", (pt.HeapAlloc-prev.HeapAlloc)/added,
				(pt.BaseHeap-prev.BaseHeap)/added)
		}
		prev = pt
		rows = append(rows, Row{sc, "guardian process (nats-server apart) vs in-memory map + timer per approval", g, b, growth,
			"RSS ≤ 64 MiB", check(pt.RSS <= 64<<20)})
		rows = append(rows, Row{sc, "nats-server process RSS (context)", mib(pt.ServerRSS), "", "", "", Info})
	}
	return rows
}
