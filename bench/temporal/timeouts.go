package main

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"go.temporal.io/api/workflowservice/v1"
)

const (
	// timeoutStarters is how many goroutines start a timeout run's workflows.
	timeoutStarters = 8
	// timeoutGrace is how long after the last due time a run waits for closes.
	timeoutGrace = 120 * time.Second
	// listPageSize is the visibility page size used to read close times.
	listPageSize = 1000
)

// timeoutPlan holds the due time of each workflow of one timeout run.
type timeoutPlan struct {
	prefix string
	due    []time.Time
}

// planTimeouts spreads n due times over [min, max] whole seconds after a
// lead of n×leadPerItem rounded up to whole seconds.
func (c config) planTimeouts(idx, n int, start time.Time) timeoutPlan {
	lead := (time.Duration(n)*c.leadPerItem + time.Second - 1).Truncate(time.Second)
	minS, maxS := int(c.minDue/time.Second), int(c.maxDue/time.Second)
	p := timeoutPlan{prefix: fmt.Sprintf("to%d-", idx), due: make([]time.Time, n)}
	for i := range n {
		p.due[i] = start.Add(lead + time.Duration(minS+i%(maxS-minS+1))*time.Second)
	}
	return p
}

func (p timeoutPlan) id(i int) string { return p.prefix + strconv.Itoa(i) }

// span is the last due time minus the first.
func (p timeoutPlan) span() (first, last time.Time) {
	if len(p.due) == 0 {
		return time.Time{}, time.Time{}
	}
	return slices.MinFunc(p.due, time.Time.Compare), slices.MaxFunc(p.due, time.Time.Compare)
}

// timeoutRun starts n workflows that nobody decides and measures how late
// each one's timer closes it.
func (b *bench) timeoutRun(idx, n int) (Timeout, timeoutPlan) {
	start := time.Now()
	plan := b.cfg.planTimeouts(idx, n, start)
	first, last := plan.span()
	t := Timeout{N: n, DueSpan: last.Sub(first)}

	var next atomic.Int64
	b.closedLoop(timeoutStarters, 24*time.Hour, func(int) (bool, error) {
		i := int(next.Add(1) - 1)
		if i >= n {
			return true, nil
		}
		return false, b.startWorkflow(plan.id(i), plan.due[i])
	})
	allStarted := time.Now()
	for _, d := range plan.due {
		if d.Before(allStarted) {
			t.DueBeforeAllStarted++
		}
	}
	logf("timeouts %d: started in %v (first due after %v), %d due before all were started; waiting for timers",
		n, allStarted.Sub(start).Round(time.Millisecond), first.Sub(start), t.DueBeforeAllStarted)

	closedCount, err := b.waitClosed(plan.prefix, int64(n), time.Until(last)+timeoutGrace)
	switch {
	case errors.Is(err, errNotAllClosed):
		logf("timeouts %d: %v (reported as Closed, not as an error)", n, err)
	case err != nil:
		b.fail(err)
	}
	closes, err := b.listCloses(plan.prefix)
	if err != nil {
		b.fail(err)
	}
	t.Closed = max(int(closedCount), len(closes))
	t.Late = plan.lateness(closes)
	sorted := slices.Clone(t.Late)
	slices.Sort(sorted)
	t.P50, t.P99 = percentile(sorted, 0.50), percentile(sorted, 0.99)
	if len(sorted) > 0 {
		t.Max = sorted[len(sorted)-1]
	}
	ids := make([]string, 0, len(closes))
	for id := range closes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	t.NotExpired = b.countNotExpired(ids)
	return t, plan
}

// sample returns up to k workflow IDs evenly spaced over the plan's items.
func (p timeoutPlan) sample(k int) []string {
	n := len(p.due)
	k = min(k, n)
	ids := make([]string, k)
	for j := range k {
		ids[j] = p.id(j * n / k)
	}
	return ids
}

// lateness is each closed workflow's close time minus its due time, in item
// order.
func (p timeoutPlan) lateness(closes map[string]time.Time) []time.Duration {
	late := make([]time.Duration, 0, len(closes))
	for i := range p.due {
		if ct, ok := closes[p.id(i)]; ok {
			late = append(late, ct.Sub(p.due[i]))
		}
	}
	return late
}

// listCloses reads, through visibility, the close time of every closed
// workflow of prefix.
func (b *bench) listCloses(prefix string) (map[string]time.Time, error) {
	closes := map[string]time.Time{}
	var token []byte
	for {
		resp, err := b.listPage(prefix, token)
		if err != nil {
			return closes, err
		}
		for _, e := range resp.GetExecutions() {
			closes[e.GetExecution().GetWorkflowId()] = e.GetCloseTime().AsTime()
		}
		token = resp.GetNextPageToken()
		if len(token) == 0 {
			return closes, nil
		}
	}
}

func (b *bench) listPage(prefix string, token []byte) (*workflowservice.ListWorkflowExecutionsResponse, error) {
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := b.c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		Namespace:     namespace,
		PageSize:      listPageSize,
		NextPageToken: token,
		Query:         closedQuery(prefix),
	})
	if err != nil {
		return nil, fmt.Errorf("list closed workflows %s*: %w", prefix, err)
	}
	return resp, nil
}

// countNotExpired reads each workflow's result and counts those that are not
// "expired" (or could not be read).
func (b *bench) countNotExpired(ids []string) int {
	var next, bad atomic.Int64
	b.closedLoop(timeoutStarters, 24*time.Hour, func(int) (bool, error) {
		i := next.Add(1) - 1
		if i >= int64(len(ids)) {
			return true, nil
		}
		result, err := b.result(ids[i])
		if err == nil && result != expiredResult {
			err = fmt.Errorf("workflow %s returned %q, want %q", ids[i], result, expiredResult)
		}
		if err != nil {
			bad.Add(1)
		}
		return false, err
	})
	return int(bad.Load())
}

// result waits for and returns the result of workflow id.
func (b *bench) result(id string) (string, error) {
	ctx, cancel := callCtx()
	defer cancel()
	var s string
	if err := b.c.GetWorkflow(ctx, id, "").Get(ctx, &s); err != nil {
		return "", fmt.Errorf("get result of workflow %s: %w", id, err)
	}
	return s, nil
}
