package multiraft

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func testMsg(from, to, index uint64, data string) *pb.Message {
	typ := pb.MessageType_MsgApp
	m := &pb.Message{Type: &typ, From: &from, To: &to, Index: &index}
	if data != "" {
		term := uint64(3)
		m.Entries = []*pb.Entry{{Index: &index, Term: &term, Data: []byte(data)}}
	}
	return m
}

// Frames carry batches of messages of many groups and decode to the same messages.
func TestFrameRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		batch []outMsg
	}{
		{"one", []outMsg{{group: 1, msg: testMsg(1, 2, 7, "x")}}},
		{"many groups", []outMsg{{group: 1, msg: testMsg(1, 2, 7, "")}, {group: 1 << 40, msg: testMsg(1, 3, 9, "payload")}, {group: 5, msg: testMsg(1, 2, 0, "")}}},
		{"large entry", []outMsg{{group: 2, msg: testMsg(4, 5, 1, string(bytes.Repeat([]byte("z"), 1<<20)))}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf, err := encodeFrame(nil, tt.batch)
			if err != nil {
				t.Fatal(err)
			}
			var got []outMsg
			if err := decodeFrame(buf[4:], func(g uint64, m *pb.Message) { got = append(got, outMsg{g, m}) }); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.batch) {
				t.Fatalf("decoded %d messages, want %d", len(got), len(tt.batch))
			}
			for i := range got {
				if got[i].group != tt.batch[i].group || !proto.Equal(got[i].msg, tt.batch[i].msg) {
					t.Errorf("message %d: got group %d %v", i, got[i].group, got[i].msg)
				}
			}
		})
	}
}

// FuzzDecodeFrame: arbitrary payloads never panic the decoder, and what it accepts encodes
// back to an equivalent frame.
func FuzzDecodeFrame(f *testing.F) {
	buf, _ := encodeFrame(nil, []outMsg{{group: 1, msg: testMsg(1, 2, 7, "x")}, {group: 9, msg: testMsg(2, 1, 3, "")}})
	f.Add(buf[4:])
	f.Add([]byte{})
	f.Add([]byte{1, 1, 200})
	f.Fuzz(func(t *testing.T, payload []byte) {
		var got []outMsg
		if err := decodeFrame(payload, func(g uint64, m *pb.Message) { got = append(got, outMsg{g, m}) }); err != nil {
			return
		}
		again, err := encodeFrame(nil, got)
		if err != nil {
			t.Fatal(err)
		}
		var back []outMsg
		if err := decodeFrame(again[4:], func(g uint64, m *pb.Message) { back = append(back, outMsg{g, m}) }); err != nil {
			t.Fatalf("re-encoded frame rejected: %v", err)
		}
		if len(back) != len(got) {
			t.Fatalf("%d messages after re-encoding, want %d", len(back), len(got))
		}
	})
}

type nopHooks struct{}

func (nopHooks) deliver(uint64, *pb.Message)      {}
func (nopHooks) unreachable(uint64, uint64, bool) {}
func (nopHooks) snapshotSent(uint64, uint64)      {}

// handshakeSide is a transport with just what the handshake needs.
func handshakeSide(self string, secret string, peers ...string) *transport {
	t := &transport{self: self, secret: []byte(secret), hooks: nopHooks{}, peers: map[string]*peer{}}
	for _, p := range peers {
		t.peers[p] = &peer{name: p, id: NodeID(p), dialer: self < p}
	}
	return t
}

