package main

import "fmt"

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
	res.HistoryEventsDecided, res.HistoryBytesDecided = b.historyStats(b.decided)
	res.HistoryEventsExpired, res.HistoryBytesExpired = b.historyStats(expired)
}

// timeouts runs the timeout-lateness runs, measuring the SQLite file's growth
// and the rows they write. It returns a sample of expired workflows.
func (b *bench) timeouts(res *Result, srv *embeddedServer) []string {
	before := b.meter.snap()
	sizeBefore := srv.dbBytes()
	var sample []string
	total := 0
	for i, n := range b.cfg.timeouts {
		t, ids := b.timeoutRun(i, n)
		res.Timeouts = append(res.Timeouts, t)
		total += n
		logf("timeouts %d: closed %d, p50 %v, p99 %v, max %v", n, t.Closed, t.P50, t.P99, t.Max)
		sample = ids[:min(len(ids), b.cfg.sample)]
	}
	if total == 0 {
		return sample
	}
	if sizeBefore > 0 {
		res.DBBytesPerWorkflow = float64(srv.dbBytes()-sizeBefore) / float64(total)
	}
	b.meter.since(before, b.expiredWrites)
	b.expiredN += int64(total)
	return sample
}
