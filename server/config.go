package server

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// Limit caps a count (connections, channels, queues). The zero value is "no limit"; LimitOf(0)
// allows none, as a RabbitMQ limit of 0 does.
type Limit struct {
	n   int64
	set bool
}

// LimitOf returns a limit of n; a negative n means no limit, as in RabbitMQ.
func LimitOf(n int64) Limit {
	if n < 0 {
		return Limit{}
	}
	return Limit{n: n, set: true}
}

// Value returns the limit and whether there is one.
func (l Limit) Value() (int64, bool) { return l.n, l.set }

// Int64 is the limit as RabbitMQ writes it: -1 for none.
func (l Limit) Int64() int64 {
	if !l.set {
		return -1
	}
	return l.n
}

// reached reports whether count is at or over the limit.
func (l Limit) reached(count int) bool { return l.set && int64(count) >= l.n }

func (l Limit) String() string { return strconv.FormatInt(l.Int64(), 10) }

// User is an account that may log in over AMQP.
type User struct {
	Name string
	// Password is the plain-text password, accepted for configuration convenience.
	Password string
	// PasswordHash is a RabbitMQ rabbit_password_hashing_sha256 hash (base64 of salt+sha256(salt+password)).
	// A user with neither Password nor PasswordHash can only log in with EXTERNAL (a TLS client
	// certificate), like a RabbitMQ user whose password was cleared.
	PasswordHash string
	Tags         []string
	// MaxConnections and MaxChannels are RabbitMQ's user limits: connections of this user across
	// all vhosts, and channels across all of its connections.
	MaxConnections Limit
	MaxChannels    Limit
}

// VHost is a virtual host with RabbitMQ's vhost limits.
type VHost struct {
	Name           string
	Description    string
	MaxConnections Limit
	MaxQueues      Limit
}

// Permission grants a user access to a vhost: RabbitMQ's configure, write and read regular
// expressions, matched (unanchored) against exchange and queue names. "" matches nothing.
type Permission struct {
	User, VHost            string
	Configure, Write, Read string
}

// Policy is a RabbitMQ policy (compiled and applied by the broker core).
type Policy = broker.PolicyDef

// ExchangeDef is an exchange declared by the configuration (RabbitMQ definitions fields).
type ExchangeDef struct {
	Name, VHost, Type             string
	Durable, AutoDelete, Internal bool
	Arguments                     amqp.Table
}

// QueueDef is a queue declared by the configuration.
type QueueDef struct {
	Name, VHost         string
	Durable, AutoDelete bool
	Arguments           amqp.Table
}

// BindingDef is a binding declared by the configuration; DestinationType is "queue" or "exchange".
type BindingDef struct {
	VHost, Source, Destination, DestinationType, RoutingKey string
	Arguments                                               amqp.Table
}

// TLSConfig configures the amqps listener. It is off unless CertFile is set.
type TLSConfig struct {
	Listen            string // host:port, RabbitMQ's default is 5671
	CertFile, KeyFile string // PEM server certificate (chain) and key
	CAFile            string // PEM CA bundle for client certificates
	// VerifyPeer asks for a client certificate and verifies it against CAFile when one is sent
	// (RabbitMQ's verify_peer); FailIfNoPeerCert also refuses clients that send none.
	VerifyPeer       bool
	FailIfNoPeerCert bool
}

// Enabled reports whether the amqps listener runs.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" }

// MaxMessageSizeLimit is the largest limits.max_message_size, RabbitMQ's cap (512 MiB).
const MaxMessageSizeLimit = broker.MaxMessageSize

// Config holds everything the broker needs to run. DefaultConfig gives every field a usable value.
type Config struct {
	Listen           string        // TCP address for AMQP; "127.0.0.1:0" picks a free port
	DataDir          string        // Badger directory; "" keeps everything in memory
	HandshakeTimeout time.Duration // a connection must finish connection.open within this
	FrameMax         uint32        // largest frame we offer in connection.tune
	ChannelMax       uint16        // highest channel number we offer
	Heartbeat        uint16        // heartbeat interval we offer, seconds; 0 disables
	MaxMessageSize   int64         // largest accepted message body, bytes
	MaxConnections   Limit         // client connections for the whole broker
	Users            []User
	LoopbackUsers    []string // users that may only connect from a loopback address
	VHosts           []VHost
	// Permissions name users and vhosts; entries for a user or vhost that does not exist are
	// ignored (with a warning), so the default guest permission is harmless when guest is gone.
	Permissions []Permission
	Policies    []Policy
	// Exchanges, Queues and Bindings are declared at start-up and on every reload when missing
	// (an existing one must be equivalent). Removing them from the configuration deletes nothing.
	Exchanges []ExchangeDef
	Queues    []QueueDef
	Bindings  []BindingDef
	TLS       TLSConfig
	// MemoryHighWatermark is the fraction of system RAM above which publishers are blocked
	// (RabbitMQ's vm_memory_high_watermark.relative); MemoryLimit, when positive, is an absolute
	// limit in bytes that takes its place.
	MemoryHighWatermark float64
	MemoryLimit         int64
	// DiskFreeLimit blocks publishers while the data directory's file system has less free space.
	DiskFreeLimit int64
	// MaxRAMMessages is the number of ready messages a queue keeps in memory when there is a
	// store; the rest of its backlog is paged out to disk and read back ahead of the consumers.
	MaxRAMMessages int
	// ConsumerTimeout (RabbitMQ's consumer_timeout): a delivery left unacknowledged longer closes
	// its channel with 406; a queue's x-consumer-timeout or consumer-timeout policy replaces it.
	// 0 turns the check off.
	ConsumerTimeout time.Duration
	Logger          *slog.Logger
	// Attach, when set, is called by New with the broker once it has restored its durable state
	// and before the configuration's topology is declared: a cluster node sets its replicator
	// there, so that the configured exchanges, queues and bindings go through the cluster's
	// metadata log like a client's. An error fails New. Not reloadable.
	Attach func(*broker.Broker) error `json:"-"`
}

