package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// wired holds what wire built: the long-running parts and what run needs
// at shutdown.
type wired struct {
	parts     []part
	approvals *kvapprovals.Service
	publisher *auditstream.Publisher
	// consumers are the durable consumers the expirer and notifier parts
	// run, for /readyz and the lag metrics.
	consumers []*consumerRef
}

// auditStream returns the auditstream config the environment describes.
func (c *config) auditStream() auditstream.Config {
	a := auditstream.DefaultConfig()
	a.Replicas = c.Replicas
	a.MaxAge = c.Audit.MaxAge
	a.Duplicates = c.Audit.Duplicates
	a.SpoolDir = filepath.Join(c.DataDir, "audit-spool")
	a.SpoolMaxBytes = c.Audit.SpoolMaxBytes
	a.SealEvery = c.Audit.SealEvery
	a.SealInterval = c.Audit.SealInterval
	a.SealSeed = c.Audit.SealSeed
	a.AlertWindow = c.Audit.AlertWindow
	a.AlertThreshold = c.Audit.AlertThreshold
	return a
}

// approvalsConfig returns the kvapprovals config the environment describes.
func (c *config) approvalsConfig() kvapprovals.Config {
	k := kvapprovals.DefaultConfig()
	a := c.Approval
	k.DefaultTimeout = a.DefaultTimeout
	k.MinTimeout = a.MinTimeout
	k.MaxTimeout = a.MaxTimeout
	k.GracePeriod = a.GracePeriod
	k.SendTimeoutWarnings = a.SendWarnings
	k.WarningBefore = a.WarningBefore
	k.MaxPending = a.MaxPending
	k.Retention = a.Retention
	// The events' duplicate window is kept within a short retention (its
	// floor, MaxTimeout + grace + 10m, still exceeds the notifier's
	// redelivery horizon).
	k.EventsDuplicates = min(k.EventsDuplicates, a.Retention)
	k.MaxOutage = a.MaxOutage
	k.SweepInterval = a.SweepInterval
	k.RequireReason = a.RequireReason
	k.AllowSelfApproval = a.AllowSelfApproval
	k.Identity = kvapprovals.IdentityMode(c.Identity)
	k.Replicas = c.Replicas
	return k
}

