package auditstream

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
)

var verifyEvents = flag.Int("verify.events", 100_000, "events in the export BenchmarkVerifyExport verifies (1000000 for the documented figures)")

// writeSyntheticExport writes an export of n events sealed every 10,000
// to a file in dir and returns its path and the sealer's public key.
func writeSyntheticExport(b *testing.B, dir string, n int) (string, string) {
	b.Helper()
	seed, pub := testSeed(b)
	cfg := DefaultConfig()
	cfg.SealSeed = seed
	s, err := NewSealer(nil, nil, cfg, quiet)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "export.jsonl")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	sc := streamConfig(cfg)
	t0 := time.Now().Add(-time.Hour)
	const every = 10_000
	seals := uint64(n / every)
	last := uint64(n) + seals
	var head ChainHead
	body := filepath.Join(dir, "body")
	bf, err := os.Create(body)
	if err != nil {
		b.Fatal(err)
	}
	bw := bufio.NewWriterSize(bf, 1<<20)
	chain := chainState{next: 1}
	r := newRangeHash()
	seq, lastEvent := uint64(1), uint64(0)
	for i := range n {
		e := testEvent(i, "acme", "TIMEOUT_KV_GET")
		data, _ := json.Marshal(e)
		subject, _ := cfg.Subject(e.TenantID, e.Code)
		at := t0.Add(time.Duration(seq) * time.Microsecond)
		if err := writeExportLine(bw, record{Seq: seq, Subject: subject, MsgID: e.EventID, Time: at, Data: data}); err != nil {
			b.Fatal(err)
		}
		if r.count == 0 {
			r.first = at
		}
		r.add(leaf(subject, e.EventID, data))
		lastEvent = seq
		seq++
		if r.count == every {
			at := t0.Add(time.Duration(seq) * time.Microsecond)
			data, err := s.makeSeal(chain, r, lastEvent, sc, at)
			if err != nil {
				b.Fatal(err)
			}
			if err := writeExportLine(bw, record{Seq: seq, Subject: cfg.SealSubject(), Time: at, Data: data}); err != nil {
				b.Fatal(err)
			}
			chain = chainState{lastSubj: seq, seq: seq, hash: chainHash(data), time: at.UTC(), next: lastEvent + 1}
			head = ChainHead{Seq: seq, Hash: chain.hash, Time: chain.time}
			seq++
			r = newRangeHash()
		}
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	bf.Close()
	hdr, _ := json.Marshal(exportLine{Export: &exportHeader{Version: exportVersion, Stream: cfg.Stream, Time: head.Time.Add(time.Second),
		FirstSeq: 1, LastSeq: last, Msgs: last, MaxAge: sc.MaxAge, MaxMsgs: sc.MaxMsgs, MaxBytes: sc.MaxBytes, Head: head}})
	w.Write(append(hdr, '\n'))
	bb, err := os.ReadFile(body)
	if err != nil {
		b.Fatal(err)
	}
	w.Write(bb)
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	os.Remove(body)
	return path, pub
}

// peakRSS returns the process's peak resident set size (VmHWM) in bytes.
func peakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// resetPeakRSS resets VmHWM to the current RSS (Linux: clear_refs 5).
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// BenchmarkVerifyExport verifies an export of -verify.events events (seals
// every 10,000) and reports events/s and the peak RSS of the verification
// alone, beside a same-run baseline: reading and decoding the same file
// without verifying (raw-events/s). Run with -benchtime 1x:
//
//	go test -run '^$' -bench VerifyExport -benchtime 1x -verify.events 1000000 ./pkg/auditstream/
func BenchmarkVerifyExport(b *testing.B) {
	n := *verifyEvents
	path, pub := writeSyntheticExport(b, b.TempDir(), n)
	info, _ := os.Stat(path)

	// Baseline: read and decode every line, nothing else.
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	lines := 0
	if err := readExport(f, func(int, *exportLine) error { lines++; return nil }); err != nil {
		b.Fatal(err)
	}
	f.Close()
	raw := float64(n) / time.Since(start).Seconds()

	runtime.GC()
	debug.FreeOSMemory()
	if !resetPeakRSS() {
		b.Log("cannot reset the peak RSS: peak-RSS includes the file's generation")
	}
	var rep Report
	b.ResetTimer()
	start = time.Now()
	for range b.N {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		rep, err = VerifyExport(f, pub)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	el := time.Since(start)
	b.StopTimer()
	if !rep.OK() || rep.Events != n {
		b.Fatalf("report: %d events, problems %v", rep.Events, rep.Problems)
	}
	rate := float64(n) * float64(b.N) / el.Seconds()
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(raw, "raw-events/s")
	b.ReportMetric(rate/raw, "ratio")
	b.ReportMetric(float64(peakRSS())/(1<<20), "peak-RSS-MiB")
	b.ReportMetric(float64(info.Size())/(1<<20), "file-MiB")
	fmt.Fprintf(os.Stderr, "verify %d events (%d lines, %.0f MiB): %.0f events/s (decode only: %.0f events/s, ratio %.2f); peak RSS %.0f MiB\n",
		n, lines, float64(info.Size())/(1<<20), rate, raw, rate/raw, float64(peakRSS())/(1<<20))
}
