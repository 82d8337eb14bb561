package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"syscall"

	"github.com/jsguardian/guardian/bench/internal/natsrv"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

func TestDbgApprovalsProfile(t *testing.T) {
	if os.Getenv("DBG") == "" {
		t.Skip()
	}
	ctx := t.Context()
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
	g, _ := jsguard.New(jsguard.WithLogger(quiet))
	kc := kvapprovals.DefaultConfig()
	if os.Getenv("NOCAP") != "" {
		kc.MaxPending = 0
	}
	svc, err := kvapprovals.Open(ctx, g, js, kc, kvapprovals.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if os.Getenv("NOCONS") == "" {
		wg.Go(func() { svc.Expirer().Run(rctx) })
		wg.Go(func() { svc.Notifier().Run(rctx) })
	}
	defer func() { stop(); wg.Wait() }()
	ms, err := micro.AddService(nc, micro.Config{Name: "guardian", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	sem := make(chan struct{}, 256)
	err = ms.AddEndpoint("request", micro.HandlerFunc(func(req micro.Request) {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			tenant := "x"
			fmt.Sscanf(req.Subject(), "guardian.v1.%s", &tenant)
			tenant = tenant[:len(tenant)-len(".approvals.request")]
			res, err := jsguard.DoValue(context.Background(), g, jsguard.APIRequest, "request", func(ctx context.Context) (any, error) {
				in, err := kvapprovals.DecodeRequest(req.Data())
				if err != nil {
					return nil, err
				}
				return svc.Request(ctx, tenant, in)
			})
			if err != nil {
				req.Error("500", err.Error(), nil)
				return
			}
			b, _ := json.Marshal(res)
			req.Respond(b)
		}()
	}), micro.WithEndpointSubject("guardian.v1.*.approvals.request"))
	if err != nil {
		t.Fatal(err)
	}
	cnc, cjs, _ := natsrv.Connect(srv.ClientURL())
	defer cnc.Close()
	_ = cjs
	events, _ := js.Stream(ctx, "GUARDIAN_EVENTS")
	raw, _ := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "RAWC", History: 1, Storage: jetstream.FileStorage})
	a := &approvalLoad{nc: cnc, raw: raw, events: events, perTenant: 2000, value: make([]byte, 300)}
	for range 2 {
		c0 := cpuNow()
		r, _ := a.rawBlock(ctx, 64, 3*time.Second)
		c1 := cpuNow()
		t.Logf("raw %.0f/s, cpu/op %s", r, time.Duration(float64(c1-c0)/(r*3)))
		c0 = cpuNow()
		n0 := a.ok.Load()
		start := time.Now()
		a.approvalBlock(ctx, 64, 3*time.Second)
		a.ok.Add(0)
		el := time.Since(start)
		a.caughtUp(ctx)
		c1 = cpuNow()
		_ = n0
		t.Logf("approvals cpu/op %s (%.0f/s)", time.Duration(float64(c1-c0)/float64(a.ok.Load()-n0)), float64(a.ok.Load()-n0)/el.Seconds())
	}
	a.approvalBlock(ctx, 8, time.Second)
	a.caughtUp(ctx)
	f, _ := os.Create("/tmp/approvals.cpu")
	pprof.StartCPUProfile(f)
	start := time.Now()
	n, err := a.approvalBlock(ctx, 64, 8*time.Second)
	el := time.Since(start)
	tail, _ := a.caughtUp(ctx)
	pprof.StopCPUProfile()
	f.Close()
	t.Logf("%d approvals in %s: %.0f/s; catch-up %s; errors %d %v", n, el, float64(n)/el.Seconds(), tail, a.errors.Load(), a.firstErr.Load())
	var x atomic.Int64
	_ = x
	_ = strconv.Itoa
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
