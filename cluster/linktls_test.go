package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/server"
)

// testCA makes a CA and a certificate for 127.0.0.1 signed by it, as the mutual TLS
// configuration of a node (LoadTLS's shape: the CA both verifies servers and clients).
func testCA(t testing.TB, name string) *tls.Config {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name + " node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs: pool, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
}

// startLinkedTLS is startLinked with every node's link over the mutual TLS of cfg (plain TCP
// when nil).
func startLinkedTLS(t testing.TB, n int, cfg *tls.Config) *linkedCluster {
	t.Helper()
	log := &memLog{down: map[int]bool{}}
	lc := &linkedCluster{addrs: map[string]string{}}
	var nodes []string
	for i := range n {
		scfg := server.DefaultConfig()
		scfg.Listen = "127.0.0.1:0"
		scfg.DataDir = ""
		scfg.Logger = quietLog()
		s, err := server.New(scfg)
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("n%d", i+1)
		nodes = append(nodes, name)
		b := s.Broker()
		b.SetReplicator(NewReplicator(name, log.join(NewMetadata(b, quietLog()))))
		l := NewLink(LinkConfig{Cluster: "test", Node: name, Secret: testSecret, TLS: cfg, Logger: quietLog(),
			Timeout: 2 * time.Second, Addr: lc.addr})
		l.Install(b)
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		lc.mu.Lock()
		lc.addrs[name] = s.Addr().String()
		lc.mu.Unlock()
		t.Cleanup(func() { _ = s.Close(); l.Close() })
		lc.servers = append(lc.servers, s)
		lc.links = append(lc.links, l)
		lc.urls = append(lc.urls, "amqp://guest:guest@"+s.Addr().String()+"/")
	}
	if _, err := log.join(NewMetadata(nil, quietLog())).Propose(t.Context(), (&Command{Op: OpSetNodes, Nodes: nodes}).Encode()); err != nil {
		t.Fatal(err)
	}
	return lc
}

// With cluster.tls the data link runs over mutual TLS on the AMQP listener: forwarding and
// proxied consumers work, plain AMQP clients are served as before on the same port, and a
// link login is refused to a peer without the CA's certificate (another CA, or none) and to
// a plain-TCP connection even with the right secret.
func TestLinkMutualTLS(t *testing.T) {
	cfg := testCA(t, "cluster")
	lc := startLinkedTLS(t, 2, cfg)

	// Plain clients on both nodes; q1 homed on n1.
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	if _, err := ch1.QueueDeclare("q1", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch2.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch2.NotifyPublish(make(chan amqp091.Confirmation, 1))
	// Published on n2, forwarded over the TLS link (pubConn).
	if !confirmOne(t, ch2, confirms, "", "q1", amqp091.Publishing{Body: []byte("over tls")}) {
		t.Fatal("forward over the TLS link nacked")
	}
	// Consumed on n2 from n1, proxied over the TLS link (the lean proxy client).
	msgs, err := ch2.Consume("q1", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-msgs:
		if string(d.Body) != "over tls" {
			t.Fatalf("got %q", d.Body)
		}
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no proxied delivery over the TLS link")
	}

	addr := lc.addr("n1")
	stranger := testCA(t, "stranger")
	noCert := cfg.Clone()
	noCert.Certificates = nil
	for _, tc := range []struct {
		name string
		tls  *tls.Config
	}{
		{"certificate of another CA", stranger},
		{"no certificate", noCert},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// It trusts n1's certificate (the cluster's CA) but n1 must refuse its own.
			c := tc.tls.Clone()
			c.RootCAs = cfg.RootCAs
			_, err := dialPub(addr, "/", "stranger", NewLinkAuth("test", "n9", testSecret, nil).login("n1"), c, 0, 5*time.Second)
			if err == nil {
				t.Fatal("link over TLS without the CA's certificate accepted")
			}
			if !strings.Contains(err.Error(), "tls") {
				t.Fatalf("refused with %v, want a TLS error", err)
			}
		})
	}
	t.Run("plain TCP with the secret", func(t *testing.T) {
		_, err := dialPub(addr, "/", "plain", NewLinkAuth("test", "n9", testSecret, nil).login("n1"), nil, 0, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "does not offer") {
			t.Fatalf("plain link login on a TLS cluster: %v, want the mechanism not offered", err)
		}
	})
	t.Run("TLS client of the right CA without the secret", func(t *testing.T) {
		_, err := dialPub(addr, "/", "nosecret", NewLinkAuth("test", "n9", "not-the-secret-at-all", nil).login("n1"), cfg, 0, 5*time.Second)
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.AccessRefused {
			t.Fatalf("got %v, want 403", err)
		}
	})
}
