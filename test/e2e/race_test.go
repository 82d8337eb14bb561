package e2e

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// raceResult is what the two racing operators saw for one approval.
type raceResult struct {
	key                   string
	deadline              time.Time // expires_at + grace of the acknowledged record
	approve, deny         kvapprovals.Record
	approveErr, denyErr   error
	approveSent, denySent time.Time
}

// TestApproveExpireRace (scenario 3): for each approval an approve and a
// deny are sent at the same instant, within ±250 ms of expires_at + grace,
// through two guardian replicas, while the expirer fires at the same
// deadline. Each approval has exactly one outcome, and no decision is
// accepted after expires_at + grace.
func TestApproveExpireRace(t *testing.T) {
	skipShort(t)
	n := scale(1000, 10000)
	const grace = time.Second
	env := expiryEnv()
	env["GUARDIAN_APPROVAL_GRACE_PERIOD"] = grace.String()
	ns := startNATS(t, nil)
	g1 := startGuardian(t, "g1", ns.url, env)
	g2 := startGuardian(t, "g2", ns.url, env)
	nc1, js := connect(t, ns.url)
	nc2, _ := connect(t, ns.url)
	ca, cb := newClient(t, nc1, 10*time.Second), newClient(t, nc2, 10*time.Second)
	ctx := t.Context()

	results := make([]raceResult, n)
	var acked []string
	var mu sync.Mutex
	var races sync.WaitGroup
	var workers sync.WaitGroup
	next := make(chan int)
	start := time.Now()
	for range 16 {
		workers.Go(func() {
			for i := range next {
				tenant, id := "race", fmt.Sprintf("r%06d", i)
				timeout := time.Duration(1+i%2) * time.Second
				in := kvapprovals.RequestInput{ID: id, SessionID: "s-" + id, RequestedBy: "alice", Timeout: kvapprovals.Duration(timeout)}
				rec, _, err := requestRetry(ctx, ca, tenant, in, time.Now().Add(30*time.Second))
				if err != nil {
					t.Errorf("request %s: %v", id, err)
					continue
				}
				mu.Lock()
				acked = append(acked, rec.Key())
				mu.Unlock()
				res := &results[i]
				res.key, res.deadline = rec.Key(), rec.Deadline(grace)
				offset := time.Duration((i*7919)%501-250) * time.Millisecond
				at := res.deadline.Add(offset)
				races.Go(func() {
					time.Sleep(time.Until(at)) // fire at the planned instant
					var both sync.WaitGroup
					both.Go(func() {
						res.approveSent = time.Now()
						res.approve, res.approveErr = ca.Approve(ctx, tenant, kvapprovals.DecisionInput{ID: id, DecidedBy: "bob"})
					})
					both.Go(func() {
						res.denySent = time.Now()
						res.deny, res.denyErr = cb.Deny(ctx, tenant, kvapprovals.DecisionInput{ID: id, DecidedBy: "carol"})
					})
					both.Wait()
				})
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	workers.Wait()
	t.Logf("requested %d approvals in %s", n, ms(time.Since(start)))
	races.Wait()

	settled := waitSettled(t, js, n, time.Minute)
	l := readLedger(t, js)
	c := l.tally(acked, grace)
	t.Logf("approve-vs-expire: %s", &c)

	var (
		approved, denied, expired, inGrace, lateAccepted, sentLateAccepted, bothOK, wrongFinal, otherErr int
	)
	for i := range results {
		r := &results[i]
		if r.key == "" {
			continue
		}
		revs := l.revs[r.key]
		if len(revs) == 0 {
			continue // counted as missing
		}
		final := revs[len(revs)-1]
		aOK, dOK := r.approveErr == nil, r.denyErr == nil
		for _, err := range []error{r.approveErr, r.denyErr} {
			if err != nil && !errors.Is(err, kvapprovals.ErrExpired) && !errors.Is(err, kvapprovals.ErrAlreadyDecided) {
				otherErr++
				if otherErr <= 5 {
					t.Errorf("%s: unexpected error %v", r.key, err)
				}
			}
		}
		want := kvapprovals.StatusExpired
		switch {
		case aOK && dOK:
			bothOK++
		case aOK:
			want = kvapprovals.StatusApproved
		case dOK:
			want = kvapprovals.StatusDenied
		}
		if final.Status != want {
			wrongFinal++
			if wrongFinal <= 5 {
				t.Errorf("%s ended %s; approve err %v, deny err %v", r.key, final.Status, r.approveErr, r.denyErr)
			}
		}
		// A refusal names the state the approval really ended in.
		for _, err := range []error{r.approveErr, r.denyErr} {
			var ae *kvapprovals.APIError
			if errors.As(err, &ae) && ae.FinalStatus != "" && ae.FinalStatus != final.Status {
				t.Errorf("%s: refusal says final status %s, record says %s", r.key, ae.FinalStatus, final.Status)
			}
		}
		switch final.Status {
		case kvapprovals.StatusApproved:
			approved++
		case kvapprovals.StatusDenied:
			denied++
		case kvapprovals.StatusExpired:
			expired++
		}
		for _, acc := range []struct {
			ok   bool
			rec  kvapprovals.Record
			sent time.Time
		}{{aOK, r.approve, r.approveSent}, {dOK, r.deny, r.denySent}} {
			if !acc.ok {
				continue
			}
			if acc.rec.DecidedAt == nil || acc.rec.DecidedAt.After(r.deadline) {
				lateAccepted++
			} else if acc.rec.DecidedAt.After(acc.rec.ExpiresAt) {
				inGrace++
			}
			if acc.sent.After(r.deadline) {
				sentLateAccepted++
			}
		}
	}
	t.Logf("approve-vs-expire: %d approvals: approved %d, denied %d, expired %d; accepted within the grace period %d; "+
		"both decisions accepted %d; ACCEPTED AFTER expires_at+grace %d (sent after it %d); wrong final state %d",
		len(acked), approved, denied, expired, inGrace, bothOK, lateAccepted, sentLateAccepted, wrongFinal)
	if !settled {
		t.Errorf("not settled within 1m")
	}
	if len(acked) != n || c.Approvals != n {
		t.Errorf("%d approvals acknowledged, %d in the bucket, want %d", len(acked), c.Approvals, n)
	}
	if bothOK != 0 || lateAccepted != 0 || sentLateAccepted != 0 || wrongFinal != 0 {
		t.Errorf("both accepted %d, accepted late %d, sent late and accepted %d, wrong final %d: want all 0",
			bothOK, lateAccepted, sentLateAccepted, wrongFinal)
	}
	// The offsets straddle the deadline: both outcomes must occur, or the
	// race was not run.
	if approved+denied == 0 || expired == 0 {
		t.Errorf("decided %d, expired %d: the race did not straddle the deadline", approved+denied, expired)
	}
	assertExactlyOnce(t, &c)
	g1.assertAlive()
	g2.assertAlive()
}
