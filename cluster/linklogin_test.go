package cluster

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/server"
)

const testSecret = "a-test-secret-of-some-length"

// A link login answers one challenge and one client nonce for one (cluster, client node,
// server node) and proves the secret: any other combination is refused, each with a reason
// that holds nothing secret. The server's proof, likewise, passes only the client that sent
// the nonce, for the server it meant to reach.
func TestLinkAuth(t *testing.T) {
	server := NewLinkAuth("c1", "n1", "secret-secret-secret", nil)
	client := NewLinkAuth("c1", "n2", "secret-secret-secret", nil)
	ch := server.LinkChallenge()
	if ch2 := server.LinkChallenge(); ch2 == ch || len(ch) != 64 {
		t.Fatalf("challenges %q and %q: want two different 64-hex-digit values", ch, ch2)
	}
	login := client.login("n1")
	if other := client.login("n1"); other.nonce == login.nonce || !isNonce(login.nonce) {
		t.Fatalf("nonces %q and %q: want two different 64-hex-digit values", login.nonce, other.nonce)
	}
	start, good := login.Response(), login.answer(ch)
	if node, err := server.VerifyLink(start, ch, good); err != nil || node != "n2" {
		t.Fatalf("own answer: %q %v", node, err)
	}
	other := client.login("n1")
	for _, tc := range []struct{ name, start, challenge, resp string }{
		{"other challenge (replay)", start, server.LinkChallenge(), good},
		{"other client nonce (replay)", other.Response(), ch, good},
		{"other cluster", start, ch, NewLinkAuth("c2", "n2", "secret-secret-secret", nil).login("n1").answer(ch)},
		{"other secret", start, ch, NewLinkAuth("c1", "n2", "another-secret-secret", nil).login("n1").answer(ch)},
		{"for another server node", start, ch, linkLogin{a: client, server: "n3", nonce: login.nonce}.answer(ch)},
		{"claims another client node", "n3 " + login.nonce, ch, good},
		{"the server's proof as the answer (reflection)", start, ch, server.LinkProof(start, ch)},
		{"no nonce (older version)", "n2", ch, good},
		{"short nonce", "n2 abcd", ch, good},
		{"upper-case nonce", "n2 " + strings.ToUpper(login.nonce), ch, good},
		{"short challenge", start, "abcd", login.answer("abcd")},
		{"empty node", " " + login.nonce, ch, linkLogin{a: NewLinkAuth("c1", "", "secret-secret-secret", nil), server: "n1", nonce: login.nonce}.answer(ch)},
		{"empty answer", start, ch, ""},
	} {
		if _, err := server.VerifyLink(tc.start, tc.challenge, tc.resp); err == nil {
			t.Errorf("%s: accepted", tc.name)
		} else if strings.Contains(err.Error(), "secret-secret") {
			t.Errorf("%s: the reason shows the secret: %v", tc.name, err)
		}
	}

	proof := server.LinkProof(start, ch)
	if err := login.verifyServer(ch, proof); err != nil {
		t.Fatalf("the server's own proof refused: %v", err)
	}
	n3 := NewLinkAuth("c1", "n3", "secret-secret-secret", nil)
	for _, tc := range []struct{ name, challenge, proof string }{
		{"wrong secret", ch, NewLinkAuth("c1", "n1", "another-secret-secret", nil).LinkProof(start, ch)},
		{"other cluster", ch, NewLinkAuth("c2", "n1", "secret-secret-secret", nil).LinkProof(start, ch)},
		{"another member's proof (n3 for n1)", ch, n3.LinkProof(start, ch)},
		{"for another login's nonce (replay)", ch, server.LinkProof(other.Response(), ch)},
		{"for another challenge", server.LinkChallenge(), proof},
		{"the client's answer as the proof (reflection)", ch, good},
		{"empty", ch, ""},
	} {
		if err := login.verifyServer(tc.challenge, tc.proof); !errors.Is(err, errLinkUnproven) {
			t.Errorf("server proof %s: %v, want errLinkUnproven", tc.name, err)
		}
	}
}

// recordingProxy forwards one connection to target and records what the client sent.
type recordingProxy struct {
	ln   net.Listener
	mu   sync.Mutex
	sent bytes.Buffer
	done chan struct{}
}

func newRecordingProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{ln: ln, done: make(chan struct{})}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		defer close(p.done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		s, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer s.Close()
		go func() { _, _ = io.Copy(c, s); _ = c.Close() }()
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			p.mu.Lock()
			p.sent.Write(buf[:n])
			p.mu.Unlock()
			if _, werr := s.Write(buf[:n]); err != nil || werr != nil {
				return
			}
		}
	}()
	return p
}

func (p *recordingProxy) bytes() []byte {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.sent.Bytes())
}

