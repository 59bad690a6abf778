package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/dlclark/regexp2"
	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/exchange"
)

// runtimeConfig is the reloadable part of the configuration, compiled: regular expressions,
// lookup maps, the TLS configuration. The server holds it in an atomic pointer and replaces it
// whole on reload; readers never lock. gen changes with every reload, which is how connections
// know their cached permission decisions are stale.
type runtimeConfig struct {
	gen      uint64
	cfg      Config // the source, for what is read directly (limits, tuning)
	users    map[string]*User
	loopback map[string]bool
	perms    map[userVHost]*permission
	vhosts   map[string]*VHost
	policies map[string][]*broker.Policy // by vhost, highest priority first
	tls      *tls.Config                 // nil when TLS is off
	warnings []string                    // ignored entries, logged once per load
}

type userVHost struct{ user, vhost string }

// permission is one user's compiled permissions on one vhost.
type permission struct {
	configure, write, read matcher
}

// matcher is a compiled permission regexp. The common ".*" and "" skip the regexp engine.
type matcher struct {
	re   *regexp.Regexp
	pcre *regexp2.Regexp // a pattern Go's regexp cannot take (lookaround, backreferences)
	all  bool
	none bool
}

// pcreMatchTimeout bounds one match of a pattern compiled by regexp2, whose backtracking can be
// exponential on a hostile name; a match that times out grants nothing.
const pcreMatchTimeout = 10 * time.Millisecond

func newMatcher(key, expr string) (matcher, error) {
	switch expr {
	case "":
		return matcher{none: true}, nil // RabbitMQ: an empty pattern grants nothing
	case ".*", "^.*", "^.*$", ".*$":
		return matcher{all: true}, nil
	}
	re, err := regexp.Compile(expr)
	if err == nil {
		return matcher{re: re}, nil
	}
	// RabbitMQ matches permissions with Erlang's re (PCRE): exported definitions use lookahead,
	// e.g. ^(?!amq\.).* for "everything but amq.*", which Go's RE2 syntax lacks. Such patterns
	// go to a backtracking engine with PCRE's syntax.
	pcre, perr := regexp2.Compile(expr, regexp2.None)
	if perr != nil {
		return matcher{}, &ConfigError{Key: key, Err: fmt.Errorf("invalid regular expression %q: %w", expr, err)}
	}
	pcre.MatchTimeout = pcreMatchTimeout
	return matcher{pcre: pcre}, nil
}

func (m *matcher) match(name string) bool {
	switch {
	case m.all:
		return true
	case m.none:
		return false
	}
	if m.pcre != nil {
		ok, err := m.pcre.MatchString(name)
		return err == nil && ok
	}
	return m.re.MatchString(name)
}

func (p *permission) matcher(k broker.Perm) *matcher {
	switch k {
	case broker.PermConfigure:
		return &p.configure
	case broker.PermWrite:
		return &p.write
	}
	return &p.read
}

