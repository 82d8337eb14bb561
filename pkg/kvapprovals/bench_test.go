package kvapprovals

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkRequest measures Request throughput (a record and its first
// timer) next to a raw message schedule, both with 8 × GOMAXPROCS concurrent callers,
// on the same embedded server. Run with -bench Request -benchtime 20000x.
func BenchmarkRequest(b *testing.B) {
	for _, pending := range []int{0, 1_000_000} {
		b.Run(fmt.Sprintf("approval/maxpending=%d", pending), func(b *testing.B) {
			e := newEnv(b, func(c *Config) { c.DefaultTimeout = time.Hour; c.MaxPending = pending })
			var n atomic.Int64
			b.SetParallelism(8) // 8 x GOMAXPROCS callers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					if _, err := e.svc.Request(context.Background(), "bench", RequestInput{ID: fmt.Sprint("b", i), SessionID: "s", RequestedBy: "u"}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "approvals/s")
		})
	}
	b.Run("raw schedule", func(b *testing.B) {
		e := newEnv(b, nil)
		var n atomic.Int64
		b.SetParallelism(8)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)
				key := fmt.Sprint("k", i)
				if _, err := e.js.Publish(context.Background(), e.svc.timers.sched(key), nil, jetstream.WithScheduleAt(time.Now().Add(time.Hour)),
					jetstream.WithScheduleTarget(e.svc.timers.fire(key)), jetstream.WithExpectLastSequencePerSubject(0)); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
	})
}

// BenchmarkExpiry measures how fast a backlog of fired timers turns into
// expired records and expired events: b.N approvals with a 1s timeout are
// created while the notifier runs, their timers fire while the expirer is
// stopped, then the expirer starts and the clock runs until the notifier has
// published every expired event. Run with -benchtime 20000x.
func BenchmarkExpiry(b *testing.B) {
	e := newEnv(b, func(c *Config) { c.GracePeriod = 0; c.MaxPending = 0 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	notifierDone := make(chan error, 1)
	go func() { notifierDone <- e.svc.Notifier().Run(ctx) }()
	requestMany(b, e.svc, "bench", b.N, func(int) time.Duration { return time.Second })
	wantEvents := uint64(b.N)
	for e.svc.Stats().EventsPublished < wantEvents {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2500 * time.Millisecond) // every timer has fired
	cpu0 := processCPU(b)
	v0, _ := e.srv.Varz(nil)
	b.ResetTimer()
	expirerDone := make(chan error, 1)
	go func() { expirerDone <- e.svc.Expirer(WithoutStartSweep()).Run(ctx) }()
	var written time.Duration
	for e.svc.Stats().EventsPublished < 2*wantEvents {
		if written == 0 && e.svc.Stats().Expired >= wantEvents {
			written = b.Elapsed()
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/expiry")
	if v1, err := e.srv.Varz(nil); err == nil {
		b.ReportMetric(float64(v1.InMsgs-v0.InMsgs)/float64(b.N), "msgs-in/expiry")
		b.ReportMetric(float64(v1.OutMsgs-v0.OutMsgs)/float64(b.N), "msgs-out/expiry")
	}
	if written > 0 {
		b.ReportMetric(float64(b.N)/written.Seconds(), "written/s")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "expiries/s")
	cancel()
	if err := errors.Join(<-notifierDone, <-expirerDone); err != nil {
		b.Fatal(err)
	}
}

// processCPU returns the CPU time this process (embedded server included)
// has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
