// Command knowledge-base shows the T1–T5 timeout hierarchy of
// github.com/jsguardian/guardian/pkg/jsguard on the use case it was made
// for: answering a question from a layered knowledge base held in NATS.
//
//	go run ./examples/knowledge-base
//
// It starts an embedded nats-server (or uses -server), stores a knowledge
// base in a JetStream Object Store (a core layer and optional layers of
// files), and answers a request under the hierarchy, with a source made
// deliberately slow in places:
//
//	T5 complex   answer the request (load, then answer each question)
//	T4 full      load the core and the optional layers
//	T3 layer     load one layer's files
//	T2 file      read one file from the Object Store
//	T1 cache     look the file up in a (slow, remote) cache first
//
// It prints each audit event as it is emitted, then what degraded and why.
// Nothing hangs: the request returns within T5's budget whatever the
// source does.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// The knowledge base: layer → files. "core" is required; the others are
// optional.
var layers = map[string][]string{
	"core":      {"overview.md", "concepts.md"},
	"guides":    {"install.md", "tuning.md", "upgrade.md"},
	"reference": {"api.md", "config.md", "metrics.md"},
	"history":   numbered("release", 40),
	"archive":   {"2019.md"},
}

// slow is how long the source takes per file; everything else takes 20ms.
var slow = map[string]time.Duration{
	"guides/tuning.md": 800 * time.Millisecond, // T2 gives up at 500ms: fallback content
	"history/*":        450 * time.Millisecond, // 40 files, 8 at a time: T3 gives up at 2s
}

// stuck names files whose reads ignore their deadline altogether (a
// legacy client): T4 gives up on their layer at 5s.
var stuck = map[string]bool{"archive/2019.md": true}

// slowCache is how long the remote cache takes per lookup, by file.
var slowCache = map[string]time.Duration{"core/overview.md": 300 * time.Millisecond} // T1 gives up at 100ms

func numbered(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%02d.md", prefix, i+1)
	}
	return out
}

func main() {
	log.SetFlags(0)
	if err := run(os.Args[1:], os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run is the program: it parses args and writes its report to out.
func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("knowledge-base", flag.ContinueOnError)
	url := fs.String("server", "", "NATS URL (default: start an embedded nats-server)")
	questions := fs.Int("questions", 4, "how many questions the request asks; each takes 1.5s to answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	out = &lockedWriter{w: out} // audit events come from concurrent calls
	if *url == "" {
		s, stop, err := embedded()
		if err != nil {
			return err
		}
		defer stop()
		*url = s
	}

	g, err := jsguard.New(jsguard.WithSink(jsguard.SinkFunc(func(_ context.Context, e jsguard.Event) error {
		fmt.Fprintf(out, "  audit %-20s %-5s fallback_used=%-5v after %5.2fs  %s\n", e.Code, e.Level, e.FallbackUsed, e.ElapsedSeconds, e.Operation)
		return nil
	})))
	if err != nil {
		return err
	}
	ctx := context.Background()
	nc, err := g.Connect(ctx, *url, nats.Name("knowledge-base example"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	store, err := fill(ctx, g, js)
	if err != nil {
		return err
	}

	kb := &knowledgeBase{g: g, store: store, cache: newCache()}
	fmt.Fprintf(out, "answering %d questions under T5 (%s); the budgets are T1 %s, T2 %s, T3 %s, T4 %s:\n", *questions,
		g.Budget(jsguard.T5Complex), g.Budget(jsguard.T1Cache), g.Budget(jsguard.T2File), g.Budget(jsguard.T3Layer), g.Budget(jsguard.T4Full))
	start := time.Now()
	sum, err := kb.answer(ctx, *questions)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nreturned after %.1fs\n", time.Since(start).Seconds())
	fmt.Fprintf(out, "summary: %s\n", sum.Value)
	if sum.Aborted {
		fmt.Fprintf(out, "T5 aborted the request at its budget and returned the summary above\n")
	}
	fmt.Fprintf(out, "\nwhat degraded, and why:\n")
	for _, d := range sum.Degraded {
		if d.Cause != nil {
			fmt.Fprintf(out, "  %s (event %s)\n", d, d.Cause.EventID)
		} else {
			fmt.Fprintf(out, "  %s\n", d)
		}
	}
	return nil
}

// embedded starts a nats-server with JetStream in a temporary directory.
func embedded() (string, func(), error) {
	dir, err := os.MkdirTemp("", "guardian-kb")
	if err != nil {
		return "", nil, err
	}
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoSigs: true})
	if err != nil {
		return "", nil, err
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		return "", nil, fmt.Errorf("nats-server did not start")
	}
	return s.ClientURL(), func() { s.Shutdown(); s.WaitForShutdown(); os.RemoveAll(dir) }, nil
}

// fill stores the knowledge base in the KB object store, one object per
// file named layer/file.
func fill(ctx context.Context, g *jsguard.Guard, js jetstream.JetStream) (jetstream.ObjectStore, error) {
	store, err := jsguard.DoValue(ctx, g, jsguard.NATSStreamCreate, "object store KB", func(ctx context.Context) (jetstream.ObjectStore, error) {
		return js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "KB", Description: "guardian knowledge-base example"})
	})
	if err != nil {
		return nil, err
	}
	for layer, files := range layers {
		for _, f := range files {
			name := layer + "/" + f
			err := g.Do(ctx, jsguard.KVPut, "object put KB/"+name, func(ctx context.Context) error {
				_, err := store.PutString(ctx, name, "# "+name+"\n\nWhat the knowledge base says about "+strings.TrimSuffix(f, ".md")+".\n")
				return err
			})
			if err != nil {
				return nil, err
			}
		}
	}
	return store, nil
}

