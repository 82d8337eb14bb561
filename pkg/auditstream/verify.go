package auditstream

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/pkg/jsguard"
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
	// Duplicated: the same sequence appears more than once in an export,
	// or the same event id (Nats-Msg-Id) is stored more than once.
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
	// MissingHead: messages before the first retained one (Seq..LastSeq)
	// are gone although a seal shows they were younger than the retention
	// window (MaxAge) when verified, or the stream keeps events forever.
	MissingHead ProblemKind = "missing_head"
	// MissingTail: the trail ends before its anchors: the latest seal is
	// older than one seal interval plus slack at verification (or export)
	// time, an export ends before the chain head its header names, or
	// there is no valid seal at all.
	MissingTail ProblemKind = "missing_tail"
	// RetentionChanged: a seal, the stream or the export header keeps
	// events for less time (or fewer of them) than the seal before it, or
	// than the retention Verify was told to expect.
	RetentionChanged ProblemKind = "retention_changed"
	// Unanchored: an export has no header with its anchors (an export of
	// an older guardian), so a cut at its head or tail cannot be told from
	// a whole file.
	Unanchored ProblemKind = "unanchored"
)

// Problem is one finding of Verify or VerifyExport.
type Problem struct {
	Kind ProblemKind `json:"kind"`
	// Seq is the message or seal concerned; for Missing, the first
	// sequence of the gap.
	Seq uint64 `json:"seq"`
	// LastSeq is the last sequence of a Missing gap; Seq otherwise.
	LastSeq uint64 `json:"last_seq"`
	// SealSeq is the seal whose range holds Seq, or 0 when none does.
	SealSeq uint64 `json:"seal_seq,omitempty"`
	// Detail explains the problem in words.
	Detail string `json:"detail"`
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
	First uint64 `json:"first"`
	Last  uint64 `json:"last"`
	// SealSeq is the sequence of the covering seal; 0 for the unsealed
	// tail.
	SealSeq uint64 `json:"seal_seq,omitempty"`
	// SealTime is when the seal was made.
	SealTime time.Time `json:"seal_time,omitzero"`
	// Events is the number of events the seal covers, or the number of
	// events in the unsealed tail.
	Events int `json:"events"`
	// Verified is true when every event is present and matches and the
	// seal's signature and chain check out.
	Verified bool `json:"verified"`
	// Partial is true when the range starts before the first retained
	// message (MaxAge removed the rest), so only its remaining events were
	// checked against the seal's digests.
	Partial bool `json:"partial,omitempty"`
}

// ChainHead names the latest message on the seal subject: its sequence,
// the hex SHA-256 of its data (the prev_hash its successor will record)
// and, for a well-formed seal, its time. Export records it in the export's
// header; keep it apart from the file to tell later whether the file was
// cut (WithChainHead).
type ChainHead struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time,omitzero"`
}

// String returns "SEQ:HASH", the form ParseChainHead reads.
func (h ChainHead) String() string { return strconv.FormatUint(h.Seq, 10) + ":" + h.Hash }

// ParseChainHead parses "SEQ:HASH" as printed by ChainHead.String. It
// returns an error naming the part that is malformed.
func ParseChainHead(s string) (ChainHead, error) {
	seqStr, hash, ok := strings.Cut(s, ":")
	seq, err := strconv.ParseUint(seqStr, 10, 64)
	if !ok || err != nil || seq == 0 {
		return ChainHead{}, fmt.Errorf("chain head %q: want SEQ:HASH with SEQ a stream sequence", s)
	}
	if b, err := hex.DecodeString(hash); err != nil || len(b) != sha256.Size {
		return ChainHead{}, fmt.Errorf("chain head %q: HASH must be 64 hex digits", s)
	}
	return ChainHead{Seq: seq, Hash: hash}, nil
}

// maxProblems bounds Report.Problems; the rest are only counted.
const maxProblems = 1000

