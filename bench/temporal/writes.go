package main

import (
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strings"

	_ "modernc.org/sqlite" // the SQLite driver the server's sqlite plugin uses
)

// writesTable is the table the counting triggers update. It is not Temporal's.
const writesTable = "bench_row_writes"

// installWriteTriggers adds, in one short transaction on a connection of its
// own, one counter row and AFTER INSERT/UPDATE/DELETE triggers per Temporal
// table, so that the rows Temporal writes can be counted per table. A
// trigger runs inside the statement that fires it: it adds no commit, but it
// costs CPU, which is why they are installed only after the timed parts. The
// server's connection has a busy timeout, so it waits for this transaction
// instead of failing.
func installWriteTriggers(dbPath string) error {
	db, err := sql.Open("sqlite", fmt.Sprintf("file:%s?_pragma=busy_timeout(%d)", dbPath, busyTimeoutMS))
	if err != nil {
		return fmt.Errorf("open %s: %w", dbPath, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	tables, err := userTables(db)
	if err != nil {
		return err
	}
	stmts := []string{fmt.Sprintf("CREATE TABLE %s (tbl TEXT PRIMARY KEY, ins INTEGER NOT NULL DEFAULT 0, "+
		"upd INTEGER NOT NULL DEFAULT 0, del INTEGER NOT NULL DEFAULT 0)", writesTable)}
	for _, t := range tables {
		stmts = append(stmts, fmt.Sprintf("INSERT INTO %s (tbl) VALUES ('%s')", writesTable, t))
		for _, op := range []struct{ event, column string }{{"INSERT", "ins"}, {"UPDATE", "upd"}, {"DELETE", "del"}} {
			stmts = append(stmts, fmt.Sprintf(
				"CREATE TRIGGER bench_%s_%s AFTER %s ON %s BEGIN UPDATE %s SET %s = %s + 1 WHERE tbl = '%s'; END",
				op.column, t, op.event, t, writesTable, op.column, op.column, t))
		}
	}
	tx, err := db.Begin()
	if err != nil {
		return fmt.Errorf("install write-counting triggers: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	for _, s := range stmts {
		if _, err := tx.Exec(s); err != nil {
			return fmt.Errorf("install write-counting triggers: %q: %w", s, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("install write-counting triggers: commit: %w", err)
	}
	return nil
}

// userTables lists Temporal's ordinary tables: not SQLite's own, not the
// full-text-search tables (virtual, or their shadow tables).
func userTables(db *sql.DB) ([]string, error) {
	rows, err := db.Query("SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	defer rows.Close()
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("list tables: %w", err)
		}
		if strings.HasPrefix(name, "sqlite_") || strings.Contains(name, "_fts") || name == writesTable {
			continue
		}
		tables = append(tables, name)
	}
	return tables, rows.Err()
}

// rowWrites are rows inserted, updated and deleted, per table.
type rowWrites map[string][3]int64

// readWrites reads the counters through a read-only connection.
func readWrites(dbPath string) (rowWrites, error) {
	db, err := sql.Open("sqlite", fmt.Sprintf("file:%s?mode=ro&_pragma=busy_timeout(%d)", dbPath, busyTimeoutMS))
	if err != nil {
		return nil, fmt.Errorf("open %s read-only: %w", dbPath, err)
	}
	defer db.Close()
	rows, err := db.Query("SELECT tbl, ins, upd, del FROM " + writesTable)
	if err != nil {
		return nil, fmt.Errorf("read row-write counters: %w", err)
	}
	defer rows.Close()
	w := rowWrites{}
	for rows.Next() {
		var t string
		var c [3]int64
		if err := rows.Scan(&t, &c[0], &c[1], &c[2]); err != nil {
			return nil, fmt.Errorf("read row-write counters: %w", err)
		}
		w[t] = c
	}
	return w, rows.Err()
}

// since returns w − before.
func (w rowWrites) since(before rowWrites) rowWrites {
	d := rowWrites{}
	for t, a := range w {
		b := before[t]
		for i := range a {
			a[i] -= b[i]
		}
		d[t] = a
	}
	return d
}

// writesSentence reports writes per workflow: rows inserted and updated per
// table, the total, and rows deleted.
func writesSentence(what string, w rowWrites, n int64) string {
	if n <= 0 || len(w) == 0 {
		return ""
	}
	per := func(i int) (string, float64) {
		var parts []string
		var total float64
		for _, t := range slices.Sorted(maps.Keys(w)) {
			v := float64(w[t][i]) / float64(n)
			total += v
			if v >= 0.005 || v <= -0.005 {
				parts = append(parts, fmt.Sprintf("%s %.2f", t, v))
			}
		}
		return strings.Join(parts, ", "), total
	}
	ins, insTotal := per(0)
	upd, updTotal := per(1)
	del, delTotal := per(2)
	return fmt.Sprintf("Measured (write probe, SQLite triggers), rows written per %s, over %d: %.1f inserted (%s); %.1f updated (%s); "+
		"%.1f deleted meanwhile (%s; task rows are deleted in ranges after processing, so deletes lag and may belong to earlier work).",
		what, n, insTotal, ins, updTotal, upd, delTotal, del)
}
