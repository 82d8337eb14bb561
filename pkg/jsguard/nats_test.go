package jsguard_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// fastPolicy gives every NATS and KV category the budget d, so that tests
// against an unresponsive server are quick.
func fastPolicy(d time.Duration) jsguard.Policy {
	return policyWith(map[jsguard.Category]time.Duration{
		jsguard.NATSConnect: d, jsguard.NATSPublish: d, jsguard.NATSSubscribe: d, jsguard.NATSStreamCreate: d,
		jsguard.KVCreate: d, jsguard.KVGet: d, jsguard.KVPut: d, jsguard.KVDelete: d, jsguard.APIRequest: d,
	})
}

func TestNATSWrappersSucceed(t *testing.T) {
	s := natstest.Run(t)
	g, sink := newGuard(t)
	ctx := t.Context()

	nc, err := g.Connect(ctx, s.ClientURL())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := g.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}}); err != nil {
		t.Fatalf("EnsureStream: %v", err)
	}
	if _, err := g.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>", "refunds.>"}}); err != nil {
		t.Fatalf("EnsureStream update: %v", err)
	}
	ack, err := g.Publish(ctx, js, "orders.1", []byte("one"), jetstream.WithMsgID("m1"))
	if err != nil || ack.Stream != "ORDERS" || ack.Sequence != 1 {
		t.Fatalf("Publish = %+v, %v", ack, err)
	}
	msg := nats.NewMsg("refunds.1")
	msg.Header.Set("X-Test", "yes")
	msg.Data = []byte("two")
	if ack, err := g.PublishMsg(ctx, js, msg); err != nil || ack.Sequence != 2 {
		t.Fatalf("PublishMsg = %+v, %v", ack, err)
	}
	if _, err := g.Publish(ctx, js, "nobody.listens", nil); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("Publish without a stream = %v, want jetstream.ErrNoStreamResponse", err)
	}
	cons, err := g.EnsureConsumer(ctx, js, "ORDERS", jetstream.ConsumerConfig{Durable: "worker", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("EnsureConsumer: %v", err)
	}
	if info := cons.CachedInfo(); info.NumPending != 2 {
		t.Fatalf("consumer pending %d, want 2", info.NumPending)
	}

	got := make(chan string, 1)
	sub, err := g.Subscribe(ctx, nc, "greet", func(m *nats.Msg) { got <- string(m.Data) })
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Unsubscribe()
	if err := nc.Publish("greet", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "hi" {
			t.Fatalf("received %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("subscription got nothing: the interest was not in place when Subscribe returned")
	}

	rsub, err := nc.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(append([]byte("re: "), m.Data...)) })
	if err != nil {
		t.Fatal(err)
	}
	defer rsub.Unsubscribe()
	reply, err := g.Request(ctx, nc, &nats.Msg{Subject: "echo", Data: []byte("ping")})
	if err != nil || string(reply.Data) != "re: ping" {
		t.Fatalf("Request = %v, %v", reply, err)
	}
	if _, err := g.Request(ctx, nc, &nats.Msg{Subject: "nobody.home"}); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("Request without responders = %v, want nats.ErrNoResponders", err)
	}

	kv, err := g.EnsureKV(ctx, js, jetstream.KeyValueConfig{Bucket: "B", History: 5})
	if err != nil {
		t.Fatalf("EnsureKV: %v", err)
	}
	if kv.Bucket() != "B" || kv.Raw() == nil {
		t.Fatalf("KV handle: bucket %q", kv.Bucket())
	}
	rev, err := kv.Create(ctx, "a", []byte("1"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := kv.Create(ctx, "a", []byte("again")); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("second Create = %v, want ErrKeyExists", err)
	}
	if e, err := kv.Get(ctx, "a"); err != nil || string(e.Value()) != "1" || e.Revision() != rev {
		t.Fatalf("Get = %v, %v", e, err)
	}
	rev2, err := kv.Update(ctx, "a", []byte("2"), rev)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if _, err := kv.Update(ctx, "a", []byte("3"), rev); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("stale Update = %v, want ErrKeyRevisionMismatch", err)
	}
	if _, err := kv.Put(ctx, "b", []byte("x")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if _, err := kv.Put(ctx, "c.d", []byte("y")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	keys, err := kv.Keys(ctx)
	if err != nil || strings.Join(keys, ",") != "a,b,c.d" {
		t.Fatalf("Keys = %v, %v", keys, err)
	}
	if keys, err := kv.Keys(ctx, "c.>"); err != nil || strings.Join(keys, ",") != "c.d" {
		t.Fatalf("Keys(c.>) = %v, %v", keys, err)
	}
	if err := kv.Delete(ctx, "b"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := kv.Get(ctx, "b"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Get of deleted key = %v, want ErrKeyNotFound", err)
	}
	if err := kv.Purge(ctx, "a", jetstream.LastRevision(rev2)); err != nil {
		t.Fatalf("Purge: %v", err)
	}
	if err := kv.Purge(ctx, "c.d"); err != nil {
		t.Fatalf("Purge: %v", err)
	}
	if _, err := kv.Keys(ctx); !errors.Is(err, jetstream.ErrNoKeysFound) {
		t.Fatalf("Keys of an empty bucket = %v, want ErrNoKeysFound", err)
	}
	if n := len(sink.events()); n != 0 {
		t.Fatalf("%d timeout events against a healthy server: %+v", n, sink.events())
	}
	for _, st := range g.Stats() {
		if st.Timeouts != 0 {
			t.Errorf("%s: %d timeouts against a healthy server", st.Category, st.Timeouts)
		}
	}
}

func TestRequestTimeout(t *testing.T) {
	s := natstest.Run(t)
	nc, _ := natstest.Connect(t, s)
	g, sink := newGuard(t, jsguard.WithPolicy(fastPolicy(150*time.Millisecond)))
	// A responder that never answers: the request has someone to wait for.
	sub, err := nc.Subscribe("slow.service", func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx := jsguard.WithTenant(t.Context(), "acme")
	start := time.Now()
	_, err = g.Request(ctx, nc, &nats.Msg{Subject: "slow.service", Data: []byte("?")})
	elapsed := time.Since(start)
	te := asTimeout(t, err)
	if te.Code != "TIMEOUT_API_REQUEST" || te.Operation != "request slow.service" || te.Budget != 150*time.Millisecond {
		t.Fatalf("TimeoutError = %+v", te)
	}
	if elapsed < 150*time.Millisecond || elapsed > 2*time.Second {
		t.Fatalf("Request returned after %s, want about the 150ms budget", elapsed)
	}
	if ev := sink.one(t); ev.Code != "TIMEOUT_API_REQUEST" || ev.TenantID != "acme" || ev.Abandoned {
		t.Fatalf("event = %+v", ev)
	}
}

func TestConnectTimeout(t *testing.T) {
	// A listener that accepts TCP but never speaks NATS.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns sync.WaitGroup
	held := make(chan net.Conn, 16)
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	})
	defer func() {
		ln.Close()
		conns.Wait()
		close(held)
		for c := range held {
			c.Close()
		}
	}()

	g, sink := newGuard(t, jsguard.WithPolicy(fastPolicy(200*time.Millisecond)))
	url := "nats://alice:hunter2@" + ln.Addr().String()
	start := time.Now()
	nc, err := g.Connect(t.Context(), url)
	elapsed := time.Since(start)
	if nc != nil {
		nc.Close()
		t.Fatal("Connect returned a connection to a silent listener")
	}
	te := asTimeout(t, err)
	if te.Code != "TIMEOUT_NATS_CONNECT" || elapsed > 2*time.Second {
		t.Fatalf("Connect = %v after %s, want TIMEOUT_NATS_CONNECT after about 200ms", err, elapsed)
	}
	ev := sink.one(t)
	if ev.Code != "TIMEOUT_NATS_CONNECT" || strings.Contains(ev.Operation, "hunter2") || strings.Contains(err.Error(), "hunter2") ||
		!strings.Contains(ev.Operation, "alice:***@127.0.0.1") {
		t.Fatalf("event operation %q / error %q: want the password redacted", ev.Operation, err)
	}
}

// TestConnectLateIsClosed: a dial that succeeds after the call gave up on it
// must not leak a connection.
func TestConnectLateIsClosed(t *testing.T) {
	s := natstest.Run(t)
	// A proxy that holds each connection for 600ms before relaying it, and
	// reports how many bytes the server sent once the client hung up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	relayed := make(chan int64, 4)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(stop)
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				go func() { <-stop; c.Close() }() // unblock the relay when the test ends
				time.Sleep(600 * time.Millisecond)
				up, err := net.Dial("tcp", s.Addr().String())
				if err != nil {
					relayed <- 0
					return
				}
				defer up.Close()
				go func() { _, _ = io.Copy(up, c); up.Close() }()
				n, _ := io.Copy(c, up) // ends when the client closes
				relayed <- n
			})
		}
	})

	g, sink := newGuard(t, jsguard.WithPolicy(fastPolicy(200*time.Millisecond)))
	_, err = g.Connect(t.Context(), "nats://"+ln.Addr().String(), nats.Timeout(5*time.Second))
	if asTimeout(t, err).Code != "TIMEOUT_NATS_CONNECT" || len(sink.events()) != 1 {
		t.Fatalf("Connect = %v", err)
	}
	// The dial completes about 400ms later; its connection must then close.
	select {
	case n := <-relayed:
		if n == 0 {
			t.Fatal("the late dial never reached the server")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the connection that arrived after the timeout was left open")
	}
}

