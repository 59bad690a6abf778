// Package conformance is Warren's black-box conformance suite: tests that speak AMQP 0-9-1 over
// TCP (through github.com/rabbitmq/amqp091-go, and through a tiny hand-written frame codec in
// wire_test.go) and assert RabbitMQ's observable behaviour: reply codes, close semantics, ordering,
// redelivery, dead-lettering, transactions and publisher confirms.
//
// Every expectation was validated against RabbitMQ 3.10.8, so the suite can be pointed at any
// broker:
//
//	go test ./conformance -amqp-url amqp://guest:guest@host:5672/
//	AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ go test ./conformance/
//
// Without a URL, TestMain starts Warren in-process on a free loopback port with a temporary data
// directory and stops it when the tests end. Tests that exercise Warren-only extensions call
// warrenOnly and are skipped against other brokers. Building with -tags conformance_external
// leaves the in-process broker out (useful while the server package does not compile); a URL is
// then mandatory.
//
// Tests use unique resource names and clean up after themselves, so they may run in parallel
// against a shared broker.
package conformance
