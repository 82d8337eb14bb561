package auditstream

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// sealVersion is the seal format the Sealer writes, described in the
// package documentation. Verification also accepts version 1, which lacks
// the retention, interval and prev_time fields.
const sealVersion = 2

// digestLen is the length of each per-event digest a seal lists.
const digestLen = 8

// seal is the JSON body of a message on the seal subject.
type seal struct {
	Version  int       `json:"v"`
	Stream   string    `json:"stream"`
	FirstSeq uint64    `json:"first_seq"`
	LastSeq  uint64    `json:"last_seq"`
	Count    int       `json:"count"`
	Hash     string    `json:"hash"`
	Digests  []byte    `json:"digests"`
	PrevSeq  uint64    `json:"prev_seq"`
	PrevHash string    `json:"prev_hash"`
	Time     time.Time `json:"time"`
	// Version 2: the stream's limits when sealed (0 MaxAge keeps events
	// forever, -1 MaxMsgs/MaxBytes is unlimited), the sealer's interval and
	// the time of the previous seal.
	MaxAge    time.Duration `json:"max_age,omitempty"`
	MaxMsgs   int64         `json:"max_msgs,omitempty"`
	MaxBytes  int64         `json:"max_bytes,omitempty"`
	Interval  time.Duration `json:"interval,omitempty"`
	PrevTime  time.Time     `json:"prev_time,omitzero"`
	FirstTime time.Time     `json:"first_time,omitzero"`
	Key       string        `json:"key"`
	Sig       []byte        `json:"sig"`
}

// signingBytes is what the signature covers: a fixed label followed by
// every field but the signature, integers as 8-byte big-endian values and
// strings and byte slices prefixed by their 8-byte length.
func (s *seal) signingBytes() []byte {
	b := []byte("guardian-audit-seal-v1\n")
	if s.Version >= 2 {
		b = []byte("guardian-audit-seal-v2\n")
	}
	b = binary.BigEndian.AppendUint64(b, uint64(s.Version))
	b = appendLP(b, []byte(s.Stream))
	b = binary.BigEndian.AppendUint64(b, s.FirstSeq)
	b = binary.BigEndian.AppendUint64(b, s.LastSeq)
	b = binary.BigEndian.AppendUint64(b, uint64(s.Count))
	b = appendLP(b, []byte(s.Hash))
	b = appendLP(b, s.Digests)
	b = binary.BigEndian.AppendUint64(b, s.PrevSeq)
	b = appendLP(b, []byte(s.PrevHash))
	b = binary.BigEndian.AppendUint64(b, uint64(s.Time.UnixNano()))
	if s.Version >= 2 {
		b = binary.BigEndian.AppendUint64(b, uint64(s.MaxAge))
		b = binary.BigEndian.AppendUint64(b, uint64(s.MaxMsgs))
		b = binary.BigEndian.AppendUint64(b, uint64(s.MaxBytes))
		b = binary.BigEndian.AppendUint64(b, uint64(s.Interval))
		b = binary.BigEndian.AppendUint64(b, uint64(unixNano(s.PrevTime)))
		b = binary.BigEndian.AppendUint64(b, uint64(unixNano(s.FirstTime)))
	}
	b = appendLP(b, []byte(s.Key))
	return b
}

// unixNano is t in Unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// valid reports why s is not a well-formed seal of stream signed by kp
// (whose public key is pub), or "" when it is. bad tells a bad signature
// (true) from a malformed seal (false).
func (s *seal) invalid(stream, pub string, kp nkeys.KeyPair, seq uint64) (reason string, badSig bool) {
	switch {
	case s.Version != 1 && s.Version != 2:
		return fmt.Sprintf("unknown seal version %d", s.Version), false
	case s.Key != pub:
		return fmt.Sprintf("signed by %s, not by %s", s.Key, pub), true
	case kp.Verify(s.signingBytes(), s.Sig) != nil:
		return "signature does not verify", true
	case s.Stream != stream:
		return fmt.Sprintf("seals stream %q, not %q", s.Stream, stream), false
	case s.FirstSeq == 0 || s.LastSeq >= seq || len(s.Digests)%digestLen != 0 || s.Count != len(s.Digests)/digestLen ||
		(s.Count == 0) != (s.LastSeq+1 == s.FirstSeq) || (s.Count > 0 && s.FirstSeq > s.LastSeq) || (s.Version == 1 && s.Count == 0):
		return fmt.Sprintf("inconsistent range %d..%d with %d events and %d digest bytes",
			s.FirstSeq, s.LastSeq, s.Count, len(s.Digests)), false
	}
	return "", false
}

