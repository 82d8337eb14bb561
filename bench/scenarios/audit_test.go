package scenarios

import (
	"context"
	"testing"
)

// BenchmarkAudit is scenario 6: events through auditstream.Publisher, on
// the live path and drained from the spool, next to raw PublishAsync to a
// plain stream on the same server. Each iteration handles 5,000 events per
// path; the ratios are guardian's events/s over raw's (targets: ≥ 50k/s
// live and ≥ 20k/s drain, absolute).
func BenchmarkAudit(b *testing.B) {
	ctx := context.Background()
	e, err := NewAuditEnv(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	const n = 5000
	var raw, pub, drain []float64
	for b.Loop() {
		r, err := e.Raw(e.Events(n))
		if err != nil {
			b.Fatal(err)
		}
		p, err := e.Publish(ctx, e.Events(n))
		if err != nil {
			b.Fatal(err)
		}
		_, d, err := e.Drain(ctx, e.Events(n))
		if err != nil {
			b.Fatal(err)
		}
		raw, pub, drain = append(raw, r), append(pub, p), append(drain, d)
	}
	b.ReportMetric(medianF(raw), "raw-events/s")
	b.ReportMetric(medianF(pub), "publish-events/s")
	b.ReportMetric(medianF(drain), "drain-events/s")
	b.ReportMetric(medianF(pub)/medianF(raw), "publish/raw")
	b.ReportMetric(medianF(drain)/medianF(raw), "drain/raw")
}

func TestAuditQuick(t *testing.T) {
	r, err := Audit(t.Context(), AuditConfig{Events: 1000, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range r.Rows() {
		t.Log(row)
	}
}
