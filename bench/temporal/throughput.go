package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
)

const (
	// farDue is the due time of workflows started for the throughput blocks:
	// far enough that no timer fires during the run.
	farDue = time.Hour
	// settleLimit bounds the wait for the worker to drain its backlog.
	settleLimit = 2 * time.Minute
	// closeLimit bounds the wait for signalled workflows to close.
	closeLimit = 2 * time.Minute
	// pollEvery is the pause between visibility and describe polls.
	pollEvery = 500 * time.Millisecond
	// settleSample is how many of the newest workflows settle inspects.
	settleSample = 20
	// firstSignalFactor is how many times the start rate the first decision
	// block of a level is assumed to signal at, to start enough workflows;
	// later blocks assume the rate of the block before.
	firstSignalFactor = 3
)

// startWorkflow starts one Approval workflow due at due.
func (b *bench) startWorkflow(id string, due time.Time) error {
	ctx, cancel := callCtx()
	defer cancel()
	opts := client.StartWorkflowOptions{ID: id, TaskQueue: taskQueue}
	if _, err := b.c.ExecuteWorkflow(ctx, opts, workflowName, ApprovalInput{Due: due}); err != nil {
		return fmt.Errorf("start workflow %s: %w", id, err)
	}
	return nil
}

// signalDecision sends the "approved" decision to workflow id.
func (b *bench) signalDecision(id string) error {
	ctx, cancel := callCtx()
	defer cancel()
	if err := b.c.SignalWorkflow(ctx, id, "", decisionSignal, "approved"); err != nil {
		return fmt.Errorf("signal workflow %s: %w", id, err)
	}
	return nil
}

// startBlock is a closed loop of n goroutines starting far-due workflows for
// d. It returns the loop's result and the IDs that were started.
func (b *bench) startBlock(prefix string, n int, d time.Duration) (loopResult, []string) {
	var seq atomic.Int64
	started := make([][]string, n)
	res := b.closedLoop(n, d, func(g int) (bool, error) {
		id := fmt.Sprintf("%s%d", prefix, seq.Add(1))
		if err := b.startWorkflow(id, time.Now().Add(farDue)); err != nil {
			return false, err
		}
		started[g] = append(started[g], id)
		return false, nil
	})
	return res, slices.Concat(started...)
}

// startCount starts count far-due workflows with n goroutines, unmeasured.
func (b *bench) startCount(prefix string, n, count int) []string {
	var next atomic.Int64
	started := make([][]string, n)
	b.closedLoop(n, time.Hour, func(g int) (bool, error) {
		i := next.Add(1)
		if i > int64(count) {
			return true, nil
		}
		id := fmt.Sprintf("%s%d", prefix, i)
		if err := b.startWorkflow(id, time.Now().Add(farDue)); err != nil {
			return false, err
		}
		started[g] = append(started[g], id)
		return false, nil
	})
	return slices.Concat(started...)
}

// signalBlock is a closed loop of n goroutines that signal ids in order, each
// once, for d or until ids run out. It returns the loop's result and how many
// ids it used (including those whose signal failed).
func (b *bench) signalBlock(n int, d time.Duration, ids []string) (loopResult, int) {
	var next atomic.Int64
	res := b.closedLoop(n, d, func(int) (bool, error) {
		i := next.Add(1) - 1
		if i >= int64(len(ids)) {
			return true, nil
		}
		return false, b.signalDecision(ids[i])
	})
	return res, int(min(next.Load(), int64(len(ids))))
}

// warmUp runs one short start block and one short decision block, uncounted.
func (b *bench) warmUp(n int) error {
	const prefix = "warm-"
	_, ids := b.startBlock(prefix+"s-", n, b.cfg.warmup)
	if err := b.settle(ids); err != nil {
		return err
	}
	res, _ := b.signalBlock(n, b.cfg.warmup, ids)
	_, err := b.waitClosed(prefix, res.ok, closeLimit)
	return err
}

// level measures starts/s and decisions/s with n calls in flight.
func (b *bench) level(idx, n int) Level {
	lv := Level{InFlight: n}
	prefix := fmt.Sprintf("lv%d-", idx)
	var pool []string
	for r := range b.cfg.rounds {
		res, ids := b.startBlock(fmt.Sprintf("%ss%d-", prefix, r), n, b.cfg.duration)
		lv.StartsRounds = append(lv.StartsRounds, res.rate())
		pool = append(pool, ids...)
		logf("in-flight %d: start round %d: %.0f starts/s", n, r+1, res.rate())
	}
	lv.Starts = median(lv.StartsRounds)
	if err := b.settle(pool); err != nil {
		b.fail(err)
	}
	est := firstSignalFactor * lv.Starts
	var closedRounds []float64
	for r := range b.cfg.rounds {
		pool = b.topUp(fmt.Sprintf("%st%d-", prefix, r), n, pool, est)
		rate, closedRate, used := b.decisionRound(prefix, n, pool)
		pool = pool[used:]
		lv.DecisionsRounds = append(lv.DecisionsRounds, rate)
		closedRounds = append(closedRounds, closedRate)
		est = rate
		logf("in-flight %d: decision round %d: %.0f decisions/s, %.0f closed/s", n, r+1, rate, closedRate)
	}
	lv.Decisions = median(lv.DecisionsRounds)
	lv.DecisionsClosed = median(closedRounds)
	return lv
}

