package server

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// User is an account that may log in over AMQP.
type User struct {
	Name string
	// Password is the plain-text password, accepted for configuration convenience.
	Password string
	// PasswordHash is a RabbitMQ rabbit_password_hashing_sha256 hash (base64 of salt+sha256(salt+password)).
	PasswordHash string
	Tags         []string
}

// Config holds everything the broker needs to run. DefaultConfig gives every field a usable value.
type Config struct {
	Listen           string        // TCP address for AMQP; "127.0.0.1:0" picks a free port
	DataDir          string        // Badger directory; "" keeps everything in memory
	HandshakeTimeout time.Duration // a connection must finish connection.open within this
	FrameMax         uint32        // largest frame we offer in connection.tune
	ChannelMax       uint16        // highest channel number we offer
	Heartbeat        uint16        // heartbeat interval we offer, seconds; 0 disables
	MaxMessageSize   int64         // largest accepted message body, bytes
	Users            []User
	LoopbackUsers    []string // users that may only connect from a loopback address
	VHosts           []string
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
	Logger         *slog.Logger
}

// DefaultConfig returns RabbitMQ's defaults: guest/guest on vhost "/", loopback only.
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
		VHosts:           []string{"/"},

		MemoryHighWatermark: 0.4,
		DiskFreeLimit:       50 << 20,
		MaxRAMMessages:      4096,
	}
}

// Validate reports the first unusable setting, naming its configuration key.
func (c *Config) Validate() error {
	switch {
	case c.Listen == "":
		return errors.New("amqp.listen: must not be empty")
	case c.FrameMax < 4096:
		return fmt.Errorf("limits.frame_max: %d is below the AMQP minimum of 4096", c.FrameMax)
	case c.ChannelMax == 0:
		return errors.New("limits.channel_max: must be at least 1")
	case c.MaxMessageSize <= 0:
		return fmt.Errorf("limits.max_message_size: %d must be positive", c.MaxMessageSize)
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
	for i, u := range c.Users {
		if u.Name == "" {
			return fmt.Errorf("users[%d].name: must not be empty", i)
		}
		if u.Password == "" && u.PasswordHash == "" {
			return fmt.Errorf("users[%d] (%s): needs password or password_hash", i, u.Name)
		}
	}
	return nil
}
