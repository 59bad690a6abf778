// Package catalog is a catalogue of hostile AMQP 0-9-1 clients and the runner that plays them
// against a broker: malformed and oversize frames, declared sizes that lie, deep tables, floods of
// channels, consumers and queues, clients that never read, get/recover loops, slow senders,
// permission bypass attempts and publishers that die while blocked by an alarm.
//
// Each Case says what it sends and what RabbitMQ (the reference, 3.10) answers: the reply code,
// whether the channel or the connection is closed. After every case the runner checks that the
// broker still answers a fresh connection and, when it can read the broker's resident set size,
// that the case did not grow it past a bound: a hostile client must not be able to buy memory
// with bytes it never sent.
//
// Raw cases speak AMQP by hand over a net.Conn with the frame and method codecs of warren/amqp;
// client-level cases use github.com/rabbitmq/amqp091-go. Every case is bounded in time, talks to
// the broker's address only and deletes what it declares. The program in the parent directory
// runs the catalogue from the command line; conformance tests call the same functions in-process.
package catalog
