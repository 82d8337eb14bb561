package auditstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/jsguard"
)

// kinds returns the distinct problem kinds of r.
func kinds(r Report) []ProblemKind {
	var out []ProblemKind
	for _, p := range r.Problems {
		if !slices.Contains(out, p.Kind) {
			out = append(out, p.Kind)
		}
	}
	return out
}

// liveTrail starts a server with an audit stream that allows deletes and
// updates (as an administrator could), a sealer sealing every 5 events or
// 100ms, and a publisher; it emits n events and waits until they are
// sealed.
func liveTrail(t *testing.T, n int) (jetstream.JetStream, jetstream.Stream, Config, *Publisher, string) {
	t.Helper()
	s := natstest.Run(t)
	_, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	sc := streamConfig(cfg)
	sc.DenyDelete, sc.DenyPurge = false, false
	st, err := js.CreateStream(t.Context(), sc)
	if err != nil {
		t.Fatal(err)
	}
	seed, pub := testSeed(t)
	cfg.SealSeed, cfg.SealEvery = seed, 5
	sealer, err := NewSealer(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	runInBackground(t, sealer.Run)
	p, err := NewPublisher(nil, js, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	emitSealed(t, js, cfg, p, pub, 0, n)
	return js, st, cfg, p, pub
}

// emitSealed emits events from..from+n-1 and waits until the stream holds
// them under seals.
func emitSealed(t *testing.T, js jetstream.JetStream, cfg Config, p *Publisher, pub string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		emitAll(t, p, eventSpec{i, "acme", "TIMEOUT_KV_GET"})
	}
	eventually(t, 10*time.Second, func() bool {
		r, err := Verify(t.Context(), js, cfg, pub)
		return err == nil && r.Unsealed.Events == 0
	}, "events sealed")
}

// TestVerifyLiveTrailCuts: on a live stream, a head cut by shortening
// MaxAge, a cut tail, a cut middle and a shortened retention are each
// reported; the untouched stream verifies.
func TestVerifyLiveTrailCuts(t *testing.T) {
	setMaxAge := func(t *testing.T, js jetstream.JetStream, st jetstream.Stream, d time.Duration) {
		t.Helper()
		sc := st.CachedInfo().Config
		info, err := js.Stream(t.Context(), sc.Name)
		if err != nil {
			t.Fatal(err)
		}
		sc = info.CachedInfo().Config
		sc.MaxAge, sc.Duplicates = d, min(d, 2*time.Minute)
		if _, err := js.UpdateStream(t.Context(), sc); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("untouched", func(t *testing.T) {
		js, _, cfg, _, pub := liveTrail(t, 20)
		r, err := Verify(t.Context(), js, cfg, pub, WithRetention(90*24*time.Hour))
		if err != nil || !r.OK() || r.Events != 20 {
			t.Fatalf("untouched: %v, %+v", err, r)
		}
		// Without events the sealer seals empty ranges, which verify.
		eventually(t, 10*time.Second, func() bool {
			r2, err := Verify(t.Context(), js, cfg, pub)
			return err == nil && r2.Seals >= r.Seals+3
		}, "empty seals")
		r, err = Verify(t.Context(), js, cfg, pub, WithRetention(90*24*time.Hour))
		if err != nil || !r.OK() || r.Events != 20 || r.RangesVerified != len(r.Ranges) {
			t.Fatalf("untouched, with empty seals: %v, %+v", err, r)
		}
	})
	t.Run("head cut by a short MaxAge, then restored", func(t *testing.T) {
		js, st, cfg, p, pub := liveTrail(t, 20)
		setMaxAge(t, js, st, time.Second)
		eventually(t, 10*time.Second, func() bool {
			info, err := js.Stream(t.Context(), cfg.Stream)
			return err == nil && info.CachedInfo().State.FirstSeq > 20
		}, "MaxAge removed the first events")
		setMaxAge(t, js, st, 90*24*time.Hour)
		emitSealed(t, js, cfg, p, pub, 100, 10)
		r, err := Verify(t.Context(), js, cfg, pub)
		if err != nil {
			t.Fatal(err)
		}
		if k := kinds(r); !slices.Contains(k, MissingHead) {
			t.Fatalf("head cut: kinds %v, want missing_head: %v", k, r.Problems)
		}
	})
	t.Run("retention shortened", func(t *testing.T) {
		js, st, cfg, _, pub := liveTrail(t, 10)
		setMaxAge(t, js, st, time.Hour)
		r, err := Verify(t.Context(), js, cfg, pub)
		if err != nil {
			t.Fatal(err)
		}
		if k := kinds(r); !slices.Equal(k, []ProblemKind{RetentionChanged}) {
			t.Fatalf("retention shortened: kinds %v, want retention_changed: %v", k, r.Problems)
		}
		// A seal made after the change records it too; with the expected
		// retention given, the shortened stream is reported even then.
		r, err = Verify(t.Context(), js, cfg, pub, WithRetention(90*24*time.Hour))
		if err != nil || r.OK() {
			t.Fatalf("with WithRetention: %v, %v", err, r.Problems)
		}
	})
	t.Run("tail cut", func(t *testing.T) {
		js, st, cfg, _, pub := liveTrail(t, 20)
		info, err := js.Stream(t.Context(), cfg.Stream)
		if err != nil {
			t.Fatal(err)
		}
		last := info.CachedInfo().State.LastSeq
		for seq := last - 6; seq <= last; seq++ {
			if err := st.DeleteMsg(t.Context(), seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				t.Fatal(err)
			}
		}
		r, err := Verify(t.Context(), js, cfg, pub)
		if err != nil {
			t.Fatal(err)
		}
		if k := kinds(r); !slices.Contains(k, Missing) {
			t.Fatalf("tail cut: kinds %v, want missing: %v", k, r.Problems)
		}
	})
	t.Run("middle cut", func(t *testing.T) {
		js, st, cfg, _, pub := liveTrail(t, 20)
		for seq := uint64(6); seq <= 9; seq++ {
			if err := st.DeleteMsg(t.Context(), seq); err != nil {
				t.Fatal(err)
			}
		}
		r, err := Verify(t.Context(), js, cfg, pub)
		if err != nil {
			t.Fatal(err)
		}
		if k := kinds(r); !slices.Contains(k, Missing) {
			t.Fatalf("middle cut: kinds %v, want missing: %v", k, r.Problems)
		}
	})
	t.Run("no sealer for longer than an interval", func(t *testing.T) {
		js, _, cfg, _, pub := liveTrail(t, 5)
		r, err := Verify(t.Context(), js, cfg, pub, WithVerifyTime(time.Now().Add(5*time.Minute)))
		if err != nil {
			t.Fatal(err)
		}
		if k := kinds(r); !slices.Equal(k, []ProblemKind{MissingTail}) {
			t.Fatalf("stale seal: kinds %v, want missing_tail: %v", k, r.Problems)
		}
	})
}

// sinkFunc is a jsguard.Sink from a function.
type sinkFunc func(context.Context, jsguard.Event) error

func (f sinkFunc) Emit(ctx context.Context, e jsguard.Event) error { return f(ctx, e) }

// TestSealerSkipsForgedSeal: a forged message on the seal subject, claiming
// to seal far ahead, does not make the sealer skip events: it is reported
// once (log, Forged, an AUDIT_SEAL_FORGED event) and sealing goes on from
// the last valid seal. A replayed old seal is treated the same way.
func TestSealerSkipsForgedSeal(t *testing.T) {
	for _, forge := range []string{"another key", "replayed seal"} {
		t.Run(forge, func(t *testing.T) {
			s := natstest.Run(t)
			_, js := natstest.Connect(t, s)
			cfg := testConfig(t)
			if _, err := Ensure(t.Context(), nil, js, cfg); err != nil {
				t.Fatal(err)
			}
			seed, pub := testSeed(t)
			cfg.SealSeed, cfg.SealEvery = seed, 5
			var mu sync.Mutex
			var audits []jsguard.Event
			g, err := jsguard.New(jsguard.WithSink(sinkFunc(func(_ context.Context, e jsguard.Event) error {
				mu.Lock()
				defer mu.Unlock()
				audits = append(audits, e)
				return nil
			})))
			if err != nil {
				t.Fatal(err)
			}
			p, err := NewPublisher(nil, js, cfg, quiet)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			sealer, err := NewSealer(g, js, cfg, quiet)
			if err != nil {
				t.Fatal(err)
			}
			stop := runInBackground(t, sealer.Run)
			emitSealed(t, js, cfg, p, pub, 0, 10)
			stop()

			// The forgery: a seal that claims to cover far more than was
			// sealed, so that a sealer trusting it would skip what follows.
			var data []byte
			switch forge {
			case "another key":
				otherSeed, _ := otherKey(t)
				fcfg := cfg
				fcfg.SealSeed = otherSeed
				forger, err := NewSealer(nil, js, fcfg, quiet)
				if err != nil {
					t.Fatal(err)
				}
				data, err = forger.makeSeal(chainState{next: 1}, newRangeHash(), 1000, streamConfig(cfg), time.Now())
				if err != nil {
					t.Fatal(err)
				}
				var sl seal
				_ = json.Unmarshal(data, &sl)
				if sl.LastSeq != 1000 {
					t.Fatalf("forged seal: %+v", sl)
				}
			case "replayed seal":
				first, err := js.Stream(t.Context(), cfg.Stream)
				if err != nil {
					t.Fatal(err)
				}
				m, err := first.GetMsg(t.Context(), 1, jetstream.WithGetMsgSubject(cfg.SealSubject()))
				if err != nil {
					t.Fatal(err)
				}
				data = m.Data
			}
			ack, err := js.Publish(t.Context(), cfg.SealSubject(), data)
			if err != nil {
				t.Fatal(err)
			}
			forgedSeq := ack.Sequence
			for i := 10; i < 20; i++ {
				emitAll(t, p, eventSpec{i, "acme", "TIMEOUT_KV_GET"})
			}
			stop = runInBackground(t, sealer.Run)
			defer stop()
			var r Report
			eventually(t, 10*time.Second, func() bool {
				r, err = Verify(t.Context(), js, cfg, pub)
				return err == nil && r.Unsealed.Events == 0 && r.Events >= 20
			}, "events after the forged seal sealed")
			covered := 0
			for _, rg := range r.Ranges {
				if rg.Verified {
					covered += rg.Events
				}
			}
			if covered != 20 {
				t.Errorf("verified ranges cover %d events, want 20: %+v", covered, r.Ranges)
			}
			bad := slices.IndexFunc(r.Problems, func(p Problem) bool { return p.Seq == forgedSeq })
			if bad < 0 || len(r.Problems) != 1 {
				t.Errorf("problems %v, want one, at the forged seal %d", r.Problems, forgedSeq)
			}
			if sealer.Forged() != 1 {
				t.Errorf("Forged() = %d, want 1", sealer.Forged())
			}
			mu.Lock()
			defer mu.Unlock()
			if len(audits) != 1 || audits[0].Code != ForgedSealCode || audits[0].AdditionalContext["seq"] != fmt.Sprint(forgedSeq) {
				t.Errorf("audit events %+v, want one %s for seq %d", audits, ForgedSealCode, forgedSeq)
			}
		})
	}
}

// levelGuard returns a guard whose T5 budget is t5 (the other levels below
// it, in order) and whose OnCall hook holds the first read of the stream
// for hold, so that the T5 deadline passes while a scan is under way (as
// a slow server would; the abandon grace lets the held read return). Its
// audit events are recorded.
func levelGuard(t *testing.T, t5, hold time.Duration) (*jsguard.Guard, *[]jsguard.Event) {
	t.Helper()
	p := jsguard.DefaultPolicy()
	for l, d := jsguard.T5, t5; l >= jsguard.T1; l, d = l-1, d/2 {
		p.Budgets[l.Category()] = d
	}
	var (
		mu   sync.Mutex
		evs  []jsguard.Event
		once sync.Once
	)
	g, err := jsguard.New(jsguard.WithPolicy(p), jsguard.WithAbandonGrace(2*hold),
		jsguard.WithSink(jsguard.SinkFunc(func(_ context.Context, e jsguard.Event) error {
			mu.Lock()
			evs = append(evs, e)
			mu.Unlock()
			return nil
		})),
		jsguard.WithHooks(jsguard.Hooks{OnCall: func(ci jsguard.CallInfo) {
			if strings.HasPrefix(ci.Operation, "read stream") {
				once.Do(func() { time.Sleep(hold) })
			}
		}}))
	if err != nil {
		t.Fatal(err)
	}
	return g, &evs
}

// TestVerifyAborted: a verification that runs out of its T5 budget
// returns what it verified so far, flagged Aborted, with no error; the
// report's Err names it as incomplete, and the timeout is one
// TIMEOUT_T5_COMPLEX event with fallback_used.
func TestVerifyAborted(t *testing.T) {
	js, _, cfg, _, pub := liveTrail(t, 1000)
	g, evs := levelGuard(t, 200*time.Millisecond, 300*time.Millisecond)
	r, err := Verify(t.Context(), js, cfg, pub, WithGuard(g))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Aborted || r.OK() || !errors.Is(r.Err(), ErrIncomplete) || len(r.Problems) != 0 {
		t.Errorf("report aborted %v, ok %v, err %v, problems %v", r.Aborted, r.OK(), r.Err(), r.Problems)
	}
	if r.Events == 0 || r.Events >= 1000 || r.LastSeq == 0 {
		t.Errorf("verified %d events up to seq %d: want the first batch only", r.Events, r.LastSeq)
	}
	if len(*evs) != 1 || (*evs)[0].Code != "TIMEOUT_T5_COMPLEX" || !(*evs)[0].FallbackUsed || (*evs)[0].Level != "T5" {
		t.Errorf("events %+v, want one T5 timeout with fallback_used", *evs)
	}
	// The same trail with time to spare verifies whole.
	r, err = Verify(t.Context(), js, cfg, pub)
	if err != nil || !r.OK() || r.Aborted || r.Events != 1000 {
		t.Errorf("full verify: %+v, %v", r, err)
	}
}

// TestStatsAborted: counting that runs out of its T5 budget returns the
// counts so far, flagged Aborted, with To after the last event counted.
func TestStatsAborted(t *testing.T) {
	js, _, cfg, _, _ := liveTrail(t, 1000)
	g, evs := levelGuard(t, 200*time.Millisecond, 300*time.Millisecond)
	c, err := Stats(t.Context(), js, cfg, StatsOptions{Window: time.Hour, Guard: g})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Aborted || c.Total == 0 || c.Total >= 1000 || !c.To.After(c.From) {
		t.Errorf("counts aborted %v total %d from %s to %s: want a partial count", c.Aborted, c.Total, c.From, c.To)
	}
	if len(*evs) != 1 || (*evs)[0].Code != "TIMEOUT_T5_COMPLEX" || !(*evs)[0].FallbackUsed {
		t.Errorf("events %+v", *evs)
	}
	full, err := Stats(t.Context(), js, cfg, StatsOptions{Window: time.Hour})
	if err != nil || full.Aborted || full.Total != 1000 {
		t.Errorf("full stats: total %d aborted %v, %v", full.Total, full.Aborted, err)
	}
}
