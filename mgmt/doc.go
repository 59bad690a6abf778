// Package mgmt is Warren's HTTP front end: the RabbitMQ-compatible management API (/api/...)
// and the Prometheus endpoints (/metrics, /metrics/per-object) with rabbitmq_prometheus's metric
// names, so rabbitmqadmin, KEDA's RabbitMQ scaler, the Terraform provider and RabbitMQ's Grafana
// dashboards work against Warren unchanged.
//
// Dependencies point inwards: mgmt declares the Broker interface it needs (plain structs, errors
// carrying a Kind) and the wiring adapts the broker core to it; mgmt imports nothing of Warren's.
// It never fakes an AMQP connection.
//
// Goroutines and cost: the handlers run on the caller's HTTP server goroutines and start none of
// their own. The Broker is read per request or per scrape; nothing here runs per message.
// Message rates (*_details.rate) are computed from the Broker's monotonic counters by sampling
// when an object is rendered (at least RateInterval, 5 s, apart), so no statistics database
// exists and nothing is sampled while nobody looks.
//
// Users, vhosts, permissions, limits and policies come from Warren's configuration file: the API
// lists them and refuses writes with 405 and a JSON error naming the config.yaml key to edit.
// RabbitMQ's answers that this API mirrors are captured in testdata/rabbitmq (RabbitMQ 3.10.8,
// testdata/capture.py) and replayed by the tests.
package mgmt
