// Package embedded runs a Warren AMQP 0-9-1 broker inside a Go program or test: no Docker, no
// daemon, no fixed port. A broker that keeps everything in memory starts in well under a
// millisecond, listens on a free loopback port by default, and stops with Close, leaving no
// goroutines behind. Several brokers can run in one process.
//
// In a test, NewTestBroker starts a broker that is closed when the test ends, in the spirit of
// net/http/httptest.NewServer:
//
//	func TestOrders(t *testing.T) {
//		b := embedded.NewTestBroker(t)
//		conn, err := amqp091.Dial(b.URL())
//		...
//	}
//
// In a program, Start takes Options and returns a Broker that is ready for connections:
//
//	b, err := embedded.Start(embedded.Options{
//		DataDir: "/var/lib/myapp/amqp", // durable queues and persistent messages survive restarts
//		Queues:  []embedded.Queue{{Name: "jobs", Durable: true}},
//	})
//	if err != nil { ... }
//	defer b.Close()
//
// A broker has RabbitMQ's defaults: user guest (password guest) with full permissions on the
// vhost "/", allowed from loopback addresses only. Users, vhosts, permissions, policies and the
// topology to declare at start-up are typed values in Options.
//
// The broker shares its process with the program that embeds it, so its memory alarm (publishers
// are blocked above 40% of the machine's RAM, as in RabbitMQ) counts the whole process's memory;
// set server.Config.MemoryLimit through Options.Configure to choose another threshold.
//
// Loading a configuration file is not part of this package yet.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/config"
	"github.com/warrenmq/warren/server"
)

// The configuration types are the broker's own (see package server for their fields' details), so
// that a value written for one is valid for the other.
type (
	// User is an account that may log in over AMQP.
	User = server.User
	// VHost is a virtual host with RabbitMQ's vhost limits.
	VHost = server.VHost
	// Permission grants a user RabbitMQ's configure, write and read regular expressions on a vhost.
	Permission = server.Permission
	// Policy is a RabbitMQ policy (message-ttl, max-length, dead-letter-exchange, ...) applied to
	// the queues and exchanges whose names match its pattern.
	Policy = server.Policy
	// Exchange is an exchange declared when the broker starts.
	Exchange = server.ExchangeDef
	// Queue is a queue declared when the broker starts.
	Queue = server.QueueDef
	// Binding is a binding declared when the broker starts; DestinationType is "queue" or "exchange".
	Binding = server.BindingDef
	// Limit caps a count, as the limits of User and VHost; the zero value is no limit.
	Limit = server.Limit
)

// LimitOf returns a limit of n; a negative n means no limit, as in RabbitMQ.
func LimitOf(n int64) Limit { return server.LimitOf(n) }

// DefaultAddr is the listen address used when Options.Addr is empty: a free port on loopback, so
// that tests running in parallel, or a RabbitMQ on 5672, never collide.
const DefaultAddr = "127.0.0.1:0"

// Options configure a broker. The zero value is an in-memory broker on a free loopback port with
// RabbitMQ's default user, vhost and permission, and no log output.
type Options struct {
	// Addr is the TCP address to listen on; "" means DefaultAddr.
	Addr string
	// DataDir is the directory of the broker's store; "" keeps everything in memory (durable
	// queues and persistent messages then last as long as the broker).
	DataDir string

	// Users, VHosts and Permissions are added to the defaults (user guest, vhost "/", guest's
	// full permissions on "/"); an entry with the same name (for a permission, the same user and
	// vhost) replaces the default one.
	Users       []User
	VHosts      []VHost
	Permissions []Permission
	// In Permissions, Policies, Exchanges, Queues and Bindings an empty VHost means "/", and in
	// Bindings an empty DestinationType means "queue".
	//
	// Policies are applied to the queues and exchanges of their vhost, including those declared
	// later by clients.
	Policies []Policy
	// Exchanges, Queues and Bindings are declared at start-up (an existing durable one must be
	// equivalent), in that order, so that a test or program finds its topology in place.
	Exchanges []Exchange
	Queues    []Queue
	Bindings  []Binding

	// Logger receives the broker's structured logs; nil discards them.
	Logger *slog.Logger

	// ConfigFile, when set, is a Warren config.yaml whose settings (users, vhosts, permissions,
	// policies, limits, declared topology, ...) replace the built-in defaults; the fields above
	// then apply on top of it. The listen address and the data directory always come from Addr
	// and DataDir, so that an embedded broker never takes port 5672 or ./data by surprise.
	// Environment variables are not read.
	ConfigFile string

	// Configure, when set, is called last with the complete server configuration, for settings
	// that Options does not name (limits, heartbeat, memory alarm, TLS). Prefer the fields above:
	// this configuration's shape follows the broker's internals.
	Configure func(*server.Config)
}

// Broker is a running broker. Its methods are safe for concurrent use.
type Broker struct {
	srv  *server.Server
	addr string

	closed    atomic.Bool // set when Close begins, so that WaitReady stops retrying
	closeOnce sync.Once
	closeErr  error
}

// Start starts a broker: it opens the store (when Options.DataDir is set) and restores its durable
// state, declares the configured topology and opens the listener. When Start returns without an
// error the broker accepts connections; there is nothing to poll.
func Start(opts Options) (*Broker, error) {
	cfg, err := opts.serverConfig()
	if err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	srv, err := server.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded: starting broker: %w", err)
	}
	if err := srv.Start(); err != nil {
		// New opened the store; Close releases it.
		_ = srv.Close()
		return nil, fmt.Errorf("embedded: starting broker: %w", err)
	}
	return &Broker{srv: srv, addr: srv.Addr().String()}, nil
}

