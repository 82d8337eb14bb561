package kvapprovals

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// scanLatest hands fn the latest message of every subject of str matching
// filter, in stream order, as of the start of the scan; headersOnly leaves
// out the payloads. It returns fn's first error, ctx's error or the
// jetstream error.
//
// It stops after the number of messages the server counted when the scan
// began, or when nothing more is available. Unlike a KV watcher or key
// lister, which wait for a "no more pending" mark, it therefore finishes
// while other processes keep writing to the bucket or timers keep firing.
// The caller runs it under a jsguard budget.
func scanLatest(ctx context.Context, str jetstream.Stream, filter string, headersOnly bool, fn func(jetstream.Msg) error) error {
	return scan(ctx, str, jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		FilterSubject: filter,
		HeadersOnly:   headersOnly,
	}, fn)
}

// errStopScan, returned by a scan's fn, ends the scan without an error.
var errStopScan = errors.New("stop the scan")

// scanSince hands fn every message of str matching filter stored at or
// after since (all of them when since is zero), in stream order, until fn
// returns errStopScan; otherwise like scanLatest.
func scanSince(ctx context.Context, str jetstream.Stream, filter string, since time.Time, fn func(jetstream.Msg) error) error {
	cfg := jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, FilterSubject: filter}
	if !since.IsZero() {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	err := scan(ctx, str, cfg, fn)
	if errors.Is(err, errStopScan) {
		return nil
	}
	return err
}

// scan runs an ephemeral, unacknowledged, in-memory consumer of str with
// cfg's delivery policy, filter and HeadersOnly, handing fn each message
// up to the number pending when it was created (see scanLatest).
func scan(ctx context.Context, str jetstream.Stream, cfg jetstream.ConsumerConfig, fn func(jetstream.Msg) error) error {
	cfg.AckPolicy = jetstream.AckNonePolicy
	cfg.MemoryStorage = true
	cfg.Replicas = 1
	cfg.InactiveThreshold = 30 * time.Second // cleans up after a scan that died
	cons, err := str.CreateConsumer(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = str.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	want := cons.CachedInfo().NumPending
	retry := 10 * time.Millisecond
	for got := uint64(0); got < want; {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch, err := cons.FetchNoWait(int(min(want-got, 1000)))
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if err := fn(m); err != nil {
				for range batch.Messages() { // drain
				}
				return err
			}
		}
		if err := batch.Error(); err != nil {
			// In a cluster the consumer may live on another server than the
			// one this client is connected to, and the interest in its
			// pull subject reaches this server a moment after the create
			// returned: until then a pull finds no responder. Try again
			// for a while (ctx bounds it).
			if n == 0 && errors.Is(err, nats.ErrNoResponders) && retry <= 640*time.Millisecond {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(retry):
				}
				retry *= 2
				continue
			}
			return err
		}
		if n == 0 {
			return nil // the rest was removed meanwhile
		}
		got += uint64(n)
	}
	return nil
}

// isEntry reports whether m is a value, not a delete, purge or TTL marker.
func isEntry(m jetstream.Msg) bool {
	h := m.Headers()
	return h.Get("KV-Operation") == "" && h.Get(jetstream.MarkerReasonHeader) == ""
}
