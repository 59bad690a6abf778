// Package exchange holds the binding tables of the four AMQP 0-9-1 exchange
// kinds (direct, fanout, topic, headers) and answers one question on the
// publish hot path: which destinations does this message go to?
//
// The package knows nothing about the network, the disk or the vhost: the
// server owns exchanges and queues and keeps one Router per exchange.
//
// # Concurrency
//
// Route runs on every publish from many connection goroutines, while Bind and
// Unbind are rare. Each Router therefore guards its table with a
// sync.RWMutex rather than copy-on-write snapshots: copying a whole table per
// Bind would make loading 100k bindings quadratic, and the incremental
// structures (hash maps, a trie) make each Bind O(key length).
//
// Route is allocation-free when out has enough capacity. Deduplication (a
// queue receives a message once even if several bindings match) uses dense
// per-router destination ids and epoch-stamped mark arrays kept in a
// sync.Pool, so no per-call map or set is built.
//
// # Binding identity
//
// A binding is (destination, exchange-or-queue, key, arguments). As in
// RabbitMQ, argument types are part of the identity (int32 1 and int64 1,
// or a string and a byte array, make two bindings), while key order and
// absent-versus-empty arguments are not. Bind of an existing binding
// reports false so queue.bind stays idempotent.
//
// # Topic matching
//
// Topic bindings live in a trie keyed by word, with separate "*" and "#"
// edges. Routing is a set-based NFA walk: the set of live trie nodes is
// advanced one routing-key word at a time, and a node is never added twice
// to one step's set. The cost is O(words x live nodes), so patterns such as
// "#.#.#.#" or 300-word keys cannot go exponential, unlike a backtracking
// matcher. Words follow RabbitMQ: the empty key has zero words, and "a..b"
// has three words, the middle one empty.
//
// # Headers matching
//
// Headers matching follows RabbitMQ's rabbit_exchange_type_headers:
//
//   - x-match is all (the default), any, all-with-x or any-with-x; any other
//     value, or a non-string value, is refused at Bind with 406
//     PRECONDITION_FAILED and RabbitMQ's own message text.
//   - The x-match argument itself never takes part in matching. Other
//     arguments whose name starts with "x-" are ignored unless the mode is
//     all-with-x or any-with-x.
//   - An argument whose value is void (nil) matches on the mere presence of
//     the header, whatever its value.
//   - all with no matchable arguments matches every message; any with none
//     matches nothing.
//   - Values compare as Erlang's == does on the decoded field values:
//     integers of any width and floats compare by numeric value (int32 1,
//     int64 1 and float64 1.0 are equal), a timestamp equals the integer
//     number of seconds, a long string equals a byte array with the same
//     bytes, booleans compare only with booleans, decimals only with
//     decimals. Nested tables and arrays compare type-strictly, because
//     RabbitMQ keeps the type tag inside them.
package exchange