// wire ensures streams and buckets and builds the long-running parts.
func wire(ctx context.Context, cfg *config, g *jsguard.Guard, js jetstream.JetStream, log *slog.Logger, reg *prometheus.Registry, m *metrics) (*wired, error) {
	w := &wired{}
	// Audit: stream, publisher (the guard's sink), drainer, sealer, alerts.
	acfg := cfg.auditStream()
	if err := provision(ctx, log, "audit stream", func(ctx context.Context) error {
		// Ensure sends no update when the stream keeps at least what acfg
		// asks (guardian's shipped NATS user may not update it), and fails
		// rather than start on a stream that keeps less.
		_, err := auditstream.Ensure(ctx, g, js, acfg, auditstream.WithLogger(log.With("component", "audit")))
		return err
	}); err != nil {
		return nil, fmt.Errorf("audit stream: %w", err)
	}
	pub, err := auditstream.NewPublisher(g, js, acfg, auditstream.WithLogger(log.With("component", "audit")))
	if err != nil {
		return nil, fmt.Errorf("audit publisher: %w", err)
	}
	spool, _ := filepath.Abs(acfg.SpoolDir)
	if _, set := os.LookupEnv("GUARDIAN_DATA_DIR"); !set && !cfg.embeddedMode() {
		log.Warn("audit spool in the working directory: GUARDIAN_DATA_DIR is not set; set it to a directory that survives restarts",
			"spool_dir", spool)
	} else {
		log.Info("audit spool", "spool_dir", spool, "spooled_bytes", pub.Stats().SpoolBytes)
	}
	g.SetSink(pub)
	w.publisher = pub
	w.parts = append(w.parts, part{"audit-drainer", pub.Run})
	registerPublisherMetrics(reg, pub)
	if acfg.SealSeed != "" {
		sealer, err := auditstream.NewSealer(g, js, acfg, auditstream.WithLogger(log.With("component", "sealer")))
		if err != nil {
			return nil, fmt.Errorf("audit sealer: %w", err)
		}
		log.Info("audit seals on", "subject", acfg.SealSubject(), "public_key", sealer.PublicKey())
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "guardian_audit_seal_forged_total",
			Help: "Messages on the seal subject that were not a valid continuation of the seal chain (forged or replayed seals)."},
			func() float64 { return float64(sealer.Forged()) }))
		w.parts = append(w.parts, part{"audit-sealer", sealer.Run})
	}
	if acfg.AlertThreshold > 0 {
		alerter, err := auditstream.NewAlerter(g, js, acfg, auditstream.WithLogger(log.With("component", "alerts")))
		if err != nil {
			return nil, fmt.Errorf("audit alerts: %w", err)
		}
		w.parts = append(w.parts, part{"audit-alerts", alerter.Run})
	}

	// Policy: the bucket, when it holds a policy, wins over the environment.
	var pkv *jsguard.KV
	err = provision(ctx, log, "policy bucket", func(ctx context.Context) (err error) {
		pkv, err = jsguard.EnsurePolicyBucket(ctx, g, js, cfg.Replicas)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("policy bucket: %w", err)
	}
	cache := policyCache{path: filepath.Join(cfg.DataDir, "policy-cache.json"), log: log}
	started := time.Now()
	store := jsguard.NewPolicyStore(g, pkv, jsguard.WithOnApply(func(p *jsguard.Policy, e jetstream.KeyValueEntry) {
		cache.store(p)
		if e.Created().After(started.Add(-policyAuditSlack)) {
			g.Emit(ctx, policyChangedEvent(pkv.Bucket(), p, e))
		}
	}))
	p, from := loadPolicy(ctx, g, store, cache)
	if p != nil {
		if err := g.SetPolicy(*p); err != nil {
			log.Error("stored policy is invalid; keeping the environment's", "from", from, "err", err)
		} else {
			log.Info("policy loaded", "from", from)
		}
	} else {
		log.Info("policy from the environment", "because", from)
	}
	w.parts = append(w.parts, part{"policy-watch", store.Run})

	// Latency histograms for 'guardian policy suggest'.
	if cfg.LatencyInterval > 0 {
		if err := provision(ctx, log, "latency stream", func(ctx context.Context) error {
			_, err := g.EnsureStream(ctx, js, latencyStreamConfig(cfg.Replicas))
			return err
		}); err != nil {
			return nil, fmt.Errorf("latency stream: %w", err)
		}
		w.parts = append(w.parts, part{"latency", latencyPublisher(g, js, cfg.InstanceID, cfg.LatencyInterval, log)})
	}

	// Approvals: buckets, events stream, expirer, notifier.
	acfgApprovals := cfg.approvalsConfig()
	approvalOpts := []kvapprovals.Option{
		kvapprovals.WithRules(pkv),
		kvapprovals.WithLogger(log.With("component", "approvals")),
		kvapprovals.WithHooks(kvapprovals.Hooks{
			OnTransition: func(_ string, to kvapprovals.Status, warning bool) {
				if warning {
					m.transitions.WithLabelValues("warning").Inc()
					return
				}
				m.transitions.WithLabelValues(string(to)).Inc()
			},
			OnExpired: func(l time.Duration) { m.lateness.Observe(l.Seconds()) },
			OnOutage: func(o kvapprovals.Outage) {
				log.Warn("expirer was down longer than GUARDIAN_APPROVAL_MAX_OUTAGE; timers that fired meanwhile are handled now and the start sweep expires overdue approvals", "outage", fmt.Sprintf("%+v", o))
			},
			OnConsumeError: func(err error) { log.Warn("approvals consumer", "err", err) },
			OnNotificationFailed: func(e kvapprovals.Event, err error) {
				log.Error("notification failed after all attempts", "event", e.MsgID(), "err", err)
			},
		}),
	}
	var svc *kvapprovals.Service
	err = provision(ctx, log, "approval buckets and events stream", func(ctx context.Context) (err error) {
		svc, err = kvapprovals.Open(ctx, g, js, acfgApprovals, approvalOpts...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	w.approvals = svc
	var nopts []kvapprovals.ConsumerOption
	if cfg.Approval.WebhookURL != "" {
		nopts = append(nopts, kvapprovals.WithWebhook(kvapprovals.Webhook{URL: cfg.Approval.WebhookURL}))
	}
	expirer := &consumerRef{name: "expirer", stream: acfgApprovals.TimersStream, durable: acfgApprovals.ExpirerDurable}
	notifier := &consumerRef{name: "notifier", stream: "KV_" + acfgApprovals.RecordsBucket, durable: acfgApprovals.NotifierDurable}
	w.consumers = []*consumerRef{expirer, notifier}
	w.parts = append(w.parts,
		part{"expirer", expirer.track(svc.Expirer().Run)},
		part{"notifier", notifier.track(svc.Notifier(nopts...).Run)},
	)
	reg.MustRegister(newLagCollector(g, js, w.consumers, lagBudget))
	return w, nil
}

func registerPublisherMetrics(reg *prometheus.Registry, pub *auditstream.Publisher) {
	stat := func(f func(auditstream.PublisherStats) float64) func() float64 {
		return func() float64 { return f(pub.Stats()) }
	}
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "guardian_audit_published_total", Help: "Audit events the stream acknowledged on first sending."},
			stat(func(s auditstream.PublisherStats) float64 { return float64(s.Published) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "guardian_audit_spooled_total", Help: "Audit events written to the on-disk spool because NATS could not take them."},
			stat(func(s auditstream.PublisherStats) float64 { return float64(s.Spooled) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "guardian_audit_drained_total", Help: "Spooled audit events delivered later."},
			stat(func(s auditstream.PublisherStats) float64 { return float64(s.Drained) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "guardian_audit_dropped_total", Help: "Audit events lost: spool full, publisher closed or invalid."},
			stat(func(s auditstream.PublisherStats) float64 { return float64(s.Dropped) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "guardian_audit_skipped_total", Help: "Spooled audit events not published again because the stream already held them."},
			stat(func(s auditstream.PublisherStats) float64 { return float64(s.Skipped) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "guardian_audit_spool_sync_errors_total", Help: "Failed fsyncs of the audit spool."},
			stat(func(s auditstream.PublisherStats) float64 { return float64(s.SyncErrors) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "guardian_audit_spool_bytes", Help: "Size of the audit spool on disk."},
			stat(func(s auditstream.PublisherStats) float64 { return float64(s.SpoolBytes) })),
	)
}

// provisionLimit bounds how long start-up keeps retrying the creation of a
// stream or bucket while the cluster is not ready.
const provisionLimit = 2 * time.Minute

// PolicyChangedCode is the audit code of a change of the stored policy.
const PolicyChangedCode = "AUDIT_POLICY_CHANGED"

// policyAuditSlack: a policy revision stored this long before this process
// started is audited by it too (it may have been written while it
// started); older ones were audited by the guardians running then.
const policyAuditSlack = 10 * time.Second

// policyChangedEvent is the audit event of a stored policy revision that
// a guardian applied (p nil: the key was deleted). Its id depends on the
// revision and its time only, so that every replica emits the same event
// and the audit stream stores it once.
func policyChangedEvent(bucket string, p *jsguard.Policy, e jetstream.KeyValueEntry) jsguard.Event {
	details := map[string]string{"bucket": bucket, "key": e.Key(), "revision": strconv.FormatUint(e.Revision(), 10)}
	if p != nil {
		if b, err := json.Marshal(p); err == nil {
			details["policy"] = string(b)
		}
	} else {
		details["removed"] = "true"
	}
	at := e.Created().UTC()
	return jsguard.Event{
		Code:              PolicyChangedCode,
		Operation:         fmt.Sprintf("policy %s/%s revision %d", bucket, e.Key(), e.Revision()),
		AdditionalContext: details,
		StartedAt:         at,
		Timestamp:         at,
	}
}

// loadPolicy finds the policy to start with, along the T1–T5 hierarchy:
// the one stored in the bucket (a T2 read), which is the authority; when
// the bucket does not answer within T2's budget (or cannot be read), the
// local copy of the policy this guardian last applied (the fallback
// content); else none (the environment's, which the guard holds already).
// It never waits longer than T2's budget, whatever the policy's strategy:
// the policy watch applies the stored policy as soon as the bucket
// answers. It returns the policy (nil: keep the environment's) and where
// it came from.
func loadPolicy(ctx context.Context, g *jsguard.Guard, store *jsguard.PolicyStore, cache policyCache) (*jsguard.Policy, string) {
	type found struct {
		p    *jsguard.Policy
		from string
	}
	fromCache := func(why string) found {
		if p, ok := cache.load(); ok {
			return found{p, "cache " + cache.path + " (" + why + "; the policy watch applies the stored policy once it answers)"}
		}
		return found{nil, why + "; the policy watch applies the stored policy once it answers"}
	}
	r, err := jsguard.File(ctx, g, "policy load", func(ctx context.Context) (found, error) {
		p, err := store.Load(ctx)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			cache.store(nil) // the bucket says: none
			return found{nil, "no policy is stored in the bucket"}, nil
		case err != nil:
			return found{}, err
		}
		cache.store(&p)
		return found{&p, "bucket"}, nil
	}, func(_ context.Context, te *jsguard.TimeoutError) (found, error) {
		return fromCache("the bucket did not answer within " + te.Budget.String()), nil
	}, jsguard.WithStrategy(jsguard.Graceful))
	if err != nil {
		r.Value = fromCache("the bucket could not be read: " + err.Error())
	}
	return r.Value.p, r.Value.from
}

// policyCache is the local copy of the last policy applied from the
// bucket, the fallback of the policy load at start.
type policyCache struct {
	path string
	log  *slog.Logger
}

// load returns the cached policy when there is a valid one.
func (c policyCache) load() (*jsguard.Policy, bool) {
	b, err := os.ReadFile(c.path)
	if err != nil {
		return nil, false
	}
	var p jsguard.Policy
	if err := json.Unmarshal(b, &p); err != nil || p.Validate() != nil {
		return nil, false
	}
	return &p, true
}

// store writes p as the cached policy, or removes the cache when p is nil
// (the stored policy was deleted: the next start takes the environment's).
// Failures are logged: the cache only speeds up a start.
func (c policyCache) store(p *jsguard.Policy) {
	if p == nil {
		if err := os.Remove(c.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("policy cache", "path", c.path, "err", err)
		}
		return
	}
	b, err := json.Marshal(p)
	if err == nil {
		err = os.MkdirAll(filepath.Dir(c.path), 0o750)
	}
	if err == nil {
		tmp := c.path + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, c.path)
		}
	}
	if err != nil {
		c.log.Warn("policy cache", "path", c.path, "err", err)
	}
}

// provision runs ensure, retrying with backoff while it fails for a reason
// that passes once the cluster is ready: a timeout (a replicated stream
// created by two guardians at once can leave both without a reply), no
// responders, JetStream answering 503 (no meta leader yet) or finding no
// peers for the replicas (the leader does not know them all yet). Every
// retry is logged. It returns ensure's last error, or ctx's.
func provision(ctx context.Context, log *slog.Logger, what string, ensure func(context.Context) error) error {
	deadline := time.Now().Add(provisionLimit)
	wait := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := ensure(ctx)
		if err == nil || !transient(err) || time.Now().Add(wait).After(deadline) {
			return err
		}
		log.Warn("provisioning failed; retrying", "what", what, "attempt", attempt, "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// transient reports whether a provisioning error may pass by itself. A
// refusal by NATS permissions (such as an update of the audit stream,
// which guardian's shipped user may not send) is not.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jsguard.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		(errors.As(err, &apiErr) && (apiErr.Code == 503 || apiErr.ErrorCode == jsErrNoPeers))
}

// jsErrNoPeers is JetStream's "no suitable peers for placement": a
// replicated stream created right after the cluster elected its meta leader,
// before the leader knows every peer.
const jsErrNoPeers jetstream.ErrorCode = 10005
