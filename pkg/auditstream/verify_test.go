package auditstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// syntheticTrail builds, without a server, the export of a stream of n
// events sealed every `every` events, as a Sealer would seal it.
func syntheticTrail(t testing.TB, n, every int) ([]exportLine, string) {
	t.Helper()
	seed, pub := testSeed(t)
	cfg := DefaultConfig()
	cfg.SealSeed = seed
	s, err := NewSealer(nil, nil, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	var out []exportLine
	chain := chainState{next: 1}
	r := newRangeHash()
	seq, last := uint64(1), uint64(0)
	for i := range n {
		e := testEvent(i, "acme", "TIMEOUT_KV_GET")
		data, _ := json.Marshal(e)
		subject, _ := cfg.Subject(e.TenantID, e.Code)
		out = append(out, exportLine{Seq: seq, Subject: subject, MsgID: e.EventID, Time: t0.Add(time.Duration(seq) * time.Millisecond), Data: data})
		r.add(leaf(subject, e.EventID, data))
		last = seq
		seq++
		if r.count == every {
			data, err := s.makeSeal(chain, r, last, t0.Add(time.Duration(seq)*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, exportLine{Seq: seq, Subject: cfg.SealSubject(), Time: t0.Add(time.Duration(seq) * time.Millisecond), Data: data})
			chain = chainState{seq: seq, hash: chainHash(data), next: last + 1}
			seq++
			r = newRangeHash()
		}
	}
	return out, pub
}

func TestVerifyExportSynthetic(t *testing.T) {
	lines, pub := syntheticTrail(t, 23, 5) // 4 sealed ranges of 5 events, 3 unsealed
	seal0, seal1 := lines[5].Seq, lines[11].Seq
	tests := []struct {
		name     string
		tamper   func([]exportLine) []exportLine
		want     []finding
		verified int
		partial  int
	}{
		{"clean", func(l []exportLine) []exportLine { return l }, nil, 4, 0},
		{"head removed by MaxAge", func(l []exportLine) []exportLine { return l[2:] }, nil, 3, 1},
		{"first range and its seal removed", func(l []exportLine) []exportLine { return l[6:] }, nil, 2, 1}, // the next range starts at the removed seal
		{"line duplicated in place", func(l []exportLine) []exportLine {
			return slices.Insert(l, 3, l[2])
		}, []finding{{Duplicated, 3, 3, 0}}, 4, 0},
		{"line duplicated at the end", func(l []exportLine) []exportLine {
			return append(l, l[2])
		}, []finding{{Reordered, 3, 3, 0}, {Duplicated, 3, 3, 0}}, 4, 0},
		{"seal replaced by garbage", func(l []exportLine) []exportLine {
			l[5].Data = []byte("garbage")
			return l
		}, []finding{{BadSeal, seal0, seal0, 0}, {BrokenChain, seal1, seal1, 0}}, 2, 0},
		{"gap in the unsealed tail", func(l []exportLine) []exportLine {
			return slices.Delete(l, len(l)-2, len(l)-1)
		}, []finding{{Missing, 26, 26, 0}}, 4, 0},
		{"events moved into another range's seal", func(l []exportLine) []exportLine {
			l[0].Data, l[7].Data = l[7].Data, l[0].Data
			l[0].MsgID, l[7].MsgID = l[7].MsgID, l[0].MsgID
			return l
		}, []finding{{Modified, 1, 1, seal0}, {Modified, 8, 8, seal1}}, 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := VerifyExport(bytes.NewReader(writeExport(t, tt.tamper(slices.Clone(lines)))), pub)
			if err != nil {
				t.Fatal(err)
			}
			if f := findings(r); !slices.Equal(f, tt.want) {
				t.Errorf("findings %+v, want %+v (%v)", f, tt.want, r.Problems)
			}
			partial := 0
			for _, rg := range r.Ranges {
				if rg.Partial {
					partial++
				}
			}
			if r.RangesVerified != tt.verified || partial != tt.partial {
				t.Errorf("verified %d, partial %d; want %d, %d: %+v", r.RangesVerified, partial, tt.verified, tt.partial, r.Ranges)
			}
		})
	}
}

func TestVerifyExportInvalidInput(t *testing.T) {
	_, pub := testSeed(t)
	tests := []struct {
		name, input string
		err         error
	}{
		{"empty", "", nil},
		{"blank lines", "\n\n  \n", nil},
		{"not json", "hello\n", ErrInvalidExport},
		{"json array", "[1,2]\n", ErrInvalidExport},
		{"seq 0", `{"seq":0,"subject":"a","data":""}` + "\n", ErrInvalidExport},
		{"no subject", `{"seq":1,"data":""}` + "\n", ErrInvalidExport},
		{"data not base64", `{"seq":1,"subject":"a","data":"!!"}` + "\n", ErrInvalidExport},
		{"bad time", `{"seq":1,"subject":"a","time":"yesterday"}` + "\n", ErrInvalidExport},
		{"line too long", `{"seq":1,"subject":"` + strings.Repeat("a", maxExportLine) + `"}`, ErrInvalidExport},
		{"seal with a huge range", `{"seq":5,"subject":"guardian.v1.audit.seal","data":"` +
			b64(`{"v":1,"first_seq":1,"last_seq":18446744073709551615,"count":0}`) + `"}` + "\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := VerifyExport(strings.NewReader(tt.input), pub)
			if !errors.Is(err, tt.err) {
				t.Errorf("VerifyExport = %v, want %v", err, tt.err)
			}
		})
	}
}

func b64(s string) string {
	b, _ := json.Marshal([]byte(s))
	return string(b[1 : len(b)-1])
}
