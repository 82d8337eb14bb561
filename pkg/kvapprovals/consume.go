package kvapprovals

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// ConsumerOption configures an Expirer or a Notifier.
type ConsumerOption func(*consumerOpts)

type consumerOpts struct {
	workers       int
	maxAckPending int
	noSweep       bool
	webhook       *Webhook
}

// The consumers' default MaxAckPending; see WithMaxAckPending.
const (
	expirerMaxAckPending  = 16384
	notifierMaxAckPending = 256
)

// newConsumerOpts applies opts to the defaults: 64 workers and
// maxAckPending.
func newConsumerOpts(maxAckPending int, opts []ConsumerOption) consumerOpts {
	o := consumerOpts{workers: 64, maxAckPending: maxAckPending}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithWorkers sets how many messages are processed at once (default 64;
// the work is mostly waiting for NATS round trips).
// Messages on the same subject (the same approval) are processed in order.
func WithWorkers(n int) ConsumerOption {
	return func(o *consumerOpts) {
		if n > 0 {
			o.workers = n
		}
	}
}

// WithMaxAckPending sets the durable consumer's MaxAckPending, the number
// of messages in flight across all replicas.
//
// The notifier's default is 256. Keep it a small multiple of the workers:
// more only leaves more messages waiting AckWait on a replica that dies,
// and the server walks a consumer's unacknowledged messages on every purge
// or rollup of a subject the consumer reads, which the records' subjects
// have.
//
// The expirer's default is 16384: its in-flight messages include the
// timers it holds until their instant (timers fire up to about a second
// early), so it should exceed the most expiries and warnings due in one
// second. Fire messages are never purged or rolled up.
func WithMaxAckPending(n int) ConsumerOption {
	return func(o *consumerOpts) {
		if n > 0 {
			o.maxAckPending = n
		}
	}
}

// WithoutStartSweep turns off the expirer's start sweep (see Expirer.Run).
// The notifier ignores it.
func WithoutStartSweep() ConsumerOption { return func(o *consumerOpts) { o.noSweep = true } }

// errRetryAfter asks for a redelivery after a delay, without counting an
// error: a timer that fired before the record's deadline by this clock.
type errRetryAfter time.Duration

func (e errRetryAfter) Error() string {
	return fmt.Sprintf("not due yet, retry in %s", time.Duration(e))
}

// inProgress keeps a message from redelivery while it is handled.
type inProgress struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

// keepInProgress sends InProgress for m every every until stop. Most
// handlers finish before the first tick, which then costs one timer.
func keepInProgress(m jetstream.Msg, every time.Duration) *inProgress {
	k := &inProgress{}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.t = time.AfterFunc(every, func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.stopped {
			return
		}
		_ = m.InProgress()
		k.t.Reset(every)
	})
	return k
}

func (k *inProgress) stop() {
	k.mu.Lock()
	k.stopped = true
	k.t.Stop()
	k.mu.Unlock()
}

// redeliveryDelay backs off 1s, 2s, 4s … up to 30s by delivery count.
func redeliveryDelay(delivered uint64) time.Duration {
	d := time.Second
	for i := uint64(1); i < delivered && d < 30*time.Second; i++ {
		d *= 2
	}
	return min(d, 30*time.Second)
}

// consumerAckWait is the AckWait of the expirer's and the notifier's
// durable consumers: how long a message fetched by a replica that died
// waits before another replica gets it. A handler that works longer keeps
// its message with InProgress every consumerAckWait/2.
const consumerAckWait = 4 * time.Second

// pullExpiry is how long each pull request of the consumers lasts.
const pullExpiry = 5 * time.Second

// handler handles one message: it acknowledges, naks or terminates it and
// returns 0, or returns how long consume is to hold the message before it
// hands it to the handler again (a timer that fired ahead of its instant).
type handler func(context.Context, jetstream.Msg) (hold time.Duration)

// consume runs cons until ctx ends, handing each message to handle on one of
// workers goroutines picked by subject, so one subject's messages stay in
// order. handle must Ack, Nak or Term, or ask for the message to be held:
// then it waits in memory, not on a worker, and goes back to its worker when
// the hold ends; a stop naks held messages at once. A message for which ignore (when not
// nil) returns true is acked at once instead, without a worker. Handlers run on a context that is not
// cancelled with ctx, bounded by budget, so that a stop lets messages in
// progress finish; messages fetched but not started are Nak'ed at once so
// another replica takes them. While handle runs longer than ackWait/2 the
// message is kept with InProgress, so a short AckWait (another replica
// takes over quickly after a crash) never redelivers a message that is
// being worked on. It returns nil when ctx ends and an error when
// consuming stopped by itself.
func (s *Service) consume(ctx context.Context, cons jetstream.Consumer, workers int, ackWait, budget time.Duration, ignore func(jetstream.Msg) bool, handle handler) error {
	hctx := context.WithoutCancel(ctx)
	var stopping atomic.Bool
	shards := make([]chan jetstream.Msg, workers)
	// The callback and the ends of holds hand messages to the shards under
	// sendMu, and the shards close only once it is set closed:
	// ConsumeContext.Closed can report the end while a last callback still
	// runs (nats.go closes it as soon as the subscription is invalid).
	var sendMu sync.RWMutex
	sendClosed := false
	send := func(ch chan jetstream.Msg, m jetstream.Msg) {
		sendMu.RLock()
		defer sendMu.RUnlock()
		if sendClosed {
			_ = m.Nak()
			return
		}
		ch <- m
	}
	h := holds{held: make(map[*time.Timer]jetstream.Msg)}
	var wg sync.WaitGroup
	for i := range shards {
		ch := make(chan jetstream.Msg, 16)
		shards[i] = ch
		wg.Go(func() {
			for m := range ch {
				if stopping.Load() {
					_ = m.Nak()
					continue
				}
				mctx, cancel := context.WithTimeout(hctx, budget)
				keep := keepInProgress(m, ackWait/2)
				d := handle(mctx, m)
				keep.stop()
				cancel()
				if d > 0 {
					h.hold(m, d, func() { send(ch, m) })
				}
			}
		})
	}
	// A deleted consumer ends consuming. The server says so to a pending
	// pull request; a pull sent after the deletion finds no responder, so
	// then the consumer is looked up.
	deleted := make(chan struct{})
	var deletedOnce sync.Once
	var checking atomic.Bool
	gone := func() { deletedOnce.Do(func() { close(deleted) }) }
	onErr := func(_ jetstream.ConsumeContext, err error) {
		s.consumeError(err)
		switch {
		case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound):
			gone()
		case errors.Is(err, nats.ErrNoResponders) && checking.CompareAndSwap(false, true):
			go func() {
				defer checking.Store(false)
				_, err := jsguard.DoValue(hctx, s.g, jsguard.NATSSubscribe, "consumer info "+cons.CachedInfo().Name,
					func(ctx context.Context) (*jetstream.ConsumerInfo, error) { return cons.Info(ctx) })
				if errors.Is(err, jetstream.ErrConsumerNotFound) {
					gone()
				}
			}()
		}
	}
	cc, err := jsguard.DoValue(ctx, s.g, jsguard.NATSSubscribe, "consume "+cons.CachedInfo().Stream+"/"+cons.CachedInfo().Name,
		func(context.Context) (jetstream.ConsumeContext, error) {
			return cons.Consume(func(m jetstream.Msg) {
				if ignore != nil && ignore(m) && !stopping.Load() {
					_ = m.Ack()
					return
				}
				f := fnv.New32a()
				f.Write([]byte(m.Subject()))
				send(shards[f.Sum32()%uint32(workers)], m)
			}, jetstream.ConsumeErrHandler(onErr),
				// A pull request outlives a process that dies (or, in a
				// cluster, its removal may not reach the consumer's leader
				// at once): messages sent to it wait AckWait and may be
				// sent to it again while it lasts. Short-lived pull
				// requests bound that.
				jetstream.PullExpiry(pullExpiry))
		})
	var runErr error
	if err == nil {
		select {
		case <-ctx.Done():
		case <-cc.Closed():
			runErr = errors.New("consumer stopped")
		case <-deleted:
			runErr = errors.New("consumer deleted")
		}
		// Drain rather than Stop while connected: messages nats.go has
		// already pulled still reach the callback, and the workers Nak
		// them, so another replica gets them at once instead of after
		// AckWait. Draining needs the server, so a disconnected consumer
		// just stops.
		stopping.Store(true)
		if s.js.Conn().IsConnected() && runErr == nil {
			cc.Drain()
		} else {
			cc.Stop()
		}
		<-cc.Closed()
	} else if ctx.Err() == nil {
		runErr = err // a stop while consuming was being set up is no error
	}
	h.stop()
	// Workers keep emptying the shards, so a callback blocked on a full
	// one returns and the lock is had.
	sendMu.Lock()
	sendClosed = true
	sendMu.Unlock()
	for _, ch := range shards {
		close(ch)
	}
	wg.Wait()
	return runErr
}

