package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// TestOutageSpool (scenario 6): a service reads its configuration from a
// KV bucket through jsguard, with guardian's audit publisher as the
// guard's sink, as the README shows. NATS becomes unreachable for a while:
// every read times out (TIMEOUT_KV_GET), the events go to the on-disk
// spool, and once NATS is back every one of them arrives in the audit
// stream exactly once, counted by event_id.
func TestOutageSpool(t *testing.T) {
	skipShort(t)
	outage := scale(3*time.Second, 30*time.Second)
	const budget = 200 * time.Millisecond
	ns := startNATS(t, nil)
	_, js := connect(t, ns.url)
	ctx := t.Context()

	pol := jsguard.DefaultPolicy()
	pol.Budgets[jsguard.KVGet] = budget
	g, err := jsguard.New(jsguard.WithPolicy(pol))
	if err != nil {
		t.Fatal(err)
	}
	acfg := auditstream.DefaultConfig()
	acfg.SpoolDir = t.TempDir()
	if _, err := auditstream.Ensure(ctx, g, js, acfg); err != nil {
		t.Fatal(err)
	}
	pub, err := auditstream.NewPublisher(g, js, acfg)
	if err != nil {
		t.Fatal(err)
	}
	g.SetSink(pub)
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runDone := make(chan error, 1)
	go func() { runDone <- pub.Run(runCtx) }()
	t.Cleanup(func() {
		stopRun()
		if err := <-runDone; err != nil {
			t.Errorf("publisher Run: %v", err)
		}
		_ = pub.Close()
	})

	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "APP_CONFIG", Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "feature.flags", []byte(`{"beta":true}`)); err != nil {
		t.Fatal(err)
	}
	gkv := g.KV(kv)

	var mu sync.Mutex
	timeouts := map[string]bool{} // event ids the callers saw
	var reads, otherErrs int
	var firstOtherErr error
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	t.Cleanup(halt) // also when a restart fails the test
	for w := range 4 {
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				cctx := jsguard.WithCorrelationID(jsguard.WithTenant(ctx, "acme"), fmt.Sprintf("req-%d-%d", w, k))
				_, err := gkv.Get(cctx, "feature.flags")
				var te *jsguard.TimeoutError
				mu.Lock()
				reads++
				switch {
				case errors.As(err, &te):
					timeouts[te.EventID] = true
				case err != nil:
					otherErrs++
					if firstOtherErr == nil {
						firstOtherErr = err
					}
				}
				mu.Unlock()
				time.Sleep(50 * time.Millisecond) // a service reading its flags now and then
			}
		})
	}
	time.Sleep(time.Second) // normal operation first
	mu.Lock()
	before := len(timeouts)
	mu.Unlock()
	stopped := time.Now()
	ns.stop()
	time.Sleep(outage) // NATS unreachable
	ns.start()
	restarted := time.Now()
	time.Sleep(time.Second) // normal operation again
	halt()

	mu.Lock()
	want := len(timeouts)
	mu.Unlock()
	counts := map[string]int{}
	arrived := poll(time.Minute, 100*time.Millisecond, func() bool {
		clear(counts)
		readStream(t, js, auditStream, auditPrefix+"acme.TIMEOUT_KV_GET", func(m jetstream.Msg) {
			var ev jsguard.Event
			if json.Unmarshal(m.Data(), &ev) == nil {
				counts[ev.EventID]++
			}
		})
		for id := range timeouts {
			if counts[id] == 0 {
				return false
			}
		}
		return pub.Stats().SpoolBytes == 0
	})
	drained := time.Since(restarted)
	var lost, dup, stray int
	for id := range timeouts {
		switch n := counts[id]; {
		case n == 0:
			lost++
		case n > 1:
			dup += n - 1
		}
	}
	for id := range counts {
		if !timeouts[id] {
			stray++
		}
	}
	st := pub.Stats()
	t.Logf("outage spool: NATS down %s; %d reads, %d TIMEOUT_KV_GET seen by callers (%d before the outage), %d other errors (first: %v)",
		ms(restarted.Sub(stopped)), reads, want, before, otherErrs, firstOtherErr)
	t.Logf("outage spool: publisher published %d, spooled %d, drained %d, dropped %d; in the audit stream %s after NATS came back: LOST %d / DUPLICATED %d / unknown %d",
		st.Published, st.Spooled, st.Drained, st.Dropped, ms(drained), lost, dup, stray)
	if want == 0 || st.Spooled == 0 {
		t.Fatalf("%d timeouts, %d spooled: the outage produced nothing to spool", want, st.Spooled)
	}
	if !arrived {
		t.Errorf("not every timeout arrived in the audit stream within 1m (spool %d bytes)", st.SpoolBytes)
	}
	if lost != 0 || dup != 0 || stray != 0 || st.Dropped != 0 {
		t.Errorf("lost %d, duplicated %d, unknown %d, dropped %d: want all 0", lost, dup, stray, st.Dropped)
	}
}