// serverConfig turns opts into the broker's configuration; server.New validates it, naming the
// offending key (for example "queues[0].vhost").
func (opts Options) serverConfig() (server.Config, error) {
	cfg := server.DefaultConfig()
	if opts.ConfigFile != "" {
		settings, err := config.Load([]string{"-config", opts.ConfigFile}, func(string) (string, bool) { return "", false })
		if err != nil {
			return cfg, err
		}
		cfg = settings.Server
	}
	cfg.Listen = opts.Addr
	if cfg.Listen == "" {
		cfg.Listen = DefaultAddr
	}
	cfg.DataDir = opts.DataDir
	cfg.Logger = opts.Logger
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Users = merge(cfg.Users, opts.Users, func(u User) string { return u.Name })
	cfg.VHosts = merge(cfg.VHosts, opts.VHosts, func(v VHost) string { return v.Name })
	perms := make([]Permission, len(opts.Permissions))
	for i, p := range opts.Permissions {
		p.VHost = orRoot(p.VHost)
		perms[i] = p
	}
	cfg.Permissions = merge(cfg.Permissions, perms, func(p Permission) string { return p.User + "\x00" + p.VHost })
	for _, p := range opts.Policies {
		p.VHost = orRoot(p.VHost)
		cfg.Policies = append(cfg.Policies, p)
	}
	for _, x := range opts.Exchanges {
		x.VHost = orRoot(x.VHost)
		cfg.Exchanges = append(cfg.Exchanges, x)
	}
	for _, q := range opts.Queues {
		q.VHost = orRoot(q.VHost)
		cfg.Queues = append(cfg.Queues, q)
	}
	for _, b := range opts.Bindings {
		b.VHost = orRoot(b.VHost)
		if b.DestinationType == "" {
			b.DestinationType = "queue"
		}
		cfg.Bindings = append(cfg.Bindings, b)
	}
	if opts.Configure != nil {
		opts.Configure(&cfg)
	}
	return cfg, nil
}

// orRoot is vhost, or "/" when it is empty.
func orRoot(vhost string) string {
	if vhost == "" {
		return "/"
	}
	return vhost
}

// merge returns defaults with each of extra replacing the default of the same key, or appended.
func merge[T any](defaults, extra []T, key func(T) string) []T {
	out := append([]T(nil), defaults...)
	for _, e := range extra {
		replaced := false
		for i := range out {
			if key(out[i]) == key(e) {
				out[i], replaced = e, true
				break
			}
		}
		if !replaced {
			out = append(out, e)
		}
	}
	return out
}

// Addr is the host:port the broker listens on (with the port chosen when Options.Addr asked for
// port 0).
func (b *Broker) Addr() string { return b.addr }

// URL is the AMQP URL of the broker's vhost "/" for the default user guest:
// amqp://guest:guest@127.0.0.1:PORT/. Use URLFor for other users or vhosts.
func (b *Broker) URL() string { return b.URLFor("guest", "guest", "/") }

// URLFor is the AMQP URL for user and password on vhost, escaped as amqp091-go and the other
// RabbitMQ clients expect (vhost "/" is the path "/%2F" or, equivalently, "/").
func (b *Broker) URLFor(user, password, vhost string) string {
	u := url.URL{Scheme: "amqp", User: url.UserPassword(user, password), Host: b.addr, Path: "/"}
	if vhost != "/" {
		u.Path = "/" + vhost
		u.RawPath = "/" + url.PathEscape(vhost)
	}
	return u.String()
}

// ErrClosed is returned by WaitReady once the broker is closed.
var ErrClosed = errors.New("embedded: broker closed")

// WaitReady returns nil once the broker answers the AMQP protocol header with connection.start,
// which it does from the moment Start returns: it is a health check for code that was handed a
// Broker (or only its address) and wants proof, not a step every caller needs. It retries until ctx
// is done and returns ErrClosed after Close.
func (b *Broker) WaitReady(ctx context.Context) error {
	for {
		err := b.probe(ctx)
		if err == nil {
			return nil
		}
		if b.closed.Load() {
			return ErrClosed
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("embedded: broker at %s not ready: %w (last attempt: %v)", b.addr, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// probe opens a TCP connection, sends the protocol header and expects connection.start. The
// connection is then dropped; the broker sees a client that gave up during the handshake.
func (b *Broker) probe(ctx context.Context) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return fmt.Errorf("dialing: %w", err)
	}
	defer nc.Close()
	deadline := time.Now().Add(5 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = nc.SetDeadline(deadline)
	if _, err := nc.Write(amqp.ProtocolHeader); err != nil {
		return fmt.Errorf("sending the protocol header: %w", err)
	}
	f, err := amqp.NewFrameReader(nc, 4096).ReadFrame()
	if err != nil {
		return fmt.Errorf("reading connection.start: %w", err)
	}
	if f.Type != amqp.FrameMethod {
		return fmt.Errorf("got frame type %d, want a method frame", f.Type)
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		return fmt.Errorf("decoding connection.start: %w", err)
	}
	if _, ok := m.(*amqp.ConnectionStart); !ok {
		return fmt.Errorf("got %T, want connection.start", m)
	}
	return nil
}

// Close stops the broker gracefully: it stops accepting, sends connection.close 320
// CONNECTION_FORCED to connected clients, waits for their connections to end (a few seconds at
// most for a client that does not answer), then flushes and closes the store. It returns when
// every goroutine of the broker has finished. Calling Close again returns the first result.
func (b *Broker) Close() error {
	b.closed.Store(true)
	b.closeOnce.Do(func() {
		if err := b.srv.Close(); err != nil {
			b.closeErr = fmt.Errorf("embedded: closing broker: %w", err)
		}
	})
	return b.closeErr
}
