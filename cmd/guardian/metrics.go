package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// metrics are guardian's own Prometheus metrics, fed by hooks.
type metrics struct {
	calls            *prometheus.CounterVec
	durations        *prometheus.HistogramVec
	timeouts         *prometheus.CounterVec
	abandoned        *prometheus.CounterVec
	sinkErrors       prometheus.Counter
	policyRejections prometheus.Counter
	transitions      *prometheus.CounterVec
	lateness         prometheus.Histogram
	circuit          *prometheus.GaugeVec
	circuitChanges   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_guarded_calls_total", Help: "Guarded calls by category and outcome (ok, error, timeout, abandoned, canceled, rejected: failed fast, circuit open).",
		}, []string{"category", "outcome"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "guardian_guarded_call_duration_seconds", Help: "Duration of guarded calls by category.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"category"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_timeouts_total", Help: "Timeout audit events by code.",
		}, []string{"code"}),
		abandoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_abandoned_calls_total", Help: "Guarded calls whose function ignored its context and was abandoned at the deadline.",
		}, []string{"category"}),
		sinkErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_audit_sink_errors_total", Help: "Timeout events the audit sink failed to take within its bound.",
		}),
		policyRejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_policy_rejections_total", Help: "Policy updates rejected because they did not validate.",
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_approvals_total", Help: "Approval transitions this process wrote, by the status they reached (pending for a new request, warning for a warning stamp).",
		}, []string{"status"}),
		lateness: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "guardian_approval_expiry_lateness_seconds", Help: "Time from expires_at + grace until an approval was marked expired.",
			Buckets: []float64{.05, .1, .2, .3, .4, .5, .75, 1, 2, 5, 10, 60},
		}),
		circuit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "guardian_circuit_state", Help: "State of a category's circuit breaker: 0 closed, 1 open, 2 half-open (only categories with a breaker).",
		}, []string{"category"}),
		circuitChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_circuit_changes_total", Help: "Circuit breaker state changes by category and the state reached.",
		}, []string{"category", "state"}),
	}
	reg.MustRegister(m.calls, m.durations, m.timeouts, m.abandoned, m.sinkErrors, m.policyRejections, m.transitions, m.lateness,
		m.circuit, m.circuitChanges)
	// Every known label value starts at 0, so that the series exist (and
	// rates and alerts work) before the first event.
	for _, c := range jsguard.Categories() {
		m.timeouts.WithLabelValues(c.Code())
		m.abandoned.WithLabelValues(string(c))
	}
	for _, st := range []kvapprovals.Status{kvapprovals.StatusPending, kvapprovals.StatusApproved, kvapprovals.StatusDenied,
		kvapprovals.StatusCancelled, kvapprovals.StatusExpired} {
		m.transitions.WithLabelValues(string(st))
	}
	m.transitions.WithLabelValues("warning")
	return m
}

// hooks returns jsguard hooks that feed the metrics.
func (m *metrics) hooks() jsguard.Hooks {
	return jsguard.Hooks{
		OnCall: func(ci jsguard.CallInfo) {
			cat := string(ci.Category)
			m.calls.WithLabelValues(cat, ci.Outcome.String()).Inc()
			if ci.Outcome != jsguard.Rejected { // it did not run
				m.durations.WithLabelValues(cat).Observe(ci.Duration.Seconds())
			}
			if ci.Outcome == jsguard.Abandoned {
				m.abandoned.WithLabelValues(cat).Inc()
			}
		},
		OnTimeout:        func(e jsguard.Event) { m.timeouts.WithLabelValues(e.Code).Inc() },
		OnSinkError:      func(jsguard.Event, error) { m.sinkErrors.Inc() },
		OnPolicyRejected: func(error) { m.policyRejections.Inc() },
		OnCircuit: func(c jsguard.Category, s jsguard.CircuitState) {
			m.circuit.WithLabelValues(string(c)).Set(float64(s))
			m.circuitChanges.WithLabelValues(string(c), s.String()).Inc()
		},
	}
}
