package jsguard_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// printSink prints each audit event; a real service uses auditstream's
// publisher.
var printSink = jsguard.SinkFunc(func(_ context.Context, e jsguard.Event) error {
	fmt.Printf("audit: %s %q budget=%gs fallback_used=%v\n", e.Code, e.Operation, e.TimeoutSeconds, e.FallbackUsed)
	return nil
})

func ExampleGuard_Do() {
	p := jsguard.DefaultPolicy()
	p.Budgets[jsguard.KVGet] = 50 * time.Millisecond
	g, err := jsguard.New(jsguard.WithPolicy(p), jsguard.WithSink(printSink))
	if err != nil {
		panic(err)
	}
	ctx := jsguard.WithTenant(context.Background(), "acme")
	err = g.Do(ctx, jsguard.KVGet, "kv get GUARDIAN_APPROVALS/acme.a1", func(ctx context.Context) error {
		<-ctx.Done() // a server that does not answer
		return ctx.Err()
	})

	var te *jsguard.TimeoutError
	if errors.As(err, &te) {
		fmt.Println("error:", te.Code, "budget", te.Budget)
	}
	fmt.Println("deadline exceeded:", errors.Is(err, context.DeadlineExceeded))
	// Output:
	// audit: TIMEOUT_KV_GET "kv get GUARDIAN_APPROVALS/acme.a1" budget=0.05s fallback_used=false
	// error: TIMEOUT_KV_GET budget 50ms
	// deadline exceeded: true
}

