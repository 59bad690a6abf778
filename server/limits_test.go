package server

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Limits refuse with RabbitMQ 3.10's codes and texts (observed with set_vhost_limits and
// set_user_limits on the reference broker).
func TestLimits(t *testing.T) {
	t.Run("vhost connections", func(t *testing.T) {
		s := startTestServer(t, func(c *Config) { c.VHosts[0].MaxConnections = LimitOf(2) })
		dialAs(t, s, "guest", "/")
		c2 := dialAs(t, s, "guest", "/")
		_, err := dialUser(s, "guest", "/")
		checkAMQPError(t, "third connection", err, 530, "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (2) is reached")
		c2.Close()
		waitFor(t, "slot freed", func() bool {
			c, err := dialUser(s, "guest", "/")
			ok := err == nil
			if ok {
				c.Close()
			}
			return ok
		})
	})
	t.Run("vhost connections zero", func(t *testing.T) {
		s := startTestServer(t, func(c *Config) { c.VHosts[0].MaxConnections = LimitOf(0) })
		_, err := dialUser(s, "guest", "/")
		checkAMQPError(t, "any connection", err, 530, "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (0) is reached")
	})
	t.Run("user connections", func(t *testing.T) {
		s := startTestServer(t, func(c *Config) {
			addUser(c, "lim", ".*", ".*", ".*")
			c.Users[1].MaxConnections = LimitOf(1)
		})
		dialAs(t, s, "lim", "/")
		_, err := dialUser(s, "lim", "/")
		checkAMQPError(t, "second connection", err, 530, "NOT_ALLOWED - connection refused for user 'lim': user connection limit (1) is reached")
		dialAs(t, s, "guest", "/") // other users are not limited
	})
	t.Run("node connections", func(t *testing.T) {
		s := startTestServer(t, func(c *Config) { c.MaxConnections = LimitOf(1) })
		dialAs(t, s, "guest", "/")
		_, err := dialUser(s, "guest", "/")
		checkAMQPError(t, "second connection", err, 530, "NOT_ALLOWED - connection refused: node connection limit (1) is reached")
	})
	t.Run("user channels", func(t *testing.T) {
		s := startTestServer(t, func(c *Config) {
			addUser(c, "lim", ".*", ".*", ".*")
			c.Users[1].MaxChannels = LimitOf(2)
		})
		a := dialAs(t, s, "lim", "/")
		b := dialAs(t, s, "lim", "/")
		ch := mustChannel(t, a)
		mustChannel(t, b)
		closed := b.NotifyClose(make(chan *amqp091.Error, 1))
		_, err := b.Channel()
		if err == nil {
			t.Fatal("third channel of the user opened")
		}
		select {
		case e := <-closed:
			checkAMQPError(t, "third channel", e, 530, "NOT_ALLOWED - number of channels opened for user 'lim' has reached the maximum allowed user limit of (2)")
		case <-time.After(5 * time.Second):
			t.Fatal("connection not closed")
		}
		// The closed connection gives its channel back: then a closes one and opens two.
		waitFor(t, "b's channel given back", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.userChannels["lim"] == 1
		})
		ch.Close()
		mustChannel(t, a)
		mustChannel(t, a)
	})
	t.Run("channel_max per connection", func(t *testing.T) {
		s := startTestServer(t, func(c *Config) { c.ChannelMax = 1 })
		c := dialAs(t, s, "guest", "/")
		mustChannel(t, c)
		if _, err := c.Channel(); err == nil {
			t.Fatal("second channel opened with channel_max 1")
		}
	})
	t.Run("vhost queues", func(t *testing.T) {
		s := startTestServer(t, func(c *Config) { c.VHosts[0].MaxQueues = LimitOf(2) })
		conn := dialAs(t, s, "guest", "/")
		ch := mustChannel(t, conn)
		for _, q := range []string{"q1", ""} {
			if _, err := ch.QueueDeclare(q, false, true, false, false, nil); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := ch.QueueDeclare("q1", false, true, false, false, nil); err != nil {
			t.Fatalf("redeclaring an existing queue at the limit: %v", err)
		}
		_, err := ch.QueueDeclare("q3", false, true, false, false, nil)
		checkAMQPError(t, "third queue", err, 406, "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '/' (2) is reached")
		ch = mustChannel(t, conn)
		if _, err := ch.QueueDelete("q1", false, false, false); err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclare("q3", false, true, false, false, nil); err != nil {
			t.Fatalf("after a delete: %v", err)
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// 2,000 connection attempts over a user's connection limit are all refused with 530, while the
// user's allowed connections and another user's traffic carry on unaffected.
func TestUserConnectionLimitFlood(t *testing.T) {
	const limit, attempts, workers = 5, 2000, 16
	s := startTestServer(t, func(c *Config) {
		addUser(c, "capped", ".*", ".*", ".*")
		c.Users[1].MaxConnections = LimitOf(limit)
		addUser(c, "other", ".*", ".*", ".*")
	})
	var allowed []*amqp091.Channel
	for i := 0; i < limit; i++ {
		allowed = append(allowed, mustChannel(t, dialAs(t, s, "capped", "/")))
	}
	// The other user publishes and consumes throughout.
	other := mustChannel(t, dialAs(t, s, "other", "/"))
	if _, err := other.QueueDeclare("flow", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	deliveries, err := other.Consume("flow", "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var sent, received atomic.Int64
	var traffic sync.WaitGroup
	traffic.Add(2)
	go func() {
		defer traffic.Done()
		pub := mustChannelNoT(s, "other")
		for {
			select {
			case <-stop:
				return
			default:
			}
			if pub.Publish("", "flow", false, false, amqp091.Publishing{Body: []byte("m")}) != nil {
				return
			}
			sent.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	go func() {
		defer traffic.Done()
		for {
			select {
			case <-stop:
				return
			case _, ok := <-deliveries:
				if !ok {
					return
				}
				received.Add(1)
			}
		}
	}()

	var refused, wrong atomic.Int64
	var firstWrong atomic.Value
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				c, err := dialUser(s, "capped", "/")
				if c != nil {
					c.Close()
				}
				if e, ok := err.(*amqp091.Error); ok && e.Code == 530 && e.Reason == fmt.Sprintf("NOT_ALLOWED - connection refused for user 'capped': user connection limit (%d) is reached", limit) {
					refused.Add(1)
					continue
				}
				wrong.Add(1)
				firstWrong.CompareAndSwap(nil, fmt.Sprint(err))
			}
		}()
	}
	for i := 0; i < attempts; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	took := time.Since(start)
	if refused.Load() != attempts {
		t.Fatalf("%d of %d attempts refused with the user limit text; %d otherwise (first: %v)", refused.Load(), attempts, wrong.Load(), firstWrong.Load())
	}
	t.Logf("%d refused connections in %s", attempts, took)
	// The allowed connections still work.
	for i, ch := range allowed {
		if _, err := ch.QueueDeclarePassive("flow", false, true, false, false, nil); err != nil {
			t.Fatalf("allowed connection %d broken: %v", i, err)
		}
	}
	close(stop)
	traffic.Wait()
	if sent.Load() == 0 || received.Load() == 0 {
		t.Fatalf("other user's traffic: sent %d, received %d", sent.Load(), received.Load())
	}
	// The counts are exact: refused attempts took no slot.
	s.mu.Lock()
	n := s.userConns["capped"]
	s.mu.Unlock()
	if n != limit {
		t.Fatalf("capped user counted with %d connections, want %d", n, limit)
	}
}

// mustChannelNoT opens a connection and channel from a goroutine that must not call t.Fatal.
func mustChannelNoT(s *Server, user string) *amqp091.Channel {
	c, err := dialUser(s, user, "/")
	if err != nil {
		panic(err)
	}
	ch, err := c.Channel()
	if err != nil {
		panic(err)
	}
	return ch
}
