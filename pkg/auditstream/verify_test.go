package auditstream

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// syntheticTrail builds, without a server, the export of a stream of n
// events sealed every `every` events, as a Sealer would seal it: a header,
// then the messages. Event i is stored at t0 + i ms; the export is made
// a second after the last message.
func syntheticTrail(t testing.TB, n, every int) ([]exportLine, string) {
	t.Helper()
	return syntheticTrailWith(t, n, every, func(int, *jetstream.StreamConfig) {})
}

// syntheticTrailWith is syntheticTrail with the stream's limits changed by
// limits before seal k (counted from 0).
func syntheticTrailWith(t testing.TB, n, every int, limits func(k int, sc *jetstream.StreamConfig)) ([]exportLine, string) {
	t.Helper()
	seed, pub := testSeed(t)
	cfg := DefaultConfig()
	cfg.SealSeed = seed
	s, err := NewSealer(nil, nil, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	sc := streamConfig(cfg)
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	out := []exportLine{{}}
	chain := chainState{next: 1}
	r := newRangeHash()
	seq, last := uint64(1), uint64(0)
	seals := 0
	for i := range n {
		e := testEvent(i, "acme", "TIMEOUT_KV_GET")
		data, _ := json.Marshal(e)
		subject, _ := cfg.Subject(e.TenantID, e.Code)
		out = append(out, exportLine{Seq: seq, Subject: subject, MsgID: e.EventID, Time: t0.Add(time.Duration(seq) * time.Millisecond), Data: data})
		if r.count == 0 {
			r.first = t0.Add(time.Duration(seq) * time.Millisecond)
		}
		r.add(leaf(subject, e.EventID, data))
		last = seq
		seq++
		if r.count == every {
			at := t0.Add(time.Duration(seq) * time.Millisecond)
			limits(seals, &sc)
			data, err := s.makeSeal(chain, r, last, sc, at)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, exportLine{Seq: seq, Subject: cfg.SealSubject(), Time: at, Data: data})
			chain = chainState{lastSubj: seq, seq: seq, hash: chainHash(data), time: at.UTC(), next: last + 1}
			seq++
			seals++
			r = newRangeHash()
		}
	}
	out[0].Export = &exportHeader{Version: exportVersion, Stream: cfg.Stream, Time: t0.Add(time.Duration(seq)*time.Millisecond + time.Second),
		FirstSeq: 1, LastSeq: seq - 1, Msgs: seq - 1, MaxAge: sc.MaxAge, MaxMsgs: sc.MaxMsgs, MaxBytes: sc.MaxBytes,
		Head: ChainHead{Seq: chain.seq, Hash: chain.hash, Time: chain.time}}
	return out, pub
}

// header returns a copy of an export's header for a test to change.
func header(l []exportLine) *exportHeader {
	h := *l[0].Export
	l[0].Export = &h
	return &h
}