func ExampleDoFallback() {
	g, err := jsguard.New(jsguard.WithSink(printSink)) // strategy graceful
	if err != nil {
		panic(err)
	}
	render := func(ctx context.Context) (string, error) {
		select {
		case <-time.After(time.Second): // slower than the 20ms allowed below
			return "full page", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	r, err := jsguard.DoFallback(context.Background(), g, jsguard.T3Layer, "render layer", render,
		func(_ context.Context, cause *jsguard.TimeoutError) (string, error) {
			return "partial page", nil // T3's default fallback: a partial result
		}, jsguard.WithBudget(20*time.Millisecond))
	if err != nil {
		panic(err)
	}
	fmt.Println(r.Value, "degraded:", r.Degraded, "level:", r.Level(), "fallback:", r.Level().DefaultFallback())

	// Under strict, the fallback is not used and the timeout returns.
	_, err = jsguard.DoFallback(context.Background(), g, jsguard.T3Layer, "render layer", render,
		func(context.Context, *jsguard.TimeoutError) (string, error) { return "partial page", nil },
		jsguard.WithBudget(20*time.Millisecond), jsguard.WithStrategy(jsguard.Strict))
	fmt.Println("strict:", errors.Is(err, jsguard.ErrTimeout))
	// Output:
	// audit: TIMEOUT_T3_LAYER "render layer" budget=0.02s fallback_used=true
	// partial page degraded: true level: T3 fallback: partial result
	// audit: TIMEOUT_T3_LAYER "render layer" budget=0.02s fallback_used=false
	// strict: true
}

func ExampleCache() {
	g, err := jsguard.New(jsguard.WithSink(printSink))
	if err != nil {
		panic(err)
	}
	// Values are fresh for 0s: every Get loads, and the last loaded value
	// stands in when a load times out (for up to the policy's MaxStaleAge).
	prices := jsguard.NewCache[string, int](g, jsguard.T1Cache, 0)
	ctx := context.Background()

	r, _ := prices.Get(ctx, "widget", func(context.Context) (int, error) { return 42, nil })
	fmt.Println("loaded:", r.Value, "degraded:", r.Degraded)

	slow := func(ctx context.Context) (int, error) { <-ctx.Done(); return 0, ctx.Err() }
	r, err = prices.Get(ctx, "widget", slow)
	fmt.Println("stale:", r.Value, "degraded:", r.Degraded, "cause:", r.Cause.Code, "err:", err)

	_, err = prices.Get(ctx, "gadget", slow) // nothing cached to fall back on
	fmt.Println("uncached:", errors.Is(err, jsguard.ErrTimeout))
	// Output:
	// loaded: 42 degraded: false
	// audit: TIMEOUT_T1_CACHE "cache load widget" budget=0.1s fallback_used=true
	// stale: 42 degraded: true cause: TIMEOUT_T1_CACHE err: <nil>
	// audit: TIMEOUT_T1_CACHE "cache load gadget" budget=0.1s fallback_used=false
	// uncached: true
}

// exampleServer starts an embedded JetStream server in a temporary
// directory and returns its URL and a function that stops it.
func exampleServer() (url string, stop func()) {
	dir, err := os.MkdirTemp("", "jsguard-example")
	if err != nil {
		panic(err)
	}
	s, err := server.NewServer(natstest.Options(dir))
	if err != nil {
		panic(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		panic("server not ready")
	}
	return s.ClientURL(), func() { s.Shutdown(); s.WaitForShutdown(); os.RemoveAll(dir) }
}

func ExampleKV() {
	// An embedded JetStream server, as guardian serve starts without a URL.
	url, stop := exampleServer()
	defer stop()

	g, err := jsguard.New()
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	nc, err := g.Connect(ctx, url) // under TIMEOUT_NATS_CONNECT's budget
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	kv, err := g.EnsureKV(ctx, js, jetstream.KeyValueConfig{Bucket: "GUARDIAN_EXAMPLE"})
	if err != nil {
		panic(err)
	}

	rev, err := kv.Create(ctx, "acme.a1", []byte("pending")) // under KV_PUT
	if err != nil {
		panic(err)
	}
	if _, err := kv.Update(ctx, "acme.a1", []byte("approved"), rev); err != nil {
		panic(err)
	}
	_, err = kv.Update(ctx, "acme.a1", []byte("denied"), rev) // lost compare-and-set
	fmt.Println("second decision:", errors.Is(err, jetstream.ErrKeyRevisionMismatch))

	e, err := kv.Get(ctx, "acme.a1") // under KV_GET
	if err != nil {
		panic(err)
	}
	fmt.Println(e.Key(), "=", string(e.Value()))

	_, err = kv.Get(ctx, "acme.missing")
	fmt.Println("missing:", errors.Is(err, jetstream.ErrKeyNotFound), "timeout:", errors.Is(err, jsguard.ErrTimeout))
	// Output:
	// second decision: true
	// acme.a1 = approved
	// missing: true timeout: false
}

func ExamplePolicyStore_Update() {
	url, stop := exampleServer()
	defer stop()
	g, err := jsguard.New()
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	nc, err := g.Connect(ctx, url)
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	kv, err := g.EnsureKV(ctx, js, jsguard.PolicyBucketConfig(jsguard.PolicyBucket, 1))
	if err != nil {
		panic(err)
	}
	store := jsguard.NewPolicyStore(g, kv)

	// Change one budget of the stored policy (the default policy when none
	// is stored yet); a concurrent change to another entry is kept.
	p, err := store.Update(ctx, jsguard.DefaultPolicy(), func(p *jsguard.Policy) error {
		p.Budgets[jsguard.KVGet] = 3 * time.Second
		return nil
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("KV get budget:", p.Budget(jsguard.KVGet))

	// A change that does not validate writes nothing.
	_, err = store.Update(ctx, jsguard.DefaultPolicy(), func(p *jsguard.Policy) error {
		p.Budgets[jsguard.KVGet] = -time.Second
		return nil
	})
	fmt.Println("invalid:", errors.Is(err, jsguard.ErrInvalidPolicy))
	// Output:
	// KV get budget: 3s
	// invalid: true
}

// fastLevels returns a guard whose T1–T5 budgets are a tenth of the
// defaults, so that the examples below run quickly.
func fastLevels() *jsguard.Guard {
	p := jsguard.DefaultPolicy()
	for l := jsguard.T1; l <= jsguard.T5; l++ {
		p.Budgets[l.Category()] /= 10
	}
	g, err := jsguard.New(jsguard.WithPolicy(p), jsguard.WithSink(printSink))
	if err != nil {
		panic(err)
	}
	return g
}

// slowly returns a loader that takes d, or gives up when its context ends.
func slowly(v string, d time.Duration) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		select {
		case <-time.After(d):
			return v, nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

func ExampleCached() {
	g := fastLevels() // T1 10ms
	stuckCache := func(ctx context.Context) (string, bool, error) { <-ctx.Done(); return "", false, ctx.Err() }
	r, err := jsguard.Cached(context.Background(), g, "cache get readme", stuckCache, slowly("from the source", 0))
	fmt.Println(r.Value, "degraded:", r.Degraded, "err:", err)
	// Output:
	// audit: TIMEOUT_T1_CACHE "cache get readme" budget=0.01s fallback_used=true
	// from the source degraded: true err: <nil>
}

func ExampleFile() {
	g := fastLevels() // T2 50ms
	r, err := jsguard.File(context.Background(), g, "read intro.md", slowly("# Intro", time.Second),
		func(context.Context, *jsguard.TimeoutError) (string, error) { return "(intro unavailable)", nil })
	fmt.Println(r.Value, "degraded:", r.Degraded, "err:", err)
	// Output:
	// audit: TIMEOUT_T2_FILE "read intro.md" budget=0.05s fallback_used=true
	// (intro unavailable) degraded: true err: <nil>
}

func ExampleLayer() {
	g := fastLevels() // T3 200ms
	r, err := jsguard.Layer(context.Background(), g, "layer guides", []jsguard.Part[string]{
		{Name: "install.md", Load: slowly("install", 0)},
		{Name: "tuning.md", Load: slowly("tuning", time.Second)},
	})
	fmt.Println(len(r.Parts), "loaded, partial:", r.Partial, "missing:", r.Missing, "err:", err)
	// Output:
	// audit: TIMEOUT_T3_LAYER "layer guides" budget=0.2s fallback_used=true
	// 1 loaded, partial: true missing: [tuning.md] err: <nil>
}

func ExampleFull() {
	g := fastLevels() // T4 500ms, T3 200ms
	layer := func(name string, d time.Duration) jsguard.Part[jsguard.Partial[string]] {
		return jsguard.Part[jsguard.Partial[string]]{Name: name, Load: func(ctx context.Context) (jsguard.Partial[string], error) {
			return jsguard.Layer(ctx, g, "layer "+name, []jsguard.Part[string]{{Name: name + ".md", Load: slowly(name, d)}})
		}}
	}
	w, err := jsguard.Full(context.Background(), g, "load kb", slowly("core", 0), []jsguard.Part[jsguard.Partial[string]]{
		layer("api", 0),
		layer("history", time.Second), // its layer gives up at 200ms
	})
	fmt.Println(w.Core, "core only:", w.CoreOnly, "layers:", len(w.Layers), "err:", err)
	for _, d := range w.Degraded {
		fmt.Println("degraded:", d)
	}
	// Output:
	// audit: TIMEOUT_T3_LAYER "layer history" budget=0.2s fallback_used=true
	// core core only: false layers: 2 err: <nil>
	// degraded: T3 layer history: partial result, missing [history.md]
}

func ExampleComplex() {
	g := fastLevels() // T5 1s
	s, err := jsguard.Complex(context.Background(), g, "verify archive", func(ctx context.Context, progress func(int)) (int, error) {
		for n := 0; ; n++ {
			if n == 3 {
				<-ctx.Done() // the fourth item hangs
				return n, ctx.Err()
			}
			progress(n + 1) // items checked so far
		}
	})
	fmt.Println("checked:", s.Value, "aborted:", s.Aborted, "err:", err)
	// Output:
	// audit: TIMEOUT_T5_COMPLEX "verify archive" budget=1s fallback_used=true
	// checked: 3 aborted: true err: <nil>
}

func ExampleBreakerConfig() {
	p := jsguard.DefaultPolicy()
	p.Budgets[jsguard.KVGet] = 10 * time.Millisecond
	b := jsguard.DefaultBreaker()
	b.MinCalls, b.TimeoutRate, b.Cooldown = 2, 1, time.Minute // open when 2 of 2 time out
	p.Breakers = map[jsguard.Category]jsguard.BreakerConfig{jsguard.KVGet: b}
	g, err := jsguard.New(jsguard.WithPolicy(p), jsguard.WithSink(printSink))
	if err != nil {
		panic(err)
	}
	stuck := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	for range 2 {
		_ = g.Do(context.Background(), jsguard.KVGet, "kv get b/k", stuck)
	}
	fmt.Println("circuit:", g.Circuit(jsguard.KVGet))
	err = g.Do(context.Background(), jsguard.KVGet, "kv get b/k", stuck) // not run
	fmt.Println("fail fast:", errors.Is(err, jsguard.ErrCircuitOpen))
	// Output:
	// audit: TIMEOUT_KV_GET "kv get b/k" budget=0.01s fallback_used=false
	// audit: TIMEOUT_KV_GET "kv get b/k" budget=0.01s fallback_used=false
	// audit: AUDIT_CIRCUIT_OPEN "circuit TIMEOUT_KV_GET open" budget=0s fallback_used=false
	// circuit: open
	// fail fast: true
}

func ExampleWithRequestTimeout() {
	// A request whose caller has 250ms left (set by Guard.Request, or by a
	// client in any language).
	h := nats.Header{}
	h.Set(jsguard.TimeoutHeader, "250")
	ctx, cancel := jsguard.WithRequestTimeout(context.Background(), h)
	defer cancel()
	d, _ := ctx.Deadline()
	fmt.Println("work at most:", time.Until(d).Round(50*time.Millisecond))
	// Output:
	// work at most: 250ms
}
