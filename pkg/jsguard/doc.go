// Package jsguard runs slow operations under explicit deadlines and leaves
// one deterministic audit event for every deadline that fires.
//
// A Guard holds a Policy, the timeout matrix: a budget per Category (the
// seed categories such as KVGet, whose audit code is TIMEOUT_KV_GET, the
// T1–T5 hierarchy levels, and categories added with Register). Guard.Do,
// DoValue and DoFallback run a function with a context whose deadline is
// the earliest of the caller's, the category's budget and a WithBudget
// override. They never retry. When the deadline fires they return a
// *TimeoutError, which matches ErrTimeout and context.DeadlineExceeded with
// errors.Is, and hand one Event to the guard's Sink; a function that ignores
// its context is abandoned at the deadline. A caller's own cancellation
// returns ctx.Err() and is not audited.
//
// DoFallback and Cache return degraded content instead of the error when
// the policy's strategy is graceful.
//
// The T1–T5 hierarchy has one function per level, each degrading in its
// own way when its budget runs out: Cached (T1, 100ms) skips the cache and
// goes on to the source, File (T2, 500ms) returns the caller's fallback
// content, Layer (T3, 2s) returns the parts that loaded flagged partial,
// Full (T4, 5s) returns the core flagged core-only, and Complex (T5, 10s)
// aborts and returns a summary of what was done. They nest: a child's
// deadline is clamped to its parent's remaining time, every result lists
// the Degradations beneath it, and each timeout is one audit event, from
// the outermost hierarchy call its deadline bounds, with its level and
// fallback_used. Under strict nothing degrades; under none the levels run
// without their budgets, bounded by the caller's deadline alone. The
// policy keeps the levels' budgets in order, T1 < T2 < T3 < T4 < T5. PolicyStore keeps the policy in a KV
// bucket and applies changes made there in every process while it runs.
//
// The NATS wrappers (Guard.Connect, Publish, Subscribe, Request,
// EnsureStream, EnsureConsumer, EnsureKV and the KV handle) run each call
// under its category. Each returns the nats.go error of the call, ctx.Err()
// when ctx is cancelled, or a *TimeoutError whose Code names the category,
// e.g. TIMEOUT_NATS_PUBLISH.
//
// All types are safe for concurrent use unless their documentation says
// otherwise.
package jsguard
