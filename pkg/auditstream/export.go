package auditstream

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// idEntry is one event id (16 bytes: the id itself when it is 32 hex
// digits, else the first 16 bytes of its SHA-256) and where it is stored.
type idEntry struct {
	id  [16]byte
	seq uint64
}

// idBatch collects the event ids of one pass of the duplicate check: those
// whose partition is pass, out of passes.
type idBatch struct {
	passes, pass int
	entries      []idEntry
}

func idKey(id string) (k [16]byte, isHex bool) {
	if len(id) == 32 {
		if _, err := hex.Decode(k[:], []byte(id)); err == nil {
			return k, true
		}
	}
	h := sha256.Sum256([]byte(id))
	copy(k[:], h[:])
	return k, false
}

func (b *idBatch) add(id string, seq uint64) {
	if id == "" {
		return
	}
	k, _ := idKey(id)
	if b.passes > 1 && int(binary.BigEndian.Uint64(k[:8])%uint64(b.passes)) != b.pass {
		return
	}
	b.entries = append(b.entries, idEntry{k, seq})
}

// check reports every id held more than once and empties the batch.
func (b *idBatch) check(v *verifier) {
	slices.SortFunc(b.entries, func(x, y idEntry) int {
		if c := bytes.Compare(x.id[:], y.id[:]); c != 0 {
			return c
		}
		return cmp.Compare(x.seq, y.seq)
	})
	for i := 1; i < len(b.entries); i++ {
		if b.entries[i].id != b.entries[i-1].id {
			continue
		}
		first := i - 1
		for first > 0 && b.entries[first-1].id == b.entries[i].id {
			first--
		}
		if b.entries[i].seq == b.entries[first].seq {
			continue // the same sequence twice in an export: reported as such
		}
		v.problem(Problem{Kind: Duplicated, Seq: b.entries[i].seq,
			Detail: fmt.Sprintf("event id %x is also stored at seq %d", b.entries[i].id, b.entries[first].seq)})
	}
	b.entries = b.entries[:0]
}

// passesFor is how many duplicate-check passes n messages need.
func passesFor(n uint64, batch int) int {
	return int(max((n+uint64(batch)-1)/uint64(batch), 1))
}

// Verify reads the audit stream once, in sequence order, and checks every
// seal against the public key of the sealer (Sealer.PublicKey): ranges
// verified; modified, missing, reordered or duplicated messages and
// duplicated event ids; a broken chain; bad signatures; the unsealed tail;
// a head removed while younger than the retention (MissingHead); a latest
// seal older than one seal interval plus slack (MissingTail); and a
// retention shortened between seals or below WithRetention
// (RetentionChanged). Tampering is reported in the Report (see
// Report.Err), not as an error.
//
// Memory stays bounded whatever the stream's length: the events since the
// last seal, the latest 4,096 seals, and the ids of up to 2,000,000
// events; a longer stream gets one more pass over the message ids (headers
// only) per 2,000,000 events.
//
// Verify is a T5 (complex) call of its guard (WithGuard; default
// jsguard.Default()): when the guard's T5 budget (10s by default) runs out
// under the graceful strategy, it stops and returns what it verified so
// far, with Report.Aborted set and a nil error, and the timeout is audited
// once (TIMEOUT_T5_COMPLEX, fallback_used). Under strict or none the
// timeout returns as the error.
//
// It returns an error wrapping ErrInvalidKey for a bad key, ErrInvalidConfig
// for a bad cfg, or the jetstream error or *jsguard.TimeoutError of a read
// (reads run under the same guard). Safe for concurrent use.
func Verify(ctx context.Context, js jetstream.JetStream, cfg Config, publicKey string, opts ...VerifyOption) (Report, error) {
	if err := cfg.Validate(); err != nil {
		return Report{}, err
	}
	v, err := newVerifier(&cfg, publicKey, opts)
	if err != nil {
		return Report{}, err
	}
	sum, err := jsguard.Complex(ctx, v.o.g, "audit verify "+cfg.Stream, func(ctx context.Context, _ func(struct{})) (struct{}, error) {
		return struct{}{}, v.live(ctx, js, &cfg)
	})
	switch {
	case err != nil:
		return Report{}, err
	case sum.Aborted && sum.Cause.Abandoned:
		return Report{}, fmt.Errorf("verify: %w", sum.Cause)
	case sum.Aborted:
		r := v.report()
		r.Aborted, r.Cause = true, sum.Cause
		if r.Ranges == nil {
			r.Ranges = []Range{}
		}
		return r, nil
	}
	return v.report(), nil
}

