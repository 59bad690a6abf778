// Package queue implements one message queue: ready messages in publication order, consumers served
// round-robin, requeue into the original position, per-message and per-queue TTL, length limits with
// overflow policies, delivery limits and delayed redelivery.
//
// A Queue knows nothing of AMQP framing, connections or disks. It holds *Entry values pointing at
// immutable, shared *Message values, and it tells its owner (the server) through Hooks when entries
// leave for good (expired, dropped, rejected), so the owner can dead-letter them and delete their
// durable copies.
//
// With SetPaging a queue holds at most a window of ready messages in memory: a message pushed
// while the window (or a budget shared by queues) is full, or while older messages are paged
// out, goes to the owner's Pager instead, and the queue keeps only the set of paged sequence
// numbers, as spans (one span for a whole backlog in the common case). When the window has
// drained to half, a read-ahead brings the next batch back in the background. Requeued and
// delayed messages always return to memory; expiry and drop-head apply to the in-memory head,
// which is where paged messages arrive before they can be delivered.
//
// A priority queue (Options.MaxPriority) delivers higher priorities first, FIFO within a
// priority, with RabbitMQ's semantics for expiry and drop-head (see priority.go). The priority is
// encoded in the sequence number (NextSeqFor), so Seq order stays delivery order and paging,
// restore and requeue work as above; in memory each priority has its own deque. When a
// higher-priority message arrives while lower ones are paged out, it stays in memory and the
// window's tail is paged out instead; an in-memory head that a paged entry precedes waits for it.
//
// Consumers are served by priority (ConsumerOptions.Priority), round-robin within one; with
// Options.SingleActiveConsumer only the earliest registered consumer still present receives,
// and Hooks.ActiveChanged reports hand-overs.
//
// Dispatch runs synchronously in whichever goroutine made a message or credit available (a
// publisher, an acker, a timer): there is no goroutine per queue. Consumers are offered entries
// with the queue's lock held, so Consumer.Deliver must never call back into the queue.
package queue
