package main

import (
	"database/sql"
	"fmt"
	"strings"

	_ "modernc.org/sqlite" // the SQLite driver the server's plugin uses
)

// countedTables are the SQLite tables whose rows are counted around the
// timeout runs: the execution itself, its history, its pending timers and
// signals, the queues of tasks the history service writes for itself, the
// matching service's task backlog, and visibility.
var countedTables = []string{
	"executions", "current_executions", "history_tree", "history_node",
	"timer_info_maps", "signals_requested_sets",
	"transfer_tasks", "timer_tasks", "visibility_tasks",
	"history_immediate_tasks", "history_scheduled_tasks",
	"tasks", "tasks_v", "executions_visibility",
}

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

// rowCounts counts the rows of countedTables through a separate read-only
// connection. Only safe alongside the server in WAL mode, where a reader
// never blocks the writer.
func rowCounts(dbPath string) (map[string]int64, error) {
	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro")
	if err != nil {
		return nil, fmt.Errorf("open %s read-only: %w", dbPath, err)
	}
	defer db.Close()
	counts := map[string]int64{}
	for _, table := range countedTables {
		var n int64
		if err := db.QueryRow("SELECT COUNT(*) FROM " + table).Scan(&n); err != nil {
			return nil, fmt.Errorf("count rows of %s: %w", table, err)
		}
		counts[table] = n
	}
	return counts, nil
}

// rowsSentence reports the net rows per workflow that a set of runs left in
// each table, from counts taken before and after them.
func rowsSentence(before, after map[string]int64, workflows int) string {
	var parts []string
	for _, table := range countedTables {
		per := float64(after[table]-before[table]) / float64(workflows)
		parts = append(parts, fmt.Sprintf("%s %+.2f", table, per))
	}
	return fmt.Sprintf("Measured: net SQLite rows per expired approval left by the timeout runs (%d workflows, counted once all had closed; "+
		"task rows are deleted in batches after processing, so task counts are what was still there): %s.",
		workflows, strings.Join(parts, ", "))
}

// persistsSentences explains what Temporal writes for one approval, with the
// measured history sizes.
func persistsSentences(r *Result) []string {
	return []string{
		fmt.Sprintf("History events per approval (measured, mean of a sample): decided %.1f (%.0f bytes), expired %.1f (%.0f bytes). "+
			"Decided: WorkflowExecutionStarted, WorkflowTaskScheduled/Started/Completed, TimerStarted, WorkflowExecutionSignaled, "+
			"WorkflowTaskScheduled/Started/Completed, TimerCanceled, WorkflowExecutionCompleted. "+
			"Expired: the same with TimerFired instead of the signal, and no TimerCanceled.",
			r.HistoryEventsDecided, r.HistoryBytesDecided, r.HistoryEventsExpired, r.HistoryBytesExpired),
		"Each state change is one SQLite transaction on the history shard: it appends a batch of events (history_node row), " +
			"rewrites the execution's mutable state blob (executions row; current_executions on start and close), and inserts the tasks it implies.",
		"Tasks written per approval: a transfer task for each workflow task (handed to matching; a tasks row only when no poller is waiting), " +
			"a timer task for the workflow task's start-to-close timeout and, on sticky queues, its schedule-to-start timeout, " +
			"a timer task and a timer_info_maps row for the user timer, visibility tasks on start and close, " +
			"and on close a retention timer task that deletes the workflow after the namespace retention.",
		"Visibility: one executions_visibility row per workflow, written on start and updated on close, in the same SQLite file.",
	}
}
