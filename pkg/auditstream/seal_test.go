package auditstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/internal/natstest"
)

// finding is a Problem reduced to what the tests compare.
type finding struct {
	Kind    ProblemKind
	Seq     uint64
	LastSeq uint64
	SealSeq uint64
}

func findings(r Report) []finding {
	var out []finding
	for _, p := range r.Problems {
		out = append(out, finding{p.Kind, p.Seq, p.LastSeq, p.SealSeq})
	}
	return out
}

// sealedStream emits n events, seals them every `every` events, and waits
// until everything is sealed; then the sealer stops.
func sealedStream(t *testing.T, js jetstream.JetStream, cfg Config, n, every int) (pub string) {
	t.Helper()
	seed, pub := testSeed(t)
	cfg.SealSeed, cfg.SealEvery = seed, every
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s, err := NewSealer(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if s.PublicKey() != pub {
		t.Fatalf("PublicKey = %s, want %s", s.PublicKey(), pub)
	}
	stop := runInBackground(t, s.Run)
	for i := range n {
		emitAll(t, p, eventSpec{i, fmt.Sprintf("t%d", i%3), "TIMEOUT_KV_GET"})
	}
	eventually(t, 10*time.Second, func() bool {
		r, err := Verify(t.Context(), js, cfg, pub)
		return err == nil && r.Unsealed.Events == 0 && r.Events == n
	}, "all %d events sealed", n)
	stop()
	return pub
}

func TestSealAndVerify(t *testing.T) {
	_, _, js, cfg := startStream(t)
	pub := sealedStream(t, js, cfg, 30, 10)

	// Three more events stay unsealed.
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	emitAll(t, p, eventSpec{100, "x", "TIMEOUT_X"}, eventSpec{101, "x", "TIMEOUT_X"}, eventSpec{102, "x", "TIMEOUT_X"})
	p.Close()

	r, err := Verify(t.Context(), js, cfg, pub)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.Err() != nil || r.Events != 33 || r.Seals < 3 || r.RangesVerified != len(r.Ranges) || r.Unsealed.Events != 3 {
		t.Fatalf("clean stream: %+v (err %v)", r, r.Err())
	}
	var covered int
	for i, rg := range r.Ranges {
		covered += rg.Events
		if i > 0 && rg.First != r.Ranges[i-1].Last+1 {
			t.Errorf("range %d starts at %d after %d", i, rg.First, r.Ranges[i-1].Last)
		}
	}
	if covered != 30 {
		t.Errorf("ranges cover %d events, want 30", covered)
	}

	var export bytes.Buffer
	head, err := Export(t.Context(), js, cfg, &export)
	if err != nil {
		t.Fatal(err)
	}
	if head != r.Head {
		t.Errorf("Export's chain head %v, Verify's %v", head, r.Head)
	}
	er, err := VerifyExport(bytes.NewReader(export.Bytes()), pub)
	if err != nil {
		t.Fatal(err)
	}
	if !er.OK() || er.RangesVerified != r.RangesVerified || er.Events != r.Events || er.Unsealed != r.Unsealed {
		t.Fatalf("export verifies as %+v, stream as %+v", er, r)
	}

	lines := parseExport(t, export.Bytes())
	var events, seals []int // line indexes
	for i, l := range lines {
		if l.Export != nil {
			continue
		}
		if l.Subject == cfg.SealSubject() {
			seals = append(seals, i)
		} else {
			events = append(events, i)
		}
	}
	// Pick events inside the second sealed range, and the first two seals.
	rg := r.Ranges[1]
	var in []int
	for _, i := range events {
		if lines[i].Seq >= rg.First && lines[i].Seq <= rg.Last && lines[i].Subject != cfg.SealSubject() {
			in = append(in, i)
		}
	}
	// Two events on adjacent lines, not the range's first.
	var x, y int
	for k := 1; k+1 < len(in); k++ {
		if in[k+1] == in[k]+1 {
			x, y = in[k], in[k+1]
			break
		}
	}
	if y == 0 {
		t.Fatalf("no adjacent events in range %+v", rg)
	}
	xs, ys := lines[x].Seq, lines[y].Seq
	s1, s2 := lines[seals[0]].Seq, lines[seals[1]].Seq
	rangeOf := func(seq uint64) uint64 {
		for _, rg := range r.Ranges {
			if seq >= rg.First && seq <= rg.Last {
				return rg.SealSeq
			}
		}
		return 0
	}
	_, otherPub := otherKey(t)

	tests := []struct {
		name   string
		tamper func([]exportLine) []exportLine
		key    string
		want   []finding
	}{
		{"modify one event", func(ls []exportLine) []exportLine {
			ls[x].Data = bytes.Replace(ls[x].Data, []byte("test op"), []byte("TEST OP"), 1)
			return ls
		}, pub, []finding{{Modified, xs, xs, rg.SealSeq}}},
		{"change a message id", func(ls []exportLine) []exportLine {
			ls[x].MsgID = "forged"
			return ls
		}, pub, []finding{{Modified, xs, xs, rg.SealSeq}}},
		{"delete one event", func(ls []exportLine) []exportLine {
			return slices.Delete(ls, x, x+1)
		}, pub, []finding{{Missing, xs, xs, rg.SealSeq}}},
		{"swap two lines", func(ls []exportLine) []exportLine {
			ls[x], ls[y] = ls[y], ls[x]
			return ls
		}, pub, []finding{{Reordered, xs, xs, 0}}},
		{"swap two messages, keeping sequences", func(ls []exportLine) []exportLine {
			ls[x].Subject, ls[y].Subject = ls[y].Subject, ls[x].Subject
			ls[x].Data, ls[y].Data = ls[y].Data, ls[x].Data
			ls[x].MsgID, ls[y].MsgID = ls[y].MsgID, ls[x].MsgID
			return ls
		}, pub, []finding{{Reordered, xs, xs, rg.SealSeq}, {Reordered, ys, ys, rg.SealSeq}}},
		{"swap data only", func(ls []exportLine) []exportLine {
			ls[x].Data, ls[y].Data = ls[y].Data, ls[x].Data
			return ls
		}, pub, []finding{{Modified, xs, xs, rg.SealSeq}, {Modified, ys, ys, rg.SealSeq}}},
		{"alter a seal", func(ls []exportLine) []exportLine {
			ls[seals[0]].Data = alterSeal(t, ls[seals[0]].Data)
			return ls
		}, pub, []finding{{BadSignature, s1, s1, 0}, {BrokenChain, s2, s2, 0}}},
		{"delete a seal", func(ls []exportLine) []exportLine {
			return slices.Delete(ls, seals[0], seals[0]+1)
		}, pub, []finding{{Missing, s1, s1, rangeOf(s1)}, {BrokenChain, s2, s2, 0}}},
		{"another key", func(ls []exportLine) []exportLine { return ls }, otherPub, func() []finding {
			f := []finding{{MissingTail, lines[1].Seq, r.LastSeq, 0}} // no valid seal covers the trail
			for _, i := range seals {
				f = append(f, finding{BadSignature, lines[i].Seq, lines[i].Seq, 0})
			}
			return f
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := tt.tamper(slices.Clone(lines))
			got, err := VerifyExport(bytes.NewReader(writeExport(t, ls)), tt.key)
			if err != nil {
				t.Fatal(err)
			}
			if f := findings(got); !slices.Equal(f, tt.want) {
				t.Errorf("findings %+v\nwant %+v\nproblems: %v", f, tt.want, got.Problems)
			}
			if !errors.Is(got.Err(), ErrTampered) {
				t.Errorf("Err = %v, want ErrTampered", got.Err())
			}
		})
	}
}

// alterSeal changes the hash a seal records, keeping its signature.
func alterSeal(t *testing.T, data []byte) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m["hash"] = strings.Repeat("0", 64)
	b, _ := json.Marshal(m)
	return b
}