// Report is the outcome of Verify or VerifyExport.
type Report struct {
	// FirstSeq and LastSeq bound the sequences examined.
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	// Events and Seals count the messages examined.
	Events int `json:"events"`
	Seals  int `json:"seals"`
	// Ranges lists every range covered by a well-formed, correctly signed
	// seal, in order.
	Ranges []Range `json:"ranges"`
	// RangesVerified counts the ranges with Verified set.
	RangesVerified int `json:"ranges_verified"`
	// Unsealed is the tail of events after the last sealed range (Events
	// 0 when there is none). It cannot be verified yet.
	Unsealed Range `json:"unsealed"`
	// Head is the latest correctly signed seal (zero when there is none).
	Head ChainHead `json:"head"`
	// Retention is the MaxAge of the stream (or the export's header) that
	// the head was checked against; 0 keeps events forever.
	Retention time.Duration `json:"retention"`
	// VerifiedAt is the time the head and tail were judged at: the
	// verification time for Verify, the export time for VerifyExport.
	VerifiedAt time.Time `json:"verified_at"`
	// Problems lists the findings in sequence order, at most 1000.
	Problems []Problem `json:"problems"`
	// Omitted counts findings beyond those listed.
	Omitted int `json:"omitted"`
	// Aborted is true when Verify ran out of its T5 budget (a T5_COMPLEX
	// timeout, audited): the report then covers the sequences up to
	// LastSeq only, lists the problems found in them, and judges neither
	// the unsealed tail nor the head. Cause is that timeout.
	Aborted bool                  `json:"aborted,omitempty"`
	Cause   *jsguard.TimeoutError `json:"-"`
}

// OK reports whether verification found no problem and was not aborted.
// An unsealed tail is not a problem.
func (r *Report) OK() bool { return len(r.Problems) == 0 && r.Omitted == 0 && !r.Aborted }

// Err returns nil when r is OK; an error wrapping ErrTampered that names
// the first problem and the number of others; or, when r was aborted
// without a problem in what it covered, one wrapping ErrIncomplete.
func (r *Report) Err() error {
	if r.OK() {
		return nil
	}
	if len(r.Problems) == 0 && r.Omitted == 0 {
		return fmt.Errorf("%w: verified %d events and %d seals up to seq %d before %v", ErrIncomplete, r.Events, r.Seals, r.LastSeq, r.Cause)
	}
	n := len(r.Problems) + r.Omitted
	if n == 1 {
		return fmt.Errorf("%w: %s", ErrTampered, r.Problems[0])
	}
	return fmt.Errorf("%w: %s (and %d more)", ErrTampered, r.Problems[0], n-1)
}

// Progress is how far a verification got: Done messages of Total (0 when
// unknown) after Elapsed.
type Progress struct {
	Done, Total uint64
	Elapsed     time.Duration
}

// VerifyOption changes how Verify and VerifyExport judge a trail.
type VerifyOption func(*verifyOptions)

type verifyOptions struct {
	g         *jsguard.Guard
	now       time.Time
	progress  func(Progress)
	retention time.Duration
	head      *ChainHead
	idBatch   int
}

// WithGuard runs Verify's reads, and Verify itself as a T5 call, under g
// instead of jsguard.Default(): g's policy sets the T5 budget and g's sink
// receives the timeout's audit event.
func WithGuard(g *jsguard.Guard) VerifyOption {
	return func(o *verifyOptions) { o.g = g }
}

// WithVerifyTime sets the time the head and tail are judged at (default:
// the current time for Verify, the export's time for VerifyExport).
func WithVerifyTime(t time.Time) VerifyOption {
	return func(o *verifyOptions) { o.now = t }
}

// WithProgress calls fn about every 100,000 messages and once at the end.
// fn runs on the verifying goroutine.
func WithProgress(fn func(Progress)) VerifyOption {
	return func(o *verifyOptions) { o.progress = fn }
}

