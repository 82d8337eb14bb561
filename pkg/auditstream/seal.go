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
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// sealVersion is the seal format described in the package documentation.
const sealVersion = 1

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
	Key      string    `json:"key"`
	Sig      []byte    `json:"sig"`
}

// signingBytes is what the signature covers: a fixed label followed by
// every field but the signature, integers as 8-byte big-endian values and
// strings and byte slices prefixed by their 8-byte length.
func (s *seal) signingBytes() []byte {
	b := []byte("guardian-audit-seal-v1\n")
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
	b = appendLP(b, []byte(s.Key))
	return b
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
// for the format). Several Sealers may run on the same stream: each seal is
// published expecting the previous seal as the last message on the seal
// subject, so exactly one seal per range wins and the others re-read and go
// on from it. Safe for concurrent use; run one Run per Sealer.
type Sealer struct {
	g      *jsguard.Guard
	js     jetstream.JetStream
	cfg    Config
	kp     nkeys.KeyPair
	pub    string
	log    *slog.Logger
	sealed atomic.Uint64
}

// NewSealer returns a Sealer signing with cfg.SealSeed; g (nil for
// jsguard.Default()) bounds its NATS calls. It returns an error wrapping
// ErrInvalidConfig for a bad cfg or an empty SealSeed.
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
	return &Sealer{g: g, js: js, cfg: cfg, kp: kp, pub: pub, log: buildOptions(opts).log}, nil
}

// PublicKey returns the public key that verifies this Sealer's seals, the
// key to give Verify and VerifyExport.
func (s *Sealer) PublicKey() string { return s.pub }

// Sealed returns how many seals this Sealer has published. Safe for
// concurrent use.
func (s *Sealer) Sealed() uint64 { return s.sealed.Load() }

// errSealRace means another sealer sealed first.
var errSealRace = errors.New("another sealer sealed first")

// Run seals until ctx ends, then returns nil. It starts from the latest
// seal on the stream (or the stream's first sequence when there is none),
// so a restarted or second Sealer continues the chain. When another sealer
// wins a range it re-reads and continues; other errors are logged and
// retried with a growing pause (100ms to 5s).
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

// chainState is where the next seal continues: the latest seal's sequence
// and chain hash, and the first sequence of the next range.
type chainState struct {
	seq  uint64
	hash string
	next uint64
}

// latest reads the latest seal. A message on the seal subject that is not
// a seal is chained to, and the next range starts after it.
func (s *Sealer) latest(ctx context.Context) (chainState, error) {
	st, err := lookupStream(ctx, s.g, s.js, s.cfg.Stream)
	if err != nil {
		return chainState{}, err
	}
	raw, err := jsguard.DoValue(ctx, s.g, jsguard.NATSSubscribe, "last seal "+s.cfg.Stream,
		func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
			return st.GetLastMsgForSubject(ctx, s.cfg.SealSubject())
		})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return chainState{next: max(st.CachedInfo().State.FirstSeq, 1)}, nil
	}
	if err != nil {
		return chainState{}, err
	}
	c := chainState{seq: raw.Sequence, hash: chainHash(raw.Data), next: raw.Sequence + 1}
	var prev seal
	if err := json.Unmarshal(raw.Data, &prev); err != nil || prev.LastSeq >= raw.Sequence {
		s.log.Error("audit sealer: the last message on the seal subject is not a seal; chaining past it", "seq", raw.Sequence)
		return c, nil
	}
	c.next = prev.LastSeq + 1
	return c, nil
}

// follow reads the stream from the latest seal on and seals ranges until
// ctx ends, an error, or another sealer's seal appears.
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
	var last uint64 // the last sequence read into r
	var sealAt time.Time
	for {
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if r.count > 0 {
			wctx, cancel = context.WithDeadline(ctx, sealAt)
		}
		msg, err := it.Next(jetstream.NextContext(wctx))
		cancel()
		if err != nil {
			if ctx.Err() == nil && r.count > 0 && errors.Is(err, context.DeadlineExceeded) {
				if chain, err = s.seal(ctx, chain, r, last); err != nil {
					return err
				}
				r = newRangeHash()
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
			if seq > chain.seq {
				return errSealRace
			}
			continue // an earlier seal, already chained
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
		}
	}
}

// seal signs and publishes the seal of [chain.next, last] and returns the
// chain state after it. It returns errSealRace when another seal came
// first.
func (s *Sealer) seal(ctx context.Context, chain chainState, r *rangeHash, last uint64) (chainState, error) {
	data, err := s.makeSeal(chain, r, last, time.Now())
	if err != nil {
		return chain, err
	}
	ack, err := s.g.Publish(ctx, s.js, s.cfg.SealSubject(), data, jetstream.WithExpectLastSequencePerSubject(chain.seq))
	if err != nil {
		if apiErr, ok := errors.AsType[*jetstream.APIError](err); ok &&
			(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return chain, errSealRace
		}
		return chain, fmt.Errorf("publish seal of %d..%d: %w", chain.next, last, err)
	}
	s.sealed.Add(1)
	s.log.Debug("audit range sealed", "first", chain.next, "last", last, "events", r.count, "seal_seq", ack.Sequence)
	return chainState{seq: ack.Sequence, hash: chainHash(data), next: last + 1}, nil
}

// makeSeal returns the signed seal of [chain.next, last], made at now, as
// JSON.
func (s *Sealer) makeSeal(chain chainState, r *rangeHash, last uint64, now time.Time) ([]byte, error) {
	sl := seal{
		Version:  sealVersion,
		Stream:   s.cfg.Stream,
		FirstSeq: chain.next,
		LastSeq:  last,
		Count:    r.count,
		Hash:     r.sum(),
		Digests:  r.digests,
		PrevSeq:  chain.seq,
		PrevHash: chain.hash,
		Time:     now.UTC(),
		Key:      s.pub,
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
