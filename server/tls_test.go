package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// testPKI is a CA made for one test, with helpers to issue certificates.
type testPKI struct {
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caFile string
	pool   *x509.CertPool
	serial int64
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir(), serial: 1}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.caKey = key
	p.caFile = p.write(t, name+"-ca.pem", "CERTIFICATE", der)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.ca)
	return p
}

func (p *testPKI) write(t *testing.T, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue signs a certificate for cn (a server certificate for 127.0.0.1 when server is set) and
// returns the PEM file paths and the loaded pair.
func (p *testPKI) issue(t *testing.T, cn string, server bool) (certFile, keyFile string, pair tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: cn, Organization: []string{"Warren tests"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = p.write(t, cn+".pem", "CERTIFICATE", der)
	keyFile = p.write(t, cn+"-key.pem", "EC PRIVATE KEY", keyDER)
	pair, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pair
}

func startTLSServer(t *testing.T, pki *testPKI, mutate func(*Config)) *Server {
	t.Helper()
	cert, key, _ := pki.issue(t, "warren-server", true)
	return startTestServer(t, func(c *Config) {
		c.TLS = TLSConfig{Listen: "127.0.0.1:0", CertFile: cert, KeyFile: key}
		if mutate != nil {
			mutate(c)
		}
	})
}

// A TLS client that trusts the test CA connects on the amqps port; a plain client there is
// refused, and TLS below 1.2 is refused.
func TestTLSListener(t *testing.T) {
	pki := newTestPKI(t, "test")
	s := startTLSServer(t, pki, nil)
	url := "amqps://guest:guest@" + s.TLSAddr().String() + "/"
	c, err := amqp091.DialTLS(url, &tls.Config{RootCAs: pki.pool})
	if err != nil {
		t.Fatalf("TLS client: %v", err)
	}
	st := c.ConnectionState()
	if st.Version < tls.VersionTLS12 {
		t.Errorf("negotiated %s", tls.VersionName(st.Version))
	}
	ch := mustChannel(t, c)
	if _, err := ch.QueueDeclare("over-tls", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if conns := s.Connections(); len(conns) != 1 || !conns[0].TLS {
		t.Errorf("the management listing of a TLS connection: %+v, want TLS", conns)
	}
	c.Close()

	plain, err := amqp091.DialConfig("amqp://guest:guest@"+s.TLSAddr().String()+"/", amqp091.Config{Dial: amqp091.DefaultDial(2 * time.Second)})
	if err == nil {
		plain.Close()
		t.Fatal("plain AMQP client connected to the TLS port")
	}
	if _, err := amqp091.DialTLS(url, &tls.Config{RootCAs: pki.pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Fatal("TLS 1.1 client connected")
	}
	other := newTestPKI(t, "other")
	if _, err := amqp091.DialTLS(url, &tls.Config{RootCAs: other.pool}); err == nil {
		t.Fatal("client accepted a server certificate from a CA it does not trust")
	}
	// The plain listener keeps working alongside.
	dialAs(t, s, "guest", "/")
}

// mTLS: with fail_if_no_peer_cert a client needs a certificate from the configured CA, and
// EXTERNAL logs it in as the certificate's common name.
func TestTLSClientCertificateExternal(t *testing.T) {
	pki := newTestPKI(t, "test")
	s := startTLSServer(t, pki, func(c *Config) {
		c.TLS.CAFile = pki.caFile
		c.TLS.VerifyPeer = true
		c.TLS.FailIfNoPeerCert = true
		c.Users = append(c.Users, User{Name: "cert-user"}) // no password: certificate login only
		c.Permissions = append(c.Permissions, Permission{User: "cert-user", VHost: "/", Configure: ".*", Write: ".*", Read: ".*"})
	})
	url := "amqps://" + s.TLSAddr().String() + "/"
	_, _, good := pki.issue(t, "cert-user", false)
	c, err := amqp091.DialTLS_ExternalAuth(url, &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{good}})
	if err != nil {
		t.Fatalf("EXTERNAL login: %v", err)
	}
	ch := mustChannel(t, c)
	if err := ch.Publish("", "none", false, false, amqp091.Publishing{UserId: "cert-user", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("", false, true, true, false, nil); err != nil {
		t.Fatalf("certificate user's channel: %v (the user_id check needs the login name)", err)
	}
	c.Close()

	if _, err := amqp091.DialTLS(url, &tls.Config{RootCAs: pki.pool}); err == nil {
		t.Fatal("client without a certificate connected despite fail_if_no_peer_cert")
	}
	other := newTestPKI(t, "other")
	_, _, foreign := other.issue(t, "cert-user", false)
	if _, err := amqp091.DialTLS_ExternalAuth(url, &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{foreign}}); err == nil {
		t.Fatal("certificate from an untrusted CA accepted")
	}
	_, _, stranger := pki.issue(t, "nobody", false)
	_, err = amqp091.DialTLS_ExternalAuth(url, &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{stranger}})
	checkAMQPError(t, "certificate of an unknown user", err, 403, "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.")
	// A password login still works over mTLS, and the password-less user cannot use one.
	if c, err := amqp091.DialTLS("amqps://guest:guest@"+s.TLSAddr().String()+"/", &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{good}}); err != nil {
		t.Errorf("PLAIN over mTLS: %v", err)
	} else {
		c.Close()
	}
	_, err = amqp091.DialTLS("amqps://cert-user:@"+s.TLSAddr().String()+"/", &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{good}})
	checkAMQPError(t, "password login of a certificate-only user", err, 403, "")
	// EXTERNAL is not offered on the plain port.
	if _, err := amqp091.DialConfig("amqp://"+s.Addr().String()+"/", amqp091.Config{SASL: []amqp091.Authentication{&amqp091.ExternalAuth{}}}); err == nil {
		t.Fatal("EXTERNAL login on the plain port")
	}
}
