package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/warrenmq/warren/cluster"
	"github.com/warrenmq/warren/mgmt"
	"github.com/warrenmq/warren/mgmt/ui"
	"github.com/warrenmq/warren/server"
)

// HTTPOptions configure the node's HTTP listeners; an empty address leaves that one off.
type HTTPOptions struct {
	ManagementListen string // management.listen
	// CertFile and KeyFile (management.tls.*) serve the API over HTTPS when both are set.
	CertFile, KeyFile string
	PrometheusListen  string // prometheus.listen
	Logger            *slog.Logger
	DataDir           string
	ConfigFiles       []string
	// Cluster reports the cluster's state on a cluster node (nil on a single node).
	Cluster func() cluster.Status
	// Quorum is the cluster node that changes quorum queues' replicas (nil on a single node).
	Quorum *cluster.Node
}

// HTTP is the node's running HTTP front ends: the management API and the Prometheus metrics.
type HTTP struct {
	servers          []*http.Server
	mgmtAddr, prAddr net.Addr
}

// ServeHTTP opens the listeners of o and serves the management API and the metrics for s until
// Close. Both serve from the same Management view, so they agree.
func ServeHTTP(s *server.Server, o HTTPOptions) (*HTTP, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	h := &HTTP{}
	var lns []net.Listener
	var listeners []mgmt.Listener
	fail := func(key string, err error) (*HTTP, error) {
		for _, ln := range lns {
			_ = ln.Close()
		}
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	var mgmtLn, prLn net.Listener
	if o.ManagementListen != "" {
		ln, err := net.Listen("tcp", o.ManagementListen)
		if err != nil {
			return fail("management.listen", err)
		}
		proto := "http"
		if o.CertFile != "" && o.KeyFile != "" {
			cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
			if err != nil {
				_ = ln.Close()
				return fail("management.tls", err)
			}
			ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
			proto = "https"
		}
		lns = append(lns, ln)
		mgmtLn, h.mgmtAddr = ln, ln.Addr()
		listeners = append(listeners, listenerOf(proto, ln.Addr()))
	}
	if o.PrometheusListen != "" {
		ln, err := net.Listen("tcp", o.PrometheusListen)
		if err != nil {
			return fail("prometheus.listen", err)
		}
		lns = append(lns, ln)
		prLn, h.prAddr = ln, ln.Addr()
		listeners = append(listeners, listenerOf("http/prometheus", ln.Addr()))
	}
	m := NewManagement(s, Options{Listeners: listeners, DataDir: o.DataDir, ConfigFiles: o.ConfigFiles, Cluster: o.Cluster, Quorum: o.Quorum})
	serve := func(ln net.Listener, handler http.Handler, what string) {
		hs := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		h.servers = append(h.servers, hs)
		go func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error(what+" stopped", "err", err)
			}
		}()
		log.Info(what+" ready", "addr", ln.Addr().String())
	}
	if mgmtLn != nil {
		// The web UI is static files that call the API from the browser, on the same listener.
		mux := http.NewServeMux()
		mux.Handle("/api/", mgmt.NewHandler(m, mgmt.Options{Logger: log}))
		mux.Handle("/", ui.Handler())
		serve(mgmtLn, mux, "management API and UI")
	}
	if prLn != nil {
		serve(prLn, mgmt.NewMetricsHandler(m), "prometheus metrics")
	}
	return h, nil
}

// ManagementAddr is the management API's address, nil when it is off.
func (h *HTTP) ManagementAddr() net.Addr { return h.mgmtAddr }

// PrometheusAddr is the metrics listener's address, nil when it is off.
func (h *HTTP) PrometheusAddr() net.Addr { return h.prAddr }

// Shutdown stops the listeners and waits for the requests in progress to finish (until ctx is
// done, when it closes the connections left). Run it before closing the broker: a request still
// running then (a POST .../get) would take messages whose journal writes the closing store
// refuses after it has already decided whether the stop was clean.
func (h *HTTP) Shutdown(ctx context.Context) error {
	var errs []error
	for _, hs := range h.servers {
		if err := hs.Shutdown(ctx); err != nil {
			errs = append(errs, err, hs.Close())
		}
	}
	return errors.Join(errs...)
}

// Close stops the listeners and closes open HTTP connections.
func (h *HTTP) Close() error {
	var errs []error
	for _, hs := range h.servers {
		errs = append(errs, hs.Close())
	}
	return errors.Join(errs...)
}
