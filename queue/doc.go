// Package queue implements one message queue: ready messages in publication order, consumers served
// round-robin, requeue into the original position, per-message and per-queue TTL, length limits with
// overflow policies, delivery limits and delayed redelivery.
//
// A Queue knows nothing of AMQP framing, connections or disks. It holds *Entry values pointing at
// immutable, shared *Message values, and it tells its owner (the server) through Hooks when entries
// leave for good (expired, dropped, rejected), so the owner can dead-letter them and delete their
// durable copies.
//
// Dispatch runs synchronously in whichever goroutine made a message or credit available (a
// publisher, an acker, a timer): there is no goroutine per queue. Consumers are offered entries
// with the queue's lock held, so Consumer.Deliver must never call back into the queue.
package queue
