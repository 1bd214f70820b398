// Package patterns holds Vigil's transport-agnostic communication patterns.
// It knows nothing of WebRTC, HTTP frameworks or the rest of Vigil; each piece
// answers one known weakness of a classic pattern:
//
// Log, a sequenced event log read by cursors (pub/sub, push).
// Weakness: duplicates and losses on reconnect. Answer: every event has a
// sequence number; a client resumes from its cursor on any transport.
//
// Hub, publish/subscribe with bounded subscriber queues.
// Weakness: a slow subscriber stalls or bloats everyone. Answer: Publish never
// blocks; a full queue drops its oldest item (counted) or is disconnected.
//
// Waiters and WaitAny, for long polling.
// Weakness: held connections. Answer: a cap on concurrent waiters, a timeout,
// no goroutine per waiter, and resume by cursor.
//
// Idempotency, for request-response.
// Weakness: a failure after processing, before the reply. Answer: an
// Idempotency-Key; a retry gets the first reply and the work is done once.
package patterns