// The HMAC challenge admits a configured peer with the same secret, dialling in the right
// direction, and nothing else; both sides authenticate each other.
func TestHandshake(t *testing.T) {
	tests := []struct {
		name            string
		dialer, accepts *transport
		dialAs          string // the peer name the dialer believes it talks to
		ok              bool
	}{
		{"same secret", handshakeSide("a", "s", "b"), handshakeSide("b", "s", "a"), "b", true},
		{"wrong secret", handshakeSide("a", "s", "b"), handshakeSide("b", "t", "a"), "b", false},
		{"unknown node", handshakeSide("a", "s", "b"), handshakeSide("b", "s", "c"), "b", false},
		{"wrong direction", handshakeSide("c", "s", "b"), handshakeSide("b", "s", "c"), "b", false},
		{"acceptor is not who the dialer expects", handshakeSide("a", "s", "b"), handshakeSide("b", "s", "a"), "x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c1, c2 := net.Pipe()
			defer c1.Close()
			defer c2.Close()
			acc := make(chan error, 1)
			go func() {
				_, err := tt.accepts.acceptHandshake(c2)
				if err != nil {
					c2.Close()
				}
				acc <- err
			}()
			derr := tt.dialer.dialHandshake(c1, tt.dialAs)
			if derr != nil {
				c1.Close()
			}
			aerr := <-acc
			if tt.ok && (derr != nil || aerr != nil) {
				t.Fatalf("dial: %v, accept: %v", derr, aerr)
			}
			if !tt.ok && derr == nil {
				t.Fatalf("dialer accepted the handshake (acceptor: %v)", aerr)
			}
			if tt.name == "wrong secret" && !errors.Is(aerr, errAuth) {
				t.Errorf("acceptor error = %v, want errAuth", aerr)
			}
		})
	}
}

// testTLS makes a CA and one certificate for 127.0.0.1 used by every node, client and
// server alike.
func testTLS(t *testing.T) *tls.Config {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      pool, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS13,
	}
}

// Over mutual TLS (through the fault proxies, which see only ciphertext) the group works, and
// the listener refuses a peer that knows the secret but not the CA: plain TCP, no client
// certificate, or one from another CA.
func TestMutualTLS(t *testing.T) {
	cfg := testTLS(t)
	c := newTestCluster(t, 3, func(c *Config) { c.TLS = cfg })
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "over-tls")
	waitApplied(t, sms, 1, 10*time.Second)
	sameLogs(t, sms)

	addr := c.hosts["n2"].Addr() // n1 dials n2: "n1" with the right secret passes the HMAC
	t.Run("plain TCP", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// A plain listener greets first; a TLS one waits for a ClientHello.
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		hello := make([]byte, len(wireMagic))
		if _, err := io.ReadFull(conn, hello); err == nil {
			t.Fatalf("TLS listener spoke plain TCP: %q", hello)
		}
	})
	other := testTLS(t) // a certificate signed by another CA
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
	}{
		{"client certificate from another CA", other.Certificates},
		{"no client certificate", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ccfg := &tls.Config{Certificates: tc.certs, RootCAs: cfg.RootCAs, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
			raw, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			conn := tls.Client(raw, ccfg)
			defer conn.Close()
			if err := handshakeSide("n1", string(c.secret), "n2").dialHandshake(conn, "n2"); err == nil {
				t.Fatal("handshake succeeded")
			}
		})
	}
	t.Run("server certificate from another CA", func(t *testing.T) {
		ccfg := other.Clone()
		ccfg.ServerName = "127.0.0.1"
		conn, err := tls.Dial("tcp", addr, ccfg)
		if err == nil {
			conn.Close()
			t.Fatal("a client trusting another CA accepted the node's certificate")
		}
	})
}

// A connection handed to a stopped peer (its transport closing as the other node redials)
// is closed, whether handOver or run sees the stop: left open, the dialer counted it
// connected and wrote into it for good, and never reached the node once restarted
// (TestQuiescedLeaderFailover). Each case is tried many times: before the fix a select
// with both cases ready left the connection open about every other time.
func TestStoppedPeerClosesHandedOverConn(t *testing.T) {
	closed := func(t *testing.T, c net.Conn) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("other end: %v, want the connection closed", err)
		}
	}
	newPeer := func() *peer {
		tr := &transport{self: "b", hooks: nopHooks{}, peers: map[string]*peer{}, log: testLogger()}
		return &peer{t: tr, name: "a", id: NodeID("a"), accepted: make(chan net.Conn, 1), stop: make(chan struct{}), wake: make(chan struct{}, 1)}
	}
	for _, tc := range []struct {
		name string
		// order runs handOver and the peer's stop in some order.
		order func(p *peer, c net.Conn)
	}{
		{"handed over after the stop", func(p *peer, c net.Conn) {
			close(p.stop)
			p.handOver(c)
		}},
		{"handed over before the stop, run never took it", func(p *peer, c net.Conn) {
			p.handOver(c)
			close(p.stop)
			p.t.wg.Add(1)
			p.run() // connect sees both the connection and the stop
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 100 {
				c1, c2 := net.Pipe()
				tc.order(newPeer(), c2)
				closed(t, c1)
				c1.Close()
			}
		})
	}
}
