package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// loadTLS builds the amqps listener's TLS configuration: TLS 1.2 or newer, the server certificate,
// and client-certificate verification when asked for (RabbitMQ's verify_peer and
// fail_if_no_peer_cert).
func loadTLS(t TLSConfig) (*tls.Config, error) {
	if t.KeyFile == "" {
		return nil, &ConfigError{Key: "tls.key_file", Err: errors.New("must be set when tls.cert_file is")}
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, &ConfigError{Key: "tls.cert_file", Err: fmt.Errorf("loading %s and %s: %w", t.CertFile, t.KeyFile, err)}
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	verify := t.VerifyPeer || t.FailIfNoPeerCert
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, &ConfigError{Key: "tls.ca_file", Err: err}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &ConfigError{Key: "tls.ca_file", Err: fmt.Errorf("no PEM certificates in %s", t.CAFile)}
		}
		tc.ClientCAs = pool
	} else if verify {
		return nil, &ConfigError{Key: "tls.ca_file", Err: errors.New("needed to verify client certificates (tls.verify_peer, tls.fail_if_no_peer_cert)")}
	}
	switch {
	case t.FailIfNoPeerCert:
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	case t.VerifyPeer:
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}