// WithRetention sets the retention the trail must keep at least: a stream
// or export whose MaxAge is shorter (other than 0, forever) is reported as
// RetentionChanged, and a head removed younger than d is reported as
// MissingHead even when the stream's own MaxAge was shortened too.
func WithRetention(d time.Duration) VerifyOption {
	return func(o *verifyOptions) { o.retention = d }
}

// WithChainHead makes verification require the seal h (as printed by
// Export or a Report's Head): a trail without it at h.Seq, or with other
// data there, is reported as MissingTail.
func WithChainHead(h ChainHead) VerifyOption {
	return func(o *verifyOptions) { o.head = &h }
}

// withIDBatch bounds how many event ids one pass of the duplicate check
// holds (tests use small batches to exercise several passes).
func withIDBatch(n int) VerifyOption {
	return func(o *verifyOptions) { o.idBatch = n }
}

// defaultIDBatch is how many event ids one duplicate-check pass holds: 24
// bytes each, so about 48 MiB. A larger trail takes extra passes over the
// message ids.
const defaultIDBatch = 2_000_000

// record is one stream message as verification sees it.
type record struct {
	Seq     uint64
	Subject string
	MsgID   string
	Time    time.Time
	Data    []byte
	Header  nats.Header
}

// pend is an event after the last trusted range, not yet covered.
type pend struct {
	seq  uint64
	leaf [32]byte
}

// gap is a run of absent sequences not yet attributed to a range.
type gap struct{ first, last uint64 }

// trusted is what the verifier keeps of a correctly signed seal.
type trusted struct {
	seq      uint64
	sl       seal
	hash     string
	verified bool
}

// recentSeals bounds the seal-subject messages kept for chain lookups.
const recentSeals = 4096

// bounds is what the verifier knows of the trail before reading it.
type bounds struct {
	first, last uint64 // retained sequences; last 0 when unknown
	now         time.Time
	retention   time.Duration // the stream's (or export header's) MaxAge
	maxMsgs     int64
	maxBytes    int64
	head        *ChainHead // the export header's chain head
	anchored    bool       // the trail has anchors (a live stream or an export with a header)
}

// verifier checks a trail message by message, in sequence order, holding
// only the events since the last trusted seal, recent seals and one batch
// of event ids.
type verifier struct {
	stream, sealSubject string
	key                 nkeys.KeyPair
	pub                 string
	o                   verifyOptions
	b                   bounds

	next    uint64 // the sequence expected next; 0 before the first
	pending []pend
	// dropped counts the oldest pending events given up on (more than a
	// seal can cover since the last trusted seal); droppedFirst is the first.
	dropped      int
	droppedFirst uint64
	gaps         []gap
	seals        map[uint64][32]byte // recent seal-subject messages: chain hash
	sealSeqs     []uint64
	lastSubj     ChainHead // the latest correctly signed seal
	lastLine     ChainHead // the latest message on the seal subject
	headSeen     string    // the hash of the message at WithChainHead's sequence
	prev         *trusted  // the latest trusted seal
	oldest       bool      // the first trusted seal was checked against the head

	ids    idBatch
	r      Report
	done   uint64
	start  time.Time
	nextPg uint64
}

