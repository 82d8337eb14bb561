package auditstream

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// errStopScan ends a scan early without an error.
var errStopScan = errors.New("stop scan")

// scanBatch is how many messages one guarded read waits for at most.
const scanBatch = 256

// scan reads the messages of stream that occ selects, in order, from occ's
// start until it has caught up with the end of the stream, and calls fn
// for each; fn may return errStopScan to end early. Every read runs under g
// (NATSSubscribe) so a stalled server cannot hold it forever. The ordered
// consumer is deleted at the end.
func scan(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream, stream string, occ jetstream.OrderedConsumerConfig, fn func(jetstream.Msg) error) error {
	occ.MaxResetAttempts = 3
	cons, err := orderedConsumer(ctx, g, js, stream, occ)
	if err != nil {
		return fmt.Errorf("read stream %s: %w", stream, err)
	}
	defer func() { deleteConsumer(g, js, stream, cons) }()
	if info := cons.CachedInfo(); info == nil || info.NumPending == 0 {
		return nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * scanBatch))
	if err != nil {
		return fmt.Errorf("read stream %s: %w", stream, err)
	}
	defer it.Stop()
	type batch struct {
		msgs []jetstream.Msg
		done bool
	}
	for {
		// Messages are collected under the guard and handed to fn outside
		// it, so a slow fn is never mistaken for a stalled read.
		b, err := jsguard.DoValue(ctx, g, jsguard.NATSSubscribe, "read stream "+stream, func(ctx context.Context) (batch, error) {
			var b batch
			for len(b.msgs) < scanBatch {
				msg, err := it.Next(jetstream.NextContext(ctx))
				if err != nil {
					return batch{}, err
				}
				b.msgs = append(b.msgs, msg)
				md, err := msg.Metadata()
				if err != nil {
					return batch{}, err
				}
				if md.NumPending == 0 {
					b.done = true
					break
				}
			}
			return b, nil
		})
		if err != nil {
			return fmt.Errorf("read stream %s: %w", stream, err)
		}
		for _, m := range b.msgs {
			if err := fn(m); err != nil {
				if errors.Is(err, errStopScan) {
					return nil
				}
				return err
			}
		}
		if b.done {
			return nil
		}
	}
}

// deleteConsumer removes an ordered consumer at once instead of leaving it
// to its inactivity threshold; best effort.
func deleteConsumer(g *jsguard.Guard, js jetstream.JetStream, stream string, cons jetstream.Consumer) {
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = g.Do(ctx, jsguard.NATSSubscribe, "delete consumer "+stream+"/"+info.Name,
		func(ctx context.Context) error { return js.DeleteConsumer(ctx, stream, info.Name) })
}

// orderedConsumer creates an ordered consumer under g (NATSSubscribe).
func orderedConsumer(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream, stream string, occ jetstream.OrderedConsumerConfig) (jetstream.Consumer, error) {
	return jsguard.DoValue(ctx, g, jsguard.NATSSubscribe, "ordered consumer "+stream,
		func(ctx context.Context) (jetstream.Consumer, error) { return js.OrderedConsumer(ctx, stream, occ) })
}

// lookupStream returns a handle on stream with fresh info, under g
// (NATSSubscribe).
func lookupStream(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream, stream string) (jetstream.Stream, error) {
	return jsguard.DoValue(ctx, g, jsguard.NATSSubscribe, "stream info "+stream,
		func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, stream) })
}

// filterSubject returns SubjectPrefix.<tenant|*>.<code|*>. An empty tenant
// or code matches any; NoTenant matches events without a tenant.
func filterSubject(cfg *Config, tenant, code string) (string, error) {
	t, c := "*", "*"
	if tenant != "" {
		t = TenantToken(tenant)
	}
	if code != "" {
		if _, err := jsguard.ParseCode(code); err != nil {
			return "", fmt.Errorf("%w: %w", ErrInvalidFilter, err)
		}
		c = code
	}
	return cfg.SubjectPrefix + "." + t + "." + c, nil
}

// splitSubject returns the tenant token and code of an event subject.
func splitSubject(cfg *Config, subject string) (tenantToken, code string, ok bool) {
	rest, ok := strings.CutPrefix(subject, cfg.SubjectPrefix+".")
	if !ok {
		return "", "", false
	}
	tenantToken, code, ok = strings.Cut(rest, ".")
	if !ok || strings.Contains(code, ".") {
		return "", "", false
	}
	return tenantToken, code, true
}

