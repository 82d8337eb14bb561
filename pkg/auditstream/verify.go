package auditstream

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// ProblemKind classifies what verification found.
type ProblemKind string

// The problem kinds.
const (
	// Modified: a message's subject, id or data differ from what its seal
	// recorded, or a range's hash does not match when no single message
	// can be named.
	Modified ProblemKind = "modified"
	// Missing: sequences absent from the stream or export (Seq..LastSeq).
	Missing ProblemKind = "missing"
	// Reordered: a message is out of order: in an export, a line whose
	// sequence is not above the one before; in a range, an event at a
	// position other than the one its seal recorded.
	Reordered ProblemKind = "reordered"
	// Duplicated: the same sequence appears more than once in an export.
	Duplicated ProblemKind = "duplicated"
	// BrokenChain: a seal does not continue the chain: its previous seal
	// is missing or altered, or its range does not start right after the
	// previous seal's range.
	BrokenChain ProblemKind = "broken_chain"
	// BadSignature: a seal's signature does not verify with the public key,
	// or the seal names another key. Its range is not trusted.
	BadSignature ProblemKind = "bad_signature"
	// BadSeal: a message on the seal subject is not a well-formed seal of
	// this stream.
	BadSeal ProblemKind = "bad_seal"
)

// Problem is one finding of Verify or VerifyExport.
type Problem struct {
	Kind ProblemKind
	// Seq is the message or seal concerned; for Missing, the first
	// sequence of the gap.
	Seq uint64
	// LastSeq is the last sequence of a Missing gap; Seq otherwise.
	LastSeq uint64
	// SealSeq is the seal whose range holds Seq, or 0 when none does.
	SealSeq uint64
	// Detail explains the problem in words.
	Detail string
}

// String returns e.g. "missing: seq 42 (sealed by seq 101): ...".
func (p Problem) String() string {
	s := fmt.Sprintf("%s: seq %d", p.Kind, p.Seq)
	if p.LastSeq > p.Seq {
		s = fmt.Sprintf("%s: seq %d-%d", p.Kind, p.Seq, p.LastSeq)
	}
	if p.SealSeq != 0 {
		s += fmt.Sprintf(" (sealed by seq %d)", p.SealSeq)
	}
	if p.Detail != "" {
		s += ": " + p.Detail
	}
	return s
}

// Range is a span of stream sequences covered by one seal, or the unsealed
// tail.
type Range struct {
	First, Last uint64
	// SealSeq is the sequence of the covering seal; 0 for the unsealed
	// tail.
	SealSeq uint64
	// SealTime is when the seal was made.
	SealTime time.Time
	// Events is the number of events the seal covers, or the number of
	// events in the unsealed tail.
	Events int
	// Verified is true when every event is present and matches and the
	// seal's signature and chain check out.
	Verified bool
	// Partial is true when the range starts before the first retained
	// message (MaxAge removed the rest), so only its remaining events were
	// checked against the seal's digests.
	Partial bool
}

// maxProblems bounds Report.Problems; the rest are only counted.
const maxProblems = 1000

// Report is the outcome of Verify or VerifyExport.
type Report struct {
	// FirstSeq and LastSeq bound the sequences examined.
	FirstSeq, LastSeq uint64
	// Events and Seals count the messages examined.
	Events, Seals int
	// Ranges lists every range covered by a well-formed, correctly signed
	// seal, in order.
	Ranges []Range
	// RangesVerified counts the ranges with Verified set.
	RangesVerified int
	// Unsealed is the tail of events after the last sealed range (Events
	// 0 when there is none). It cannot be verified yet.
	Unsealed Range
	// Problems lists the findings in sequence order, at most 1000.
	Problems []Problem
	// Omitted counts findings beyond those listed.
	Omitted int
}

// OK reports whether verification found no problem. An unsealed tail is
// not a problem.
func (r *Report) OK() bool { return len(r.Problems) == 0 && r.Omitted == 0 }

// Err returns nil when r is OK, else an error wrapping ErrTampered that
// names the first problem and the number of others.
func (r *Report) Err() error {
	if r.OK() {
		return nil
	}
	n := len(r.Problems) + r.Omitted
	if n == 1 {
		return fmt.Errorf("%w: %s", ErrTampered, r.Problems[0])
	}
	return fmt.Errorf("%w: %s (and %d more)", ErrTampered, r.Problems[0], n-1)
}