// readUntilClose reads frames from c until connection.close and returns it; nil when the
// socket ends first. Every method before it is returned in names.
func readUntilClose(t *testing.T, c net.Conn) (cl *amqp.ConnectionClose, names []string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	fr := amqp.NewFrameReader(c, 16<<10)
	for {
		f, err := fr.ReadNonHeartbeat()
		if err != nil {
			return nil, names
		}
		if f.Type != amqp.FrameMethod {
			continue
		}
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			t.Fatalf("decoding %v: %v", f, err)
		}
		if cl, ok := m.(*amqp.ConnectionClose); ok {
			return cl, names
		}
		names = append(names, m.Name())
	}
}

// A captured link login is worthless: its bytes, replayed through a raw socket, meet a new
// challenge and are refused with 403 ACCESS_REFUSED, and the connection is closed.
func TestLinkLoginReplayRefused(t *testing.T) {
	lc := startLinked(t, 2)
	target := lc.addr("n1")
	proxy := newRecordingProxy(t, target)
	l := lc.links[1]
	pc, err := dialPub(proxy.ln.Addr().String(), "/", "capture", l.auth.login("n1"), nil, 0, 5*time.Second)
	if err != nil {
		t.Fatalf("link login through the recording proxy: %v", err)
	}
	pc.close()
	captured := proxy.bytes()
	if !bytes.Contains(captured, []byte(broker.LinkMechanism)) {
		t.Fatalf("nothing captured: %q", captured)
	}

	c, err := net.Dial("tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(captured); err != nil {
		t.Fatal(err)
	}
	cl, names := readUntilClose(t, c)
	if cl == nil || cl.ReplyCode != amqp.AccessRefused {
		t.Fatalf("replayed login: close %+v after %v, want 403", cl, names)
	}
	if want := []string{"connection.start", "connection.secure"}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Fatalf("replayed login got %v before the close, want %v", names, want)
	}
	if !strings.Contains(cl.ReplyText, "ACCESS_REFUSED") || !strings.Contains(cl.ReplyText, broker.LinkMechanism) {
		t.Errorf("reply text %q", cl.ReplyText)
	}
	// As RabbitMQ: the socket is closed after the close (nothing more is read).
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("after the close: %v, want EOF", err)
	}
}

func isReset(err error) bool { return strings.Contains(err.Error(), "connection reset") }

// syncBuffer is a bytes.Buffer for a logger written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A node with the wrong secret is refused (403) on both kinds of link connection, and no log
// line of either side, at debug level, shows either secret.
func TestLinkWrongSecretRefusedNotLogged(t *testing.T) {
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lc := startLinkedPrep(t, 1, nil, nil, func(c *server.Config) { c.Logger = logger }, nil)
	const wrong = "the-wrong-secret-of-some-length"
	l := NewLink(LinkConfig{Cluster: "test", Node: "n2", Secret: wrong, Logger: logger, Timeout: 2 * time.Second, Addr: lc.addr})
	defer l.Close()

	_, err := dialPub(lc.addr("n1"), "/", "wrong", l.auth.login("n1"), nil, 0, 5*time.Second)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.AccessRefused {
		t.Fatalf("forwarding connection with the wrong secret: %v, want 403", err)
	}
	p, err := l.peer("n1", "/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.connect(); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("proxy connection with the wrong secret: %v, want a 403", err)
	}
	// And the right one gets in on both.
	good := NewLinkAuth("test", "n2", testSecret, nil)
	pc, err := dialPub(lc.addr("n1"), "/", "right", good.login("n1"), nil, 0, 5*time.Second)
	if err != nil {
		t.Fatalf("right secret refused: %v", err)
	}
	pc.close()

	out := logs.String()
	if !strings.Contains(out, "refused a link login") {
		t.Fatalf("the refusal was not logged:\n%s", out)
	}
	for _, s := range []string{wrong, testSecret} {
		if strings.Contains(out, s) {
			t.Fatalf("a secret reached the log:\n%s", out)
		}
	}
}

// A broker that is not a cluster member neither offers WARREN-LINK nor takes it: the socket is
// dropped without a tune, as RabbitMQ does for a mechanism it did not offer.
func TestSingleNodeRefusesLinkLogin(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = ""
	cfg.Logger = quietLog()
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(amqp.ProtocolHeader); err != nil {
		t.Fatal(err)
	}
	fr := amqp.NewFrameReader(c, 16<<10)
	f, err := fr.ReadNonHeartbeat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		t.Fatal(err)
	}
	start, ok := m.(*amqp.ConnectionStart)
	if !ok {
		t.Fatalf("got %s, want connection.start", m.Name())
	}
	if strings.Contains(start.Mechanisms, broker.LinkMechanism) {
		t.Fatalf("single node offers %q", start.Mechanisms)
	}
	login := NewLinkAuth("test", "n2", testSecret, nil).login("n1")
	if _, err := c.Write(amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionStartOk{Mechanism: broker.LinkMechanism, Response: login.Response(), Locale: "en_US"})); err != nil {
		t.Fatal(err)
	}
	if cl, names := readUntilClose(t, c); cl != nil || len(names) != 0 {
		t.Fatalf("single node answered a WARREN-LINK login with %v then %+v, want the socket dropped", names, cl)
	}
}