// topUp starts more far-due workflows when pool may not last a decision
// block at rate est, and waits for the worker to take them in.
func (b *bench) topUp(prefix string, n int, pool []string, est float64) []string {
	need := int(math.Ceil(est*b.cfg.duration.Seconds()*1.25)) + n
	if len(pool) >= need {
		return pool
	}
	logf("starting %d more workflows to signal", need-len(pool))
	pool = append(pool, b.startCount(prefix, n, need-len(pool))...)
	if err := b.settle(pool); err != nil {
		b.fail(err)
	}
	return pool
}

// decisionRound signals workflows of pool for one block and waits until the
// signalled ones have closed. It returns signals/s, signals per second of
// block plus tail, and how many pool entries it used.
func (b *bench) decisionRound(prefix string, n int, pool []string) (rate, closedRate float64, used int) {
	baseline, err := b.countClosed(prefix)
	if err != nil {
		b.fail(err)
		return 0, 0, 0
	}
	res, used := b.signalBlock(n, b.cfg.duration, pool)
	if room := b.cfg.sample - len(b.decided); room > 0 {
		b.decided = append(b.decided, pool[:min(used, room)]...)
	}
	if used == len(pool) && res.elapsed < b.cfg.duration {
		logf("warning: ran out of workflows to signal after %v", res.elapsed.Round(time.Millisecond))
	}
	if _, err := b.waitClosed(prefix, baseline+res.ok, closeLimit); err != nil {
		b.fail(err)
	}
	last, err := b.lastClose(prefix)
	if err != nil {
		b.fail(err)
		return res.rate(), 0, used
	}
	span := max(last.Sub(res.started), res.elapsed)
	logf("in-flight %d: %d signals in %v, all closed %v after the block began", n, res.ok,
		res.elapsed.Round(time.Millisecond), span.Round(time.Millisecond))
	return res.rate(), float64(res.ok) / span.Seconds(), used
}

// settle waits until the newest of ids have had their first workflow task
// completed, so that a block does not start with the worker's backlog of an
// earlier block. Matching serves tasks roughly in order, so the newest ones
// stand for all.
func (b *bench) settle(ids []string) error {
	sample := ids[max(0, len(ids)-settleSample):]
	deadline := time.Now().Add(settleLimit)
	for _, id := range sample {
		for {
			pending, err := b.pendingWorkflowTask(id)
			if err != nil {
				return err
			}
			if !pending {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("settle: workflow %s still has a pending workflow task after %v", id, settleLimit)
			}
			time.Sleep(pollEvery / 10)
		}
	}
	return nil
}

func (b *bench) pendingWorkflowTask(id string) (bool, error) {
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := b.c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		return false, fmt.Errorf("describe workflow %s: %w", id, err)
	}
	return resp.GetPendingWorkflowTask() != nil, nil
}

// errNotAllClosed reports that a wait for workflows to close ran out of time.
var errNotAllClosed = errors.New("not all closed")

// closedQuery selects the closed workflows whose ID starts with prefix.
func closedQuery(prefix string) string {
	return fmt.Sprintf("WorkflowId STARTS_WITH '%s' AND ExecutionStatus != 'Running'", prefix)
}

// countClosed counts, through visibility, the closed workflows of prefix.
func (b *bench) countClosed(prefix string) (int64, error) {
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := b.c.CountWorkflow(ctx, &workflowservice.CountWorkflowExecutionsRequest{
		Namespace: namespace,
		Query:     closedQuery(prefix),
	})
	if err != nil {
		return 0, fmt.Errorf("count closed workflows %s*: %w", prefix, err)
	}
	return resp.GetCount(), nil
}

// waitClosed polls visibility until want workflows of prefix are closed or
// limit passes, and returns the last count seen.
func (b *bench) waitClosed(prefix string, want int64, limit time.Duration) (int64, error) {
	deadline := time.Now().Add(limit)
	for {
		got, err := b.countClosed(prefix)
		if err != nil {
			return got, err
		}
		if got >= want {
			return got, nil
		}
		if time.Now().After(deadline) {
			return got, fmt.Errorf("%w: %d of %d workflows %s* within %v", errNotAllClosed, got, want, prefix, limit)
		}
		time.Sleep(pollEvery)
	}
}

// lastClose is the latest close time among the closed workflows of prefix.
// SQL visibility lists closed workflows by close time, newest first.
func (b *bench) lastClose(prefix string) (time.Time, error) {
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := b.c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		Namespace: namespace,
		PageSize:  1,
		Query:     closedQuery(prefix),
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("list closed workflows %s*: %w", prefix, err)
	}
	if len(resp.GetExecutions()) == 0 {
		return time.Time{}, errors.New("list closed workflows " + prefix + "*: none")
	}
	return resp.GetExecutions()[0].GetCloseTime().AsTime(), nil
}

// logf writes one progress line to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "temporal-peer: "+format+"\n", args...)
}
