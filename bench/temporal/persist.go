package main

import (
	"fmt"
)

// historyStats describes each of ids and returns the mean history length in
// events and the mean history size in bytes.
func (b *bench) historyStats(ids []string) (events, bytes float64) {
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
		bytes += float64(info.GetHistorySizeBytes())
		n++
	}
	if n == 0 {
		return 0, 0
	}
	return events / float64(n), bytes / float64(n)
}

// persistsSentences explains what Temporal writes for one approval, with the
// measured history sizes.
func (b *bench) persistsSentences(r *Result) []string {
	out := []string{
		fmt.Sprintf("History events per approval (measured, mean of a sample): decided %.1f (%.0f bytes), expired %.1f (%.0f bytes). "+
			"Decided: WorkflowExecutionStarted, WorkflowTaskScheduled/Started/Completed, TimerStarted, WorkflowExecutionSignaled, "+
			"WorkflowTaskScheduled/Started/Completed, TimerCanceled, WorkflowExecutionCompleted. "+
			"Expired: the same with TimerFired instead of the signal, and no TimerCanceled.",
			r.HistoryEventsDecided, r.HistoryBytesDecided, r.HistoryEventsExpired, r.HistoryBytesExpired),
		"Each state change of a workflow is one SQLite transaction of the history shard (one fsync in the default synchronous mode); " +
			"visibility (executions_visibility) lives in the same file and is written by separate visibility tasks.",
	}
	for _, w := range []struct {
		what string
		rows rowWrites
		n    int64
	}{
		{"start (started and its first workflow task completed; the first half of a decided approval)", b.startWrites, b.startedN},
		{"decision (signal accepted through workflow closed; the second half of a decided approval)", b.decideWrites, b.decidedN},
		{"expired approval (started, timer fired, closed)", b.expiredWrites, b.expiredN},
	} {
		if s := writesSentence(w.what, w.rows, w.n); s != "" {
			out = append(out, s)
		}
	}
	if r.DBBytesPerWorkflow > 0 {
		out = append(out, fmt.Sprintf("Measured: the SQLite file plus its WAL grew by %.0f bytes per workflow over the timeout runs "+
			"(history, mutable state, tasks not yet deleted, visibility row and indexes; SQLite reuses freed pages, so this is net growth).",
			r.DBBytesPerWorkflow))
	}
	return out
}