// holds are the messages consume holds in memory: fired timers that came
// ahead of their instant.
type holds struct {
	mu      sync.Mutex
	held    map[*time.Timer]jetstream.Msg
	stopped bool
}

// hold calls resume with m after d, unless stop comes first; after stop
// it naks m at once.
func (h *holds) hold(m jetstream.Msg, d time.Duration, resume func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		_ = m.Nak()
		return
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		h.mu.Lock()
		_, ok := h.held[t]
		delete(h.held, t)
		h.mu.Unlock()
		if ok {
			resume()
		}
	})
	h.held[t] = m
}

// stop naks every held message, so that another replica takes it now.
func (h *holds) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	for t, m := range h.held {
		t.Stop() // a callback that runs already finds m gone
		_ = m.Nak()
	}
	clear(h.held)
}

func (s *Service) consumeError(err error) {
	s.stats.consumeErrors.Add(1)
	s.log.Warn("kvapprovals: consumer error", "err", err)
	if s.hooks.OnConsumeError != nil {
		s.hooks.OnConsumeError(err)
	}
}

// settle acks msg when err is nil, and otherwise asks for a redelivery.
func (s *Service) settle(msg jetstream.Msg, err error) {
	var wait errRetryAfter
	switch {
	case err == nil:
		_ = msg.Ack()
	case errors.As(err, &wait):
		_ = msg.NakWithDelay(time.Duration(wait))
	default:
		var delivered uint64 = 1
		if md, mderr := msg.Metadata(); mderr == nil {
			delivered = md.NumDelivered
		}
		s.consumeError(fmt.Errorf("%s (delivery %d, will retry): %w", msg.Subject(), delivered, err))
		_ = msg.NakWithDelay(redeliveryDelay(delivered))
	}
}
