// Package auditstream keeps guardian's audit trail: every TIMEOUT_* event
// (a jsguard.Event) in one JetStream stream that operators can trust.
//
// It provides the stream (Ensure), a Publisher that implements jsguard.Sink
// and spools to disk while NATS is unreachable, consumers (Tail, Stats and
// the rate Alerter), and tamper evidence: a Sealer that signs the stream
// range by range, and Verify, Export and VerifyExport that check it online
// or offline.
//
// # Subjects
//
// With the default Config:
//
//	guardian.v1.audit.<tenant>.<CODE>          one audit event
//	guardian.v1.audit.seal                     a seal
//	guardian.v1.alerts.timeout_rate.<CODE>     a rate alert (core NATS, not in the stream)
//
// The stream GUARDIAN_AUDIT captures guardian.v1.audit.*.* and
// guardian.v1.audit.seal, so events and seals share it and its sequence
// numbers, while other four-token subjects such as the service's
// guardian.v1.audit.report stay outside it. Events have five tokens and
// seals four: the filters Tail, Stats and the Alerter use
// (guardian.v1.audit.<tenant|*>.<CODE|*>) never match a seal.
//
// <CODE> is the event's timeout_category and must match TIMEOUT_[A-Z0-9_]+,
// or AUDIT_[A-Z0-9_]+ for the integrity events guardian itself records
// (ForgedSealCode); Emit rejects (and counts as dropped) an event with
// another code.
// <tenant> is the event's tenant_id encoded by TenantToken: an empty tenant
// becomes the placeholder _none (NoTenant; the tenant id "_none" is
// reserved and filed with it); otherwise the bytes A-Z a-z 0-9 - _ are kept
// and every other byte is percent-encoded, so "acme.eu" becomes acme%2Eeu.
// Bad tenants are thus never rejected, cannot add tokens or wildcards, and
// TenantFromToken recovers the id.
//
// The stream uses file storage, limits retention with MaxAge (90 days),
// DenyDelete and DenyPurge, and a Duplicates window (2 minutes) in which an
// event published again with the same Nats-Msg-Id is stored once.
//
// # Event schema
//
// Each event message's data is the JSON of a jsguard.Event, its
// Nats-Msg-Id header the event_id:
//
//	event_id            string   deterministic id (jsguard.EventID): 32 lowercase hex characters;
//	                             derived from code, operation, tenant, correlation, trace and
//	                             started_at, so the same timeout described again has the same id
//	event_type          string   "timeout_occurred"; "integrity_violation" for AUDIT_* codes
//	timeout_category    string   the audit code, e.g. "TIMEOUT_KV_GET" (also the subject's last token)
//	operation           string   what timed out, e.g. "kv get GUARDIAN_APPROVALS/acme.a1"
//	timeout_seconds     number   the budget that applied, in seconds
//	tenant_id           string   tenant from the call's context; "" when none
//	correlation_id      string   correlation id from the call's context; "" when none
//	trace_id            string   trace id from the call's context; "" when none
//	additional_context  object   string to string details (WithDetail, producer specifics); omitted when empty
//	timestamp           string   RFC 3339 UTC time the timeout fired
//	started_at          string   RFC 3339 UTC time the operation started
//	level               string   "T1".."T5" for a hierarchy level; omitted otherwise
//	elapsed_seconds     number   how long the call ran until it returned or was abandoned
//	budget_source       string   which deadline bound the call: category, level, override, parent or reported
//	abandoned           bool     the function ignored its context and was left running
//	fallback_used       bool     a fallback or stale value was returned instead of the error
//
// # Publisher and spool
//
// Emit publishes asynchronously with at most Config.MaxInFlight publishes
// awaiting their ack (acks time out after the policy's NATS_PUBLISH
// budget). EmitDurable returns only once the event is durable: the stream
// acknowledged it, or it is in the spool and the spool is fsynced; callers
// that report an event as accepted (guardian's audit.report) use it. An
// event NATS cannot take — the connection is down, the publish fails, or
// its ack fails or times out — is appended to the spool in
// Config.SpoolDir: JSON-lines segment files of at most 1 MiB, bounded in
// total by SpoolMaxBytes. Each event is one write(2) to a file opened with
// O_APPEND, so a process crash loses nothing spooled. EmitDurable waits for
// an fsync that covers its event, and concurrent callers share one fsync;
// besides, fsync runs on every segment switch, in Flush and Close, and on
// Run's tick every 250 ms, so a power failure loses at most about a quarter
// of a second of events spooled by Emit. A failed fsync is an error for
// EmitDurable, and is logged and counted (PublisherStats.SyncErrors) in
// every case. The directory is locked (flock on SpoolDir/LOCK) while a
// Publisher uses it. Run re-publishes the spool segment by segment, in
// order, with the same message ids, and deletes a segment once all of it is
// acknowledged or skipped; a new Publisher on the same directory picks up
// what an earlier process left. Close spools every publish still awaiting
// its ack: a graceful shutdown calls Flush, then Close. An event that fits
// nowhere is counted in PublisherStats.Dropped and logged once per burst.
//
// Each event is stored once, without relying on the Duplicates window for
// old events. An event is published directly only while it is young: its
// Timestamp, plus the NATS_PUBLISH budget, younger than the smaller of
// Duplicates/2 and Duplicates minus the timestamp slack (WithTimestampSlack,
// 70 s: the minute by which audit.report accepts future timestamps, plus
// clock skew), which is 50 s, so 45 s of age with the default budget, for
// the default 2 minute window. Any earlier copy of such an event was stored
// within the window, and the stream drops the new one by its Nats-Msg-Id.
// An older event goes to the spool. Before the drainer publishes spooled
// events that are not young, it reads the message ids of the stream's
// events (headers only) from the oldest spooled Timestamp minus the slack
// up to the stream's last sequence, continuing where it stopped before
// each later batch, and skips the spooled events already stored
// (PublisherStats.Skipped). It holds the ids of the spooled events in
// memory, never the stream's. A re-sent event, an event whose ack was lost,
// and a segment a crash interrupted halfway are thus each stored once.
//
// Order: while the spool holds events, Emit and EmitDurable append new
// events to it too, so a Publisher's events reach the stream in the order
// it took them. The one exception is an event whose ack failed: it
// re-enters through the spool, behind events taken after it. Events of
// different Publishers (replicas) interleave: order audit events by their
// timestamp, not by stream sequence.
//
// # Seals
//
// A seal covers a contiguous range of stream sequences [first_seq,
// last_seq]: every message in it except those on the seal subject. The
// next seal's range starts at last_seq+1. A Sealer seals every SealEvery
// events or SealInterval, and while no event arrives it seals an empty
// range (count 0, last_seq = first_seq-1) every SealInterval, so the latest
// seal is never much older than one interval while a Sealer runs. For each
// covered message, in sequence order, the leaf is
//
//	leaf = SHA-256( len(subject) ‖ subject ‖ len(msg_id) ‖ msg_id ‖ len(data) ‖ data )
//
// where msg_id is the Nats-Msg-Id header and each len is 8 bytes big-endian.
// The seal is the JSON object
//
//	v          2
//	stream     the stream name
//	first_seq  first sequence covered
//	last_seq   last sequence covered
//	count      number of messages covered
//	hash       hex SHA-256 of the leaves concatenated in order
//	digests    base64 of the first 8 bytes of each leaf, in order (names a modified or moved message)
//	prev_seq   sequence of the previous seal, 0 for the first
//	prev_hash  hex SHA-256 of the previous seal message's data, "" for the first
//	time       RFC 3339 time of sealing
//	max_age    the stream's MaxAge when sealed, in nanoseconds (0: forever)
//	max_msgs   the stream's MaxMsgs when sealed (-1: unlimited)
//	max_bytes  the stream's MaxBytes when sealed (-1: unlimited)
//	interval   the sealer's SealInterval, in nanoseconds
//	prev_time  RFC 3339 time of the previous seal; absent for the first
//	key        the nkeys public key (A… or U…) that verifies sig
//	sig        base64 ed25519 signature over the signing bytes
//
// The signing bytes are "guardian-audit-seal-v2\n" followed by v,
// stream, first_seq, last_seq, count, hash, digests, prev_seq, prev_hash,
// time (Unix nanoseconds), max_age, max_msgs, max_bytes, interval,
// prev_time (Unix nanoseconds, 0 when absent) and key, integers as 8-byte
// big-endian values (two's complement for -1) and strings and byte strings
// each preceded by their 8-byte big-endian length. Version 1 seals, from
// older guardians, lack max_age through prev_time, have the label
// "guardian-audit-seal-v1\n" and are still verified. Seals are published
// with Nats-Expected-Last-Subject-Sequence set to the last message on the
// seal subject, so of several Sealers exactly one seals each range. A
// Sealer continues only from a seal whose signature and chain it checked;
// a message on the seal subject after the latest valid seal that is not a
// valid continuation of it is reported (AUDIT_SEAL_FORGED) and skipped.
//
// # Exports
//
// An export's first line is a header, the export's anchors:
//
//	{"export":{"v":1,"stream":…,"time":…,"first_seq":…,"last_seq":…,"msgs":…,"max_age":…,"max_msgs":…,"max_bytes":…,"head":{"seq":…,"hash":…,"time":…}}}
//
// time is when the export was made; first_seq and last_seq the stream's
// sequences then (every one of them is in the file); max_* the stream's
// limits then; head the chain head, the last message on the seal subject
// and the hex SHA-256 of its data. The other lines are the messages (see
// Export).
//
// # Verification
//
// Verify and VerifyExport recompute all of this, reading the trail once,
// and hold: the events since the last valid seal (at most 100,000, as no
// seal covers more than 50,000), the latest 4,096 valid seals, one Range
// per seal in the Report (130,000 for 90 days of a seal a minute), and
// the ids of up to 2,000,000 events for the duplicate check: a longer
// trail takes one more pass over the message ids (headers only) per
// 2,000,000 events, so memory stops growing there. An export without a
// header is checked in one pass whatever its length. They report ranges verified; modified, missing, duplicated or
// reordered messages; an event id stored twice; a broken chain; bad
// signatures and malformed seals; and the unsealed tail. They also judge
// the ends of the trail, at the time of verification (Verify) or of the
// export (VerifyExport):
//
//   - the head: when the oldest retained seal's previous seal is gone, the
//     messages removed with it were stored after about that seal's
//     prev_time minus one interval; if that is less than the retention
//     (the larger of the stream's MaxAge and the seal's max_age) minus
//     one interval and a minute, MaxAge cannot have removed them
//     (MissingHead). A stream that keeps events forever reports any such
//     removal; with MaxMsgs or MaxBytes set, the head is not judged.
//   - the tail: the latest seal must be at most one interval plus
//     max(interval, 1 minute) old (MissingTail): a cut tail, or no sealer
//     running, looks the same. An export must hold every sequence up to
//     its header's last_seq and end with its header's chain head.
//   - the retention: a seal that records shorter limits than the seal
//     before it, a stream or export header with shorter limits than the
//     latest seal, or a MaxAge below WithRetention (RetentionChanged).
//
// What the anchors cannot show: a cut tail, of any length, of an export
// whose header was rewritten to match, its time included (the header is
// not signed: keep the chain head Export returns, and pass it to
// WithChainHead), and a persistently shortened MaxAge once every seal made
// before the change has expired (pass the retention you expect to
// WithRetention; guardian's shipped NATS user may not update the stream).
package auditstream