// TestWrappersTimeOutWhenServerIsDown runs every wrapper against a server
// that went away, with 250ms budgets, and checks each times out with its
// category's code and one event.
func TestWrappersTimeOutWhenServerIsDown(t *testing.T) {
	s := natstest.Run(t)
	nc, js := natstest.Connect(t, s)
	g, sink := newGuard(t)
	ctx := t.Context()
	if _, err := g.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	kv, err := g.EnsureKV(ctx, js, jetstream.KeyValueConfig{Bucket: "B"})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(ctx, "k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}

	if err := g.SetPolicy(fastPolicy(250 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	s.Shutdown()
	s.WaitForShutdown()
	eventually(t, 5*time.Second, "the client notices the server is gone", nc.IsReconnecting)

	calls := []struct {
		name string
		code string
		call func() error
	}{
		{"Publish", "TIMEOUT_NATS_PUBLISH", func() error { _, err := g.Publish(ctx, js, "s.1", []byte("x")); return err }},
		{"PublishMsg", "TIMEOUT_NATS_PUBLISH", func() error { _, err := g.PublishMsg(ctx, js, &nats.Msg{Subject: "s.2"}); return err }},
		{"Subscribe", "TIMEOUT_NATS_SUBSCRIBE", func() error { _, err := g.Subscribe(ctx, nc, "x", func(*nats.Msg) {}); return err }},
		{"Request", "TIMEOUT_API_REQUEST", func() error { _, err := g.Request(ctx, nc, &nats.Msg{Subject: "svc"}); return err }},
		{"EnsureStream", "TIMEOUT_NATS_STREAM_CREATE", func() error {
			_, err := g.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}})
			return err
		}},
		{"EnsureConsumer", "TIMEOUT_NATS_SUBSCRIBE", func() error {
			_, err := g.EnsureConsumer(ctx, js, "S", jetstream.ConsumerConfig{Durable: "d"})
			return err
		}},
		{"EnsureKV", "TIMEOUT_KV_CREATE", func() error { _, err := g.EnsureKV(ctx, js, jetstream.KeyValueConfig{Bucket: "C"}); return err }},
		{"KV.Get", "TIMEOUT_KV_GET", func() error { _, err := kv.Get(ctx, "k"); return err }},
		{"KV.Keys", "TIMEOUT_KV_GET", func() error { _, err := kv.Keys(ctx); return err }},
		{"KV.Create", "TIMEOUT_KV_PUT", func() error { _, err := kv.Create(ctx, "n", nil); return err }},
		{"KV.Put", "TIMEOUT_KV_PUT", func() error { _, err := kv.Put(ctx, "k", nil); return err }},
		{"KV.Update", "TIMEOUT_KV_PUT", func() error { _, err := kv.Update(ctx, "k", nil, rev); return err }},
		{"KV.Delete", "TIMEOUT_KV_DELETE", func() error { return kv.Delete(ctx, "k") }},
		{"KV.Purge", "TIMEOUT_KV_DELETE", func() error { return kv.Purge(ctx, "k") }},
	}
	errs := make([]error, len(calls))
	took := make([]time.Duration, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Go(func() {
			start := time.Now()
			errs[i] = c.call()
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	byCode := map[string]int{}
	for _, ev := range sink.events() {
		byCode[ev.Code]++
	}
	wantByCode := map[string]int{}
	for i, c := range calls {
		wantByCode[c.code]++
		var te *jsguard.TimeoutError
		if !errors.As(errs[i], &te) || te.Code != c.code {
			t.Errorf("%s: err = %v, want %s", c.name, errs[i], c.code)
			continue
		}
		if took[i] < 250*time.Millisecond || took[i] > 3*time.Second {
			t.Errorf("%s returned after %s, want about the 250ms budget", c.name, took[i])
		}
	}
	for code, n := range wantByCode {
		if byCode[code] != n {
			t.Errorf("%d events with %s, want %d (all events: %v)", byCode[code], code, n, byCode)
		}
	}
}
