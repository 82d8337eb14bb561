// Package exportfuzz_test fuzzes auditstream.VerifyExport. It lives apart
// from auditstream's own tests because those import nats-server, and a
// fuzzing binary instruments every package it contains: with nats-server in
// it the fuzzer barely runs. Run it with
//
//	go test -run '^$' -fuzz FuzzVerifyExport -fuzztime 1m -fuzzminimizetime 2s ./pkg/auditstream/exportfuzz/
//
// (minimizing the large seed inputs at the default 60s per input stalls the
// worker's progress).
//
// It also checks that the seal format documented in auditstream's package
// documentation is all a verifier needs: the export below is built from
// the documentation alone.
package exportfuzz_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/pkg/auditstream"
)

// key returns a fixed account key pair.
func key(t testing.TB) (nkeys.KeyPair, string) {
	t.Helper()
	kp, err := nkeys.FromRawSeed(nkeys.PrefixByteAccount, bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return kp, pub
}

func u64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }
func lp(b, v []byte) []byte         { return append(u64(b, uint64(len(v))), v...) }

// documentedExport builds an export of n events sealed every `every`
// events, following the package documentation only.
func documentedExport(t testing.TB, n, every int) []byte {
	t.Helper()
	kp, pub := key(t)
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	var out bytes.Buffer
	line := func(seq uint64, subject, msgID string, data []byte) {
		b, err := json.Marshal(map[string]any{"seq": seq, "subject": subject, "msg_id": msgID,
			"time": t0.Add(time.Duration(seq) * time.Second), "data": data})
		if err != nil {
			t.Fatal(err)
		}
		out.Write(append(b, '\n'))
	}
	var (
		seq             uint64 = 1
		first           uint64 = 1
		prevSeq         uint64
		prevHash        string
		prevTime        time.Time
		firstTime       time.Time // when the range's first event was stored
		leaves, digests []byte
		count           int
	)
	const maxAge = 90 * 24 * time.Hour
	const interval = time.Minute
	for i := range n {
		id := fmt.Sprintf("%032x", i+1)
		subject := "guardian.v1.audit.acme.TIMEOUT_KV_GET"
		data := fmt.Appendf(nil, `{"event_id":%q,"event_type":"timeout_occurred","timeout_category":"TIMEOUT_KV_GET"}`, id)
		if count == 0 {
			firstTime = t0.Add(time.Duration(seq) * time.Second)
		}
		line(seq, subject, id, data)
		leaf := sha256.Sum256(lp(lp(lp(nil, []byte(subject)), []byte(id)), data))
		leaves, digests, count = append(leaves, leaf[:]...), append(digests, leaf[:8]...), count+1
		seq++
		if count < every {
			continue
		}
		hash := sha256.Sum256(leaves)
		sealTime := t0.Add(time.Duration(seq) * time.Second)
		signing := []byte("guardian-audit-seal-v2\n")
		signing = u64(signing, 2)
		signing = lp(signing, []byte("GUARDIAN_AUDIT"))
		signing = u64(u64(u64(signing, first), seq-1), uint64(count))
		signing = lp(signing, []byte(hex.EncodeToString(hash[:])))
		signing = lp(signing, digests)
		signing = u64(signing, prevSeq)
		signing = lp(signing, []byte(prevHash))
		signing = u64(signing, uint64(sealTime.UnixNano()))
		signing = u64(u64(u64(signing, uint64(maxAge)), uint64(1<<64-1)), uint64(1<<64-1)) // max_age, max_msgs -1, max_bytes -1
		signing = u64(signing, uint64(interval))
		prevNano := uint64(0)
		if !prevTime.IsZero() {
			prevNano = uint64(prevTime.UnixNano())
		}
		signing = u64(signing, prevNano)
		signing = u64(signing, uint64(firstTime.UnixNano()))
		signing = lp(signing, []byte(pub))
		sig, err := kp.Sign(signing)
		if err != nil {
			t.Fatal(err)
		}
		fields := map[string]any{"v": 2, "stream": "GUARDIAN_AUDIT", "first_seq": first, "last_seq": seq - 1,
			"count": count, "hash": hex.EncodeToString(hash[:]), "digests": digests, "prev_seq": prevSeq,
			"prev_hash": prevHash, "time": sealTime, "max_age": maxAge, "max_msgs": -1, "max_bytes": -1,
			"interval": interval, "first_time": firstTime, "key": pub, "sig": sig}
		if !prevTime.IsZero() {
			fields["prev_time"] = prevTime
		}
		seal, err := json.Marshal(fields)
		if err != nil {
			t.Fatal(err)
		}
		line(seq, "guardian.v1.audit.seal", "", seal)
		h := sha256.Sum256(seal)
		prevSeq, prevHash, prevTime, first = seq, hex.EncodeToString(h[:]), sealTime, seq
		seq++
		leaves, digests, count = nil, nil, 0
	}
	// The header, the first line: the export's anchors, made a second
	// after the last message.
	hdr, err := json.Marshal(map[string]any{"export": map[string]any{"v": 1, "stream": "GUARDIAN_AUDIT",
		"time": t0.Add(time.Duration(seq) * time.Second), "first_seq": 1, "last_seq": seq - 1, "msgs": seq - 1,
		"max_age": maxAge, "max_msgs": -1, "max_bytes": -1, "head": map[string]any{"seq": prevSeq, "hash": prevHash}}})
	if err != nil {
		t.Fatal(err)
	}
	return append(append(hdr, '\n'), out.Bytes()...)
}

func TestDocumentedFormatVerifies(t *testing.T) {
	_, pub := key(t)
	r, err := auditstream.VerifyExport(bytes.NewReader(documentedExport(t, 10, 3)), pub)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.RangesVerified != 3 || r.Unsealed.Events != 1 || r.Events != 10 || r.Seals != 3 {
		t.Fatalf("report %+v, problems %v", r, r.Problems)
	}
}

func FuzzVerifyExport(f *testing.F) {
	_, pub := key(f)
	f.Add(documentedExport(f, 8, 3))
	f.Add(documentedExport(f, 3, 1))
	f.Add([]byte(`{"seq":2,"subject":"guardian.v1.audit.seal","data":"e30="}` + "\n"))
	f.Add([]byte("{}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := auditstream.VerifyExport(bytes.NewReader(data), pub)
		if err != nil {
			return
		}
		if r.OK() != (r.Err() == nil) {
			t.Errorf("OK %v but Err %v", r.OK(), r.Err())
		}
		if len(r.Problems) > 1000 {
			t.Errorf("%d problems listed", len(r.Problems))
		}
	})
}
