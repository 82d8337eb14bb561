package main

import (
	"time"

	"go.temporal.io/sdk/workflow"
)

const (
	// workflowName is the name the Approval workflow is registered under.
	workflowName = "Approval"
	// decisionSignal is the signal that carries a person's decision.
	decisionSignal = "decision"
	// expiredResult is what Approval returns when its timer wins.
	expiredResult = "expired"
)

// ApprovalInput is the input of the Approval workflow.
type ApprovalInput struct {
	// Due is the absolute time at which the approval expires.
	Due time.Time
}

// approval waits for whichever comes first: a "decision" signal or a timer
// that fires at in.Due. It returns "decided:<decision>" or "expired". When
// the decision wins, the timer is cancelled, as the SDK samples do.
func approval(ctx workflow.Context, in ApprovalInput) (string, error) {
	timerCtx, cancelTimer := workflow.WithCancel(ctx)
	timer := workflow.NewTimer(timerCtx, in.Due.Sub(workflow.Now(ctx)))

	var result string
	sel := workflow.NewSelector(ctx)
	sel.AddReceive(workflow.GetSignalChannel(ctx, decisionSignal), func(ch workflow.ReceiveChannel, _ bool) {
		var decision string
		ch.Receive(ctx, &decision)
		result = "decided:" + decision
		cancelTimer()
	})
	sel.AddFuture(timer, func(workflow.Future) {
		result = expiredResult
	})
	sel.Select(ctx)
	return result, nil
}