// compile checks cfg and builds its runtime form. Errors name the configuration key.
func compile(cfg *Config) (*runtimeConfig, error) {
	rt := &runtimeConfig{
		cfg:      *cfg,
		users:    make(map[string]*User, len(cfg.Users)),
		loopback: make(map[string]bool, len(cfg.LoopbackUsers)),
		perms:    make(map[userVHost]*permission, len(cfg.Permissions)),
		vhosts:   make(map[string]*VHost, len(cfg.VHosts)),
		policies: map[string][]*broker.Policy{},
	}
	for i := range cfg.Users {
		u := &cfg.Users[i]
		key := fmt.Sprintf("users[%d]", i)
		if u.Name == "" {
			return nil, keyErr(key+".name", "must not be empty")
		}
		if rt.users[u.Name] != nil {
			return nil, keyErr(key, "user %q is listed twice", u.Name)
		}
		if u.PasswordHash != "" && !validRabbitHash(u.PasswordHash) {
			return nil, keyErr(key+".password_hash", "user %q: not a rabbit_password_hashing_sha256 hash (base64 of 36 bytes)", u.Name)
		}
		rt.users[u.Name] = u
	}
	for _, name := range cfg.LoopbackUsers {
		rt.loopback[name] = true
	}
	for i := range cfg.VHosts {
		v := &cfg.VHosts[i]
		if v.Name == "" {
			return nil, keyErr(fmt.Sprintf("vhosts[%d].name", i), "must not be empty")
		}
		if rt.vhosts[v.Name] != nil {
			return nil, keyErr(fmt.Sprintf("vhosts[%d]", i), "vhost %q is listed twice", v.Name)
		}
		rt.vhosts[v.Name] = v
	}
	for i, p := range cfg.Permissions {
		key := fmt.Sprintf("permissions[%d]", i)
		var cp permission
		var err error
		if cp.configure, err = newMatcher(key+".configure", p.Configure); err != nil {
			return nil, err
		}
		if cp.write, err = newMatcher(key+".write", p.Write); err != nil {
			return nil, err
		}
		if cp.read, err = newMatcher(key+".read", p.Read); err != nil {
			return nil, err
		}
		switch {
		case rt.users[p.User] == nil:
			rt.warnings = append(rt.warnings, fmt.Sprintf("%s ignored: no user %q", key, p.User))
			continue
		case rt.vhosts[p.VHost] == nil:
			rt.warnings = append(rt.warnings, fmt.Sprintf("%s ignored: no vhost %q", key, p.VHost))
			continue
		}
		k := userVHost{p.User, p.VHost}
		if rt.perms[k] != nil {
			return nil, keyErr(key, "user %q has two permission entries for vhost %q", p.User, p.VHost)
		}
		rt.perms[k] = &cp
	}
	for i, p := range cfg.Policies {
		cp, warn, err := broker.CompilePolicy(fmt.Sprintf("policies[%d]", i), p)
		if err != nil {
			return nil, err
		}
		rt.warnings = append(rt.warnings, warn...)
		if rt.vhosts[p.VHost] == nil {
			return nil, keyErr(fmt.Sprintf("policies[%d].vhost", i), "no vhost %q", p.VHost)
		}
		for _, other := range rt.policies[p.VHost] {
			if other.Name() == p.Name {
				return nil, keyErr(fmt.Sprintf("policies[%d]", i), "policy %q is listed twice in vhost %q", p.Name, p.VHost)
			}
		}
		rt.policies[p.VHost] = append(rt.policies[p.VHost], cp)
	}
	for _, ps := range rt.policies {
		broker.SortPolicies(ps)
	}
	if err := checkTopology(cfg, rt); err != nil {
		return nil, err
	}
	if cfg.TLS.Enabled() {
		tc, err := loadTLS(cfg.TLS)
		if err != nil {
			return nil, err
		}
		rt.tls = tc
	}
	return rt, nil
}

// checkTopology validates the declared exchanges, queues and bindings without declaring them.
func checkTopology(cfg *Config, rt *runtimeConfig) error {
	for i, x := range cfg.Exchanges {
		key := fmt.Sprintf("exchanges[%d]", i)
		switch {
		case x.Name == "":
			return keyErr(key+".name", "must not be empty")
		case strings.HasPrefix(x.Name, "amq."):
			return keyErr(key+".name", "exchange name '%s' contains reserved prefix 'amq.*'", x.Name)
		case rt.vhosts[x.VHost] == nil:
			return keyErr(key+".vhost", "no vhost %q", x.VHost)
		}
		if _, ok := exchange.ParseKind(x.Type); !ok {
			return keyErr(key+".type", "unknown exchange type %q", x.Type)
		}
	}
	for i, q := range cfg.Queues {
		key := fmt.Sprintf("queues[%d]", i)
		switch {
		case q.Name == "":
			return keyErr(key+".name", "must not be empty")
		case strings.HasPrefix(q.Name, "amq."):
			return keyErr(key+".name", "queue name '%s' contains reserved prefix 'amq.*'", q.Name)
		case rt.vhosts[q.VHost] == nil:
			return keyErr(key+".vhost", "no vhost %q", q.VHost)
		}
		if err := broker.CheckQueueArgs(q.Name, q.VHost, q.Durable, q.Arguments); err != nil {
			if errors.Is(err, broker.ErrQuorumDurable) {
				return keyErr(key+".durable", "%v", err)
			}
			return keyErr(key+".arguments", "%v", err)
		}
	}
	for i, b := range cfg.Bindings {
		key := fmt.Sprintf("bindings[%d]", i)
		switch {
		case b.Source == "":
			return keyErr(key+".source", "the default exchange cannot be bound")
		case b.Destination == "":
			return keyErr(key+".destination", "must not be empty")
		case b.DestinationType != "queue" && b.DestinationType != "exchange":
			return keyErr(key+".destination_type", "%q is not queue or exchange", b.DestinationType)
		case rt.vhosts[b.VHost] == nil:
			return keyErr(key+".vhost", "no vhost %q", b.VHost)
		}
	}
	return nil
}

