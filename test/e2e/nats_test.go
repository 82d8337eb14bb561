package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// natsServer is a test-owned single-node nats-server with file storage
// that can be stopped and started again on the same port and store.
type natsServer struct {
	t    *testing.T
	opts *server.Options
	srv  *server.Server
	url  string
}

// startNATS starts a JetStream server on a random loopback port with a
// fresh store; mutate, when given, adjusts its options first.
func startNATS(t *testing.T, mutate func(*server.Options)) *natsServer {
	t.Helper()
	opts := natstest.Options(t.TempDir())
	if mutate != nil {
		mutate(opts)
	}
	n := &natsServer{t: t, opts: opts}
	n.srv = natstest.Start(t, opts.Clone())
	port := n.srv.Addr().(*net.TCPAddr).Port
	n.opts.Port = port
	n.url = fmt.Sprintf("nats://127.0.0.1:%d", port)
	return n
}

// stop shuts the server down (its store stays).
func (n *natsServer) stop() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// start starts the server again with the same options, port and store.
func (n *natsServer) start() {
	n.t.Helper()
	n.srv = natstest.Start(n.t, n.opts.Clone())
}

// connect dials urls (comma-separated) with reconnects forever; the
// connection is closed when the test ends.
func connect(t testing.TB, urls string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.Name("e2e "+t.Name()))
	if err != nil {
		t.Fatalf("connect %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// newClient returns an API client whose requests give up after budget.
func newClient(t testing.TB, nc *nats.Conn, budget time.Duration) *kvapprovals.Client {
	t.Helper()
	p := jsguard.DefaultPolicy()
	p.Budgets[jsguard.APIRequest] = budget
	g, err := jsguard.New(jsguard.WithPolicy(p))
	if err != nil {
		t.Fatal(err)
	}
	return kvapprovals.NewClient(nc, kvapprovals.WithClientGuard(g))
}

// retryable reports whether a failed call may succeed when sent again:
// nobody answered, or the answer did not come in time.
func retryable(err error) bool {
	var ae *kvapprovals.APIError
	if errors.As(err, &ae) {
		return ae.Code >= 500
	}
	return errors.Is(err, kvapprovals.ErrUnavailable) || errors.Is(err, jsguard.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionReconnecting)
}

// requestRetry asks for an approval, sending the same request again (same
// id) while the failure is retryable and until is not reached. It returns
// the record and how many attempts it took.
func requestRetry(ctx context.Context, c *kvapprovals.Client, tenant string, in kvapprovals.RequestInput, until time.Time) (kvapprovals.Record, int, error) {
	for attempt := 1; ; attempt++ {
		r, err := c.Request(ctx, tenant, in)
		if err == nil || !retryable(err) || time.Now().After(until) || ctx.Err() != nil {
			return r, attempt, err
		}
		time.Sleep(50 * time.Millisecond) // pacing between attempts
	}
}

// decideRetry approves, denies or cancels id, sending it again while the
// failure is retryable. A retry that finds the approval already in the
// wanted state by the same decider counts as success: the earlier attempt
// landed although its reply was lost.
func decideRetry(ctx context.Context, c *kvapprovals.Client, tenant, id string, to kvapprovals.Status, by string, until time.Time) (kvapprovals.Record, int, error) {
	for attempt := 1; ; attempt++ {
		var r kvapprovals.Record
		var err error
		switch to {
		case kvapprovals.StatusApproved:
			r, err = c.Approve(ctx, tenant, kvapprovals.DecisionInput{ID: id, DecidedBy: by})
		case kvapprovals.StatusDenied:
			r, err = c.Deny(ctx, tenant, kvapprovals.DecisionInput{ID: id, DecidedBy: by})
		case kvapprovals.StatusCancelled:
			r, err = c.Cancel(ctx, tenant, kvapprovals.CancelInput{ID: id, CancelledBy: by})
		}
		var ae *kvapprovals.APIError
		if attempt > 1 && errors.As(err, &ae) && ae.Status == kvapprovals.APIAlreadyDecided && ae.FinalStatus == to {
			got, gerr := c.Get(ctx, tenant, id)
			if gerr == nil && got.Status == to && got.DecidedBy == by {
				return got, attempt, nil
			}
		}
		if err == nil || !retryable(err) || time.Now().After(until) || ctx.Err() != nil {
			return r, attempt, err
		}
		time.Sleep(50 * time.Millisecond) // pacing between attempts
	}
}

// streamState returns the state of a stream.
func streamState(t testing.TB, js jetstream.JetStream, name string) jetstream.StreamState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream info %s: %v", name, err)
	}
	return info.State
}

// subjectCounts returns the message count per subject of stream matching
// filter.
func subjectCounts(ctx context.Context, js jetstream.JetStream, stream, filter string) (map[string]uint64, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, err
	}
	return info.State.Subjects, nil
}

// consumerIdle reports whether a durable consumer has nothing pending and
// nothing awaiting an ack.
func consumerIdle(ctx context.Context, js jetstream.JetStream, stream, durable string) bool {
	c, err := js.Consumer(ctx, stream, durable)
	if err != nil {
		return false
	}
	info, err := c.Info(ctx)
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

// readStream hands fn every message of stream matching filter that is
// stored when it starts, in order.
func readStream(t testing.TB, js jetstream.JetStream, stream, filter string, fn func(jetstream.Msg)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject: filter, AckPolicy: jetstream.AckNonePolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		MemoryStorage: true, Replicas: 1, InactiveThreshold: time.Minute,
	})
	if err != nil {
		t.Fatalf("read %s: %v", stream, err)
	}
	defer func() { _ = s.DeleteConsumer(context.WithoutCancel(ctx), c.CachedInfo().Name) }()
	want := int(c.CachedInfo().NumPending)
	retries := 0
	for got := 0; got < want; {
		batch, err := c.Fetch(min(want-got, 1000), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("fetch %s: %v", stream, err)
		}
		n := 0
		for m := range batch.Messages() {
			fn(m)
			n++
		}
		if n == 0 && errors.Is(batch.Error(), nats.ErrNoResponders) && retries < 8 {
			// In a cluster the consumer may live on another server, whose
			// interest in its pull subject reaches ours a moment later.
			retries++
			time.Sleep(time.Duration(retries) * 20 * time.Millisecond)
			continue
		}
		if n == 0 {
			t.Fatalf("fetch %s %s: got %d of %d messages: %v", stream, filter, got, want, batch.Error())
		}
		got += n
	}
}

// poll calls cond every interval until it returns true or d passes; it
// reports whether cond became true.
func poll(d, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}