// TestVerifyExportSynthetic tampers with an export in every way the
// anchors must catch: a cut head, tail or middle, with and without the
// header rewritten to match, a retention shortened, an event stored twice.
func TestVerifyExportSynthetic(t *testing.T) {
	// Lines: 0 header; 1-5 events, 6 seal (seq 6); 7-11, 12 seal (seq 12);
	// 13-17, 18 seal; 19-23, 24 seal; 25-27 unsealed events (seq 25-27).
	lines, pub := syntheticTrail(t, 23, 5)
	const seal0, seal1, seal2, seal3 = 6, 12, 18, 24
	headOf := func(l []exportLine, seq uint64) ChainHead {
		for _, x := range l {
			if x.Seq == seq {
				h := sha256.Sum256(x.Data)
				var sl seal
				_ = json.Unmarshal(x.Data, &sl)
				return ChainHead{Seq: seq, Hash: hex.EncodeToString(h[:]), Time: sl.Time}
			}
		}
		t.Fatalf("no line with seq %d", seq)
		return ChainHead{}
	}
	fullHead := headOf(lines, seal3)
	tests := []struct {
		name     string
		tamper   func([]exportLine) []exportLine
		opts     []VerifyOption
		want     []finding
		verified int
	}{
		{"clean", func(l []exportLine) []exportLine { return l }, nil, nil, 4},
		{"clean, with its chain head", func(l []exportLine) []exportLine { return l }, []VerifyOption{WithChainHead(fullHead)}, nil, 4},
		{"head cut", func(l []exportLine) []exportLine { return slices.Delete(l, 1, 3) }, nil,
			[]finding{{Missing, 1, 2, seal0}}, 3},
		{"head cut, header rewritten", func(l []exportLine) []exportLine {
			l = slices.Delete(l, 1, 3)
			h := header(l)
			h.FirstSeq, h.Msgs = 3, h.Msgs-2
			return l
		}, nil, []finding{{MissingHead, 1, 2, seal0}}, 3},
		{"first two sealed ranges cut", func(l []exportLine) []exportLine { return slices.Delete(l, 1, 13) }, nil,
			[]finding{{Missing, 1, 11, 0}, {Missing, seal1, seal1, seal2}, {BrokenChain, seal2, seal2, 0}}, 1},
		{"first two sealed ranges cut, header rewritten", func(l []exportLine) []exportLine {
			l = slices.Delete(l, 1, 13)
			h := header(l)
			h.FirstSeq, h.Msgs = 13, h.Msgs-12
			return l
		}, nil, []finding{{MissingHead, seal1, 12, seal2}}, 1},
		{"middle range cut", func(l []exportLine) []exportLine { return slices.Delete(l, 7, 13) }, nil,
			[]finding{{Missing, 7, 11, 0}, {Missing, seal1, seal1, seal2}, {BrokenChain, seal2, seal2, 0}}, 2},
		{"two lines swapped", func(l []exportLine) []exportLine {
			l[2], l[3] = l[3], l[2]
			return l
		}, nil, []finding{{Reordered, 2, 2, 0}}, 4},
		{"last sealed range and unsealed tail cut", func(l []exportLine) []exportLine { return l[:19] }, nil,
			[]finding{{Missing, 19, 27, 0}, {MissingTail, seal3, seal3, 0}}, 3},
		{"tail cut, header rewritten, export time kept", func(l []exportLine) []exportLine {
			l = l[:19]
			h := header(l)
			h.LastSeq, h.Msgs, h.Head = seal2, seal2, headOf(l, seal2)
			h.Time = h.Time.Add(3 * time.Minute)
			return l
		}, nil, []finding{{MissingTail, seal2, seal2, 0}}, 3},
		{"tail cut, header rewritten, checked against the chain head", func(l []exportLine) []exportLine {
			l = l[:19]
			h := header(l)
			h.LastSeq, h.Msgs, h.Head = seal2, seal2, headOf(l, seal2)
			return l
		}, []VerifyOption{WithChainHead(fullHead)}, []finding{{MissingTail, seal3, seal3, 0}}, 3},
		{"export header says a shorter MaxAge", func(l []exportLine) []exportLine {
			header(l).MaxAge = time.Second
			return l
		}, nil, []finding{{RetentionChanged, seal3, seal3, 0}}, 4},
		{"expected retention longer than the stream's", func(l []exportLine) []exportLine { return l }, []VerifyOption{WithRetention(100 * 24 * time.Hour)},
			[]finding{{RetentionChanged, 0, 0, 0}}, 4},
		{"verified long after the last seal", func(l []exportLine) []exportLine { return l }, []VerifyOption{WithVerifyTime(fullHead.Time.Add(time.Hour))},
			[]finding{{MissingTail, seal3, seal3, 0}}, 4},
		{"no header", func(l []exportLine) []exportLine { return l[1:] }, nil, []finding{{Unanchored, 0, 0, 0}}, 4},
		{"line duplicated in place", func(l []exportLine) []exportLine {
			return slices.Insert(l, 3, l[2])
		}, nil, []finding{{Duplicated, 2, 2, 0}}, 4},
		{"line duplicated at the end", func(l []exportLine) []exportLine {
			return append(l, l[2])
		}, nil, []finding{{Duplicated, 2, 2, 0}}, 4},
		{"event stored twice", func(l []exportLine) []exportLine {
			dup := l[2]
			dup.Seq = 28
			h := header(l)
			h.LastSeq, h.Msgs = 28, 28
			return append(l, dup)
		}, nil, []finding{{Duplicated, 28, 28, 0}}, 4},
		{"seal replaced by garbage", func(l []exportLine) []exportLine {
			l[6].Data = []byte("garbage")
			return l
		}, nil, []finding{{BadSeal, seal0, seal0, 0}, {BrokenChain, seal1, seal1, 0}}, 2},
		{"gap in the unsealed tail", func(l []exportLine) []exportLine {
			return slices.Delete(l, len(l)-2, len(l)-1)
		}, nil, []finding{{Missing, 26, 26, 0}}, 4},
		{"events moved into another range's seal", func(l []exportLine) []exportLine {
			l[1].Data, l[8].Data = l[8].Data, l[1].Data
			l[1].MsgID, l[8].MsgID = l[8].MsgID, l[1].MsgID
			return l
		}, nil, []finding{{Modified, 1, 1, seal0}, {Modified, 8, 8, seal1}}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := VerifyExport(bytes.NewReader(writeExport(t, tt.tamper(slices.Clone(lines)))), pub, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if f := findings(r); !slices.Equal(f, tt.want) {
				t.Errorf("findings %+v, want %+v (%v)", f, tt.want, r.Problems)
			}
			if r.RangesVerified != tt.verified {
				t.Errorf("verified %d, want %d: %+v", r.RangesVerified, tt.verified, r.Ranges)
			}
		})
	}
}

