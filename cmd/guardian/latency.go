package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// The stream where every guardian publishes its calls' latency
// histograms, one message per interval, for 'guardian policy suggest'.
const (
	latencyStream  = "GUARDIAN_LATENCY"
	latencySubject = "guardian.v1.latency" // .<instance>
	// latencyKeep is how long the histograms are kept: the longest
	// --window of policy suggest.
	latencyKeep = 8 * 24 * time.Hour
)

// latencyReport is one guardian's calls over one interval, by audit code.
type latencyReport struct {
	Instance   string                   `json:"instance"`
	From       time.Time                `json:"from"`
	To         time.Time                `json:"to"`
	Categories map[string]latencyCounts `json:"categories"`
}

// latencyCounts is one category's histogram (see jsguard.LatencyBucket):
// calls by bucket index, the timeouts, and the longest call that returned
// in time since the process started.
type latencyCounts struct {
	Buckets  map[int]uint64 `json:"buckets"`
	Timeouts uint64         `json:"timeouts,omitempty"`
	MaxOKNs  int64          `json:"max_ok_ns"`
}

func latencyStreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        latencyStream,
		Description: "guardian: latency histograms per instance and interval, for policy suggest",
		Subjects:    []string{latencySubject + ".*"},
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		MaxAge:      latencyKeep,
		Discard:     jetstream.DiscardOld,
	}
}

// latencyPublisher publishes the guard's latency histograms every interval:
// what changed since the last publish. A crash loses at most one interval.
func latencyPublisher(g *jsguard.Guard, js jetstream.JetStream, instance string, interval time.Duration, log *slog.Logger) func(context.Context) error {
	return func(ctx context.Context) error {
		prev := map[jsguard.Category]jsguard.Latency{}
		for _, l := range g.Latency() {
			prev[l.Category] = l
		}
		from := time.Now()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
			to := time.Now()
			rep := latencyReport{Instance: instance, From: from.UTC(), To: to.UTC(), Categories: map[string]latencyCounts{}}
			for _, l := range g.Latency() {
				d := l.Sub(prev[l.Category])
				prev[l.Category] = l
				if d.Calls() == 0 && d.Timeouts == 0 {
					continue
				}
				lc := latencyCounts{Buckets: map[int]uint64{}, Timeouts: d.Timeouts, MaxOKNs: int64(d.MaxOK)}
				for i, n := range d.Counts {
					if n > 0 {
						lc.Buckets[i] = n
					}
				}
				rep.Categories[l.Category.Code()] = lc
			}
			from = to
			if len(rep.Categories) == 0 {
				continue
			}
			b, err := json.Marshal(rep)
			if err != nil {
				return err
			}
			msg := nats.NewMsg(latencySubject + "." + subjectToken(instance))
			msg.Data = b
			if err := g.Do(ctx, jsguard.NATSPublish, "publish latency "+latencyStream, func(ctx context.Context) error {
				_, err := js.PublishMsg(ctx, msg)
				return err
			}); err != nil && ctx.Err() == nil {
				log.Warn("latency histograms not published; they are counted into the next interval's", "err", err)
				// Count this interval again next time.
				for c, l := range prev {
					if lc, ok := rep.Categories[c.Code()]; ok {
						for i, n := range lc.Buckets {
							l.Counts[i] -= n
						}
						l.Timeouts -= lc.Timeouts
						prev[c] = l
					}
				}
			}
		}
	}
}

// subjectToken makes s usable as one subject token.
func subjectToken(s string) string {
	out := []byte(s)
	for i, c := range out {
		if c == '.' || c == '*' || c == '>' || c <= ' ' || c > '~' {
			out[i] = '_'
		}
	}
	if len(out) == 0 {
		return "_"
	}
	return string(out)
}

// readLatency sums the histograms published in the last window, by
// category, under a T5 budget of g: out of time, it returns what it read
// with aborted set.
func readLatency(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream, window time.Duration) (hists []jsguard.Latency, reports int, aborted bool, err error) {
	sum := map[jsguard.Category]*jsguard.Latency{}
	start := time.Now().Add(-window)
	res, err := jsguard.Complex(ctx, g, "read "+latencyStream, func(ctx context.Context, _ func(struct{})) (struct{}, error) {
		cons, err := jsguard.DoValue(ctx, g, jsguard.NATSSubscribe, "ordered consumer "+latencyStream, func(ctx context.Context) (jetstream.Consumer, error) {
			return js.OrderedConsumer(ctx, latencyStream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &start})
		})
		if err != nil {
			return struct{}{}, err
		}
		pending := cons.CachedInfo().NumPending
		for pending > 0 {
			// The fetch and the reading of its messages, under one deadline.
			msgs, err := jsguard.DoValue(ctx, g, jsguard.NATSSubscribe, "read "+latencyStream, func(ctx context.Context) ([][]byte, error) {
				batch, err := cons.FetchNoWait(int(min(pending, 500)))
				if err != nil {
					return nil, err
				}
				var out [][]byte
				for m := range batch.Messages() {
					out = append(out, m.Data())
				}
				return out, batch.Error()
			})
			if err != nil {
				return struct{}{}, err
			}
			if len(msgs) == 0 {
				break
			}
			for _, data := range msgs {
				var rep latencyReport
				if json.Unmarshal(data, &rep) != nil {
					continue
				}
				reports++
				for code, lc := range rep.Categories {
					c, err := jsguard.ParseCode(code)
					if err != nil {
						continue
					}
					l := sum[c]
					if l == nil {
						l = &jsguard.Latency{Category: c}
						sum[c] = l
					}
					for i, n := range lc.Buckets {
						if i >= 0 && i < jsguard.LatencyBuckets {
							l.Counts[i] += n
						}
					}
					l.Timeouts += lc.Timeouts
					l.MaxOK = max(l.MaxOK, time.Duration(lc.MaxOKNs))
				}
			}
			pending -= min(pending, uint64(len(msgs)))
		}
		return struct{}{}, nil
	})
	if err != nil {
		return nil, 0, false, fmt.Errorf("read %s: %w", latencyStream, err)
	}
	if res.Aborted && res.Cause.Abandoned {
		return nil, 0, false, fmt.Errorf("read %s: %w", latencyStream, res.Cause)
	}
	for _, l := range sum {
		hists = append(hists, *l)
	}
	return hists, reports, res.Aborted, nil
}
