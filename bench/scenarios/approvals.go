package scenarios

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/bench/internal/natsrv"
)

// ApprovalsConfig sizes scenario 3.
type ApprovalsConfig struct {
	Guardian    string        // the guardian binary
	WorkDir     string        // for the data directory and the log
	Concurrency []int         // requests in flight (8, 64)
	Duration    time.Duration // per measured block
	Rounds      int           // raw/approval pairs per concurrency level
	PerTenant   int           // approvals per tenant before the next tenant (below GUARDIAN_APPROVAL_MAX_PENDING)
}

// ApprovalsLevel is the outcome at one concurrency level.
type ApprovalsLevel struct {
	InFlight int
	// Approvals per second: replies to guardian.v1.<tenant>.approvals.request.
	Approvals float64
	// Sustained counts until the notifier had published each approval's
	// requested event as well.
	Sustained float64
	// Raw is sync kv.Create per second on the same server, same concurrency.
	Raw float64
	// Floor is what the design allows at best: request/reply to a micro
	// endpoint that writes a record and a timer (a message schedule), both
	// at once, and replies; no validation, no consumers, no events.
	Floor float64
	// Decisions per second: replies to guardian.v1.<tenant>.approvals.approve
	// for approvals granted in the block before, same number in flight.
	Decisions float64
	// CPU time per approval and per raw create, guardian's process (with
	// its embedded server) plus this client process: a measure that other
	// load on the machine disturbs less than throughput.
	AppCPU, RawCPU time.Duration
}

// ApprovalsResult is scenario 3's outcome.
type ApprovalsResult struct {
	Levels   []ApprovalsLevel
	Errors   int64
	FirstErr string
	Total    int64
	// StoredMsgs and StoredBytes are what guardian's streams (records,
	// timers, events, audit) hold per approval granted at the end of the
	// run: the approvals of the decision blocks decided, the others
	// pending.
	StoredMsgs, StoredBytes float64
}

