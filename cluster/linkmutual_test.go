package cluster

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/queue"
)

// fakeLinkNode listens where a node's AMQP listener would be and takes link logins as a node
// would, except that its second connection.secure carries what proof(start, challenge)
// returns (skipProof: it goes straight to connection.tune, as a node that proves nothing).
// It never checks the client's answer, so it learns whatever a client sends it after: every
// method it reads after its proof is recorded, and it completes the handshake (tune, open-ok)
// and confirms publishes, as a harvester would.
type fakeLinkNode struct {
	ln        net.Listener
	proof     func(start, challenge string) string
	skipProof bool
	stall     chan struct{} // set: once it answered stallAt, it neither reads nor writes until stall closes
	stallAt   string        // a method's name: connection.open (a proxy connection), confirm.select (forwarding)

	mu    sync.Mutex
	after []string // the methods each client sent after the proof (or the skipped proof)
	wg    sync.WaitGroup
}

func newFakeLinkNode(t *testing.T, proof func(start, challenge string) string, skipProof bool) *fakeLinkNode {
	t.Helper()
	return startFakeLinkNode(t, &fakeLinkNode{proof: proof, skipProof: skipProof})
}

// startFakeLinkNode starts f (its proof, skipProof and stall set) listening on loopback.
func startFakeLinkNode(t *testing.T, f *fakeLinkNode) *fakeLinkNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				f.serve(c)
			}()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); f.wg.Wait() })
	return f
}

func (f *fakeLinkNode) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	fr := amqp.NewFrameReader(c, 1<<20)
	read := func() amqp.Method {
		for {
			fm, err := fr.ReadNonHeartbeat()
			if err != nil {
				return nil
			}
			if fm.Type != amqp.FrameMethod {
				continue // a publish's header and body: the method was recorded
			}
			m, err := amqp.DecodeMethod(fm.Payload)
			if err != nil {
				return nil
			}
			return m
		}
	}
	send := func(ch uint16, m amqp.Method) bool {
		_, err := c.Write(amqp.AppendMethodFrame(nil, ch, m))
		return err == nil
	}
	send(0, &amqp.ConnectionStart{VersionMajor: 0, VersionMinor: 9, Mechanisms: "PLAIN " + broker.LinkMechanism, Locales: "en_US"})
	so, ok := read().(*amqp.ConnectionStartOk)
	if !ok {
		return
	}
	challenge := NewLinkAuth("", "", "", nil).LinkChallenge()
	send(0, &amqp.ConnectionSecure{Challenge: challenge})
	if _, ok := read().(*amqp.ConnectionSecureOk); !ok {
		return
	}
	if f.skipProof {
		send(0, &amqp.ConnectionTune{ChannelMax: 2047, FrameMax: 131072, Heartbeat: 0})
	} else {
		send(0, &amqp.ConnectionSecure{Challenge: f.proof(so.Response, challenge)})
	}
	var pubSeq uint64
	for {
		m := read()
		if m == nil {
			return
		}
		f.mu.Lock()
		f.after = append(f.after, m.Name())
		f.mu.Unlock()
		switch m.(type) {
		case *amqp.ConnectionSecureOk:
			send(0, &amqp.ConnectionTune{ChannelMax: 2047, FrameMax: 131072, Heartbeat: 0})
		case *amqp.ConnectionOpen:
			send(0, &amqp.ConnectionOpenOk{})
		case *amqp.ChannelOpen:
			send(1, &amqp.ChannelOpenOk{})
		case *amqp.ConfirmSelect:
			send(1, &amqp.ConfirmSelectOk{})
		case *amqp.BasicPublish:
			pubSeq++
			send(1, &amqp.BasicAck{DeliveryTag: pubSeq})
		case *amqp.ConnectionClose:
			send(0, &amqp.ConnectionCloseOk{})
			return
		}
		if f.stall != nil && m.Name() == f.stallAt {
			<-f.stall
			return
		}
	}
}

// sentAfterProof is what the clients sent the fake after its proof, once they are gone.
func (f *fakeLinkNode) sentAfterProof() []string {
	_ = f.ln.Close()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.after...)
}

// A node that accepts link connections but does not know the cluster's secret is refused by
// the connecting node: its dial fails with errLinkUnproven, a forward to it is failed (a nack)
// and never published, and it receives nothing after the login (no tune-ok, no open, no
// publish). So is a real member relaying its own proof for another node's address, and a node
// that skips the proof. The same fake with the secret (the control) is taken: the harness
// would harvest if the client let it.
func TestLinkRefusesNodeWithoutSecret(t *testing.T) {
	right := NewLinkAuth("test", "n1", testSecret, nil)
	for _, tc := range []struct {
		name      string
		proof     func(start, challenge string) string
		skipProof bool
		refused   bool
	}{
		{"wrong secret", NewLinkAuth("test", "n1", "not-the-cluster-secret", nil).LinkProof, false, true},
		{"no secret, garbage proof", func(string, string) string { return "00" }, false, true},
		{"another member's proof (n3 at n1's address)", NewLinkAuth("test", "n3", testSecret, nil).LinkProof, false, true},
		{"another cluster with the same secret", NewLinkAuth("other", "n1", testSecret, nil).LinkProof, false, true},
		{"no proof (straight to tune)", nil, true, true},
		{"control: the right secret", right.LinkProof, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFakeLinkNode(t, tc.proof, tc.skipProof)
			addr := fake.ln.Addr().String()
			l := NewLink(LinkConfig{Cluster: "test", Node: "n2", Secret: testSecret, Logger: quietLog(), Timeout: 2 * time.Second,
				Addr: func(string) string { return addr }})
			defer l.Close()

			pc, err := dialPub(addr, "/", "to a fake", l.auth.login("n1"), nil, 0, 5*time.Second)
			if !tc.refused {
				if err != nil {
					t.Fatalf("the fake with the secret was refused: %v", err)
				}
				pc.close()
				return
			}
			if !errors.Is(err, errLinkUnproven) {
				t.Fatalf("forwarding connection to the fake: %v, want errLinkUnproven", err)
			}
			p, err := l.peer("n1", "/")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.connect(); !errors.Is(err, errLinkUnproven) {
				t.Fatalf("proxy connection to the fake: %v, want errLinkUnproven", err)
			}
			done := make(chan error, 1)
			l.Forward("n1", "/", []string{"q"}, &queue.Message{Body: []byte("secret data")}, func(err error) { done <- err })
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("a forward to the fake was confirmed")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a forward to the fake: no outcome within 10 s")
			}
			if got := fake.sentAfterProof(); len(got) != 0 {
				t.Fatalf("the fake got %v after its proof, want nothing", got)
			}
		})
	}
}
