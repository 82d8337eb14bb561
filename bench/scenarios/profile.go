package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jsguardian/guardian/bench/internal/natsrv"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// ApprovalsProfile is the diagnosis of scenario 3, from an in-process
// replica of guardian's request path.
type ApprovalsProfile struct {
	InFlight int
	// Per approval and per raw sync kv.Create: CPU time of this process
	// (server, client, service), messages the server received and sent,
	// and messages stored in streams.
	AppCPU, RawCPU           time.Duration
	AppIn, AppOut, AppStored float64
	RawIn, RawOut, RawStored float64
	Approvals, Raw           float64 // per second
	CPUProfile               string
}

// ProfileApprovals runs an in-process replica of guardian's approval path
// — an embedded server, kvapprovals.Open with the default configuration,
// Expirer and Notifier running, and a micro endpoint on
// guardian.v1.*.approvals.request that decodes the request and calls
// Service.Request under jsguard's API_REQUEST on a goroutine per request,
// as cmd/guardian does — and measures per operation what an approval costs
// next to a raw sync kv.Create: CPU time (getrusage), messages in and out
// of the server (Varz), messages stored. It writes a CPU profile of the
// approvals block to dir/approvals.cpu.
func ProfileApprovals(ctx context.Context, dir string, inFlight int, d time.Duration) (ApprovalsProfile, error) {
	res := ApprovalsProfile{InFlight: inFlight}
	store, err := os.MkdirTemp("", "guardian-bench-profile-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(store)
	srv, err := natsrv.Start(store, -1)
	if err != nil {
		return res, err
	}
	defer natsrv.Stop(srv)
	nc, js, err := natsrv.Connect(srv.ClientURL())
	if err != nil {
		return res, err
	}
	defer nc.Close()
	g, err := jsguard.New(jsguard.WithLogger(quiet))
	if err != nil {
		return res, err
	}
	svc, err := kvapprovals.Open(ctx, g, js, kvapprovals.DefaultConfig(), kvapprovals.WithLogger(quiet))
	if err != nil {
		return res, err
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = svc.Expirer().Run(rctx) })
	wg.Go(func() { _ = svc.Notifier().Run(rctx) })
	defer func() { stop(); wg.Wait() }()
	ms, err := micro.AddService(nc, micro.Config{Name: "guardian", Version: "0.0.1"})
	if err != nil {
		return res, err
	}
	defer ms.Stop()
	sem := make(chan struct{}, 256)
	err = ms.AddEndpoint("request", micro.HandlerFunc(func(req micro.Request) {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			tenant := strings.Split(req.Subject(), ".")[2]
			rec, err := jsguard.DoValue(jsguard.WithTenant(context.Background(), tenant), g, jsguard.APIRequest, "approvals.request",
				func(ctx context.Context) (kvapprovals.Record, error) {
					in, err := kvapprovals.DecodeRequest(req.Data())
					if err != nil {
						return kvapprovals.Record{}, err
					}
					return svc.Request(ctx, tenant, in)
				})
			if err != nil {
				_ = req.Error("500", err.Error(), nil)
				return
			}
			b, _ := json.Marshal(rec)
			_ = req.Respond(b)
		}()
	}), micro.WithEndpointSubject("guardian.v1.*.approvals.request"))
	if err != nil {
		return res, err
	}
	cnc, cjs, err := natsrv.Connect(srv.ClientURL())
	if err != nil {
		return res, err
	}
	defer cnc.Close()
	raw, err := cjs.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "BENCH_RAW_CREATE", History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		return res, err
	}
	events, err := js.Stream(ctx, "GUARDIAN_EVENTS")
	if err != nil {
		return res, err
	}
	a := &approvalLoad{nc: cnc, raw: raw, events: events, perTenant: 2000, value: make([]byte, 300)}
	if _, err := a.approvalBlock(ctx, 8, time.Second/2); err != nil {
		return res, err
	}
	if _, err := a.caughtUp(ctx); err != nil {
		return res, err
	}

	type snap struct {
		cpu           time.Duration
		in, out, stor float64
	}
	take := func() snap {
		v, _ := srv.Varz(&server.VarzOptions{})
		var stored float64
		if jz, err := srv.Jsz(&server.JSzOptions{}); err == nil {
			stored = float64(jz.Messages)
		}
		return snap{selfCPU(), float64(v.InMsgs), float64(v.OutMsgs), stored}
	}
	s0 := take()
	rd := d
	rr, err := a.rawBlock(ctx, inFlight, rd)
	if err != nil {
		return res, err
	}
	s1 := take()
	n := rr * rd.Seconds()
	res.Raw = rr
	res.RawCPU = time.Duration(float64(s1.cpu-s0.cpu) / n)
	res.RawIn, res.RawOut, res.RawStored = (s1.in-s0.in)/n, (s1.out-s0.out)/n, (s1.stor-s0.stor)/n

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	res.CPUProfile = filepath.Join(dir, "approvals.cpu")
	f, err := os.Create(res.CPUProfile)
	if err != nil {
		return res, err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return res, err
	}
	s0 = take()
	start := time.Now()
	k, err := a.approvalBlock(ctx, inFlight, d)
	el := time.Since(start)
	if err == nil {
		_, err = a.caughtUp(ctx)
	}
	time.Sleep(200 * time.Millisecond) // acks of the last events
	s1 = take()
	pprof.StopCPUProfile()
	if err != nil {
		return res, err
	}
	res.Approvals = float64(k) / el.Seconds()
	res.AppCPU = time.Duration(float64(s1.cpu-s0.cpu) / float64(k))
	res.AppIn, res.AppOut, res.AppStored = (s1.in-s0.in)/float64(k), (s1.out-s0.out)/float64(k), (s1.stor-s0.stor)/float64(k)
	return res, nil
}

// String summarises the profile.
func (p ApprovalsProfile) String() string {
	return fmt.Sprintf("in-process replica, %d in flight: approval %.0f/s, CPU %.0f µs, server msgs in %.1f / out %.1f, stored %.1f; "+
		"raw kv.Create %.0f/s, CPU %.0f µs, in %.1f / out %.1f, stored %.1f; CPU ratio %.1f×; profile %s",
		p.InFlight, p.Approvals, float64(p.AppCPU)/1e3, p.AppIn, p.AppOut, p.AppStored,
		p.Raw, float64(p.RawCPU)/1e3, p.RawIn, p.RawOut, p.RawStored, float64(p.AppCPU)/float64(p.RawCPU), p.CPUProfile)
}

// selfCPU returns the CPU time this process has used (getrusage).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