// TailOptions selects what Tail follows.
type TailOptions struct {
	// Tenant selects one tenant id; empty selects all, NoTenant the
	// events without a tenant.
	Tenant string
	// Code selects one audit code, e.g. TIMEOUT_KV_GET; empty selects all.
	Code string
	// StartSeq starts at this stream sequence when above 0.
	StartSeq uint64
	// StartTime starts at the first event stored at or after it when not
	// zero. With neither StartSeq nor StartTime only events stored from
	// now on are delivered. Setting both is an error.
	StartTime time.Time
}

// Entry is one audit event as Tail delivers it.
type Entry struct {
	// Seq is the stream sequence.
	Seq uint64
	// Subject is SubjectPrefix.<tenant>.<code>.
	Subject string
	// Time is when the stream stored the event.
	Time time.Time
	// Event is the decoded event.
	Event jsguard.Event
}

// Tail follows the audit stream live through an ordered consumer and
// yields each event that opts selects, in stream order; seals are never
// yielded. It keeps following across reconnects and ends when ctx ends
// (without an error) or when the loop breaks.
//
//	for e, err := range auditstream.Tail(ctx, js, cfg, auditstream.TailOptions{Code: "TIMEOUT_KV_GET"}) {
//		if err != nil { ... }
//	}
//
// An error wrapping ErrMalformedEvent concerns one message (its Entry has
// Seq, Subject and Time) and iteration goes on if the loop continues. Any
// other error ends the iteration: one wrapping ErrInvalidFilter for bad
// options, the jetstream error (e.g. jetstream.ErrStreamNotFound), or a
// *jsguard.TimeoutError when the consumer could not be created in time.
// Each call starts its own consumer, so concurrent Tails are independent.
func Tail(ctx context.Context, js jetstream.JetStream, cfg Config, opts TailOptions) iter.Seq2[Entry, error] {
	return func(yield func(Entry, error) bool) {
		occ, err := tailConfig(&cfg, opts)
		if err != nil {
			yield(Entry{}, err)
			return
		}
		cons, err := orderedConsumer(ctx, nil, js, cfg.Stream, occ)
		if err != nil {
			if ctx.Err() == nil {
				yield(Entry{}, fmt.Errorf("tail %s: %w", cfg.Stream, err))
			}
			return
		}
		defer deleteConsumer(nil, js, cfg.Stream, cons)
		it, err := cons.Messages()
		if err != nil {
			yield(Entry{}, fmt.Errorf("tail %s: %w", cfg.Stream, err))
			return
		}
		defer it.Stop()
		for {
			// A live wait has no deadline: the ordered consumer's
			// heartbeats detect a dead server and it resumes by itself.
			msg, err := it.Next(jetstream.NextContext(ctx))
			if err != nil {
				if ctx.Err() == nil {
					yield(Entry{}, fmt.Errorf("tail %s: %w", cfg.Stream, err))
				}
				return
			}
			if !yield(entryOf(msg)) {
				return
			}
		}
	}
}

