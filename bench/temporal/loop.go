package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.temporal.io/sdk/client"
)

// rpcTimeout bounds each client call made by a workload.
const rpcTimeout = 30 * time.Second

// bench holds what all workloads share: the client, the flags, the error
// count, and what is gathered for Persists.
type bench struct {
	c   client.Client
	cfg config

	decided []string // sample of decided workflows, for history sizes
	// timeoutLengths and probeLengths count sampled expired workflows of the
	// timeout runs and of the probe by history length.
	timeoutLengths, probeLengths map[int64]int
	// writesSentences report the probe's row writes, for Persists.
	writesSentences []string

	errors   atomic.Int64
	errMu    sync.Mutex
	firstErr string
}

// fail counts an error and keeps the first one's text.
func (b *bench) fail(err error) {
	if b.errors.Add(1) == 1 {
		b.errMu.Lock()
		b.firstErr = err.Error()
		b.errMu.Unlock()
		fmt.Fprintf(os.Stderr, "temporal-peer: first error: %v\n", err)
	}
}

// loopResult is what a closed loop achieved.
type loopResult struct {
	ok      int64
	started time.Time
	elapsed time.Duration
}

func (r loopResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ok) / r.elapsed.Seconds()
}

// closedLoop runs n goroutines that each call op back to back until d has
// passed or op reports that there is nothing left to do. op gets the
// goroutine's index and returns done=true to stop its goroutine. Elapsed runs
// until the last call in flight returns.
func (b *bench) closedLoop(n int, d time.Duration, op func(g int) (done bool, err error)) loopResult {
	var ok atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for g := range n {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				done, err := op(g)
				if done {
					return
				}
				if err != nil {
					b.fail(err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	return loopResult{ok: ok.Load(), started: start, elapsed: time.Since(start)}
}

// callCtx is the context for one client call.
func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), rpcTimeout)
}

// median of xs; 0 when empty.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// percentile is the nearest-rank q-quantile (0 < q <= 1) of sorted ds.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