func otherKey(t *testing.T) (seed, pub string) {
	t.Helper()
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := kp.Seed()
	p, _ := kp.PublicKey()
	return string(s), p
}

func parseExport(t *testing.T, b []byte) []exportLine {
	t.Helper()
	var out []exportLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxExportLine)
	for sc.Scan() {
		var l exportLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("export line %q: %v", sc.Bytes(), err)
		}
		out = append(out, l)
	}
	return out
}

func writeExport(t testing.TB, ls []exportLine) []byte {
	t.Helper()
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	for _, l := range ls {
		if l.Export != nil {
			b, _ := json.Marshal(exportLine{Export: l.Export})
			w.Write(append(b, '\n'))
			continue
		}
		if err := writeExportLine(w, record{Seq: l.Seq, Subject: l.Subject, MsgID: l.MsgID, Time: l.Time, Data: l.Data, Header: l.Headers}); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	return b.Bytes()
}

// TestVerifyDetectsDeleteMsg: on a stream without the deny flags, a message
// deleted inside a sealed range is reported as missing.
func TestVerifyDetectsDeleteMsg(t *testing.T) {
	s := natstest.Run(t)
	_, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	sc := streamConfig(cfg)
	sc.DenyDelete, sc.DenyPurge = false, false
	st, err := js.CreateStream(t.Context(), sc)
	if err != nil {
		t.Fatal(err)
	}
	pub := sealedStream(t, js, cfg, 20, 10)
	r, err := Verify(t.Context(), js, cfg, pub)
	if err != nil || !r.OK() {
		t.Fatalf("before delete: %+v, %v", r, err)
	}
	const victim = 5
	if err := st.DeleteMsg(t.Context(), victim); err != nil {
		t.Fatal(err)
	}
	r, err = Verify(t.Context(), js, cfg, pub)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(r.Ranges, func(rg Range) bool { return rg.First <= victim && victim <= rg.Last })
	if i < 0 {
		t.Fatalf("no range holds seq %d: %+v", victim, r.Ranges)
	}
	want := []finding{{Missing, victim, victim, r.Ranges[i].SealSeq}}
	if f := findings(r); !slices.Equal(f, want) || r.RangesVerified != len(r.Ranges)-1 || r.Ranges[i].Verified {
		t.Errorf("after DeleteMsg: findings %+v, want %+v; ranges %+v", f, want, r.Ranges)
	}
}

// TestSealersRace: two sealers on one stream seal every range exactly once.
func TestSealersRace(t *testing.T) {
	_, _, js, cfg := startStream(t)
	seed, pub := testSeed(t)
	cfg.SealSeed, cfg.SealEvery, cfg.SealInterval = seed, 7, 30*time.Millisecond
	var sealers []*Sealer
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 2 {
		s, err := NewSealer(nil, js, cfg, quiet)
		if err != nil {
			t.Fatal(err)
		}
		sealers = append(sealers, s)
		wg.Go(func() { _ = s.Run(ctx) })
	}
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const n = 120
	for i := range n {
		emitAll(t, p, eventSpec{i, "acme", "TIMEOUT_KV_GET"})
		if i%20 == 0 {
			time.Sleep(40 * time.Millisecond)
		}
	}
	var r Report
	eventually(t, 10*time.Second, func() bool {
		var err error
		r, err = Verify(t.Context(), js, cfg, pub)
		return err == nil && r.Unsealed.Events == 0 && r.Events == n
	}, "all sealed")
	// The sealers go on sealing empty ranges: stop them, then count.
	stop()
	wg.Wait()
	r, err = Verify(t.Context(), js, cfg, pub)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.RangesVerified != len(r.Ranges) {
		t.Fatalf("report %+v", r)
	}
	total := 0
	for _, rg := range r.Ranges {
		total += rg.Events
	}
	// Each sealer may have had one seal in flight when it was stopped:
	// stored, but its ack not awaited, so not counted as published.
	won := sealers[0].Sealed() + sealers[1].Sealed()
	if total != n || uint64(r.Seals) != uint64(len(r.Ranges)) || uint64(r.Seals) < won || uint64(r.Seals) > won+2 {
		t.Errorf("ranges cover %d events; %d seals stored, %d published by the sealers (%d and %d)",
			total, r.Seals, won, sealers[0].Sealed(), sealers[1].Sealed())
	}
	t.Logf("%d ranges; sealer wins %d and %d", len(r.Ranges), sealers[0].Sealed(), sealers[1].Sealed())
}

func TestNewSealerErrors(t *testing.T) {
	cfg := DefaultConfig()
	if _, err := NewSealer(nil, nil, cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("without seed: %v, want ErrInvalidConfig", err)
	}
	cfg.SealSeed = "nope"
	if _, err := NewSealer(nil, nil, cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("bad seed: %v, want ErrInvalidConfig", err)
	}
	if _, err := VerifyExport(strings.NewReader(""), "nope"); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("VerifyExport with a bad key: %v, want ErrInvalidKey", err)
	}
	seed, _ := testSeed(t)
	if _, err := VerifyExport(strings.NewReader(""), seed); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("VerifyExport with a seed for a key: %v, want ErrInvalidKey", err)
	}
}