func tailConfig(cfg *Config, opts TailOptions) (jetstream.OrderedConsumerConfig, error) {
	filter, err := filterSubject(cfg, opts.Tenant, opts.Code)
	if err != nil {
		return jetstream.OrderedConsumerConfig{}, err
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverNewPolicy}
	switch {
	case opts.StartSeq > 0 && !opts.StartTime.IsZero():
		return occ, fmt.Errorf("%w: StartSeq and StartTime are exclusive", ErrInvalidFilter)
	case opts.StartSeq > 0:
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, opts.StartSeq
	case !opts.StartTime.IsZero():
		t := opts.StartTime
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	return occ, nil
}

func entryOf(msg jetstream.Msg) (Entry, error) {
	e := Entry{Subject: msg.Subject()}
	if md, err := msg.Metadata(); err == nil {
		e.Seq, e.Time = md.Sequence.Stream, md.Timestamp
	}
	if err := json.Unmarshal(msg.Data(), &e.Event); err != nil {
		return e, fmt.Errorf("%w: seq %d: %w", ErrMalformedEvent, e.Seq, err)
	}
	return e, nil
}

// StatsOptions selects what Stats counts.
type StatsOptions struct {
	// Window is how far back from End to count; required, above 0.
	Window time.Duration
	// End is the end of the window (exclusive); zero means now.
	End time.Time
	// Tenant selects one tenant id; empty selects all, NoTenant the
	// events without a tenant.
	Tenant string
	// Code selects one audit code; empty selects all.
	Code string
	// Guard runs the reads, and Stats itself as a T5 call (nil:
	// jsguard.Default()).
	Guard *jsguard.Guard
}

// Counts is what Stats returns: event counts per minute, tenant and code.
type Counts struct {
	// From and To bound the window [From, To).
	From, To time.Time
	// Total is the number of events counted.
	Total int
	// Buckets holds one entry per minute, tenant and code with events,
	// sorted by minute, tenant and code.
	Buckets []Bucket
	// Aborted is true when Stats ran out of its T5 budget: the counts then
	// cover [From, To) with To moved back to just after the last event
	// counted. Cause is that timeout.
	Aborted bool                  `json:",omitempty"`
	Cause   *jsguard.TimeoutError `json:"-"`
}

// Bucket counts the events of one tenant and code in one minute.
type Bucket struct {
	// Minute is the start of the minute, UTC.
	Minute time.Time
	// Tenant is the tenant id ("" for events without one).
	Tenant string
	// Code is the audit code.
	Code  string
	Count int
}

// ByCode returns the total per code.
func (c *Counts) ByCode() map[string]int {
	m := map[string]int{}
	for _, b := range c.Buckets {
		m[b.Code] += b.Count
	}
	return m
}

// Stats counts the events stored in the window [End-Window, End), per
// minute, tenant and code, by the time the stream stored them (an event
// drained from a spool counts when it was drained). Seals are not counted.
//
// Stats is a T5 (complex) call of opts.Guard: when its T5 budget (10s by
// default) runs out under the graceful strategy, it returns the counts so
// far with Aborted set and a nil error, and the timeout is audited once.
//
// It returns an error wrapping ErrInvalidFilter for bad options, or the
// jetstream error or *jsguard.TimeoutError of a read (or of the T5 budget
// under strict or none). Safe for concurrent use.
func Stats(ctx context.Context, js jetstream.JetStream, cfg Config, opts StatsOptions) (Counts, error) {
	if opts.Window <= 0 {
		return Counts{}, fmt.Errorf("%w: Window %s must be above 0", ErrInvalidFilter, opts.Window)
	}
	filter, err := filterSubject(&cfg, opts.Tenant, opts.Code)
	if err != nil {
		return Counts{}, err
	}
	end := opts.End
	if end.IsZero() {
		end = time.Now()
	}
	out := Counts{From: end.Add(-opts.Window).UTC(), To: end.UTC()}
	from := out.From
	type key struct {
		minute       time.Time
		tenant, code string
	}
	counts := map[key]int{}
	var last time.Time // the last event counted
	sum, err := jsguard.Complex(ctx, opts.Guard, "audit stats "+cfg.Stream, func(ctx context.Context, _ func(struct{})) (struct{}, error) {
		return struct{}{}, scan(ctx, opts.Guard, js, cfg.Stream, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{filter},
			DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
			OptStartTime:   &from,
		}, func(msg jetstream.Msg) error {
			md, err := msg.Metadata()
			if err != nil {
				return err
			}
			if !md.Timestamp.Before(out.To) {
				return errStopScan
			}
			tenant, code, ok := splitSubject(&cfg, msg.Subject())
			if !ok {
				return nil
			}
			counts[key{md.Timestamp.UTC().Truncate(time.Minute), TenantFromToken(tenant), code}]++
			out.Total++
			last = md.Timestamp
			return nil
		})
	})
	switch {
	case err != nil:
		return Counts{}, fmt.Errorf("stats: %w", err)
	case sum.Aborted && sum.Cause.Abandoned:
		return Counts{}, fmt.Errorf("stats: %w", sum.Cause)
	case sum.Aborted:
		out.Aborted, out.Cause = true, sum.Cause
		out.To = out.From
		if !last.IsZero() {
			out.To = last.UTC().Add(time.Nanosecond)
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(counts), func(a, b key) int {
		return cmp.Or(a.minute.Compare(b.minute), cmp.Compare(a.tenant, b.tenant), cmp.Compare(a.code, b.code))
	}) {
		out.Buckets = append(out.Buckets, Bucket{Minute: k.minute, Tenant: k.tenant, Code: k.code, Count: counts[k]})
	}
	return out, nil
}