var (
	outageRE     = regexp.MustCompile(`Down:(\S+) Overdue:(\d+) Late:(\d+)`)
	outageWarnRE = regexp.MustCompile(`expirer was down longer than GUARDIAN_APPROVAL_MAX_OUTAGE`)
)

// TestLongOutage (scenario 7): the only guardian is down longer than
// GUARDIAN_APPROVAL_MAX_OUTAGE while the timers of its approvals fire.
// The fired timers wait in the timers stream; the restarted guardian says
// it was down in a WARN line and expires every overdue approval, once;
// approvals not yet due stay pending.
func TestLongOutage(t *testing.T) {
	skipShort(t)
	n := scale(100, 1000)
	const maxOutage = 2 * time.Second
	const long = 10
	env := expiryEnv()
	env["GUARDIAN_APPROVAL_MAX_OUTAGE"] = maxOutage.String()
	ns := startNATS(t, nil)
	g := startGuardian(t, "g1", ns.url, env)
	nc, js := connect(t, ns.url)
	c := newClient(t, nc, 5*time.Second)
	ctx := t.Context()

	// Request in parallel so that the short approvals are still pending
	// when guardian is killed right after.
	var mu sync.Mutex
	var acked []string
	var lastDeadline time.Time
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				timeout := 2 * time.Second
				if i >= n {
					timeout = time.Hour
				}
				id := fmt.Sprintf("o%05d", i)
				in := kvapprovals.RequestInput{ID: id, SessionID: "s", RequestedBy: "alice", Timeout: kvapprovals.Duration(timeout)}
				r, _, err := requestRetry(ctx, c, "acme", in, time.Now().Add(30*time.Second))
				if err != nil {
					t.Errorf("request %s: %v", id, err)
					continue
				}
				mu.Lock()
				acked = append(acked, r.Key())
				if i < n && r.Deadline(0).After(lastDeadline) {
					lastDeadline = r.Deadline(0)
				}
				mu.Unlock()
			}
		})
	}
	for i := range n + long {
		next <- i
	}
	close(next)
	wg.Wait()
	if len(acked) != n+long {
		t.Fatalf("%d of %d requests acknowledged", len(acked), n+long)
	}
	killed := time.Now()
	g.kill()
	// Those the expirer got to before the kill are not overdue at restart.
	expiredBefore := 0
	for _, revs := range readLedger(t, js).revs {
		if revs[len(revs)-1].Status == kvapprovals.StatusExpired {
			expiredBefore++
		}
	}
	overdue := n - expiredBefore
	if overdue == 0 {
		t.Fatalf("all %d short approvals expired before the kill: nothing left for the outage", n)
	}

	// Stay down until the short approvals' timers have fired and wait
	// (only the long approvals' timers are still armed) and every short
	// approval is overdue by more than MaxOutage+1s.
	if !poll(time.Minute, 100*time.Millisecond, func() bool {
		armed, err := subjectCounts(ctx, js, timersStream, "$TIMERS.GUARDIAN_TIMERS.sched.acme.*.*")
		fired, ferr := subjectCounts(ctx, js, timersStream, "$TIMERS.GUARDIAN_TIMERS.fire.acme.*.*")
		return err == nil && ferr == nil && len(armed) == long && len(fired) >= overdue
	}) {
		t.Fatalf("the short approvals' timers did not all fire within 1m")
	}
	time.Sleep(time.Until(lastDeadline.Add(maxOutage + 1500*time.Millisecond))) // overdue by more than MaxOutage+1s
	if n := g.count(func(l logLine) bool { return l.Level == "WARN" && outageLine(l) }); n != 0 {
		t.Errorf("%d outage warnings before the outage", n)
	}
	g.start()
	restarted := time.Now()
	t.Logf("long outage: guardian down %s with GUARDIAN_APPROVAL_MAX_OUTAGE=%s; %d of %d approvals overdue, their fired timers waiting",
		ms(restarted.Sub(killed)), maxOutage, overdue, n)

	var warn *logLine
	poll(30*time.Second, 50*time.Millisecond, func() bool {
		warn = g.find(g.run(), func(l logLine) bool { return l.Level == "WARN" && outageLine(l) })
		return warn != nil
	})
	if warn == nil {
		t.Errorf("no WARN line about the outage from the restarted guardian")
	} else {
		t.Logf("long outage: restarted guardian logged: %s", warn.Raw)
		m := outageRE.FindStringSubmatch(fmt.Sprint(warn.Fields["outage"]))
		// The start sweep and the waiting timers race to expire the
		// overdue approvals; the line counts the sweep's share.
		if m == nil {
			t.Errorf("outage line without downtime, overdue and late counts: %s", warn.Raw)
		} else {
			// Nothing was delivered before the kill, so the downtime is
			// how long the oldest fired timer waited.
			if down, err := time.ParseDuration(m[1]); err != nil || down <= maxOutage {
				t.Errorf("outage line reports down %s, want more than %s", m[1], maxOutage)
			}
			if got, _ := strconv.Atoi(m[2]); got > overdue {
				t.Errorf("outage line reports %s overdue (late %s), want at most %d", m[2], m[3], overdue)
			}
		}
	}
	if !waitSettled(t, js, n, time.Minute) {
		t.Errorf("overdue approvals not all expired within 1m of the restart")
	}
	expiredAfter := time.Since(restarted)
	// The approvals not yet due are untouched; cancel them to finish.
	for i := n; i < n+long; i++ {
		id := fmt.Sprintf("o%05d", i)
		r, err := c.Get(ctx, "acme", id)
		if err != nil || r.Status != kvapprovals.StatusPending {
			t.Errorf("%s after the restart: %s, %v; want pending", id, r.Status, err)
		}
		if _, _, err := decideRetry(ctx, c, "acme", id, kvapprovals.StatusCancelled, "alice", time.Now().Add(30*time.Second)); err != nil {
			t.Errorf("cancel %s: %v", id, err)
		}
	}
	waitSettled(t, js, n+long, 30*time.Second)
	l := readLedger(t, js)
	tl := l.tally(acked, 0)
	t.Logf("long outage: %s", &tl)
	t.Logf("long outage: all %d overdue approvals expired within %s of the restart; LOST %d / DUPLICATED %d",
		tl.Final[kvapprovals.StatusExpired], ms(expiredAfter), tl.lost(), tl.dup())
	if tl.Final[kvapprovals.StatusExpired] != n || tl.Final[kvapprovals.StatusCancelled] != long {
		t.Errorf("expired %d, cancelled %d; want %d, %d", tl.Final[kvapprovals.StatusExpired], tl.Final[kvapprovals.StatusCancelled], n, long)
	}
	assertExactlyOnce(t, &tl)
	g.assertAlive()
}

// outageLine reports whether l is guardian's warning about an expirer
// outage longer than GUARDIAN_APPROVAL_MAX_OUTAGE.
func outageLine(l logLine) bool {
	return outageWarnRE.MatchString(l.Msg)
}
