// Command warren is a RabbitMQ-compatible AMQP 0-9-1 broker.
//
//	warren [-config FILE] [-listen ADDR] [-data-dir DIR]   run the broker
//	warren bench [flags]                                    load-test any AMQP broker
//	warren passwd [PASSWORD]                                print a password hash
//	warren definitions import [-o FILE] DEFINITIONS.json    RabbitMQ definitions to config YAML
//	warren definitions export [-config FILE] [-o FILE]      the configuration as RabbitMQ definitions
//	warren ctl COMMAND [flags]                              rabbitmqctl-style CLI over the management API
//
// Configuration loading lives in package config; this file only wires the pieces together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/warrenmq/warren/bench"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster"
	"github.com/warrenmq/warren/config"
	"github.com/warrenmq/warren/ctl"
	"github.com/warrenmq/warren/node"
	"github.com/warrenmq/warren/server"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "bench":
			os.Exit(runBenchCommand(os.Args[2:], os.Stdout, os.Stderr))
		case "passwd":
			os.Exit(runPasswdCommand(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
		case "definitions":
			os.Exit(runDefinitionsCommand(os.Args[2:], os.LookupEnv, os.Stdout, os.Stderr))
		case "ctl":
			os.Exit(ctl.Run(os.Args[2:], os.Stdout, os.Stderr))
		}
	}
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	os.Exit(run(os.Args[1:], os.LookupEnv, os.Stderr, signals))
}

// run starts the broker and blocks until SIGINT or SIGTERM arrives on signals, returning the exit
// code. SIGHUP, and a change to the configuration file, reload the configuration. A second
// stop signal while shutting down abandons the graceful close.
func run(args []string, lookupEnv func(string) (string, bool), stderr io.Writer, signals <-chan os.Signal) int {
	cfg, err := config.Load(args, lookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		config.Usage(stderr)
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "warren:", err)
		return 1
	}
	logger := newLogger(stderr, cfg)
	slog.SetDefault(logger)
	cfg.Server.Logger = logger

	// A cluster node joins its cluster inside server.New, once the broker has restored its
	// durable state and before the configured topology is declared or a client is accepted, so
	// that both go through the metadata log.
	var cn *cluster.Node
	if cfg.Cluster.Enabled() {
		nc, err := clusterConfig(cfg, logger)
		if err != nil {
			fmt.Fprintln(stderr, "warren:", err)
			return 1
		}
		cfg.Server.Attach = func(b *broker.Broker) error {
			n, err := cluster.StartNode(nc, b)
			cn = n
			return err
		}
	}
	// closeCluster stops the node's Raft host: always after the AMQP server, whose clients'
	// declares in flight still need the log.
	closeCluster := func() {
		if cn != nil {
			if err := cn.Close(); err != nil {
				logger.Error("cluster: closing the node", "err", err)
			}
		}
	}
	srv, err := server.New(cfg.Server)
	if err != nil {
		closeCluster()
		fmt.Fprintln(stderr, "warren:", err)
		return 1
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintln(stderr, "warren: start:", err)
		_ = srv.Close() // releases the store that New opened
		closeCluster()
		return 1
	}
	var configFiles []string
	if cfg.ConfigFile != "" {
		configFiles = []string{cfg.ConfigFile}
	}
	web, err := node.ServeHTTP(srv, node.HTTPOptions{ManagementListen: cfg.ManagementListen, CertFile: cfg.ManagementCertFile,
		KeyFile: cfg.ManagementKeyFile, PrometheusListen: cfg.PrometheusListen, Logger: logger, DataDir: cfg.Server.DataDir,
		ConfigFiles: configFiles, Cluster: clusterStatus(cn), Quorum: cn})
	if err != nil {
		fmt.Fprintln(stderr, "warren:", err)
		_ = srv.Close()
		closeCluster()
		return 1
	}
	defer web.Close()
	if cfg.PprofListen != "" {
		stop, err := servePprof(cfg.PprofListen, logger)
		if err != nil {
			fmt.Fprintln(stderr, "warren: debug.pprof_listen:", err)
			_ = srv.Close()
			closeCluster()
			return 1
		}
		defer stop()
	}
	attrs := []any{"addr", srv.Addr().String(), "data_dir", cfg.Server.DataDir}
	if cfg.Server.DataDir == "" {
		attrs[3] = "(in memory)"
	}
	if cfg.ConfigFile != "" {
		attrs = append(attrs, "config", cfg.ConfigFile)
	}
	if addr := srv.TLSAddr(); addr != nil {
		attrs = append(attrs, "amqps", addr.String())
	}
	if cn != nil {
		attrs = append(attrs, "cluster_addr", cn.Addr())
	}
	// The watch starts before the ready line, so that a change made once a caller sees it is seen.
	changed := make(chan struct{}, 1)
	if cfg.ConfigFile != "" {
		stop, err := config.Watch(cfg.ConfigFile, config.WatchQuiet, changed)
		if err != nil {
			logger.Warn("not watching the configuration file; reload with SIGHUP", "file", cfg.ConfigFile, "err", err)
		} else {
			defer stop()
		}
	}
	logger.Info("warren ready", attrs...)

	running := cfg
	var sig os.Signal
	for sig == nil {
		select {
		case s := <-signals:
			if s == syscall.SIGHUP {
				running = reload(srv, cn, running, args, lookupEnv, logger, "SIGHUP")
				continue
			}
			sig = s
		case <-changed:
			running = reload(srv, cn, running, args, lookupEnv, logger, "file changed")
		}
	}
	logger.Info("shutting down", "signal", sig.String())
	done := make(chan error, 1)
	go func() {
		// The HTTP API goes first: a management request that reaches the broker while it
		// closes could take a message whose delivery record the closing store refuses.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := web.Shutdown(ctx); err != nil {
			logger.Warn("closing the HTTP listeners", "err", err)
		}
		cancel()
		done <- srv.Close()
	}()
	select {
	case err = <-done:
	case sig = <-signals:
		logger.Error("second signal, exiting without a clean shutdown", "signal", sig.String())
		return 1
	}
	closeCluster()
	if err != nil {
		logger.Error("shutdown failed", "err", err)
		return 1
	}
	logger.Info("stopped")
	return 0
}

