// Package e2e holds guardian's end-to-end and fault tests: the real
// guardian binary and embedded nats-servers on loopback, killed and
// restarted while approvals expire. It has no code of its own outside
// tests; see README.md for how to run it at full scale and how to fuzz.
package e2e