// record is one stream message as verification sees it.
type record struct {
	Seq     uint64
	Subject string
	MsgID   string
	Time    time.Time
	Data    []byte
	Header  nats.Header
}

// entry is what the verifier keeps of a message: for an event its leaf,
// for a seal its chain hash and data.
type entry struct {
	seq  uint64
	leaf [32]byte
	seal []byte // non-nil for a message on the seal subject
}

// verifier checks a sequence of records against their seals. Records are
// added in the order they were read (which for an export may be wrong) and
// checked in sequence order by finish.
type verifier struct {
	stream, sealSubject string
	key                 nkeys.KeyPair
	pub                 string
	entries             []entry
	prev                uint64 // the highest sequence added so far
	r                   Report
}

func newVerifier(cfg *Config, publicKey string) (*verifier, error) {
	kp, err := nkeys.FromPublicKey(publicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	if p := nkeys.Prefix(publicKey); p != nkeys.PrefixByteAccount && p != nkeys.PrefixByteUser {
		return nil, fmt.Errorf("%w: must be an account (A…) or user (U…) public key", ErrInvalidKey)
	}
	return &verifier{stream: cfg.Stream, sealSubject: cfg.SealSubject(), key: kp, pub: publicKey}, nil
}

func (v *verifier) problem(p Problem) {
	if p.LastSeq < p.Seq {
		p.LastSeq = p.Seq
	}
	if len(v.r.Problems) >= maxProblems {
		v.r.Omitted++
		return
	}
	v.r.Problems = append(v.r.Problems, p)
}

func (v *verifier) add(rec record) {
	if rec.Seq < v.prev {
		v.problem(Problem{Kind: Reordered, Seq: rec.Seq, Detail: fmt.Sprintf("appears after seq %d", v.prev)})
	}
	v.prev = max(v.prev, rec.Seq)
	e := entry{seq: rec.Seq}
	if rec.Subject == v.sealSubject {
		e.seal = rec.Data
		if e.seal == nil {
			e.seal = []byte{}
		}
		e.leaf = sha256.Sum256(rec.Data)
	} else {
		e.leaf = leaf(rec.Subject, rec.MsgID, rec.Data)
	}
	v.entries = append(v.entries, e)
}

// find returns the index of the first entry with seq >= seq.
func (v *verifier) find(seq uint64) int {
	i, _ := slices.BinarySearchFunc(v.entries, seq, func(e entry, s uint64) int { return cmp.Compare(e.seq, s) })
	return i
}

// finish checks everything added. Sequences below firstRetained are taken
// as removed by the stream's limits; lastSeq is the stream's last sequence
// (0 when unknown, as for an export).
func (v *verifier) finish(firstRetained, lastSeq uint64) Report {
	slices.SortStableFunc(v.entries, func(a, b entry) int { return cmp.Compare(a.seq, b.seq) })
	v.entries = slices.CompactFunc(v.entries, func(a, b entry) bool {
		if a.seq == b.seq {
			v.problem(Problem{Kind: Duplicated, Seq: a.seq, Detail: "sequence appears more than once"})
			return true
		}
		return false
	})
	if len(v.entries) > 0 {
		v.r.FirstSeq, v.r.LastSeq = v.entries[0].seq, v.entries[len(v.entries)-1].seq
		if firstRetained == 0 {
			firstRetained = v.r.FirstSeq
		}
	}
	lastSeq = max(lastSeq, v.r.LastSeq)

	var prev *Range // the last range of a correctly signed seal
	for _, e := range v.entries {
		if e.seal == nil {
			v.r.Events++
			continue
		}
		v.r.Seals++
		if rg, ok := v.checkSeal(e, prev, firstRetained); ok {
			v.r.Ranges = append(v.r.Ranges, rg)
			prev = &rg
			if rg.Verified {
				v.r.RangesVerified++
			}
		}
	}
	v.checkGaps(firstRetained, lastSeq)

	tail := Range{}
	start := firstRetained
	if prev != nil {
		start = prev.Last + 1
	}
	for _, e := range v.entries[v.find(start):] {
		if e.seal != nil {
			continue
		}
		if tail.Events == 0 {
			tail.First = e.seq
		}
		tail.Last = e.seq
		tail.Events++
	}
	v.r.Unsealed = tail
	slices.SortStableFunc(v.r.Problems, func(a, b Problem) int { return cmp.Compare(a.Seq, b.Seq) })
	return v.r
}

// checkSeal verifies one seal: its form, signature, chain and range. It
// returns the range when the seal is correctly signed.
func (v *verifier) checkSeal(e entry, prev *Range, firstRetained uint64) (Range, bool) {
	var sl seal
	if err := json.Unmarshal(e.seal, &sl); err != nil {
		v.problem(Problem{Kind: BadSeal, Seq: e.seq, Detail: fmt.Sprintf("not a seal: %v", err)})
		return Range{}, false
	}
	switch {
	case sl.Version != sealVersion:
		v.problem(Problem{Kind: BadSeal, Seq: e.seq, Detail: fmt.Sprintf("unknown seal version %d", sl.Version)})
		return Range{}, false
	case sl.Key != v.pub:
		v.problem(Problem{Kind: BadSignature, Seq: e.seq, Detail: fmt.Sprintf("signed by %s, not by %s", sl.Key, v.pub)})
		return Range{}, false
	case v.key.Verify(sl.signingBytes(), sl.Sig) != nil:
		v.problem(Problem{Kind: BadSignature, Seq: e.seq, Detail: "signature does not verify"})
		return Range{}, false
	case sl.Stream != v.stream:
		v.problem(Problem{Kind: BadSeal, Seq: e.seq, Detail: fmt.Sprintf("seals stream %q, not %q", sl.Stream, v.stream)})
		return Range{}, false
	case sl.FirstSeq == 0 || sl.FirstSeq > sl.LastSeq || sl.LastSeq >= e.seq ||
		len(sl.Digests)%digestLen != 0 || sl.Count != len(sl.Digests)/digestLen:
		v.problem(Problem{Kind: BadSeal, Seq: e.seq, Detail: fmt.Sprintf("inconsistent range %d..%d with %d events and %d digest bytes",
			sl.FirstSeq, sl.LastSeq, sl.Count, len(sl.Digests))})
		return Range{}, false
	}

	var broken []string
	switch {
	case sl.PrevSeq == 0 && prev != nil:
		broken = append(broken, fmt.Sprintf("claims to be the first seal, but seal %d precedes it", prev.SealSeq))
	case sl.PrevSeq != 0:
		i := v.find(sl.PrevSeq)
		switch {
		case i == len(v.entries) || v.entries[i].seq != sl.PrevSeq:
			if sl.PrevSeq >= firstRetained {
				broken = append(broken, fmt.Sprintf("previous seal at seq %d is missing", sl.PrevSeq))
			}
		case v.entries[i].seal == nil:
			broken = append(broken, fmt.Sprintf("previous seal at seq %d is not on the seal subject", sl.PrevSeq))
		case hex.EncodeToString(v.entries[i].leaf[:]) != sl.PrevHash:
			broken = append(broken, fmt.Sprintf("previous seal at seq %d does not match prev_hash", sl.PrevSeq))
		}
	}
	if prev != nil && sl.FirstSeq != prev.Last+1 {
		broken = append(broken, fmt.Sprintf("range starts at %d, but the previous sealed range ends at %d", sl.FirstSeq, prev.Last))
	}
	if len(broken) > 0 {
		v.problem(Problem{Kind: BrokenChain, Seq: e.seq, Detail: strings.Join(broken, "; ")})
	}

	rg := Range{First: sl.FirstSeq, Last: sl.LastSeq, SealSeq: e.seq, SealTime: sl.Time, Events: sl.Count}
	if sl.LastSeq < firstRetained {
		rg.Partial = true // wholly removed by the stream's limits
		return rg, true
	}
	start := max(sl.FirstSeq, firstRetained)
	rg.Partial = start > sl.FirstSeq
	lo, hi := v.find(start), v.find(sl.LastSeq+1)
	present := uint64(hi - lo)
	missing := (sl.LastSeq - start + 1) - present
	var seqs []uint64
	var leaves [][32]byte
	for _, x := range v.entries[lo:hi] {
		if x.seal == nil {
			seqs = append(seqs, x.seq)
			leaves = append(leaves, x.leaf)
		}
	}
	h := sha256.New()
	for _, l := range leaves {
		h.Write(l[:])
	}
	hashOK := hex.EncodeToString(h.Sum(nil)) == sl.Hash
	if hashOK && missing == 0 && !rg.Partial && len(leaves) == sl.Count {
		rg.Verified = len(broken) == 0
		return rg, true
	}

	// Name the messages that differ, using the per-event digests.
	digests := make(map[[digestLen]byte]int, sl.Count)
	at := func(i int) (d [digestLen]byte) { copy(d[:], sl.Digests[i*digestLen:]); return d }
	for i := range sl.Count {
		digests[at(i)]++
	}
	named := false
	positional := missing == 0 && !rg.Partial && len(leaves) == sl.Count
	for i, l := range leaves {
		var d [digestLen]byte
		copy(d[:], l[:digestLen])
		switch {
		case positional && d == at(i):
		case digests[d] == 0:
			v.problem(Problem{Kind: Modified, Seq: seqs[i], SealSeq: e.seq, Detail: "content differs from what the seal recorded"})
			named = true
		case positional:
			v.problem(Problem{Kind: Reordered, Seq: seqs[i], SealSeq: e.seq, Detail: "event is sealed at another position"})
			named = true
		}
	}
	if !named && missing == 0 && !rg.Partial {
		v.problem(Problem{Kind: Modified, Seq: sl.FirstSeq, LastSeq: sl.LastSeq, SealSeq: e.seq, Detail: "range hash does not match the seal"})
	}
	return rg, true
}

// checkGaps reports every absent sequence in [firstRetained, lastSeq],
// split by the sealed ranges that hold them. Gaps and ranges are both
// walked in ascending order.
func (v *verifier) checkGaps(firstRetained, lastSeq uint64) {
	if lastSeq == 0 || firstRetained > lastSeq {
		return
	}
	ranges := slices.SortedFunc(slices.Values(v.r.Ranges), func(a, b Range) int { return cmp.Compare(a.First, b.First) })
	ri := 0
	report := func(a, b uint64) {
		for a <= b {
			for ri < len(ranges) && ranges[ri].Last < a {
				ri++
			}
			end, sealSeq, detail := b, uint64(0), "not in the stream (unsealed)"
			if ri < len(ranges) {
				if rg := ranges[ri]; rg.First <= a {
					end, sealSeq, detail = min(b, rg.Last), rg.SealSeq, "not in the stream"
				} else if rg.First <= b {
					end = rg.First - 1
				}
			}
			v.problem(Problem{Kind: Missing, Seq: a, LastSeq: end, SealSeq: sealSeq, Detail: detail})
			if end >= b {
				return
			}
			a = end + 1
		}
	}
	next := firstRetained
	for _, e := range v.entries[v.find(firstRetained):] {
		if e.seq > next {
			report(next, e.seq-1)
		}
		if e.seq == math.MaxUint64 {
			return
		}
		next = e.seq + 1
	}
	if next <= lastSeq {
		report(next, lastSeq)
	}
}

// Verify reads the whole audit stream, checks every seal against the
// public key of the sealer (Sealer.PublicKey) and reports what it found:
// ranges verified, modified, missing or reordered messages, a broken
// chain, bad signatures, and the unsealed tail. Tampering is reported in
// the Report (see Report.Err), not as an error. Sequences below the
// stream's first sequence count as removed by MaxAge.
//
// It returns an error wrapping ErrInvalidKey for a bad key, ErrInvalidConfig
// for a bad cfg, or the jetstream error or *jsguard.TimeoutError of a read
// (reads run under jsguard.Default()). Safe for concurrent use.
func Verify(ctx context.Context, js jetstream.JetStream, cfg Config, publicKey string) (Report, error) {
	if err := cfg.Validate(); err != nil {
		return Report{}, err
	}
	v, err := newVerifier(&cfg, publicKey)
	if err != nil {
		return Report{}, err
	}
	first, last, err := readAll(ctx, js, &cfg, func(rec record) error { v.add(rec); return nil })
	if err != nil {
		return Report{}, fmt.Errorf("verify: %w", err)
	}
	return v.finish(first, last), nil
}

// readAll reads every message of the stream in order and returns the
// stream's first and last sequence when it started.
func readAll(ctx context.Context, js jetstream.JetStream, cfg *Config, fn func(record) error) (first, last uint64, err error) {
	st, err := lookupStream(ctx, nil, js, cfg.Stream)
	if err != nil {
		return 0, 0, err
	}
	state := st.CachedInfo().State
	err = scan(ctx, nil, js, cfg.Stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy},
		func(m jetstream.Msg) error {
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			return fn(record{Seq: md.Sequence.Stream, Subject: m.Subject(), MsgID: m.Headers().Get(jetstream.MsgIDHeader),
				Time: md.Timestamp, Data: m.Data(), Header: m.Headers()})
		})
	return state.FirstSeq, state.LastSeq, err
}