func appendLP(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(v)))
	return append(b, v...)
}

// leaf is the SHA-256 of one covered message's canonical bytes: its
// subject, Nats-Msg-Id and data, each prefixed by its 8-byte big-endian
// length.
func leaf(subject, msgID string, data []byte) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, v := range [][]byte{[]byte(subject), []byte(msgID), data} {
		binary.BigEndian.PutUint64(n[:], uint64(len(v)))
		h.Write(n[:])
		h.Write(v)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// chainHash is the hash a seal's successor records as prev_hash: the
// SHA-256 of the seal message's data as stored, in hex.
func chainHash(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// rangeHash accumulates a range: hash is the SHA-256 over the leaves in
// order, digests the first 8 bytes of each leaf.
type rangeHash struct {
	h       hash.Hash
	digests []byte
	count   int
	first   time.Time // when the stream stored the first message added
}

func newRangeHash() *rangeHash { return &rangeHash{h: sha256.New()} }

func (r *rangeHash) add(l [32]byte) {
	r.h.Write(l[:])
	r.digests = append(r.digests, l[:digestLen]...)
	r.count++
}

func (r *rangeHash) sum() string { return hex.EncodeToString(r.h.Sum(nil)) }

// Sealer periodically seals the audit stream: every SealEvery events or
// SealInterval, whichever comes first, it publishes a seal on the seal
// subject that covers the stream sequences since the previous seal, chains
// to it and is signed with the SealSeed key (see the package documentation
// for the format). While no event arrives it still seals, an empty range,
// every SealInterval, so that the latest seal is never older than about one
// interval while a Sealer runs: Verify reports an older one as a cut tail.
//
// Before it continues a chain, a Sealer checks the latest message on the
// seal subject: its signature, and that it chains to the seal before it.
// A message that fails (a forged or replayed seal) is logged, counted
// (Forged) and reported once as an AUDIT_SEAL_FORGED event through g's
// sink, and the Sealer continues from the latest seal that passes, so a
// forged seal can never make it skip events.
//
// Several Sealers may run on the same stream: each seal is published
// expecting the previous message on the seal subject as the last one there,
// so exactly one seal per range wins and the others re-read and go on from
// it. Safe for concurrent use; run one Run per Sealer.
type Sealer struct {
	g      *jsguard.Guard
	js     jetstream.JetStream
	cfg    Config
	kp     nkeys.KeyPair
	pub    string
	log    *slog.Logger
	sealed atomic.Uint64
	forged atomic.Uint64

	reportedMu sync.Mutex
	reported   map[uint64]bool // forged seal sequences already reported
}

// NewSealer returns a Sealer signing with cfg.SealSeed; g (nil for
// jsguard.Default()) bounds its NATS calls and receives its
// AUDIT_SEAL_FORGED events. It returns an error wrapping ErrInvalidConfig
// for a bad cfg or an empty SealSeed.
func NewSealer(g *jsguard.Guard, js jetstream.JetStream, cfg Config, opts ...Option) (*Sealer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.SealSeed == "" {
		return nil, invalid("SealSeed is empty: a sealer needs an account or user seed")
	}
	kp, err := sealKey(cfg.SealSeed)
	if err != nil {
		return nil, invalid("SealSeed: %v", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, invalid("SealSeed: %v", err)
	}
	if g == nil {
		g = jsguard.Default()
	}
	return &Sealer{g: g, js: js, cfg: cfg, kp: kp, pub: pub, log: buildOptions(opts).log, reported: map[uint64]bool{}}, nil
}

// PublicKey returns the public key that verifies this Sealer's seals, the
// key to give Verify and VerifyExport.
func (s *Sealer) PublicKey() string { return s.pub }

// Sealed returns how many seals this Sealer has published. Safe for
// concurrent use.
func (s *Sealer) Sealed() uint64 { return s.sealed.Load() }

// Forged returns how many distinct messages on the seal subject this
// Sealer found not to be a valid continuation of the chain (bad signature,
// malformed, or not chained to the seal before it). Safe for concurrent
// use.
func (s *Sealer) Forged() uint64 { return s.forged.Load() }

// errSealRace means another sealer sealed first.
var errSealRace = errors.New("another sealer sealed first")

// Run seals until ctx ends, then returns nil. It starts from the latest
// valid seal on the stream (or the stream's first sequence when there is
// none), so a restarted or second Sealer continues the chain. When another
// sealer wins a range it re-reads and continues; other errors are logged
// and retried with a growing pause (100ms to 5s).
func (s *Sealer) Run(ctx context.Context) error {
	var backoff time.Duration
	for {
		err := s.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errSealRace) {
			s.log.Debug("audit sealer: another sealer sealed first; re-reading")
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
		s.log.Warn("audit sealer failed", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}
}

// chainState is where the next seal continues: the last message on the
// seal subject (which the next publish expects), the latest valid seal's
// sequence, chain hash and time, and the first sequence of the next range.
type chainState struct {
	lastSubj uint64
	seq      uint64
	hash     string
	time     time.Time
	next     uint64
}

// latest returns the chain state after the latest valid seal. Messages on
// the seal subject after it that are not valid seals chained to it are
// reported as forged and skipped.
func (s *Sealer) latest(ctx context.Context) (chainState, error) {
	st, err := lookupStream(ctx, s.g, s.js, s.cfg.Stream)
	if err != nil {
		return chainState{}, err
	}
	first := max(st.CachedInfo().State.FirstSeq, 1)
	subj := s.cfg.SealSubject()
	raw, err := jsguard.DoValue(ctx, s.g, jsguard.NATSSubscribe, "last seal "+s.cfg.Stream,
		func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
			return st.GetLastMsgForSubject(ctx, subj)
		})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return chainState{next: first}, nil
	}
	if err != nil {
		return chainState{}, err
	}
	lastSubj := raw.Sequence
	for raw != nil {
		sl, reason, err := s.check(ctx, st, raw, first)
		if err != nil {
			return chainState{}, err
		}
		if reason == "" {
			return chainState{lastSubj: lastSubj, seq: raw.Sequence, hash: chainHash(raw.Data), time: sl.Time, next: sl.LastSeq + 1}, nil
		}
		s.reportForged(ctx, raw.Sequence, reason)
		if raw, err = s.before(ctx, st, raw.Sequence, first); err != nil {
			return chainState{}, err
		}
	}
	// No valid seal is retained: start a new chain at the stream's first
	// message, so that every retained event gets one valid seal.
	return chainState{lastSubj: lastSubj, next: first}, nil
}

// check returns why raw, a message on the seal subject, is not a valid seal
// of this Sealer's chain ("" when it is): it must be well formed and signed
// by this Sealer's key; its previous seal, unless removed by the stream's
// limits (below first), must be on the seal subject with the recorded hash
// and end right before its range; and no other validly signed seal that
// covers anything after that previous seal may lie between the two (a
// replayed old seal may).
func (s *Sealer) check(ctx context.Context, st jetstream.Stream, raw *jetstream.RawStreamMsg, first uint64) (seal, string, error) {
	var sl seal
	if err := json.Unmarshal(raw.Data, &sl); err != nil {
		return sl, "not a seal: " + err.Error(), nil
	}
	if reason, _ := sl.invalid(s.cfg.Stream, s.pub, s.kp, raw.Sequence); reason != "" {
		return sl, reason, nil
	}
	get := func(seq uint64, subj string) (*jetstream.RawStreamMsg, error) {
		var opts []jetstream.GetMsgOpt
		if subj != "" {
			opts = append(opts, jetstream.WithGetMsgSubject(subj))
		}
		m, err := jsguard.DoValue(ctx, s.g, jsguard.NATSSubscribe, "check seal "+s.cfg.Stream,
			func(ctx context.Context) (*jetstream.RawStreamMsg, error) { return st.GetMsg(ctx, seq, opts...) })
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		return m, err
	}
	from := first
	if sl.PrevSeq >= first {
		prev, err := get(sl.PrevSeq, "")
		if err != nil {
			return sl, "", err
		}
		var ps seal
		switch {
		case prev == nil || prev.Subject != s.cfg.SealSubject():
			return sl, fmt.Sprintf("its previous seal %d is not on the seal subject", sl.PrevSeq), nil
		case chainHash(prev.Data) != sl.PrevHash:
			return sl, fmt.Sprintf("its prev_hash does not match seal %d", sl.PrevSeq), nil
		case json.Unmarshal(prev.Data, &ps) != nil || ps.LastSeq+1 != sl.FirstSeq:
			return sl, fmt.Sprintf("its range does not start after the range of seal %d", sl.PrevSeq), nil
		}
		from = sl.PrevSeq + 1
	}
	for seq := from; seq < raw.Sequence; {
		m, err := get(seq, s.cfg.SealSubject())
		if err != nil {
			return sl, "", err
		}
		if m == nil || m.Sequence >= raw.Sequence {
			break
		}
		var other seal
		if json.Unmarshal(m.Data, &other) == nil && other.LastSeq >= sl.FirstSeq {
			if r, _ := other.invalid(s.cfg.Stream, s.pub, s.kp, m.Sequence); r == "" {
				return sl, fmt.Sprintf("seal %d, also valid, lies between it and its previous seal %d", m.Sequence, sl.PrevSeq), nil
			}
		}
		seq = m.Sequence + 1
	}
	return sl, "", nil
}

// before returns the last message on the seal subject with a sequence
// below seq and at least first, or nil when there is none. It probes
// backwards in growing steps, then walks forward from the probe that found
// one.
func (s *Sealer) before(ctx context.Context, st jetstream.Stream, seq, first uint64) (*jetstream.RawStreamMsg, error) {
	subj := s.cfg.SealSubject()
	next := func(from uint64) (*jetstream.RawStreamMsg, error) {
		m, err := jsguard.DoValue(ctx, s.g, jsguard.NATSSubscribe, "seal before "+s.cfg.Stream,
			func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
				return st.GetMsg(ctx, from, jetstream.WithGetMsgSubject(subj))
			})
		if errors.Is(err, jetstream.ErrMsgNotFound) || (err == nil && m.Sequence >= seq) {
			return nil, nil
		}
		return m, err
	}
	for step := uint64(1); seq > first; step *= 2 {
		from := first
		if seq-first > step {
			from = seq - step
		}
		m, err := next(from)
		if err != nil {
			return nil, err
		}
		if m != nil {
			for {
				n, err := next(m.Sequence + 1)
				if err != nil || n == nil {
					return m, err
				}
				m = n
			}
		}
		if from == first {
			return nil, nil
		}
	}
	return nil, nil
}

// ForgedSealCode is the code of the audit event a Sealer emits for a
// message on the seal subject that is not a valid seal of its chain.
const ForgedSealCode = "AUDIT_SEAL_FORGED"

// integrityCode matches the codes of integrity events, which share the
// audit stream with timeout events.
var integrityCode = regexp.MustCompile(`^AUDIT_[A-Z0-9_]+$`)

// EventTypeIntegrity is the event_type of integrity events such as
// AUDIT_SEAL_FORGED; timeout events have jsguard.EventType.
const EventTypeIntegrity = "integrity_violation"

// reportForged logs, counts and audits a forged seal, once per sequence.
func (s *Sealer) reportForged(ctx context.Context, seq uint64, reason string) {
	s.reportedMu.Lock()
	seen := s.reported[seq]
	if len(s.reported) >= 1024 {
		clear(s.reported) // bounded: a flood may be reported again, never lost
	}
	s.reported[seq] = true
	s.reportedMu.Unlock()
	if seen {
		return
	}
	s.forged.Add(1)
	s.log.Error("audit sealer: a message on the seal subject is not a valid seal of the chain; continuing from the seal before it",
		"seq", seq, "reason", reason)
	now := time.Now().UTC()
	op := fmt.Sprintf("audit seal %s seq %d", s.cfg.Stream, seq)
	ev := jsguard.Event{
		EventType:         EventTypeIntegrity,
		Code:              ForgedSealCode,
		Operation:         op,
		AdditionalContext: map[string]string{"seq": strconv.FormatUint(seq, 10), "reason": reason, "public_key": s.pub},
		Timestamp:         now,
		StartedAt:         now,
		BudgetSource:      jsguard.SourceReported,
	}
	// The id depends on the stream and sequence only, so every Sealer that
	// finds the same forged message reports the same event.
	ev.EventID = jsguard.EventID(ForgedSealCode, op, "", "", "", time.Unix(0, int64(seq)).UTC())
	s.g.Emit(ctx, ev)
}

// follow reads the stream from the latest seal on and seals ranges until
// ctx ends, an error, or another sealer's seal appears. Without events it
// seals an empty range every SealInterval.
func (s *Sealer) follow(ctx context.Context) error {
	chain, err := s.latest(ctx)
	if err != nil {
		return err
	}
	occ := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: chain.next}
	cons, err := orderedConsumer(ctx, s.g, s.js, s.cfg.Stream, occ)
	if err != nil {
		return err
	}
	defer deleteConsumer(s.g, s.js, s.cfg.Stream, cons)
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	defer it.Stop()

	sealSubject := s.cfg.SealSubject()
	r := newRangeHash()
	last := chain.next - 1 // the last sequence read into r
	sealAt := heartbeat(chain.time, s.cfg.SealInterval)
	for {
		wctx, cancel := context.WithDeadline(ctx, sealAt)
		msg, err := it.Next(jetstream.NextContext(wctx))
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				if chain, err = s.seal(ctx, chain, r, last); err != nil {
					return err
				}
				r = newRangeHash()
				sealAt = heartbeat(chain.time, s.cfg.SealInterval)
				continue
			}
			return err
		}
		md, err := msg.Metadata()
		if err != nil {
			return err
		}
		seq := md.Sequence.Stream
		if msg.Subject() == sealSubject {
			if seq > chain.lastSubj {
				return errSealRace
			}
			continue // an earlier message on the seal subject, already chained or skipped
		}
		if r.count == 0 {
			r.first = md.Timestamp.UTC()
		}
		r.add(leaf(msg.Subject(), msg.Headers().Get(jetstream.MsgIDHeader), msg.Data()))
		last = seq
		if r.count == 1 {
			sealAt = time.Now().Add(s.cfg.SealInterval)
		}
		if r.count >= s.cfg.SealEvery {
			if chain, err = s.seal(ctx, chain, r, last); err != nil {
				return err
			}
			r = newRangeHash()
			sealAt = heartbeat(chain.time, s.cfg.SealInterval)
		}
	}
}