// DefaultConfig returns RabbitMQ's defaults: guest/guest with full permissions on vhost "/",
// loopback only.
func DefaultConfig() Config {
	return Config{
		Listen:           "0.0.0.0:5672",
		DataDir:          "./data",
		HandshakeTimeout: 10 * time.Second,
		FrameMax:         131072,
		ChannelMax:       2047,
		Heartbeat:        60,
		MaxMessageSize:   128 << 20,
		Users:            []User{{Name: "guest", Password: "guest", Tags: []string{"administrator"}}},
		LoopbackUsers:    []string{"guest"},
		VHosts:           []VHost{{Name: "/"}},
		Permissions:      []Permission{{User: "guest", VHost: "/", Configure: ".*", Write: ".*", Read: ".*"}},
		Policies:         []Policy{},
		Exchanges:        []ExchangeDef{},
		Queues:           []QueueDef{},
		Bindings:         []BindingDef{},
		TLS:              TLSConfig{Listen: "0.0.0.0:5671"},

		MemoryHighWatermark: 0.4,
		DiskFreeLimit:       50 << 20,
		MaxRAMMessages:      4096,
		ConsumerTimeout:     30 * time.Minute,
	}
}

// ConfigError is a configuration error about one key; Key is the path in the configuration file
// (for example "permissions[2].write"), so that callers can point at the line.
type ConfigError = broker.KeyError

func keyErr(key string, format string, a ...any) *ConfigError {
	return &ConfigError{Key: key, Err: fmt.Errorf(format, a...)}
}

// Validate reports the first unusable setting, naming its configuration key.
func (c *Config) Validate() error {
	_, err := c.validate()
	return err
}

// validate is Validate returning the compiled configuration, so that New and Reload compile
// (regexps, TLS certificates) once.
func (c *Config) validate() (*runtimeConfig, error) {
	if err := c.checkSettings(); err != nil {
		return nil, err
	}
	return compile(c)
}

func (c *Config) checkSettings() error {
	switch {
	case c.Listen == "":
		return errors.New("amqp.listen: must not be empty")
	case c.FrameMax < 4096:
		return fmt.Errorf("limits.frame_max: %d is below the AMQP minimum of 4096", c.FrameMax)
	case c.ChannelMax == 0:
		return errors.New("limits.channel_max: must be at least 1")
	case c.MaxMessageSize <= 0:
		return fmt.Errorf("limits.max_message_size: %d must be positive", c.MaxMessageSize)
	case c.MaxMessageSize > MaxMessageSizeLimit:
		return fmt.Errorf("limits.max_message_size: %d is above %d (512 MiB, RabbitMQ's maximum)", c.MaxMessageSize, MaxMessageSizeLimit)
	case c.HandshakeTimeout <= 0:
		return fmt.Errorf("limits.handshake_timeout: %s must be positive", c.HandshakeTimeout)
	case c.MemoryHighWatermark <= 0 || c.MemoryHighWatermark > 1:
		return fmt.Errorf("memory.high_watermark: %v must be above 0 and at most 1", c.MemoryHighWatermark)
	case c.MemoryLimit < 0:
		return fmt.Errorf("memory.limit: %d must not be negative", c.MemoryLimit)
	case c.DiskFreeLimit < 0:
		return fmt.Errorf("disk.free_limit: %d must not be negative", c.DiskFreeLimit)
	case c.MaxRAMMessages < 1:
		return fmt.Errorf("queue.max_ram_messages: %d must be at least 1", c.MaxRAMMessages)
	case len(c.VHosts) == 0:
		return errors.New("vhosts: at least one vhost is required")
	}
	return nil
}