// vhostSettings is what the broker core is told of the configured vhosts.
func (rt *runtimeConfig) vhostSettings() []broker.VHostSettings {
	out := make([]broker.VHostSettings, 0, len(rt.vhosts))
	for name, v := range rt.vhosts {
		out = append(out, broker.VHostSettings{Name: name, MaxQueues: v.MaxQueues.Int64(), Policies: rt.policies[name]})
	}
	return out
}

// --- checks made by connections

// Authorize checks that the connection's user has permission k on a resource, as RabbitMQ's
// check_resource_access: 403 ACCESS_REFUSED naming the resource; it makes conn the
// broker.Authorizer of its actor. Decisions are cached per connection until the next reload.
// Runs on the connection's reader goroutine only (the core calls it from the reader's calls).
func (c *conn) Authorize(k broker.Perm, r broker.Resource, name string) *amqp.Error {
	if c.link {
		return nil // another node of the cluster, acting for clients it checked itself
	}
	rt := c.srv.rt.Load()
	if rt.gen != c.permGen {
		c.perm = rt.perms[userVHost{c.user, c.vhost.Name()}]
		c.permGen = rt.gen
		clear(c.permCache)
		c.pubEx, c.pubOK = "", false
	}
	if r == broker.ResExchange && name == "" {
		name = "amq.default" // RabbitMQ checks (and names) the default exchange as amq.default
	}
	key := permCacheKey{k, r, name}
	ok, hit := c.permCache[key]
	if !hit {
		ok = c.perm != nil && c.perm.matcher(k).match(name)
		if c.permCache == nil || len(c.permCache) >= permCacheSize {
			c.permCache = make(map[permCacheKey]bool, 8)
		}
		c.permCache[key] = ok
	}
	if ok {
		return nil
	}
	kind := "queue"
	if r == broker.ResExchange {
		kind = "exchange"
	}
	return amqp.Errorf(amqp.AccessRefused, "access to %s '%s' in vhost '%s' refused for user '%s'", kind, name, c.vhost.Name(), c.user)
}

// permCacheSize bounds a connection's cache of permission decisions (RabbitMQ keeps 12 per channel).
const permCacheSize = 64

type permCacheKey struct {
	perm broker.Perm
	res  broker.Resource
	name string
}

// authorizePublish is the write check of basic.publish. A channel usually publishes to one
// exchange, so the last allowed exchange is remembered: the common case is one atomic load and
// one string comparison.
func (ch *channel) authorizePublish(exchange string) *amqp.Error {
	c := ch.c
	if c.pubOK && c.pubEx == exchange && c.srv.rt.Load().gen == c.permGen {
		return nil
	}
	if err := c.Authorize(broker.PermWrite, broker.ResExchange, exchange); err != nil {
		err.ClassID, err.MethodID = amqp.ClassBasic, 40
		return err
	}
	c.pubEx, c.pubOK = exchange, true
	return nil
}