// servePprof serves net/http/pprof's profiles on addr (debug.pprof_listen) until stop is called.
// The endpoint has no authentication: bind it to a loopback address.
func servePprof(addr string, logger *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	logger.Info("pprof ready", "addr", ln.Addr().String())
	return func() { _ = hs.Close() }, nil
}

// reload re-reads the configuration as at start-up (same flags and environment) and applies it,
// returning the settings now running. A configuration that does not load, or that
// config.CheckReload takes for a truncated file, is rejected with one log line; the running one
// stays.
func reload(srv *server.Server, cn *cluster.Node, running *config.Settings, args []string, lookupEnv func(string) (string, bool), logger *slog.Logger, why string) *config.Settings {
	cfg, err := config.Load(args, lookupEnv)
	if err == nil {
		err = config.CheckReload(running, cfg)
	}
	if err == nil {
		cfg.Server.Logger = logger
		err = srv.Reload(cfg.Server)
	}
	if err != nil {
		logger.Error("config reload rejected, running configuration kept", "trigger", why, "err", err)
		return running
	}
	if keys := config.ClusterStartOnlyKeys(&running.Cluster, &cfg.Cluster); len(keys) > 0 {
		logger.Warn("config reload: changed settings need a restart to take effect", "keys", keys)
	}
	if cn != nil {
		// The broker's part is applied; a failure here (a node name colliding with another's
		// Raft ID) leaves the old member set and is logged, as a rejected reload is.
		if err := cn.Reload(clusterNodes(&cfg.Cluster), cfg.AccessDigest()); err != nil {
			logger.Error("config reload: cluster.nodes not applied, running member set kept", "trigger", why, "err", err)
		}
	}
	return cfg
}

// clusterConfig is the cluster node's configuration from the cluster section. The Raft log
// lives in the data directory, which a cluster node must have.
func clusterConfig(cfg *config.Settings, logger *slog.Logger) (cluster.NodeConfig, error) {
	c := &cfg.Cluster
	if cfg.Server.DataDir == "" {
		return cluster.NodeConfig{}, errors.New("cluster: a cluster node needs a data directory (storage.data_dir or -data-dir) for its Raft log")
	}
	nc := cluster.NodeConfig{Name: c.Name, NodeName: c.NodeName, Listen: c.Listen, Nodes: clusterNodes(c),
		Secret: c.Secret.Reveal(), DataDir: cfg.Server.DataDir, ConfigDigest: cfg.AccessDigest(), Logger: logger,
		Join: c.Join, NodeTimeout: c.NodeTimeout, QueueLeaderLocator: c.QueueLeaderLocator}
	if c.TLS.CertFile != "" {
		t, err := cluster.LoadTLS(c.TLS.CertFile, c.TLS.KeyFile, c.TLS.CAFile)
		if err != nil {
			return cluster.NodeConfig{}, err
		}
		nc.TLS = t
	}
	return nc, nil
}

// clusterNodes is cluster.nodes as name -> address.
func clusterNodes(c *config.ClusterSettings) map[string]string {
	m := make(map[string]string, len(c.Nodes))
	for _, n := range c.Nodes {
		m[n.Name] = n.Address
	}
	return m
}

// clusterStatus is the management API's view of the cluster; nil on a single node.
func clusterStatus(cn *cluster.Node) func() cluster.Status {
	if cn == nil {
		return nil
	}
	return cn.Status
}

// newLogger builds the process logger from the log.* settings.
func newLogger(w io.Writer, s *config.Settings) *slog.Logger {
	opts := &slog.HandlerOptions{Level: s.LogLevel}
	if s.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// runBenchCommand runs `warren bench ...` (package bench) and returns the exit code.
func runBenchCommand(args []string, stdout, stderr io.Writer) int {
	if err := bench.Run(args, stdout); err != nil {
		fmt.Fprintln(stderr, "warren: bench:", err)
		return 1
	}
	return 0
}
