package main

import (
	"fmt"
	"time"
)

// drainLimit bounds the uncounted wait for timeout-run workflows that were
// still open when their run's wait ended.
const drainLimit = 10 * time.Minute

// measure runs the warm-up, the throughput levels, the timeout runs and the
// persistence sample, filling res.
func (b *bench) measure(res *Result, srv *embeddedServer) {
	if len(b.cfg.inflight) > 0 && b.cfg.warmup > 0 {
		logf("warm-up")
		if err := b.warmUp(b.cfg.inflight[0]); err != nil {
			b.fail(fmt.Errorf("warm-up: %w", err))
		}
	}
	for i, n := range b.cfg.inflight {
		res.Levels = append(res.Levels, b.level(i, n))
	}
	expired := b.timeouts(res, srv)
	res.HistoryEventsDecided, res.HistoryBytesDecided, _ = b.historyStats(b.decided)
	res.HistoryEventsExpired, res.HistoryBytesExpired, b.timeoutLengths = b.historyStats(expired)
	if b.cfg.probe > 0 && srv.dbPath != "" {
		b.probe(res, srv.dbPath)
	}
}

// timeouts runs the timeout-lateness runs. Around them it measures the
// SQLite file's growth; for that to be per finished workflow, it first lets any workflow still open after its run's
// wait limit close (that extra wait counts in no lateness figure). It returns
// an evenly spaced sample of the last run's workflows.
func (b *bench) timeouts(res *Result, srv *embeddedServer) []string {
	if len(b.cfg.timeouts) == 0 {
		return nil
	}
	sizeBefore := srv.dbBytes()
	var plans []timeoutPlan
	total := 0
	for i, n := range b.cfg.timeouts {
		t, plan := b.timeoutRun(i, n)
		res.Timeouts = append(res.Timeouts, t)
		plans = append(plans, plan)
		total += n
		logf("timeouts %d: closed %d, p50 %v, p99 %v, max %v", n, t.Closed, t.P50, t.P99, t.Max)
		if t.Closed < n {
			b.drain(plan)
		}
	}
	if sizeBefore > 0 {
		res.DBBytesPerWorkflow = float64(srv.dbBytes()-sizeBefore) / float64(total)
	}
	return plans[len(plans)-1].sample(b.cfg.sample)
}

// drain waits, uncounted, for the rest of a timeout run's workflows to close.
func (b *bench) drain(p timeoutPlan) {
	n := len(p.due)
	logf("waiting up to %v for the rest of the %d workflows to close (not counted as lateness)", drainLimit, n)
	got, err := b.waitClosed(p.prefix, int64(n), drainLimit)
	if err != nil {
		b.fail(fmt.Errorf("drain: %w", err))
	}
	logf("%d of %d closed", got, n)
}