// Approvals measures scenario 3: the guardian binary runs with its
// embedded nats-server on a free port (default configuration, so each
// approval has a record, its warn timer and a requested event); this process sends approval requests over NATS request/reply
// with a fixed number in flight, and, in alternating blocks, sync
// kv.Create to a bucket on the same server with the same number of
// goroutines. It returns the results so far and the first error of
// starting guardian, connecting, or a block of requests.
func Approvals(ctx context.Context, cfg ApprovalsConfig, progress func(string)) (ApprovalsResult, error) {
	var res ApprovalsResult
	port, err := natsrv.FreePort()
	if err != nil {
		return res, err
	}
	data := filepath.Join(cfg.WorkDir, "approvals-data")
	if err := os.MkdirAll(data, 0o750); err != nil {
		return res, err
	}
	defer os.RemoveAll(data)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	p, err := StartProc(cfg.Guardian, []string{"serve"}, []string{
		"GUARDIAN_EMBEDDED_LISTEN=127.0.0.1:" + strconv.Itoa(port),
		"GUARDIAN_HTTP_ADDR=",
		"GUARDIAN_DATA_DIR=" + data,
		"GUARDIAN_LOG_FORMAT=json",
		"GUARDIAN_LOG_LEVEL=warn",
	}, filepath.Join(cfg.WorkDir, "guardian-approvals.log"))
	if err != nil {
		return res, err
	}
	defer p.Stop(20 * time.Second)
	nc, err := WaitGuardian(p, url, 90*time.Second)
	if err != nil {
		return res, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return res, err
	}
	raw, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "BENCH_RAW_CREATE", History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		return res, err
	}
	events, err := js.Stream(ctx, "GUARDIAN_EVENTS")
	if err != nil {
		return res, fmt.Errorf("guardian's events stream: %w", err)
	}
	cpu := func() time.Duration {
		g, _ := ProcCPU(p.Cmd.Process.Pid)
		c, _ := ProcCPU(os.Getpid())
		return g + c
	}
	a := &approvalLoad{nc: nc, raw: raw, events: events, perTenant: int64(cfg.PerTenant), value: make([]byte, 300)}
	stopFloor, err := a.startFloor(ctx, url)
	if err != nil {
		return res, fmt.Errorf("design floor service: %w", err)
	}
	defer stopFloor()
	// Warm up both paths.
	if _, err := a.rawBlock(ctx, 8, time.Second/2); err != nil {
		return res, err
	}
	if _, err := a.approvalBlock(ctx, 8, time.Second/2); err != nil {
		return res, err
	}
	if _, err := a.caughtUp(ctx); err != nil {
		return res, err
	}
	for _, c := range cfg.Concurrency {
		lv := ApprovalsLevel{InFlight: c}
		var raws, apps, sust, floors, rawCPU, appCPU, decs []float64
		for r := range cfg.Rounds {
			progress(fmt.Sprintf("approvals: %d in flight, round %d", c, r+1))
			c0 := cpu()
			rr, err := a.rawBlock(ctx, c, cfg.Duration)
			if err != nil {
				return res, fmt.Errorf("raw kv.Create: %w", err)
			}
			rawCPU = append(rawCPU, float64(cpu()-c0)/(rr*cfg.Duration.Seconds()))
			raws = append(raws, rr)
			fr, err := a.floorBlock(ctx, c, cfg.Duration)
			if err != nil {
				return res, fmt.Errorf("design floor: %w", err)
			}
			floors = append(floors, fr)
			c0 = cpu()
			start := time.Now()
			n, err := a.approvalBlock(ctx, c, cfg.Duration)
			if err != nil {
				return res, err
			}
			el := time.Since(start)
			apps = append(apps, float64(n)/el.Seconds())
			tail, err := a.caughtUp(ctx)
			if err != nil {
				return res, err
			}
			appCPU = append(appCPU, float64(cpu()-c0)/float64(n))
			sust = append(sust, float64(n)/(el+tail).Seconds())
			dr, err := a.decisionBlock(ctx, c, cfg.Duration)
			if err != nil {
				return res, fmt.Errorf("decisions: %w", err)
			}
			decs = append(decs, dr)
			if _, err := a.caughtUp(ctx); err != nil {
				return res, err
			}
		}
		lv.Raw, lv.Approvals, lv.Sustained, lv.Floor = medianF(raws), medianF(apps), medianF(sust), medianF(floors)
		lv.Decisions = medianF(decs)
		lv.RawCPU, lv.AppCPU = time.Duration(medianF(rawCPU)), time.Duration(medianF(appCPU))
		res.Levels = append(res.Levels, lv)
	}
	res.Errors, res.Total = a.errors.Load(), a.ok.Load()
	for _, name := range []string{"KV_GUARDIAN_APPROVALS", "GUARDIAN_TIMERS", "GUARDIAN_EVENTS", "GUARDIAN_AUDIT"} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return res, fmt.Errorf("stream %s: %w", name, err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			return res, fmt.Errorf("stream %s: %w", name, err)
		}
		res.StoredMsgs += float64(info.State.Msgs) / float64(max(res.Total, 1))
		res.StoredBytes += float64(info.State.Bytes) / float64(max(res.Total, 1))
	}
	if e := a.firstErr.Load(); e != nil {
		res.FirstErr = *e
	}
	if ok, err := p.Exited(); ok {
		return res, fmt.Errorf("guardian exited during the run (%v):\n%s", err, p.Tail(15))
	}
	return res, nil
}

type approvalLoad struct {
	nc        *nats.Conn
	raw       jetstream.KeyValue
	events    jetstream.Stream
	perTenant int64
	value     []byte
	next      atomic.Int64 // approval ids
	rawNext   atomic.Int64 // raw keys
	ok        atomic.Int64 // approvals granted
	decided   atomic.Int64 // approvals approved
	errors    atomic.Int64
	mu        sync.Mutex
	granted   [][2]string // tenant and id of approvals granted and not yet decided
	firstErr  atomic.Pointer[string]
}

// rawBlock runs sync kv.Create with c goroutines for d and returns creates
// per second.
func (a *approvalLoad) rawBlock(ctx context.Context, c int, d time.Duration) (float64, error) {
	return closedLoop(c, d, func() error {
		_, err := a.raw.Create(ctx, "k"+strconv.FormatInt(a.rawNext.Add(1), 10), a.value)
		return err
	})
}