// TestVerifyExportOldChainHead: a chain head kept from long ago (more
// seals back than verification keeps for chain lookups) is still found.
func TestVerifyExportOldChainHead(t *testing.T) {
	lines, pub := syntheticTrail(t, recentSeals+200, 1)
	var old exportLine
	cfg := DefaultConfig()
	for _, l := range lines {
		if l.Subject == cfg.SealSubject() {
			old = l // the first seal
			break
		}
	}
	h := sha256.Sum256(old.Data)
	head := ChainHead{Seq: old.Seq, Hash: hex.EncodeToString(h[:])}
	r, err := VerifyExport(bytes.NewReader(writeExport(t, lines)), pub, WithChainHead(head))
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		t.Fatalf("an old chain head is reported: %v", r.Problems)
	}
	head.Hash = strings.Repeat("0", 64)
	if r, _ := VerifyExport(bytes.NewReader(writeExport(t, lines)), pub, WithChainHead(head)); !slices.Equal(findings(r), []finding{{MissingTail, old.Seq, old.Seq, 0}}) {
		t.Fatalf("a wrong chain head: %v", r.Problems)
	}
}

// TestVerifyExportHeaderMsgsLie: a header that claims far more messages
// than the file holds does not make verification pass over the file
// that many times.
func TestVerifyExportHeaderMsgsLie(t *testing.T) {
	lines, pub := syntheticTrail(t, 20, 5)
	h := header(lines)
	h.Msgs = 1 << 60
	f, err := os.CreateTemp(t.TempDir(), "export")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(writeExport(t, lines))
	f.Seek(0, io.SeekStart)
	done := make(chan error, 1)
	go func() { _, err := VerifyExport(f, pub); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("VerifyExport still running after 10s")
	}
}

// TestVerifyExportRetentionShrunkBetweenSeals: a seal that records a
// shorter MaxAge than the one before it is reported.
func TestVerifyExportRetentionShrunkBetweenSeals(t *testing.T) {
	lines, pub := syntheticTrailWith(t, 20, 5, func(k int, sc *jetstream.StreamConfig) {
		if k == 2 {
			sc.MaxAge = time.Hour
		}
	})
	header(lines).MaxAge = time.Hour
	r, err := VerifyExport(bytes.NewReader(writeExport(t, lines)), pub)
	if err != nil {
		t.Fatal(err)
	}
	if want := []finding{{RetentionChanged, 18, 18, 0}}; !slices.Equal(findings(r), want) {
		t.Errorf("findings %+v, want %+v (%v)", findings(r), want, r.Problems)
	}
}

// TestVerifyExportDuplicatePasses: duplicated event ids are found when the
// ids take several passes, from a file.
func TestVerifyExportDuplicatePasses(t *testing.T) {
	lines, pub := syntheticTrail(t, 40, 10)
	dup := lines[3]
	dup.Seq = lines[len(lines)-1].Seq + 1
	h := header(lines)
	h.LastSeq, h.Msgs = dup.Seq, dup.Seq
	lines = append(lines, dup)
	f, err := os.CreateTemp(t.TempDir(), "export")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(writeExport(t, lines))
	f.Seek(0, io.SeekStart)
	r, err := VerifyExport(f, pub, withIDBatch(7))
	if err != nil {
		t.Fatal(err)
	}
	if want := []finding{{Duplicated, dup.Seq, dup.Seq, 0}}; !slices.Equal(findings(r), want) {
		t.Errorf("findings %+v, want %+v (%v)", findings(r), want, r.Problems)
	}
	// From a reader that cannot seek, several passes are refused.
	if _, err := VerifyExport(bytes.NewReader(writeExport(t, lines)), pub, withIDBatch(7)); err != nil {
		t.Fatalf("a bytes.Reader seeks: %v", err)
	}
	if _, err := VerifyExport(io.MultiReader(bytes.NewReader(writeExport(t, lines))), pub, withIDBatch(7)); !errors.Is(err, ErrInvalidExport) {
		t.Errorf("several passes over a plain reader: %v, want ErrInvalidExport", err)
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
		{"unknown export version", `{"export":{"v":9}}` + "\n", ErrInvalidExport},
		{"header not first", `{"seq":1,"subject":"a"}` + "\n" + `{"export":{"v":1}}` + "\n", ErrInvalidExport},
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

// TestVerifierMemoryBounded: without a seal that verifies (no sealer, or
// the wrong key), the verifier holds at most what one seal could cover,
// and the events still count as unsealed.
func TestVerifierMemoryBounded(t *testing.T) {
	_, pub := testSeed(t)
	cfg := DefaultConfig()
	v, err := newVerifier(&cfg, pub, []VerifyOption{withIDBatch(1 << 20)})
	if err != nil {
		t.Fatal(err)
	}
	const n = 5*maxSealEvery + 7
	v.begin(bounds{first: 1, last: n, now: time.Now(), anchored: true}, 1)
	most := 0
	for seq := uint64(1); seq <= n; seq++ {
		v.add(record{Seq: seq, Subject: "guardian.v1.audit.acme.TIMEOUT_X", MsgID: fmt.Sprint(seq), Data: []byte("{}")})
		most = max(most, len(v.pending))
	}
	r := v.finish()
	if most >= 2*maxSealEvery {
		t.Errorf("held %d pending events, want fewer than %d", most, 2*maxSealEvery)
	}
	if r.Unsealed.Events != n || r.Unsealed.First != 1 || r.Unsealed.Last != n {
		t.Errorf("unsealed %+v, want all %d events", r.Unsealed, n)
	}
}