// live reads the stream for Verify: the messages once, then more passes
// over the ids when the trail holds more than one batch of them.
func (v *verifier) live(ctx context.Context, js jetstream.JetStream, cfg *Config) error {
	g := v.o.g
	st, err := lookupStream(ctx, g, js, cfg.Stream)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	info := st.CachedInfo()
	b := bounds{first: max(info.State.FirstSeq, 1), last: info.State.LastSeq, now: time.Now(), retention: info.Config.MaxAge,
		maxMsgs: info.Config.MaxMsgs, maxBytes: info.Config.MaxBytes, anchored: true}
	if info.State.Msgs == 0 {
		b.first = info.State.LastSeq + 1
	}
	passes := passesFor(info.State.Msgs, v.o.idBatch)
	v.begin(b, passes)
	firstRec := true
	err = scan(ctx, g, js, cfg.Stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy},
		func(m jetstream.Msg) error {
			rec, err := recordOf(m)
			if err != nil {
				return err
			}
			if rec.Seq > b.last {
				return errStopScan
			}
			if firstRec && rec.Seq > v.b.first {
				// MaxAge may have removed messages since the info was read.
				if st, err := lookupStream(ctx, g, js, cfg.Stream); err == nil {
					v.b.first = max(v.b.first, min(st.CachedInfo().State.FirstSeq, rec.Seq))
				}
			}
			firstRec = false
			v.add(rec)
			return nil
		})
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	v.ids.check(v)
	for pass := 1; pass < passes; pass++ {
		v.ids.pass = pass
		err := scan(ctx, g, js, cfg.Stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, HeadersOnly: true},
			func(m jetstream.Msg) error {
				md, err := m.Metadata()
				if err != nil {
					return err
				}
				if md.Sequence.Stream > b.last {
					return errStopScan
				}
				if m.Subject() != v.sealSubject {
					v.ids.add(m.Headers().Get(jetstream.MsgIDHeader), md.Sequence.Stream)
				}
				return nil
			})
		if err != nil {
			return fmt.Errorf("verify: duplicate check pass %d: %w", pass+1, err)
		}
		v.ids.check(v)
	}
	v.finish()
	return nil
}

func recordOf(m jetstream.Msg) (record, error) {
	md, err := m.Metadata()
	if err != nil {
		return record{}, err
	}
	return record{Seq: md.Sequence.Stream, Subject: m.Subject(), MsgID: m.Headers().Get(jetstream.MsgIDHeader),
		Time: md.Timestamp, Data: m.Data(), Header: m.Headers()}, nil
}

// exportVersion is the format of an export's header line.
const exportVersion = 1

// exportHeader is the first line of an export: the anchors an offline
// verification checks the file against.
type exportHeader struct {
	Version  int           `json:"v"`
	Stream   string        `json:"stream"`
	Time     time.Time     `json:"time"`
	FirstSeq uint64        `json:"first_seq"`
	LastSeq  uint64        `json:"last_seq"`
	Msgs     uint64        `json:"msgs"`
	MaxAge   time.Duration `json:"max_age"`
	MaxMsgs  int64         `json:"max_msgs"`
	MaxBytes int64         `json:"max_bytes"`
	Head     ChainHead     `json:"head"`
}

// exportLine is one line of an export: the header (Export set) or a
// message.
type exportLine struct {
	Export  *exportHeader `json:"export,omitempty"`
	Seq     uint64        `json:"seq,omitempty"`
	Subject string        `json:"subject,omitempty"`
	MsgID   string        `json:"msg_id,omitempty"`
	Time    time.Time     `json:"time,omitzero"`
	Data    []byte        `json:"data,omitempty"`
	Headers nats.Header   `json:"headers,omitempty"`
}