type knowledgeBase struct {
	g     *jsguard.Guard
	store jetstream.ObjectStore
	cache *cache
}

// loaded is the knowledge base as one request sees it.
type loaded = jsguard.Whole[[]string, jsguard.Partial[string]]

// answer is the request, T5: load the knowledge base, then answer each
// question; out of time, it returns what it did so far.
func (kb *knowledgeBase) answer(ctx context.Context, questions int) (jsguard.Summary[string], error) {
	return jsguard.Complex(ctx, kb.g, "answer request", func(ctx context.Context, progress func(string)) (string, error) {
		progress("nothing done yet")
		w, err := kb.load(ctx)
		if err != nil {
			return "", err
		}
		did := fmt.Sprintf("loaded the core (%d files) and %d of %d optional layers", len(w.Core), len(w.Layers), len(layers)-1)
		progress(did)
		for q := 1; q <= questions; q++ {
			select { // answering takes a while
			case <-time.After(1500 * time.Millisecond):
			case <-ctx.Done():
				return "", ctx.Err()
			}
			progress(fmt.Sprintf("%s; answered %d of %d questions", did, q, questions))
		}
		return fmt.Sprintf("%s; answered all %d questions", did, questions), nil
	})
}

// load is T4: the core and, at the same time, the optional layers.
func (kb *knowledgeBase) load(ctx context.Context) (loaded, error) {
	var optional []jsguard.Part[jsguard.Partial[string]]
	for _, name := range []string{"guides", "reference", "history", "archive"} {
		if name == "archive" {
			// A layer read by a legacy client, without a T3 budget of
			// its own: only T4 bounds it.
			optional = append(optional, jsguard.Part[jsguard.Partial[string]]{Name: name, Load: func(ctx context.Context) (jsguard.Partial[string], error) {
				v, err := kb.source(ctx, "archive/2019.md")
				return jsguard.Partial[string]{Parts: []jsguard.Named[string]{{Name: "2019.md", Value: v}}}, err
			}})
			continue
		}
		optional = append(optional, jsguard.Part[jsguard.Partial[string]]{Name: name, Load: func(ctx context.Context) (jsguard.Partial[string], error) {
			return kb.layer(ctx, name)
		}})
	}
	return jsguard.Full(ctx, kb.g, "load knowledge base", func(ctx context.Context) ([]string, error) {
		core, err := kb.layer(ctx, "core")
		if err != nil {
			return nil, err
		}
		if core.Partial {
			return nil, fmt.Errorf("core layer incomplete, missing %v", core.Missing)
		}
		var out []string
		for _, p := range core.Parts {
			out = append(out, p.Value)
		}
		return out, nil
	}, optional)
}

// layer is T3: a layer's files, eight at a time.
func (kb *knowledgeBase) layer(ctx context.Context, name string) (jsguard.Partial[string], error) {
	var parts []jsguard.Part[string]
	for _, f := range layers[name] {
		parts = append(parts, jsguard.Part[string]{Name: f, Load: func(ctx context.Context) (string, error) {
			r, err := kb.file(ctx, name+"/"+f)
			return r.Value, err
		}})
	}
	return jsguard.Layer(ctx, kb.g, "layer "+name, parts)
}

// file is T2: the cache (T1), else the Object Store; out of time, a note
// that the file is unavailable.
func (kb *knowledgeBase) file(ctx context.Context, name string) (jsguard.Result[string], error) {
	return jsguard.File(ctx, kb.g, "read "+name, func(ctx context.Context) (string, error) {
		r, err := jsguard.Cached(ctx, kb.g, "cache "+name, func(ctx context.Context) (string, bool, error) {
			return kb.cache.get(ctx, name)
		}, func(ctx context.Context) (string, error) {
			return kb.source(ctx, name)
		})
		if err == nil {
			kb.cache.put(name, r.Value)
		}
		return r.Value, err
	}, func(context.Context, *jsguard.TimeoutError) (string, error) {
		return "(" + name + " is unavailable right now)", nil
	})
}

// source reads a file from the Object Store, at the speed the slow and
// stuck tables give it.
func (kb *knowledgeBase) source(ctx context.Context, name string) (string, error) {
	layer, _, _ := strings.Cut(name, "/")
	d, ok := slow[name]
	if !ok {
		d, ok = slow[layer+"/*"]
	}
	if !ok {
		d = 20 * time.Millisecond
	}
	if stuck[name] {
		time.Sleep(time.Minute) // ignores its context
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return kb.store.GetString(ctx, name)
}

// cache stands for a cache on another machine: lookups take 10ms, some
// much longer (slowCache).
type cache struct {
	mu sync.Mutex
	m  map[string]string
}

func newCache() *cache {
	return &cache{m: map[string]string{"core/overview.md": "# core/overview.md (cached)"}}
}

func (c *cache) get(ctx context.Context, name string) (string, bool, error) {
	d, ok := slowCache[name]
	if !ok {
		d = 10 * time.Millisecond
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return "", false, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[name]
	return v, ok, nil
}

func (c *cache) put(name, v string) {
	c.mu.Lock()
	c.m[name] = v
	c.mu.Unlock()
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
