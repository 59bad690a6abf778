package server

import (
	"testing"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// BenchmarkAuthorizePublish is the permission check basic.publish pays: a cached decision for
// the exchange the channel last published to (the usual case), a regexp permission, and a
// connection alternating between two exchanges (map lookups).
func BenchmarkAuthorizePublish(b *testing.B) {
	for _, bc := range []struct {
		name  string
		write string
		exs   []string
	}{
		{"all/same exchange", ".*", []string{"orders"}},
		{"regexp/same exchange", "^(orders|billing)\\.", []string{"orders.created"}},
		{"regexp/two exchanges", "^(orders|billing)\\.", []string{"orders.created", "billing.paid"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.Permissions[0].Write = bc.write
			rt, err := compile(&cfg)
			if err != nil {
				b.Fatal(err)
			}
			rt.gen = 1
			s := &Server{}
			s.rt.Store(rt)
			c := &conn{srv: s, user: "guest", vhost: testVHost(b)}
			ch := &channel{c: c}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := ch.authorizePublish(bc.exs[i%len(bc.exs)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The decision cache honours reloads: a decision made before one is not reused after it.
func TestAuthorizeCacheInvalidatedByReload(t *testing.T) {
	cfg := DefaultConfig()
	rt, _ := compile(&cfg)
	rt.gen = 1
	s := &Server{}
	s.rt.Store(rt)
	c := &conn{srv: s, user: "guest", vhost: testVHost(t)}
	ch := &channel{c: c}
	if err := ch.authorizePublish("x"); err != nil {
		t.Fatal(err)
	}
	cfg.Permissions[0].Write = "^y$"
	rt2, _ := compile(&cfg)
	rt2.gen = 2
	s.rt.Store(rt2)
	err := ch.authorizePublish("x")
	if err == nil || err.Code != amqp.AccessRefused {
		t.Fatalf("after the reload: %v, want 403", err)
	}
	if err := c.Authorize(broker.PermWrite, broker.ResExchange, "y"); err != nil {
		t.Fatalf("newly allowed exchange: %v", err)
	}
}

// testVHost is vhost "/" of an in-memory broker core, for tests of a conn without a server.
func testVHost(t testing.TB) *broker.VHost {
	b, err := broker.New(broker.Options{VHosts: []broker.VHostSettings{{Name: "/", MaxQueues: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b.VHost("/")
}
