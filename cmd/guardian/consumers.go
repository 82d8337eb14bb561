package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// lagBudget bounds the consumer lookups of one /metrics scrape.
const lagBudget = 2 * time.Second

// consumerRef names a durable consumer that a part of guardian runs, and
// whether that part is running.
type consumerRef struct {
	name, stream, durable string
	running               atomic.Bool
}

// track returns run wrapped so that c.running says whether it runs.
func (c *consumerRef) track(run func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		c.running.Store(true)
		defer c.running.Store(false)
		return run(ctx)
	}
}

// lookup reads the consumer's info from the server under NATS_SUBSCRIBE,
// at most budget.
func (c *consumerRef) lookup(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream, budget time.Duration) (*jetstream.ConsumerInfo, error) {
	return jsguard.DoValue(ctx, g, jsguard.NATSSubscribe, "consumer info "+c.stream+"/"+c.durable,
		func(ctx context.Context) (*jetstream.ConsumerInfo, error) {
			cons, err := js.Consumer(ctx, c.stream, c.durable)
			if err != nil {
				return nil, err
			}
			return cons.CachedInfo(), nil
		}, jsguard.WithBudget(budget))
}

// consumersReady returns the /readyz check of the consumers: each part is
// running and its durable consumer exists on the server (looked up until it
// has been seen once, at most a second per look).
func consumersReady(g *jsguard.Guard, js jetstream.JetStream, refs []*consumerRef) func() error {
	seen := make([]atomic.Bool, len(refs))
	return func() error {
		for i, c := range refs {
			if !c.running.Load() {
				return fmt.Errorf("%s not running", c.name)
			}
			if seen[i].Load() {
				continue
			}
			if _, err := c.lookup(context.Background(), g, js, time.Second); err != nil {
				return fmt.Errorf("%s: durable consumer %s/%s: %w", c.name, c.stream, c.durable, err)
			}
			seen[i].Store(true)
		}
		return nil
	}
}

// lagCollector reports, at scrape time, how far the expirer's and the
// notifier's durable consumers are behind: messages not yet delivered
// (num_pending) and delivered but not yet acknowledged (num_ack_pending).
// The lookups run through jsguard, all of them within one budget; a
// consumer that could not be looked up reports guardian_consumer_up 0 and
// no lag.
type lagCollector struct {
	g       *jsguard.Guard
	js      jetstream.JetStream
	refs    []*consumerRef
	budget  time.Duration
	pending *prometheus.Desc
	ackPend *prometheus.Desc
	redeliv *prometheus.Desc
	up      *prometheus.Desc
}

func newLagCollector(g *jsguard.Guard, js jetstream.JetStream, refs []*consumerRef, budget time.Duration) *lagCollector {
	labels := []string{"consumer", "stream", "durable"}
	return &lagCollector{
		g: g, js: js, refs: refs, budget: budget,
		pending: prometheus.NewDesc("guardian_consumer_num_pending",
			"Messages of the stream the durable consumer has not delivered yet (its lag).", labels, nil),
		ackPend: prometheus.NewDesc("guardian_consumer_num_ack_pending",
			"Messages the durable consumer delivered that are not acknowledged yet.", labels, nil),
		redeliv: prometheus.NewDesc("guardian_consumer_num_redelivered",
			"Messages the durable consumer is redelivering.", labels, nil),
		up: prometheus.NewDesc("guardian_consumer_up",
			"1 when the durable consumer was looked up at this scrape, 0 when it is missing or the lookup failed.", labels, nil),
	}
}

// Describe implements prometheus.Collector.
func (l *lagCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- l.pending
	ch <- l.ackPend
	ch <- l.redeliv
	ch <- l.up
}

// Collect implements prometheus.Collector.
func (l *lagCollector) Collect(ch chan<- prometheus.Metric) {
	if !l.js.Conn().IsConnected() {
		// No lookups, and no timeouts to audit, while NATS is away.
		for _, c := range l.refs {
			ch <- prometheus.MustNewConstMetric(l.up, prometheus.GaugeValue, 0, c.name, c.stream, c.durable)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.budget)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range l.refs {
		wg.Go(func() {
			lv := []string{c.name, c.stream, c.durable}
			info, err := c.lookup(ctx, l.g, l.js, l.budget)
			if err != nil {
				ch <- prometheus.MustNewConstMetric(l.up, prometheus.GaugeValue, 0, lv...)
				return
			}
			ch <- prometheus.MustNewConstMetric(l.up, prometheus.GaugeValue, 1, lv...)
			ch <- prometheus.MustNewConstMetric(l.pending, prometheus.GaugeValue, float64(info.NumPending), lv...)
			ch <- prometheus.MustNewConstMetric(l.ackPend, prometheus.GaugeValue, float64(info.NumAckPending), lv...)
			ch <- prometheus.MustNewConstMetric(l.redeliv, prometheus.GaugeValue, float64(info.NumRedelivered), lv...)
		})
	}
	wg.Wait()
}
