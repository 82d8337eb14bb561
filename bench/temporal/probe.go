package main

import (
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// probeStarters is how many goroutines start and signal the probe's
// workflows.
const probeStarters = 8

// probe runs after every timed part. It installs the row-counting triggers,
// then counts the rows written for cfg.probe decided approvals (start,
// decision, close) and for cfg.probe expired ones (start, timer fired,
// close), and describes the expired ones for their history size.
func (b *bench) probe(res *Result, dbPath string) {
	logf("write probe: %d decided and %d expired approvals", b.cfg.probe, b.cfg.probe)
	if err := installWriteTriggers(dbPath); err != nil {
		b.fail(err)
		return
	}
	if w, ok := b.probeWrites(dbPath, b.probeDecided); ok {
		b.addWrites("decided approval (started, decided by a signal, closed)", w)
	}
	var expired []string
	if w, ok := b.probeWrites(dbPath, func() { expired = b.probeExpired() }); ok {
		b.addWrites("expired approval (started, timer fired, closed)", w)
	}
	if len(expired) > 0 {
		res.HistoryEventsExpired, res.HistoryBytesExpired, b.probeLengths = b.historyStats(expired[:min(len(expired), b.cfg.sample)])
	}
}

// addWrites keeps the sentence reporting w for Persists.
func (b *bench) addWrites(what string, w rowWrites) {
	if s := writesSentence(what, w, int64(b.cfg.probe)); s != "" {
		b.writesSentences = append(b.writesSentences, s)
	}
}

// probeWrites returns the rows written while work ran.
func (b *bench) probeWrites(dbPath string, work func()) (rowWrites, bool) {
	before, err := readWrites(dbPath)
	if err != nil {
		b.fail(err)
		return nil, false
	}
	work()
	after, err := readWrites(dbPath)
	if err != nil {
		b.fail(err)
		return nil, false
	}
	return after.since(before), true
}

// probeDecided starts cfg.probe far-due approvals, decides each, and waits
// until all have closed.
func (b *bench) probeDecided() {
	const prefix = "probe-d-"
	ids := b.startCount(prefix, probeStarters, b.cfg.probe)
	if err := b.settle(ids); err != nil {
		b.fail(err)
	}
	var next atomic.Int64
	res := b.closedLoop(probeStarters, time.Hour, func(int) (bool, error) {
		i := next.Add(1) - 1
		if i >= int64(len(ids)) {
			return true, nil
		}
		return false, b.signalDecision(ids[i])
	})
	if _, err := b.waitClosed(prefix, res.ok, closeLimit); err != nil {
		b.fail(fmt.Errorf("write probe: %w", err))
	}
}

// probeExpired starts cfg.probe approvals due well after all of them should
// have started, and waits until all have closed.
func (b *bench) probeExpired() []string {
	const prefix = "probe-e-"
	due := time.Now().Add(probeLead(b.cfg.probe))
	var next atomic.Int64
	started := make([][]string, probeStarters)
	b.closedLoop(probeStarters, time.Hour, func(g int) (bool, error) {
		i := next.Add(1)
		if i > int64(b.cfg.probe) {
			return true, nil
		}
		id := fmt.Sprintf("%s%d", prefix, i)
		if err := b.startWorkflow(id, due); err != nil {
			return false, err
		}
		started[g] = append(started[g], id)
		return false, nil
	})
	ids := slices.Concat(started...)
	if _, err := b.waitClosed(prefix, int64(len(ids)), time.Until(due)+closeLimit); err != nil {
		b.fail(fmt.Errorf("write probe: %w", err))
	}
	return ids
}

// probeLead leaves 2 s plus 25 ms per workflow before the probe's expired
// approvals fall due, so that each has started its timer first.
func probeLead(n int) time.Duration {
	return 2*time.Second + time.Duration(n)*25*time.Millisecond
}