func newVerifier(cfg *Config, publicKey string, opts []VerifyOption) (*verifier, error) {
	kp, err := nkeys.FromPublicKey(publicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	if p := nkeys.Prefix(publicKey); p != nkeys.PrefixByteAccount && p != nkeys.PrefixByteUser {
		return nil, fmt.Errorf("%w: must be an account (A…) or user (U…) public key", ErrInvalidKey)
	}
	v := &verifier{stream: cfg.Stream, sealSubject: cfg.SealSubject(), key: kp, pub: publicKey,
		seals: map[uint64][32]byte{}, start: time.Now(), nextPg: progressEvery}
	v.o.idBatch = defaultIDBatch
	for _, f := range opts {
		f(&v.o)
	}
	return v, nil
}

// begin sets what is known of the trail before it is read; pass 0 of the
// duplicate check takes the ids of sequences with pass(seq)==0.
func (v *verifier) begin(b bounds, passes int) {
	if !v.o.now.IsZero() {
		b.now = v.o.now
	}
	v.b = b
	v.r.VerifiedAt = b.now
	v.r.Retention = b.retention
	v.ids = idBatch{passes: max(passes, 1)}
	if n := v.total(); n > 0 {
		// One allocation for the pass instead of doubling garbage.
		v.ids.entries = make([]idEntry, 0, min(n/uint64(v.ids.passes)+n/20+16, uint64(v.o.idBatch)+uint64(v.o.idBatch)/10))
	}
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

const progressEvery = 100_000

func (v *verifier) tick(total uint64) {
	v.done++
	if v.o.progress != nil && v.done >= v.nextPg {
		v.nextPg += progressEvery
		v.o.progress(Progress{Done: v.done, Total: total, Elapsed: time.Since(v.start)})
	}
}

// add checks one message. Messages must come in sequence order; one that
// does not (in an export) is reported and otherwise ignored.
func (v *verifier) add(rec record) {
	v.tick(v.total())
	if v.next != 0 && rec.Seq < v.next {
		if !v.fill(rec) {
			v.problem(Problem{Kind: Duplicated, Seq: rec.Seq, Detail: "sequence appears more than once"})
			return
		}
		v.problem(Problem{Kind: Reordered, Seq: rec.Seq, Detail: fmt.Sprintf("appears after seq %d", v.next-1)})
		return
	}
	if v.r.FirstSeq == 0 {
		v.r.FirstSeq = rec.Seq
	}
	v.r.LastSeq = rec.Seq
	from := max(v.next, v.b.first)
	if v.next == 0 && !v.b.anchored {
		from = rec.Seq // an export without anchors starts where it starts
	}
	if rec.Seq > from && from != 0 {
		v.gaps = append(v.gaps, gap{from, rec.Seq - 1})
	}
	v.next = rec.Seq + 1
	if rec.Subject == v.sealSubject {
		v.r.Seals++
		v.addSeal(rec)
		return
	}
	v.r.Events++
	v.ids.add(rec.MsgID, rec.Seq)
	v.pending = append(v.pending, pend{rec.Seq, leaf(rec.Subject, rec.MsgID, rec.Data)})
	if len(v.pending) >= 2*maxSealEvery {
		// No seal covers more than maxSealEvery events: the older half can
		// never be verified (a wrong key, no sealer). Keep memory bounded;
		// they still count in the unsealed tail.
		n := len(v.pending) - maxSealEvery
		if v.dropped == 0 {
			v.droppedFirst = v.pending[0].seq
		}
		v.dropped += n
		v.pending = slices.Delete(v.pending, 0, n)
	}
}

// firstRetained is the first sequence the trail should hold: the stream's
// or export header's first sequence, or the first one seen in an export
// without anchors.
func (v *verifier) firstRetained() uint64 {
	if v.b.anchored {
		return v.b.first
	}
	return v.r.FirstSeq
}

// fill takes an event that comes after higher sequences (in an export)
// into the gap it belongs to, when that gap is still open, and reports
// whether it did: an event that fills no open gap is a duplicate.
func (v *verifier) fill(rec record) bool {
	i := slices.IndexFunc(v.gaps, func(g gap) bool { return g.first <= rec.Seq && rec.Seq <= g.last })
	if i < 0 {
		return false
	}
	g := v.gaps[i]
	var split []gap
	if g.first < rec.Seq {
		split = append(split, gap{g.first, rec.Seq - 1})
	}
	if rec.Seq < g.last {
		split = append(split, gap{rec.Seq + 1, g.last})
	}
	v.gaps = slices.Replace(v.gaps, i, i+1, split...)
	if rec.Subject == v.sealSubject {
		v.r.Seals++ // out of order, it cannot be checked in its place
		return true
	}
	v.r.Events++
	v.ids.add(rec.MsgID, rec.Seq)
	j, _ := slices.BinarySearchFunc(v.pending, rec.Seq, func(p pend, s uint64) int { return cmp.Compare(p.seq, s) })
	v.pending = slices.Insert(v.pending, j, pend{rec.Seq, leaf(rec.Subject, rec.MsgID, rec.Data)})
	return true
}

func (v *verifier) total() uint64 {
	if v.b.last >= v.b.first && v.b.last != 0 {
		return v.b.last - max(v.b.first, 1) + 1
	}
	return 0
}

// addSeal checks one message on the seal subject: its form, signature,
// chain and range, and the head and retention it records.
func (v *verifier) addSeal(rec record) {
	h := sha256.Sum256(rec.Data)
	v.lastLine = ChainHead{Seq: rec.Seq, Hash: hex.EncodeToString(h[:])}
	if v.o.head != nil && rec.Seq == v.o.head.Seq {
		v.headSeen = v.lastLine.Hash
	}
	var sl seal
	if err := json.Unmarshal(rec.Data, &sl); err != nil {
		v.problem(Problem{Kind: BadSeal, Seq: rec.Seq, Detail: fmt.Sprintf("not a seal: %v", err)})
		return
	}
	if reason, badSig := sl.invalid(v.stream, v.pub, v.key, rec.Seq); reason != "" {
		kind := BadSeal
		if badSig {
			kind = BadSignature
		}
		v.problem(Problem{Kind: kind, Seq: rec.Seq, Detail: reason})
		return
	}
	// Only correctly signed seals can be a successor's previous seal: junk
	// on the seal subject never pushes them out.
	v.seals[rec.Seq] = h
	v.sealSeqs = append(v.sealSeqs, rec.Seq)
	if len(v.sealSeqs) > recentSeals {
		delete(v.seals, v.sealSeqs[0])
		v.sealSeqs = v.sealSeqs[1:]
	}
	if v.prev != nil && sl.FirstSeq <= v.prev.sl.LastSeq && sl.LastSeq <= v.prev.sl.LastSeq {
		// A copy of an earlier seal (or one that covers nothing new): it
		// cannot continue the chain, which goes on from the seal before.
		v.problem(Problem{Kind: BrokenChain, Seq: rec.Seq, Detail: fmt.Sprintf(
			"seals %d..%d, which the chain had sealed up to seal %d already: a replayed or out-of-chain seal", sl.FirstSeq, sl.LastSeq, v.prev.seq)})
		return
	}
	v.lastSubj = ChainHead{Seq: rec.Seq, Hash: hex.EncodeToString(h[:]), Time: sl.Time}

	var broken []string
	switch {
	case sl.PrevSeq == 0 && v.prev != nil:
		broken = append(broken, fmt.Sprintf("claims to be the first seal, but seal %d precedes it", v.prev.seq))
	case sl.PrevSeq != 0:
		ph, ok := v.seals[sl.PrevSeq]
		switch {
		case !ok && sl.PrevSeq >= v.firstRetained():
			broken = append(broken, fmt.Sprintf("previous seal at seq %d is missing or not on the seal subject", sl.PrevSeq))
		case ok && hex.EncodeToString(ph[:]) != sl.PrevHash:
			broken = append(broken, fmt.Sprintf("previous seal at seq %d does not match prev_hash", sl.PrevSeq))
		}
	}
	if v.prev != nil && sl.FirstSeq != v.prev.sl.LastSeq+1 {
		broken = append(broken, fmt.Sprintf("range starts at %d, but the previous sealed range ends at %d", sl.FirstSeq, v.prev.sl.LastSeq))
	}
	if len(broken) > 0 {
		v.problem(Problem{Kind: BrokenChain, Seq: rec.Seq, Detail: strings.Join(broken, "; ")})
	}
	if !v.oldest {
		v.oldest = true
		v.checkHead(rec.Seq, &sl)
	}
	if v.prev != nil && v.prev.sl.Version >= 2 && sl.Version >= 2 {
		if what := shorter(sl.MaxAge, sl.MaxMsgs, sl.MaxBytes, v.prev.sl.MaxAge, v.prev.sl.MaxMsgs, v.prev.sl.MaxBytes); what != "" {
			v.problem(Problem{Kind: RetentionChanged, Seq: rec.Seq, Detail: fmt.Sprintf("%s than the seal before it (seq %d)", what, v.prev.seq)})
		}
	}

	rg := v.checkRange(rec.Seq, &sl, len(broken) == 0)
	v.r.Ranges = append(v.r.Ranges, rg)
	if rg.Verified {
		v.r.RangesVerified++
	}
	v.prev = &trusted{seq: rec.Seq, sl: sl, hash: hex.EncodeToString(h[:]), verified: rg.Verified}
	v.r.Head = v.lastSubj
}

// shorter describes how the limits (maxAge, msgs, bytes) keep less than
// (wAge, wMsgs, wBytes), or returns "". A zero MaxAge and a MaxMsgs or
// MaxBytes of 0 or below are unlimited.
func shorter(maxAge time.Duration, msgs, bytes int64, wAge time.Duration, wMsgs, wBytes int64) string {
	less := func(have, want int64) bool { return have > 0 && (want <= 0 || have < want) }
	switch {
	case less(int64(maxAge), int64(wAge)):
		return fmt.Sprintf("MaxAge %s is shorter", fmtAge(maxAge))
	case less(msgs, wMsgs):
		return fmt.Sprintf("MaxMsgs %d is lower", msgs)
	case less(bytes, wBytes):
		return fmt.Sprintf("MaxBytes %d is lower", bytes)
	}
	return ""
}

func fmtAge(d time.Duration) string {
	if d == 0 {
		return "0 (forever)"
	}
	return d.String()
}

// headSlack is added to a seal's interval when judging removed messages
// and stale seals: clock differences between sealer, server and verifier.
const headSlack = time.Minute

// checkHead judges the messages below the first retained sequence, using
// the oldest trusted seal sl at seq. When part of its own range is gone,
// the removed messages were stored at or after its first_time; when only
// earlier ranges are gone (its previous seal too), they were stored after
// about its prev_time minus one interval. MaxAge cannot have removed a
// message before it was retention old.
func (v *verifier) checkHead(seq uint64, sl *seal) {
	first := v.firstRetained()
	if sl.Version < 2 || first <= 1 {
		return
	}
	var bound time.Time // the removed messages judged were stored at or after bound
	var from uint64
	switch {
	case sl.Count > 0 && sl.FirstSeq < first && !sl.FirstTime.IsZero():
		bound, from = sl.FirstTime, sl.FirstSeq
	case sl.PrevSeq != 0 && sl.PrevSeq < first && !sl.PrevTime.IsZero():
		bound, from = sl.PrevTime.Add(-sl.Interval), sl.PrevSeq
	default:
		return
	}
	if sl.MaxMsgs > 0 || sl.MaxBytes > 0 || v.b.maxMsgs > 0 || v.b.maxBytes > 0 {
		return // a count or size limit removes messages at any age
	}
	window := max(v.b.retention, v.o.retention, sl.MaxAge)
	if v.b.retention == 0 || sl.MaxAge == 0 {
		window = 0
	}
	age := v.b.now.Sub(bound)
	p := Problem{Kind: MissingHead, Seq: from, LastSeq: first - 1, SealSeq: seq}
	switch {
	case window == 0:
		p.Detail = fmt.Sprintf("removed, but the stream keeps events forever (seal %d shows they were stored after %s)",
			seq, bound.Format(time.RFC3339))
	case age < window-headSlack:
		p.Detail = fmt.Sprintf("removed, but seal %d shows they were stored after %s, %s before %s: younger than the retention %s",
			seq, bound.Format(time.RFC3339), age.Round(time.Second), v.b.now.Format(time.RFC3339), fmtAge(window))
	default:
		return
	}
	v.problem(p)
}

// checkRange verifies the events of sl's range against it and removes them
// (and anything below them) from pending. chained tells whether the seal
// continues the chain.
func (v *verifier) checkRange(seq uint64, sl *seal, chained bool) Range {
	rg := Range{First: sl.FirstSeq, Last: sl.LastSeq, SealSeq: seq, SealTime: sl.Time, Events: sl.Count}
	first := v.firstRetained()
	// Gaps below the range are not covered by a trusted seal; gaps inside
	// it are missing sealed events.
	var missing uint64
	keep := v.gaps[:0]
	for _, g := range v.gaps {
		switch {
		case g.last < sl.FirstSeq:
			v.problem(Problem{Kind: Missing, Seq: g.first, LastSeq: g.last, Detail: "not in the stream (unsealed)"})
		case g.first > sl.LastSeq:
			keep = append(keep, g)
		default:
			if g.first < sl.FirstSeq {
				v.problem(Problem{Kind: Missing, Seq: g.first, LastSeq: sl.FirstSeq - 1, Detail: "not in the stream (unsealed)"})
			}
			a, b := max(g.first, sl.FirstSeq), min(g.last, sl.LastSeq)
			missing += b - a + 1
			v.problem(Problem{Kind: Missing, Seq: a, LastSeq: b, SealSeq: seq, Detail: "not in the stream"})
			if g.last > sl.LastSeq {
				keep = append(keep, gap{sl.LastSeq + 1, g.last})
			}
		}
	}
	v.gaps = keep

	lo, _ := slices.BinarySearchFunc(v.pending, sl.FirstSeq, func(p pend, s uint64) int { return cmp.Compare(p.seq, s) })
	hi, _ := slices.BinarySearchFunc(v.pending, sl.LastSeq+1, func(p pend, s uint64) int { return cmp.Compare(p.seq, s) })
	covered := v.pending[lo:hi]
	defer func() { v.pending = slices.Delete(v.pending, 0, hi) }()

	rg.Partial = sl.FirstSeq < first
	hs := sha256.New()
	for _, p := range covered {
		hs.Write(p.leaf[:])
	}
	hashOK := hex.EncodeToString(hs.Sum(nil)) == sl.Hash
	complete := missing == 0 && !rg.Partial && len(covered) == sl.Count
	if hashOK && complete {
		rg.Verified = chained
		return rg
	}

	// Name the messages that differ, using the per-event digests.
	digests := make(map[[digestLen]byte]int, sl.Count)
	at := func(i int) (d [digestLen]byte) { copy(d[:], sl.Digests[i*digestLen:]); return d }
	for i := range sl.Count {
		digests[at(i)]++
	}
	named := false
	for i, p := range covered {
		var d [digestLen]byte
		copy(d[:], p.leaf[:digestLen])
		switch {
		case complete && d == at(i):
		case digests[d] == 0:
			v.problem(Problem{Kind: Modified, Seq: p.seq, SealSeq: seq, Detail: "content differs from what the seal recorded"})
			named = true
		case complete:
			v.problem(Problem{Kind: Reordered, Seq: p.seq, SealSeq: seq, Detail: "event is sealed at another position"})
			named = true
		}
	}
	if !named && missing == 0 && !rg.Partial {
		v.problem(Problem{Kind: Modified, Seq: sl.FirstSeq, LastSeq: sl.LastSeq, SealSeq: seq, Detail: "range hash does not match the seal"})
	}
	return rg
}

// finish reports what remains after the last message: gaps up to the
// expected last sequence, the unsealed tail, the tail's anchors and the
// retention. Problems are sorted by sequence.
func (v *verifier) finish() Report {
	last := max(v.b.last, v.r.LastSeq)
	if v.next != 0 && last >= v.next {
		v.gaps = append(v.gaps, gap{v.next, last})
	} else if v.next == 0 && v.b.anchored && last >= max(v.b.first, 1) && v.b.last != 0 {
		v.gaps = append(v.gaps, gap{max(v.b.first, 1), last})
	}
	for _, g := range v.gaps {
		v.problem(Problem{Kind: Missing, Seq: g.first, LastSeq: g.last, Detail: "not in the stream (unsealed)"})
	}
	var tail Range
	for _, p := range v.pending {
		if v.prev != nil && p.seq <= v.prev.sl.LastSeq {
			continue
		}
		if tail.Events == 0 {
			tail.First = p.seq
		}
		tail.Last = p.seq
		tail.Events++
	}
	if v.dropped > 0 && (v.prev == nil || v.droppedFirst > v.prev.sl.LastSeq) {
		tail.First = v.droppedFirst
		tail.Events += v.dropped
	}
	v.r.Unsealed = tail
	v.checkTail()
	if v.r.Ranges == nil {
		v.r.Ranges = []Range{}
	}
	if v.o.progress != nil {
		v.o.progress(Progress{Done: v.done, Total: v.total(), Elapsed: time.Since(v.start)})
	}
	return v.r
}

// checkTail reports a trail that ends before its anchors, and retention
// shorter than the last seal's or the expected one.
func (v *verifier) checkTail() {
	if !v.b.anchored {
		v.problem(Problem{Kind: Unanchored, Detail: "the export has no header with its anchors (first and last sequence, chain head, time): a cut at its head or tail cannot be detected; export it again"})
	}
	if h := v.b.head; h != nil && h.Seq != 0 && (v.lastLine.Seq != h.Seq || v.lastLine.Hash != h.Hash) {
		v.problem(Problem{Kind: MissingTail, Seq: h.Seq, Detail: fmt.Sprintf("the export's header names %s as the chain head, but the file's last message on the seal subject is %s", h, v.lastLine)})
	}
	if h := v.o.head; h != nil {
		if v.headSeen != h.Hash {
			v.problem(Problem{Kind: MissingTail, Seq: h.Seq, Detail: fmt.Sprintf("the expected chain head %s is not in the trail", h)})
		}
	}
	switch {
	case v.prev == nil && v.r.Events > 0:
		v.problem(Problem{Kind: MissingTail, Seq: v.r.FirstSeq, LastSeq: v.r.LastSeq, Detail: "no valid seal covers the trail"})
	case v.prev != nil && v.prev.sl.Version >= 2 && v.b.anchored:
		iv := v.prev.sl.Interval
		limit := iv + max(iv, headSlack)
		if age := v.b.now.Sub(v.prev.sl.Time); age > limit {
			v.problem(Problem{Kind: MissingTail, Seq: v.prev.seq, Detail: fmt.Sprintf(
				"the latest seal is from %s, %s before %s, more than one seal interval (%s) plus slack: the tail may be cut, or no sealer has run since",
				v.prev.sl.Time.Format(time.RFC3339), age.Round(time.Second), v.b.now.Format(time.RFC3339), iv)})
		}
	}
	if v.prev != nil && v.prev.sl.Version >= 2 && v.b.anchored {
		if what := shorter(v.b.retention, v.b.maxMsgs, v.b.maxBytes, v.prev.sl.MaxAge, v.prev.sl.MaxMsgs, v.prev.sl.MaxBytes); what != "" {
			v.problem(Problem{Kind: RetentionChanged, Seq: v.prev.seq, Detail: what + " now than when the latest seal was made"})
		}
	}
	if v.o.retention > 0 && v.b.anchored && (v.b.retention != 0 && v.b.retention < v.o.retention) {
		v.problem(Problem{Kind: RetentionChanged, Detail: fmt.Sprintf("the stream keeps events for %s, less than the expected %s", v.b.retention, v.o.retention)})
	}
}

// report returns the finished report with problems in sequence order.
func (v *verifier) report() Report {
	slices.SortStableFunc(v.r.Problems, func(a, b Problem) int { return cmp.Compare(a.Seq, b.Seq) })
	return v.r
}
