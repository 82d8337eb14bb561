package kvapprovals

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
)

// percentiles returns p50, p99 and max of ds.
func percentiles(ds []time.Duration) (p50, p99, max time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[int(math.Ceil(q*float64(len(s))))-1] }
	return at(0.50), at(0.99), s[len(s)-1]
}

// requestMany creates n approvals in tenant with 8 goroutines; timeout(i)
// gives each one's timeout.
func requestMany(t testing.TB, svc *Service, tenant string, n int, timeout func(i int) time.Duration) {
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				in := RequestInput{ID: fmt.Sprint("a", i), SessionID: "s", RequestedBy: "alice", Timeout: Duration(timeout(i))}
				if _, err := svc.Request(context.Background(), tenant, in); err != nil {
					t.Errorf("request %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestExpiryLateness expires 1,000 approvals due within 1–3 s and logs how
// late each expired event was seen after expires_at + grace, next to the raw
// TTL markers of 1,000 plain keys measured in the same run.
func TestExpiryLateness(t *testing.T) {
	const n = 1000
	e := newEnv(t, func(c *Config) { c.GracePeriod = 0; c.MaxPending = 0 })
	nc, _ := natstest.Connect(t, e.srv)
	var mu sync.Mutex
	var late []time.Duration
	seen := map[string]int{}
	sub, err := nc.Subscribe("guardian.v1.events.lat.expired", func(m *nats.Msg) {
		at := time.Now()
		var ev Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return
		}
		mu.Lock()
		seen[ev.ID]++
		late = append(late, at.Sub(ev.Record.Deadline(0)))
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	startConsumers(t, e.svc)

	start := time.Now()
	requestMany(t, e.svc, "lat", n, func(i int) time.Duration { return time.Duration(1+i%3) * time.Second })
	created := time.Since(start)
	waitFor(t, 20*time.Second, "1000 expired events", func() bool { mu.Lock(); defer mu.Unlock(); return len(late) >= n })
	time.Sleep(300 * time.Millisecond) // a duplicate would arrive now
	mu.Lock()
	p50, p99, max := percentiles(late)
	if len(seen) != n || len(late) != n {
		t.Errorf("%d expired events for %d approvals, want %d each once", len(late), len(seen), n)
	}
	mu.Unlock()
	t.Logf("guardian: %d approvals created in %s (%.0f/s); expired event seen after expires_at+grace: p50 %s p99 %s max %s",
		n, created.Round(time.Millisecond), float64(n)/created.Seconds(), p50.Round(time.Millisecond), p99.Round(time.Millisecond), max.Round(time.Millisecond))
	if max > 3*time.Second {
		t.Errorf("max lateness %s, want < 3s", max)
	}
	if p50 < 0 {
		t.Errorf("expired before the deadline: p50 %s", p50)
	}
	rp50, rp99, rmax := rawMarkerLateness(t, e.js, n)
	t.Logf("raw TTL markers, same run:  p50 %s p99 %s max %s; guardian p99 - raw p99 = %s",
		rp50.Round(time.Millisecond), rp99.Round(time.Millisecond), rmax.Round(time.Millisecond), (p99 - rp99).Round(time.Millisecond))
}

// rawMarkerLateness creates n plain keys with TTLs of 1–3 s and measures
// when a durable consumer receives their markers.
func rawMarkerLateness(t *testing.T, js jetstream.JetStream, n int) (p50, p99, max time.Duration) {
	ctx := t.Context()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "RAW", LimitMarkerTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "KV_RAW", jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	due := make([]time.Time, n)
	var mu sync.Mutex
	var late []time.Duration
	cc, err := cons.Consume(func(m jetstream.Msg) {
		at := time.Now()
		if m.Headers().Get(jetstream.MarkerReasonHeader) != "MaxAge" {
			return
		}
		var i int
		fmt.Sscanf(strings.TrimPrefix(m.Subject(), "$KV.RAW.k"), "%d", &i)
		mu.Lock()
		late = append(late, at.Sub(due[i]))
		mu.Unlock()
	}, jetstream.ConsumeErrHandler(func(jetstream.ConsumeContext, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				ttl := time.Duration(1+i%3) * time.Second
				now := time.Now()
				if _, err := kv.Create(ctx, fmt.Sprint("k", i), nil, jetstream.KeyTTL(ttl)); err != nil {
					t.Errorf("raw create: %v", err)
					return
				}
				mu.Lock()
				due[i] = now.Add(ttl)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	waitFor(t, 20*time.Second, "raw markers", func() bool { mu.Lock(); defer mu.Unlock(); return len(late) >= n })
	mu.Lock()
	defer mu.Unlock()
	return percentiles(late)
}

// TestDeadlineRace hits every approval with approves from several
// goroutines right around its deadline while the expirer runs: each ends in
// exactly one terminal state with one terminal event, and no approval is
// approved after expires_at + grace.
func TestDeadlineRace(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 300
	}
	const approvers = 3
	e := newEnv(t, func(c *Config) { c.GracePeriod = 0; c.MaxPending = 0; c.SendTimeoutWarnings = false })
	startConsumers(t, e.svc)

	// Each approval's approves are scheduled as soon as it exists.
	var wg sync.WaitGroup
	var okCount, decided, expired atomic.Int64
	wins := make([]atomic.Int32, n)
	schedule := func(i int, r Record) {
		// Approvers aim at deadline + base + {-2ms, 0, +2ms}, with base
		// from -8ms to +8ms, so that both outcomes are common.
		base := time.Duration(i%17-8) * time.Millisecond
		deadline := r.Deadline(0)
		for j := range approvers {
			wg.Add(1)
			time.AfterFunc(time.Until(deadline.Add(base+time.Duration(j-1)*2*time.Millisecond)), func() {
				defer wg.Done()
				_, err := e.svc.Approve(context.Background(), "race", DecisionInput{ID: r.ID, DecidedBy: fmt.Sprint("op", j)})
				switch {
				case err == nil:
					okCount.Add(1)
					wins[i].Add(1)
				case errors.Is(err, ErrExpired):
					expired.Add(1)
				case errors.Is(err, ErrAlreadyDecided):
					decided.Add(1)
				default:
					t.Errorf("approve %s: unexpected %v", r.ID, err)
				}
			})
		}
	}
	var creators sync.WaitGroup
	for w := range 8 {
		creators.Go(func() {
			for i := w; i < n; i += 8 {
				// Deadlines spread over 4s so that the approves are not
				// starved of CPU (under -race) and arrive near their deadline.
				in := RequestInput{ID: fmt.Sprint("a", i), SessionID: "s", RequestedBy: "alice", Timeout: Duration(2*time.Second + time.Duration(i%4)*time.Second)}
				r, err := e.svc.Request(context.Background(), "race", in)
				if err != nil {
					t.Errorf("request %d: %v", i, err)
					return
				}
				schedule(i, r)
			}
		})
	}
	creators.Wait()
	wg.Wait()
	terminalEvents := func() int {
		return e.countEvents("guardian.v1.events.race.approved") + e.countEvents("guardian.v1.events.race.expired")
	}
	for deadline := time.Now().Add(45 * time.Second); terminalEvents() < n; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			pending, _ := e.svc.List(t.Context(), "race", ListInput{Status: StatusPending, Limit: 10})
			t.Fatalf("after 45s: %d terminal events of %d; stats %+v; still pending: %+v", terminalEvents(), n, e.svc.Stats(), pending.Items)
		}
	}
	time.Sleep(300 * time.Millisecond)

	terminal := map[string][]string{}
	for _, ev := range e.events("guardian.v1.events.race.>") {
		if ev.Kind != KindRequested && ev.Kind != KindWarning {
			terminal[ev.ID] = append(terminal[ev.ID], ev.Kind)
		}
	}
	approved, expiredRecs := 0, 0
	revs := e.revisions("race")
	for i := range n {
		id := fmt.Sprint("a", i)
		var final []Record
		for _, r := range revs[id] {
			if r.Status.Terminal() {
				final = append(final, r)
			}
		}
		if len(final) != 1 {
			t.Errorf("%s: %d terminal revisions", id, len(final))
			continue
		}
		f := final[0]
		switch f.Status {
		case StatusApproved:
			approved++
			if f.DecidedAt.After(f.Deadline(0)) {
				t.Errorf("%s approved at %s, after its deadline %s", id, f.DecidedAt, f.Deadline(0))
			}
			if wins[i].Load() != 1 {
				t.Errorf("%s approved, but %d approves succeeded", id, wins[i].Load())
			}
		case StatusExpired:
			expiredRecs++
			if wins[i].Load() != 0 {
				t.Errorf("%s expired, but %d approves succeeded", id, wins[i].Load())
			}
		default:
			t.Errorf("%s ended %s", id, f.Status)
		}
		if evs := terminal[id]; len(evs) != 1 || evs[0] != string(f.Status) {
			t.Errorf("%s: terminal events %v, final status %s", id, evs, f.Status)
		}
	}
	if got := len(e.audit.byCode(expiredCode)); got != expiredRecs {
		t.Errorf("%d audit events for %d expired approvals", got, expiredRecs)
	}
	t.Logf("%d approvals: %d approved, %d expired; approves: %d ok, %d already decided, %d expired",
		n, approved, expiredRecs, okCount.Load(), decided.Load(), expired.Load())
}

var memApprovals = flag.Int("mem-approvals", 5000, "pending approvals TestMemoryFlat grows to")

// TestMemoryFlat shows that the service holds no per-approval state: the
// heap that kvapprovals code keeps alive stays flat from 1k to 5k pending
// approvals (-mem-approvals=20000 for more) while the expirer and notifier
// run. (The embedded nats-server
// shares the process, so the total heap grows with the data it stores;
// that growth is logged separately.)
func TestMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("5k approvals")
	}
	total := *memApprovals
	const rate = 4096
	old := runtime.MemProfileRate
	runtime.MemProfileRate = rate
	defer func() { runtime.MemProfileRate = old }()

	e := newEnv(t, func(c *Config) { c.DefaultTimeout = time.Hour; c.MaxPending = 0 })
	startConsumers(t, e.svc)
	measure := func(pending int) (svc, heap uint64) {
		waitFor(t, 90*time.Second, "notifier to catch up", func() bool {
			return e.countEvents("guardian.v1.events.mem.requested") == pending
		})
		for range 3 {
			runtime.GC()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return retainedByPackage(rate), ms.HeapAlloc
	}
	requestMany(t, e.svc, "mem", 1000, func(int) time.Duration { return 0 })
	svc1, heap1 := measure(1000)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 1000 + w; i < total; i += 8 {
				if _, err := e.svc.Request(context.Background(), "mem", RequestInput{ID: fmt.Sprint("a", i), SessionID: "s", RequestedBy: "alice"}); err != nil {
					t.Errorf("request: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	svcN, heapN := measure(total)
	added := float64(total - 1000)
	perApproval := (float64(svcN) - float64(svc1)) / added
	t.Logf("heap kept alive by kvapprovals code: %d KiB at 1k pending, %d KiB at %dk (%.1f B per added approval)",
		svc1>>10, svcN>>10, total/1000, perApproval)
	t.Logf("whole process heap (embedded nats-server included): %d KiB at 1k, %d KiB at %dk (%.0f B per approval: the server's stored records, timers and events)",
		heap1>>10, heapN>>10, total/1000, (float64(heapN)-float64(heap1))/added)
	if perApproval > 16 {
		t.Errorf("kvapprovals keeps %.1f B per pending approval, want ~0", perApproval)
	}
}

// retainedByPackage estimates the in-use heap allocated with a kvapprovals
// (non-test) function on the stack, from the memory profile sampled at rate.
func retainedByPackage(rate int) uint64 {
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, false)
	for {
		recs = make([]runtime.MemProfileRecord, n+100)
		var ok bool
		n, ok = runtime.MemProfile(recs, false)
		if ok {
			recs = recs[:n]
			break
		}
	}
	const pkg = "github.com/jsguardian/guardian/pkg/kvapprovals."
	var total float64
	for i := range recs {
		r := &recs[i]
		if r.InUseBytes() <= 0 {
			continue
		}
		ours := false
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if strings.HasPrefix(f.Function, pkg) && !strings.HasSuffix(f.File, "_test.go") {
				ours = true
				break
			}
			if !more {
				break
			}
		}
		if !ours {
			continue
		}
		// Undo the sampling as pprof does.
		avg := float64(r.InUseBytes()) / float64(r.InUseObjects())
		total += float64(r.InUseBytes()) / (1 - math.Exp(-avg/float64(rate)))
	}
	return uint64(total)
}