// openVHost applies connection.open's checks in RabbitMQ's order: node, vhost and user connection
// limits, then the user's access to the vhost. On success the connection is counted against the
// limits until it closes.
func (c *conn) openVHost(name string) (*broker.VHost, *amqp.Error) {
	s := c.srv
	v := s.b.VHost(name)
	if v == nil {
		return nil, amqp.Errorf(amqp.NotAllowed, "vhost %s not found", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Loaded under s.mu: either a reload's pass over the connections (under s.mu too) sees
	// this one, or this one sees the new configuration.
	rt := s.rt.Load()
	if c.link {
		// Another node's link is the cluster's own traffic, as RabbitMQ's inter-node
		// distribution: no client limit counts it and no listing shows it (it is in
		// openConns, unlisted, only so that a deleted vhost closes it).
		if s.closed {
			return nil, amqp.Errorf(amqp.ConnectionForced, "broker forced connection closure with reason 'shutdown'")
		}
		s.openConns[c] = struct{}{}
		c.counted = true
		c.vhost = v
		return v, nil
	}
	if rt.cfg.MaxConnections.reached(s.opened) {
		n, _ := rt.cfg.MaxConnections.Value()
		return nil, amqp.Errorf(amqp.NotAllowed, "connection refused: node connection limit (%d) is reached", n)
	}
	if vl := rt.vhosts[name]; vl != nil && vl.MaxConnections.reached(s.vhostConns[name]) {
		n, _ := vl.MaxConnections.Value()
		return nil, amqp.Errorf(amqp.NotAllowed, "access to vhost '%s' refused for user '%s': connection limit (%d) is reached", name, c.user, n)
	}
	if u := rt.users[c.user]; u != nil && u.MaxConnections.reached(s.userConns[c.user]) {
		n, _ := u.MaxConnections.Value()
		return nil, amqp.Errorf(amqp.NotAllowed, "connection refused for user '%s': user connection limit (%d) is reached", c.user, n)
	}
	if rt.perms[userVHost{c.user, name}] == nil {
		return nil, amqp.Errorf(amqp.NotAllowed, "access to vhost '%s' refused for user '%s'", name, c.user)
	}
	if s.closed {
		return nil, amqp.Errorf(amqp.ConnectionForced, "broker forced connection closure with reason 'shutdown'")
	}
	s.opened++
	s.vhostConns[name]++
	s.userConns[c.user]++
	s.openConns[c] = struct{}{}
	s.churn.connsOpened.Add(1)
	c.counted = true
	c.vhost = v // under s.mu: Reload reads it for the connections in openConns
	return v, nil
}

// openChannel counts a new channel against the user's channel limit (530, as RabbitMQ).
func (c *conn) openChannel() *amqp.Error {
	s := c.srv
	if c.link {
		return nil // the cluster's own, counted nowhere (see openVHost)
	}
	u := s.rt.Load().users[c.user]
	s.mu.Lock()
	defer s.mu.Unlock()
	if u != nil && u.MaxChannels.reached(s.userChannels[c.user]) {
		n, _ := u.MaxChannels.Value()
		return amqp.Errorf(amqp.NotAllowed, "number of channels opened for user '%s' has reached the maximum allowed user limit of (%d)", c.user, n)
	}
	s.userChannels[c.user]++
	s.churn.chansOpened.Add(1)
	return nil
}

// channelsClosed gives n channels back to the user's channel count.
func (c *conn) channelsClosed(n int) {
	if n == 0 || c.link {
		return
	}
	s := c.srv
	s.churn.chansClosed.Add(uint64(n))
	s.mu.Lock()
	if s.userChannels[c.user] -= n; s.userChannels[c.user] <= 0 {
		delete(s.userChannels, c.user)
	}
	s.mu.Unlock()
}

// uncountLocked removes a closing connection from the limits' counts; call with s.mu held.
func (s *Server) uncountLocked(c *conn) {
	if !c.counted {
		return
	}
	c.counted = false
	delete(s.openConns, c)
	if c.link {
		return // never counted (openVHost)
	}
	s.churn.connsClosed.Add(1)
	s.opened--
	if s.vhostConns[c.vhost.Name()]--; s.vhostConns[c.vhost.Name()] <= 0 {
		delete(s.vhostConns, c.vhost.Name())
	}
	if s.userConns[c.user]--; s.userConns[c.user] <= 0 {
		delete(s.userConns, c.user)
	}
}

// handshakeTimeout is the current limits.handshake_timeout.
func (s *Server) handshakeTimeout() time.Duration { return s.rt.Load().cfg.HandshakeTimeout }