// closedLoop runs op in a loop on c goroutines for d and returns completed
// ops per second; a goroutine stops at its first error, which is returned.
func closedLoop(c int, d time.Duration, op func() error) (float64, error) {
	var n atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, c)
	start := time.Now()
	for range c {
		wg.Go(func() {
			for time.Since(start) < d {
				if err := op(); err != nil {
					errs <- err
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	close(errs)
	return float64(n.Load()) / el.Seconds(), <-errs
}

// approvalBlock sends approval requests with c in flight for d and returns
// how many were granted. Refusals are counted and the first is kept.
func (a *approvalLoad) approvalBlock(ctx context.Context, c int, d time.Duration) (int64, error) {
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Go(func() {
			for time.Since(start) < d {
				id := a.next.Add(1)
				tenant := "t" + strconv.FormatInt(id/a.perTenant, 10)
				body := fmt.Appendf(nil, `{"id":"b%d","session_id":"s-%d","requested_by":"bench"}`, id, id)
				if err := a.request(ctx, "guardian.v1."+tenant+".approvals.request", body); err != nil {
					if a.errors.Add(1) == 1 {
						s := err.Error()
						a.firstErr.Store(&s)
					}
					continue
				}
				n.Add(1)
				a.mu.Lock()
				a.granted = append(a.granted, [2]string{tenant, "b" + strconv.FormatInt(id, 10)})
				a.mu.Unlock()
			}
		})
	}
	wg.Wait()
	a.ok.Add(n.Load())
	if n.Load() == 0 {
		if e := a.firstErr.Load(); e != nil {
			return 0, errors.New("no approval granted: " + *e)
		}
	}
	return n.Load(), nil
}

// decisionBlock approves approvals granted before, with c in flight, for d
// or until none is left, and returns approvals per second.
func (a *approvalLoad) decisionBlock(ctx context.Context, c int, d time.Duration) (float64, error) {
	var n atomic.Int64
	r, err := closedLoop(c, d, func() error {
		a.mu.Lock()
		if len(a.granted) == 0 {
			a.mu.Unlock()
			return errNoneLeft
		}
		k := a.granted[len(a.granted)-1]
		a.granted = a.granted[:len(a.granted)-1]
		a.mu.Unlock()
		n.Add(1)
		return a.request(ctx, "guardian.v1."+k[0]+".approvals.approve", fmt.Appendf(nil, `{"id":%q,"decided_by":"bench-approver"}`, k[1]))
	})
	a.decided.Add(n.Load())
	if errors.Is(err, errNoneLeft) {
		err = nil
	}
	return r, err
}

// errNoneLeft stops a decision block that has decided every approval.
var errNoneLeft = errors.New("no approval left to decide")

// request sends a request to guardian's API (or the floor's) and returns
// the transport error or the error the reply carries.
func (a *approvalLoad) request(ctx context.Context, subject string, body []byte) error {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m, err := a.nc.RequestWithContext(rctx, subject, body)
	if err == nil && m.Header.Get(micro.ErrorCodeHeader) != "" {
		err = fmt.Errorf("%s: %s %s: %s", subject, m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader), m.Data)
	}
	return err
}

// startFloor serves the design floor's endpoint, bench.floor, on a
// connection of its own: each request creates a key in a bucket shaped like
// guardian's records bucket (history 64) and, at the same time, stores a
// message schedule an hour ahead in a stream shaped like guardian's timers
// stream (a work queue with schedules), and replies when both are stored.
// That is the least an approval needs (its record and its timer, durable
// before the reply), without anything else guardian does.
func (a *approvalLoad) startFloor(ctx context.Context, url string) (stop func(), err error) {
	nc, js, err := natsrv.Connect(url)
	if err != nil {
		return nil, err
	}
	recs, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "BENCH_FLOOR_RECORDS", History: 64, Storage: jetstream.FileStorage})
	if err != nil {
		nc.Close()
		return nil, err
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: "BENCH_FLOOR_TIMERS", Subjects: []string{"bench.floor.timers.>"},
		Retention: jetstream.WorkQueuePolicy, MaxMsgsPerSubject: 1, AllowMsgSchedules: true, AllowRollup: true,
		Storage: jetstream.FileStorage,
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	schedule := func(ctx context.Context, key string) error {
		_, err := js.Publish(ctx, "bench.floor.timers.sched."+key, nil, jetstream.WithScheduleAt(time.Now().Add(time.Hour)),
			jetstream.WithScheduleTarget("bench.floor.timers.fire."+key), jetstream.WithExpectLastSequencePerSubject(0))
		return err
	}
	var next atomic.Int64
	svc, err := micro.AddService(nc, micro.Config{Name: "bench-floor", Version: "0.0.1"})
	if err == nil {
		err = svc.AddEndpoint("floor", micro.HandlerFunc(func(r micro.Request) {
			go func() {
				key := "f" + strconv.FormatInt(next.Add(1), 10)
				var terr error
				var wg sync.WaitGroup
				wg.Go(func() { terr = schedule(ctx, key+".expire") })
				_, err := recs.Create(ctx, key, r.Data())
				wg.Wait()
				if err = errors.Join(err, terr); err != nil {
					_ = r.Error("500", err.Error(), nil)
					return
				}
				_ = r.Respond(r.Data())
			}()
		}), micro.WithEndpointSubject("bench.floor"))
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return func() { _ = svc.Stop(); nc.Close() }, nil
}

// floorBlock sends requests to the design floor's endpoint with c in
// flight for d and returns replies per second.
func (a *approvalLoad) floorBlock(ctx context.Context, c int, d time.Duration) (float64, error) {
	return closedLoop(c, d, func() error { return a.request(ctx, "bench.floor", a.value) })
}

// caughtUp waits until the events stream holds a requested event for
// every granted approval and an approved event for every decision, and
// returns how long that took.
func (a *approvalLoad) caughtUp(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	want := uint64(a.ok.Load() + a.decided.Load())
	var have uint64
	err := waitUntil(ctx, 5*time.Minute, func() bool {
		info, err := a.events.Info(ctx)
		if err != nil {
			return false
		}
		have = info.State.Msgs
		return have >= want
	})
	if err != nil {
		return 0, fmt.Errorf("notifier catching up (%d of %d events): %w", have, want, err)
	}
	return time.Since(start), nil
}

// ApprovalsTarget is scenario 3's target: approval requests per second
// against the design floor's replies per second, same run.
const ApprovalsTarget = 0.9

// Rows returns scenario 3's rows; target ≥ ApprovalsTarget of the design floor.
func (r ApprovalsResult) Rows() []Row {
	var rows []Row
	for _, lv := range r.Levels {
		sc := fmt.Sprintf("3 Approvals via micro API, %d in flight", lv.InFlight)
		rows = append(rows,
			Row{sc, "approval requests vs the design floor (request/reply + record and timer writes at once, nothing else)", rate(lv.Approvals), rate(lv.Floor),
				ratio(lv.Approvals, lv.Floor), fmt.Sprintf("≥ %.2f", ApprovalsTarget), check(lv.Approvals/lv.Floor >= ApprovalsTarget)},
			Row{sc, "approval requests vs sync kv.Create, same server", rate(lv.Approvals), rate(lv.Raw),
				ratio(lv.Approvals, lv.Raw), "", Info},
			Row{sc, "design floor vs sync kv.Create", rate(lv.Floor), rate(lv.Raw),
				ratio(lv.Floor, lv.Raw), "", Info},
			Row{sc, "sustained, until each requested event is published", rate(lv.Sustained), rate(lv.Raw),
				ratio(lv.Sustained, lv.Raw), "", Info},
			Row{sc, "decisions (approve) of those approvals", rate(lv.Decisions), rate(lv.Raw),
				ratio(lv.Decisions, lv.Raw), "", Info},
			Row{sc, "CPU time per operation (guardian process incl. its nats-server, plus client)", fmt.Sprintf("%.0f µs", float64(lv.AppCPU)/1e3),
				fmt.Sprintf("%.0f µs", float64(lv.RawCPU)/1e3), fmt.Sprintf("%.1f×", float64(lv.AppCPU)/float64(lv.RawCPU)), "", Info},
		)
	}
	rows = append(rows, Row{"3 Approvals via micro API", "requests refused or failed", fmt.Sprintf("%d of %d", r.Errors, r.Errors+r.Total), "", "", "0", check(r.Errors == 0)})
	return rows
}