// exportLine is one line of an export.
type exportLine struct {
	Seq     uint64      `json:"seq"`
	Subject string      `json:"subject"`
	MsgID   string      `json:"msg_id,omitempty"`
	Time    time.Time   `json:"time"`
	Data    []byte      `json:"data"`
	Headers nats.Header `json:"headers,omitempty"`
}

// Export writes every message of the audit stream, events and seals, to w
// as JSON lines, one object per message in stream order:
//
//	{"seq":1,"subject":"guardian.v1.audit.acme.TIMEOUT_KV_GET","msg_id":"…","time":"…","data":"<base64>"}
//
// data is base64 so that the exact bytes the seals cover survive; headers
// other than Nats-Msg-Id appear as "headers" when present. VerifyExport
// checks such a file offline. It returns an error wrapping ErrInvalidConfig
// for a bad cfg, the write error, or the jetstream error or
// *jsguard.TimeoutError of a read. Safe for concurrent use.
func Export(ctx context.Context, js jetstream.JetStream, cfg Config, w io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	_, _, err := readAll(ctx, js, &cfg, func(rec record) error {
		return writeExportLine(bw, rec)
	})
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

func writeExportLine(w *bufio.Writer, rec record) error {
	var h nats.Header
	for k, vals := range rec.Header {
		if k != jetstream.MsgIDHeader {
			if h == nil {
				h = nats.Header{}
			}
			h[k] = vals
		}
	}
	b, err := json.Marshal(exportLine{Seq: rec.Seq, Subject: rec.Subject, MsgID: rec.MsgID, Time: rec.Time.UTC(), Data: rec.Data, Headers: h})
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// maxExportLine bounds one line of an export; a seal of 50,000 events is
// about 600 KB.
const maxExportLine = 16 << 20

// VerifyExport verifies a file written by Export, offline, like Verify does
// for the stream: nothing but the file and the public key is needed. The
// stream name and seal subject are taken from DefaultConfig; use
// VerifyExportConfig for others. Sequences below the first line's count
// as removed by MaxAge, so an export cut at its head verifies as partial.
//
// It returns an error wrapping ErrInvalidKey for a bad key, or
// ErrInvalidExport, naming the line, for input that is not an export, or
// r's read error; it never panics on bad input. Tampering is reported in
// the Report. Safe for concurrent use.
func VerifyExport(r io.Reader, publicKey string) (Report, error) {
	return VerifyExportConfig(r, DefaultConfig(), publicKey)
}

// VerifyExportConfig is VerifyExport for a stream configured with cfg
// (only Stream and SubjectPrefix are used); it returns the same errors.
func VerifyExportConfig(r io.Reader, cfg Config, publicKey string) (Report, error) {
	v, err := newVerifier(&cfg, publicKey)
	if err != nil {
		return Report{}, err
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxExportLine)
	for n := 1; sc.Scan(); n++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var l exportLine
		if err := json.Unmarshal(b, &l); err != nil {
			return Report{}, fmt.Errorf("%w: line %d: %w", ErrInvalidExport, n, err)
		}
		if l.Seq == 0 || l.Subject == "" {
			return Report{}, fmt.Errorf("%w: line %d: seq and subject are required", ErrInvalidExport, n)
		}
		v.add(record{Seq: l.Seq, Subject: l.Subject, MsgID: l.MsgID, Time: l.Time, Data: l.Data})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return Report{}, fmt.Errorf("%w: a line is longer than %d bytes", ErrInvalidExport, maxExportLine)
		}
		return Report{}, fmt.Errorf("read export: %w", err)
	}
	return v.finish(0, 0), nil
}
