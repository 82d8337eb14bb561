package scenarios

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/bench/internal/natsrv"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// KVGetEnv is a bucket of Keys keys on an embedded server, read raw and
// through jsguard's KV wrapper.
type KVGetEnv struct {
	srv  *server.Server
	nc   *nats.Conn
	dir  string
	Raw  jetstream.KeyValue
	KV   *jsguard.KV
	Keys []string
}

// NewKVGetEnv starts a server in a temporary directory and fills a bucket
// with n keys of 128-byte values.
func NewKVGetEnv(ctx context.Context, n int) (*KVGetEnv, error) {
	dir, err := os.MkdirTemp("", "guardian-bench-kvget-")
	if err != nil {
		return nil, err
	}
	e := &KVGetEnv{dir: dir}
	if e.srv, err = natsrv.Start(dir, -1); err != nil {
		e.Close()
		return nil, err
	}
	var js jetstream.JetStream
	if e.nc, js, err = natsrv.Connect(e.srv.ClientURL()); err != nil {
		e.Close()
		return nil, err
	}
	if e.Raw, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "BENCH_GET", Storage: jetstream.FileStorage}); err != nil {
		e.Close()
		return nil, err
	}
	g, err := jsguard.New()
	if err != nil {
		e.Close()
		return nil, err
	}
	e.KV = g.KV(e.Raw)
	val := make([]byte, 128)
	for i := range val {
		val[i] = 'a' + byte(i%26)
	}
	e.Keys = make([]string, n)
	for i := range e.Keys {
		e.Keys[i] = fmt.Sprintf("tenant.k%06d", i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if _, err := e.Raw.Put(ctx, e.Keys[i], val); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		e.Close()
		return nil, fmt.Errorf("fill bucket: %w", err)
	}
	return e, nil
}

// Close stops the server and removes its directory.
func (e *KVGetEnv) Close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.srv != nil {
		natsrv.Stop(e.srv)
	}
	os.RemoveAll(e.dir)
}

// GetFunc reads one key; it returns the error of the read.
type GetFunc func(ctx context.Context, key string) error

// Variants returns raw kv.Get, the guarded Get by default, and the guarded
// Get WithInline.
func (e *KVGetEnv) Variants() (names []string, fns []GetFunc) {
	return []string{"raw kv.Get", "jsguard KV.Get", "jsguard KV.Get WithInline"}, []GetFunc{
		func(ctx context.Context, k string) error { _, err := e.Raw.Get(ctx, k); return err },
		func(ctx context.Context, k string) error { _, err := e.KV.Get(ctx, k); return err },
		func(ctx context.Context, k string) error {
			_, err := e.KV.Get(ctx, k, jsguard.WithInline())
			return err
		},
	}
}

// Block runs per gets of random keys on each of goroutines goroutines with
// fn and returns how long the block took.
func (e *KVGetEnv) Block(ctx context.Context, fn GetFunc, goroutines, per int, seed uint64) (time.Duration, error) {
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	start := time.Now()
	for w := range goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for range per {
				if err := fn(ctx, e.Keys[r.IntN(len(e.Keys))]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	close(errs)
	return el, <-errs
}

// KVGetConfig sizes scenario 2.
type KVGetConfig struct {
	Keys       int   // keys in the bucket (10,000)
	Goroutines []int // concurrency levels (1 and 8)
	Rounds     int   // interleaved rounds per level
	BlockGets  int   // gets per block, split over the goroutines
}

// KVGetLevel is the outcome at one concurrency level.
type KVGetLevel struct {
	Goroutines int
	Names      []string
	OpsPerSec  []float64
	// CPUPerOp is this process's CPU time (server and client) per get.
	CPUPerOp []time.Duration
	// VsRaw is each variant's median, over the rounds, of its throughput
	// over raw's in the same round (adjacent blocks).
	VsRaw []float64
}

// KVGetResult is scenario 2's outcome.
type KVGetResult struct {
	Levels []KVGetLevel
	Rounds int // interleaved rounds per level
}

// KVGet measures scenario 2: raw and guarded Gets of random keys,
// interleaved in blocks whose order rotates each round; each variant's
// throughput is its total gets over its total time.
func KVGet(ctx context.Context, cfg KVGetConfig) (KVGetResult, error) {
	e, err := NewKVGetEnv(ctx, cfg.Keys)
	if err != nil {
		return KVGetResult{}, err
	}
	defer e.Close()
	names, fns := e.Variants()
	res := KVGetResult{Rounds: cfg.Rounds}
	for _, g := range cfg.Goroutines {
		per := max(cfg.BlockGets/g, 1)
		for _, fn := range fns { // warm up
			if _, err := e.Block(ctx, fn, g, per/4+1, 99); err != nil {
				return res, err
			}
		}
		took := make([]time.Duration, len(fns))
		cpu := make([]time.Duration, len(fns))
		rounds := make([][]time.Duration, len(fns))
		for r := range cfg.Rounds {
			for k := range fns {
				i := (r + k) % len(fns)
				c0 := selfCPU()
				el, err := e.Block(ctx, fns[i], g, per, uint64(r))
				if err != nil {
					return res, fmt.Errorf("%s: %w", names[i], err)
				}
				cpu[i] += selfCPU() - c0
				took[i] += el
				rounds[i] = append(rounds[i], el)
			}
		}
		lv := KVGetLevel{Goroutines: g, Names: names}
		ops := float64(g * per * cfg.Rounds)
		for i, t := range took {
			var rs []float64
			for r := range rounds[i] {
				rs = append(rs, float64(rounds[0][r])/float64(rounds[i][r]))
			}
			lv.VsRaw = append(lv.VsRaw, medianF(rs))
			lv.OpsPerSec = append(lv.OpsPerSec, ops/t.Seconds())
			lv.CPUPerOp = append(lv.CPUPerOp, time.Duration(float64(cpu[i])/ops))
		}
		res.Levels = append(res.Levels, lv)
	}
	return res, nil
}

// Rows returns scenario 2's rows: each guarded variant's throughput over
// raw's, target ≥ 0.97.
func (r KVGetResult) Rows() []Row {
	var rows []Row
	for _, lv := range r.Levels {
		sc := fmt.Sprintf("2 KV Get, %d goroutine(s)", lv.Goroutines)
		raw := lv.OpsPerSec[0]
		for i := 1; i < len(lv.Names); i++ {
			rows = append(rows, Row{sc, lv.Names[i] + " vs raw kv.Get", rate(lv.OpsPerSec[i]), rate(raw),
				fmt.Sprintf("%.3f", lv.VsRaw[i]), "≥ 0.97", check(lv.VsRaw[i] >= 0.97)})
			rows = append(rows, Row{sc, lv.Names[i] + ": CPU time per get (server + client)", fmt.Sprintf("%.1f µs", float64(lv.CPUPerOp[i])/1e3),
				fmt.Sprintf("%.1f µs", float64(lv.CPUPerOp[0])/1e3), fmt.Sprintf("%.2f×", float64(lv.CPUPerOp[i])/float64(lv.CPUPerOp[0])), "", Info})
		}
	}
	return rows
}
