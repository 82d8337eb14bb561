package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// historyStats describes each of ids and returns the mean history length in
// events, the mean history size in bytes, and how many had each length.
func (b *bench) historyStats(ids []string) (events, bytes float64, lengths map[int64]int) {
	lengths = map[int64]int{}
	var n int
	for _, id := range ids {
		ctx, cancel := callCtx()
		resp, err := b.c.DescribeWorkflowExecution(ctx, id, "")
		cancel()
		if err != nil {
			b.fail(fmt.Errorf("describe workflow %s: %w", id, err))
			continue
		}
		info := resp.GetWorkflowExecutionInfo()
		events += float64(info.GetHistoryLength())
		lengths[info.GetHistoryLength()]++
		bytes += float64(info.GetHistorySizeBytes())
		n++
	}
	if n == 0 {
		return 0, 0, lengths
	}
	return events / float64(n), bytes / float64(n), lengths
}

// persistsSentences explains what Temporal writes for one approval, with the
// measured history sizes.
func (b *bench) persistsSentences(r *Result) []string {
	out := []string{
		fmt.Sprintf("History events per approval (measured, mean of a sample): decided %.1f (%.0f bytes), expired %.1f (%.0f bytes). "+
			"Decided: WorkflowExecutionStarted, WorkflowTaskScheduled/Started/Completed, TimerStarted, WorkflowExecutionSignaled, "+
			"WorkflowTaskScheduled/Started/Completed, TimerCanceled, WorkflowExecutionCompleted. "+
			"Expired: WorkflowExecutionStarted, WorkflowTaskScheduled/Started/Completed, TimerStarted, TimerFired, "+
			"WorkflowTaskScheduled/Started/Completed, WorkflowExecutionCompleted; or only 5 events when the due time had passed "+
			"before the first workflow task ran, so no timer was started. The expired mean is over %s. By history length, expired probe workflows: %s; "+
			"expired sample evenly spaced over the last timeout run: %s.",
			r.HistoryEventsDecided, r.HistoryBytesDecided, r.HistoryEventsExpired, r.HistoryBytesExpired,
			expiredSource(b.probeLengths), lengthsText(b.probeLengths), lengthsText(b.timeoutLengths)),
		"Each state change that adds events is two SQLite commits: the events as one history_node row, then one transaction that checks " +
			"the shard's range, rewrites the execution's mutable state (executions row) and inserts the tasks the change implies " +
			"(synchronous=FULL syncs the WAL at each commit); visibility (executions_visibility) is in the same file, written by visibility tasks.",
	}
	out = append(out, b.writesSentences...)
	if r.DBBytesPerWorkflow > 0 {
		out = append(out, fmt.Sprintf("Measured: the SQLite file plus its WAL grew by %.0f bytes per workflow over the timeout runs "+
			"(history, mutable state, tasks not yet deleted, visibility row and indexes; SQLite reuses freed pages, so this is net growth).",
			r.DBBytesPerWorkflow))
	}
	return out
}

// lengthsText renders counts by history length, e.g. "10 events: 41, 5 events: 9".
func lengthsText(lengths map[int64]int) string {
	var parts []string
	for _, l := range slices.Sorted(maps.Keys(lengths)) {
		parts = append(parts, fmt.Sprintf("%d events: %d", l, lengths[l]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func expiredSource(probe map[int64]int) string {
	if len(probe) > 0 {
		return "the write probe's expired approvals (started well before their due time)"
	}
	return "an evenly spaced sample of the last timeout run"
}