// heartbeat is when an empty range is sealed after a seal made at t: one
// interval later, or one interval from now when there is no seal yet.
func heartbeat(t time.Time, interval time.Duration) time.Time {
	if t.IsZero() {
		return time.Now().Add(interval)
	}
	return t.Add(interval)
}

// seal signs and publishes the seal of [chain.next, last] (empty when last
// is chain.next-1) and returns the chain state after it. It returns
// errSealRace when another seal came first.
func (s *Sealer) seal(ctx context.Context, chain chainState, r *rangeHash, last uint64) (chainState, error) {
	st, err := lookupStream(ctx, s.g, s.js, s.cfg.Stream)
	if err != nil {
		return chain, err
	}
	data, err := s.makeSeal(chain, r, last, st.CachedInfo().Config, time.Now())
	if err != nil {
		return chain, err
	}
	ack, err := s.g.Publish(ctx, s.js, s.cfg.SealSubject(), data, jetstream.WithExpectLastSequencePerSubject(chain.lastSubj))
	if err != nil {
		if apiErr, ok := errors.AsType[*jetstream.APIError](err); ok &&
			(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return chain, errSealRace
		}
		return chain, fmt.Errorf("publish seal of %d..%d: %w", chain.next, last, err)
	}
	s.sealed.Add(1)
	s.log.Debug("audit range sealed", "first", chain.next, "last", last, "events", r.count, "seal_seq", ack.Sequence)
	var sl seal
	_ = json.Unmarshal(data, &sl)
	return chainState{lastSubj: ack.Sequence, seq: ack.Sequence, hash: chainHash(data), time: sl.Time, next: last + 1}, nil
}

// makeSeal returns the signed seal of [chain.next, last], made at now, as
// JSON.
func (s *Sealer) makeSeal(chain chainState, r *rangeHash, last uint64, sc jetstream.StreamConfig, now time.Time) ([]byte, error) {
	sl := seal{
		Version:   sealVersion,
		Stream:    s.cfg.Stream,
		FirstSeq:  chain.next,
		LastSeq:   last,
		Count:     r.count,
		Hash:      r.sum(),
		Digests:   r.digests,
		PrevSeq:   chain.seq,
		PrevHash:  chain.hash,
		Time:      now.UTC(),
		MaxAge:    sc.MaxAge,
		MaxMsgs:   sc.MaxMsgs,
		MaxBytes:  sc.MaxBytes,
		Interval:  s.cfg.SealInterval,
		PrevTime:  chain.time,
		FirstTime: r.first,
		Key:       s.pub,
	}
	sig, err := s.kp.Sign(sl.signingBytes())
	if err != nil {
		return nil, fmt.Errorf("sign seal: %w", err)
	}
	sl.Sig = sig
	data, err := json.Marshal(sl)
	if err != nil {
		return nil, fmt.Errorf("encode seal: %w", err)
	}
	return data, nil
}