// Export writes the audit stream to w as JSON lines: first a header with
// the export's anchors, then every message, events and seals, in stream
// order, up to the last sequence the header names:
//
//	{"export":{"v":1,"stream":"GUARDIAN_AUDIT","time":"…","first_seq":1,"last_seq":42,"msgs":42,"max_age":7776000000000000,…,"head":{"seq":41,"hash":"…"}}}
//	{"seq":1,"subject":"guardian.v1.audit.acme.TIMEOUT_KV_GET","msg_id":"…","time":"…","data":"<base64>"}
//
// The header records when the export was made, the stream's first and
// last sequence and limits then, and the chain head: the latest message on
// the seal subject and the SHA-256 of its data. data is base64 so that the
// exact bytes the seals cover survive; headers other than Nats-Msg-Id
// appear as "headers" when present. VerifyExport checks such a file
// offline. Export returns the chain head, to keep apart from the file.
//
// It returns an error wrapping ErrInvalidConfig for a bad cfg, the write
// error, or the jetstream error or *jsguard.TimeoutError of a read. Safe
// for concurrent use.
func Export(ctx context.Context, js jetstream.JetStream, cfg Config, w io.Writer) (ChainHead, error) {
	if err := cfg.Validate(); err != nil {
		return ChainHead{}, err
	}
	// The info first, then the chain head: a seal stored after the info
	// is either the head (and the export reaches it) or after the head and
	// outside the export.
	st, err := lookupStream(ctx, nil, js, cfg.Stream)
	if err != nil {
		return ChainHead{}, fmt.Errorf("export: %w", err)
	}
	info := st.CachedInfo()
	var head ChainHead
	raw, err := jsguard.DoValue(ctx, nil, jsguard.NATSSubscribe, "chain head "+cfg.Stream,
		func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
			return st.GetLastMsgForSubject(ctx, cfg.SealSubject())
		})
	switch {
	case err == nil:
		h := sha256.Sum256(raw.Data)
		head = ChainHead{Seq: raw.Sequence, Hash: hex.EncodeToString(h[:])}
		var sl seal
		if json.Unmarshal(raw.Data, &sl) == nil {
			head.Time = sl.Time
		}
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return ChainHead{}, fmt.Errorf("export: chain head: %w", err)
	}
	hdr := exportHeader{Version: exportVersion, Stream: cfg.Stream, Time: time.Now().UTC(), FirstSeq: max(info.State.FirstSeq, 1),
		LastSeq: max(info.State.LastSeq, head.Seq), MaxAge: info.Config.MaxAge, MaxMsgs: info.Config.MaxMsgs,
		MaxBytes: info.Config.MaxBytes, Head: head}
	if info.State.Msgs == 0 && head.Seq == 0 {
		hdr.FirstSeq = info.State.LastSeq + 1
	}
	bw := bufio.NewWriter(w)
	// The header goes out with the first message: MaxAge may have removed
	// the first ones since the info was read.
	written := false
	writeHeader := func() error {
		written = true
		hdr.Msgs = hdr.LastSeq - min(hdr.FirstSeq, hdr.LastSeq+1) + 1
		b, err := json.Marshal(exportLine{Export: &hdr})
		if err != nil {
			return err
		}
		_, err = bw.Write(append(b, '\n'))
		return err
	}
	err = scan(ctx, nil, js, cfg.Stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy},
		func(m jetstream.Msg) error {
			rec, err := recordOf(m)
			if err != nil {
				return err
			}
			if rec.Seq > hdr.LastSeq {
				return errStopScan
			}
			if !written {
				if rec.Seq > hdr.FirstSeq {
					if st, err := lookupStream(ctx, nil, js, cfg.Stream); err == nil {
						hdr.FirstSeq = max(hdr.FirstSeq, min(st.CachedInfo().State.FirstSeq, rec.Seq))
					}
				}
				if err := writeHeader(); err != nil {
					return fmt.Errorf("write: %w", err)
				}
			}
			return writeExportLine(bw, rec)
		})
	if err == nil && !written {
		err = writeHeader()
	}
	if err != nil {
		return ChainHead{}, fmt.Errorf("export: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return ChainHead{}, fmt.Errorf("export: %w", err)
	}
	return head, nil
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
// VerifyExportConfig for others.
//
// The export's header anchors it: every sequence from its first_seq to its
// last_seq must be in the file, its chain head must be the file's last
// seal, and the head and tail are judged at the export's time (unless
// WithVerifyTime): a file cut at its head, its tail or in the middle is
// reported. The header is not signed: to be sure that nobody rewrote it
// along with a cut, compare the chain head Export returned (or a later
// live Verify) with WithChainHead. An export without a header (from an
// older guardian) is reported as Unanchored.
//
// Memory stays bounded as for Verify. An export of more than 2,000,000
// events needs more than one pass over its message ids: r must then be an
// io.ReadSeeker (a file), or VerifyExport returns an error wrapping
// ErrInvalidExport.
//
// It returns an error wrapping ErrInvalidKey for a bad key, or
// ErrInvalidExport, naming the line, for input that is not an export, or
// r's read error; it never panics on bad input. Tampering is reported in
// the Report. Safe for concurrent use.
func VerifyExport(r io.Reader, publicKey string, opts ...VerifyOption) (Report, error) {
	return VerifyExportConfig(r, DefaultConfig(), publicKey, opts...)
}

// VerifyExportConfig is VerifyExport for a stream configured with cfg
// (only Stream and SubjectPrefix are used); it returns the same errors.
func VerifyExportConfig(r io.Reader, cfg Config, publicKey string, opts ...VerifyOption) (Report, error) {
	v, err := newVerifier(&cfg, publicKey, opts)
	if err != nil {
		return Report{}, err
	}
	var start int64
	seeker, canSeek := r.(io.ReadSeeker)
	if canSeek {
		if start, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			canSeek = false
		}
	}
	passes := 1
	began := false
	err = readExport(r, func(n int, l *exportLine) error {
		if l.Export != nil {
			if n != 1 || began {
				return fmt.Errorf("%w: line %d: an export header must be the first line", ErrInvalidExport, n)
			}
			h := l.Export
			if h.Version != exportVersion {
				return fmt.Errorf("%w: line %d: unknown export version %d", ErrInvalidExport, n, h.Version)
			}
			b := bounds{first: h.FirstSeq, last: h.LastSeq, now: h.Time, retention: h.MaxAge, maxMsgs: h.MaxMsgs,
				maxBytes: h.MaxBytes, anchored: true}
			if h.Head.Seq != 0 {
				b.head = &h.Head
			}
			passes = passesFor(h.Msgs, v.o.idBatch)
			if passes > 1 && !canSeek {
				return fmt.Errorf("%w: an export of %d messages is checked for duplicate event ids in %d passes: give a file, not a stream",
					ErrInvalidExport, h.Msgs, passes)
			}
			v.begin(b, passes)
			began = true
			return nil
		}
		if !began {
			v.begin(bounds{now: time.Now()}, 1)
			began = true
		}
		v.add(record{Seq: l.Seq, Subject: l.Subject, MsgID: l.MsgID, Time: l.Time, Data: l.Data})
		return nil
	})
	if err != nil {
		return Report{}, err
	}
	if !began {
		v.begin(bounds{now: time.Now()}, 1)
	}
	from := 1
	if p := passesFor(v.done, v.o.idBatch); p < passes {
		// The header claims more messages than the file holds: pass as
		// the file needs, from the start.
		passes, from = p, 0
		v.ids = idBatch{passes: p}
	} else {
		v.ids.check(v)
	}
	for pass := from; pass < passes; pass++ {
		if _, err := seeker.Seek(start, io.SeekStart); err != nil {
			return Report{}, fmt.Errorf("read export: %w", err)
		}
		v.ids.pass = pass
		err := readExport(seeker, func(_ int, l *exportLine) error {
			if l.Export == nil && l.Subject != v.sealSubject {
				v.ids.add(l.MsgID, l.Seq)
			}
			return nil
		})
		if err != nil {
			return Report{}, err
		}
		v.ids.check(v)
	}
	v.finish()
	return v.report(), nil
}

// readExport calls fn for each non-empty line of an export, numbered from
// 1, decoded; a message line must have a sequence and a subject.
func readExport(r io.Reader, fn func(n int, l *exportLine) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxExportLine)
	for n := 1; sc.Scan(); n++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var l exportLine
		if err := json.Unmarshal(b, &l); err != nil {
			return fmt.Errorf("%w: line %d: %w", ErrInvalidExport, n, err)
		}
		if l.Export == nil && (l.Seq == 0 || l.Subject == "") {
			return fmt.Errorf("%w: line %d: seq and subject are required", ErrInvalidExport, n)
		}
		if err := fn(n, &l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%w: a line is longer than %d bytes", ErrInvalidExport, maxExportLine)
		}
		return fmt.Errorf("read export: %w", err)
	}
	return nil
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
			rec, err := recordOf(m)
			if err != nil {
				return err
			}
			return fn(rec)
		})
	return state.FirstSeq, state.LastSeq, err
}
