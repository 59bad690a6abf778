package mgmt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
)

// Options tunes the API handler. The zero value is usable.
type Options struct {
	// Logger receives request errors; nil uses slog.Default().
	Logger *slog.Logger
	// MaxBodyBytes limits request bodies; 0 means 10 MB, RabbitMQ's max_http_body_size.
	MaxBodyBytes int64
	// RateInterval is the minimum spacing of the samples that *_details.rate values are computed
	// from; 0 means 5 s, RabbitMQ's collect_statistics_interval.
	RateInterval time.Duration
	// ConfigKeyPrefix is prepended to the configuration keys named in refusals; "" for none.
	ConfigKeyPrefix string
	// now replaces time.Now in tests.
	now func() time.Time
}

const defaultMaxBody = 10_000_000

// realm is RabbitMQ's WWW-Authenticate realm; some clients show it.
const realm = `Basic realm="RabbitMQ Management"`

// NewHandler returns the management HTTP API (RabbitMQ's /api paths) over b. The caller owns the
// listener (and TLS); the handler is safe for concurrent use and keeps no goroutines.
func NewHandler(b Broker, opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = defaultMaxBody
	}
	if opts.RateInterval <= 0 {
		opts.RateInterval = 5 * time.Second
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	a := &api{b: b, opts: opts, log: opts.Logger, mux: http.NewServeMux(), rates: newRates(opts.RateInterval)}
	a.routes()
	return a
}

type api struct {
	b     Broker
	opts  Options
	log   *slog.Logger
	mux   *http.ServeMux
	rates *rates
	res   sync.Map // permission pattern -> *regexp.Regexp (nil when invalid)
}

// user is the authenticated caller of one request.
type user struct {
	name  string
	tags  []string
	perms map[string]PermissionInfo // by vhost
}

func (u *user) has(tag string) bool { return slices.Contains(u.tags, tag) }

// isAdmin, isMonitor and isPolicymaker follow RabbitMQ's tag hierarchy: administrator implies
// the others, monitoring and policymaker imply management.
func (u *user) isAdmin() bool       { return u.has("administrator") }
func (u *user) isMonitor() bool     { return u.isAdmin() || u.has("monitoring") }
func (u *user) isPolicymaker() bool { return u.isAdmin() || u.has("policymaker") }
func (u *user) isManagement() bool {
	return u.isMonitor() || u.isPolicymaker() || u.has("management")
}

// seesVHost reports whether the user's lists include vhost: monitors see every vhost, others the
// vhosts they have permissions on.
func (u *user) seesVHost(vhost string) bool {
	if u.isMonitor() {
		return true
	}
	_, ok := u.perms[vhost]
	return ok
}

// mayOpenVHost is RabbitMQ's check for vhost-scoped paths: administrators may read any vhost,
// everyone else needs a permission entry for it.
func (u *user) mayOpenVHost(vhost string) bool {
	if u.isAdmin() {
		return true
	}
	_, ok := u.perms[vhost]
	return ok
}

type ctxKey struct{}

func userOf(r *http.Request) *user { return r.Context().Value(ctxKey{}).(*user) }

// ServeHTTP authenticates, limits the body and dispatches; unknown paths get RabbitMQ's JSON 404.
func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-cache")
	r.Body = http.MaxBytesReader(w, r.Body, a.opts.MaxBodyBytes)
	if !strings.HasPrefix(r.URL.Path, "/api/") {
		notFound(w)
		return
	}
	name, pass, ok := r.BasicAuth()
	if !ok {
		w.Header().Set("WWW-Authenticate", realm)
		writeError(w, http.StatusUnauthorized, "not_authorized", "Login failed")
		return
	}
	var peer netip.Addr
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		peer = ap.Addr().Unmap()
	}
	tags, ok := a.b.Authenticate(name, pass, peer)
	if !ok {
		a.log.Warn("management API login failed", "user", name, "peer", peer.String())
		w.Header().Set("WWW-Authenticate", realm)
		writeError(w, http.StatusUnauthorized, "not_authorized", "Login failed")
		return
	}
	u := &user{name: name, tags: tags, perms: map[string]PermissionInfo{}}
	if !u.isManagement() {
		writeError(w, http.StatusUnauthorized, "not_authorised", "Not management user")
		return
	}
	for _, p := range a.b.Permissions() {
		if p.User == name {
			u.perms[p.VHost] = p
		}
	}
	r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, u))
	switch slashSafe(r) {
	case pathBadEscape:
		badRequest(w, "malformed URL encoding in path")
		return
	case pathEmptySegment:
		// e.g. /api/queues//q1: a vhost "/" that is not encoded as %2F. RabbitMQ answers 404.
		notFound(w)
		return
	}
	h, pattern := a.mux.Handler(r)
	if pattern == "" {
		// No route: the mux answers 404 (text) or 405; RabbitMQ's 404 is JSON.
		h.ServeHTTP(&jsonNotFound{ResponseWriter: w}, r)
		return
	}
	a.mux.ServeHTTP(w, r)
}

// slashSafe rewrites the request path so that an encoded slash inside a segment (vhost "/" is
// %2F) stays inside its segment: ServeMux matches decoded paths, so each segment is decoded here
// with its slashes turned into NUL, which pathValue turns back (a name holding a real NUL, %00,
// would read as "/": AMQP names with NUL are not worth a router of our own). It reports invalid
// escapes and empty segments; a trailing slash is dropped, as RabbitMQ ignores it.
func slashSafe(r *http.Request) pathCheck {
	segs := strings.Split(strings.TrimSuffix(r.URL.EscapedPath(), "/"), "/")
	for i, s := range segs {
		if i > 0 && s == "" {
			return pathEmptySegment
		}
		u, err := url.PathUnescape(s)
		if err != nil {
			return pathBadEscape
		}
		segs[i] = strings.ReplaceAll(u, "/", "\x00")
	}
	u := *r.URL
	u.Path, u.RawPath = strings.Join(segs, "/"), ""
	r.URL = &u
	return pathOK
}

type pathCheck int

const (
	pathOK pathCheck = iota
	pathBadEscape
	pathEmptySegment
)

// pathValue is r.PathValue with the slashes slashSafe hid restored.
func pathValue(r *http.Request, name string) string {
	return strings.ReplaceAll(r.PathValue(name), "\x00", "/")
}

// jsonNotFound replaces the mux's plain-text 404 with RabbitMQ's JSON one and passes other
// statuses (405 with its Allow header) through without a body, as RabbitMQ sends them.
type jsonNotFound struct {
	http.ResponseWriter
	swallow bool
}

func (j *jsonNotFound) WriteHeader(code int) {
	j.swallow = true
	if code == http.StatusNotFound {
		notFound(j.ResponseWriter)
		return
	}
	j.ResponseWriter.Header().Del("Content-Type")
	j.ResponseWriter.WriteHeader(code)
}

func (j *jsonNotFound) Write(p []byte) (int, error) {
	if j.swallow {
		return len(p), nil
	}
	return j.ResponseWriter.Write(p)
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client went away; nothing to do
}

// writeError writes RabbitMQ's error body {"error": ..., "reason": ...}.
func writeError(w http.ResponseWriter, status int, errText, reason string) {
	writeJSON(w, status, map[string]string{"error": errText, "reason": reason})
}

func notFound(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, "Object Not Found", "Not Found")
}

func badRequest(w http.ResponseWriter, reason string) {
	writeError(w, http.StatusBadRequest, "bad_request", reason)
}

func notAuthorised(w http.ResponseWriter, reason string) {
	writeError(w, http.StatusUnauthorized, "not_authorised", reason)
}

const vhostRefused = "User not authorised to access virtual host"

// brokerError answers err from a Broker method with RabbitMQ's status and body.
func (a *api) brokerError(w http.ResponseWriter, r *http.Request, err error) {
	kind, reason := kindOf(err)
	switch kind {
	case KindNotFound:
		if reason == "" {
			notFound(w)
			return
		}
		writeError(w, http.StatusNotFound, "not_found", reason)
	case KindPreconditionFailed, KindBadRequest, KindResourceLocked:
		// RabbitMQ's management API answers the AMQP 406 and 405 channel errors with 400.
		badRequest(w, reason)
	case KindAccessRefused:
		notAuthorised(w, "Access refused.")
	default:
		a.log.Error("management API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal_server_error", reason)
	}
}

// readJSON decodes the request body into v; an empty body is {}. It answers the request itself
// and returns false when the body is too large or not JSON.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "bad_request",
				fmt.Sprintf("request body larger than %d bytes", tooBig.Limit))
			return false
		}
		badRequest(w, "could not read request body")
		return false
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	d := json.NewDecoder(strings.NewReader(string(body)))
	d.UseNumber()
	if err := d.Decode(v); err != nil || d.InputOffset() != int64(len(strings.TrimRightFunc(string(body), unicode.IsSpace))) {
		// Also refuses a second value after the first: {"a":1} junk is not JSON either.
		badRequest(w, "not_json")
		return false
	}
	return true
}

// vhostExists reports whether vhost is configured.
func (a *api) vhostExists(vhost string) bool {
	if c, ok := a.b.(VHostChecker); ok {
		return c.VHostExists(vhost)
	}
	for _, v := range a.b.VHosts() {
		if v.Name == vhost {
			return true
		}
	}
	return false
}

// VHostChecker is implemented by a Broker that can tell whether a vhost exists without
// listing every vhost with its totals (which sums over every queue): every vhost-scoped request
// asks, and a broker with 100,000 queues must not pay a full count for it.
type VHostChecker interface {
	VHostExists(name string) bool
}

// NodeNamer is implemented by a Broker that can give its node's name without computing the whole
// Overview (which sums over every queue): every listing names the node of each row.
type NodeNamer interface {
	NodeName() string
}

func (a *api) nodeName() string {
	if n, ok := a.b.(NodeNamer); ok {
		return n.NodeName()
	}
	return a.b.Overview().Node
}

// openVHost checks that the path's vhost exists (404) and that u may open it (401); it answers
// the request and returns false otherwise.
func (a *api) openVHost(w http.ResponseWriter, u *user, vhost string) bool {
	if !a.vhostExists(vhost) {
		notFound(w)
		return false
	}
	if !u.mayOpenVHost(vhost) {
		notAuthorised(w, vhostRefused)
		return false
	}
	return true
}

// permitted applies RabbitMQ's permission check: what ("configure", "write", "read") on name in
// vhost must match the user's regular expression (unanchored; "" matches nothing).
func (a *api) permitted(u *user, vhost, what, name string) bool {
	p, ok := u.perms[vhost]
	if !ok {
		return false
	}
	var pat string
	switch what {
	case "configure":
		pat = p.Configure
	case "write":
		pat = p.Write
	default:
		pat = p.Read
	}
	if pat == "" {
		return false
	}
	if name == "" {
		name = "amq.default"
	}
	v, ok := a.res.Load(pat)
	if !ok {
		re, err := regexp.Compile(pat)
		if err != nil {
			re = nil
		}
		v, _ = a.res.LoadOrStore(pat, re)
	}
	re := v.(*regexp.Regexp)
	return re != nil && re.MatchString(name)
}

// requirePerm answers 401 (RabbitMQ's body for a refused resource) unless u has permission.
func (a *api) requirePerm(w http.ResponseWriter, u *user, vhost, what, name string) bool {
	if !u.mayOpenVHost(vhost) {
		notAuthorised(w, vhostRefused)
		return false
	}
	if _, ok := u.perms[vhost]; !ok || !a.permitted(u, vhost, what, name) {
		notAuthorised(w, "Access refused.")
		return false
	}
	return true
}

// normalize turns the json.Numbers of a decoded body into int64 (or float64) so that the broker
// sees the types an AMQP client would send.
func normalize(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = normalizeValue(v)
	}
	return out
}

func normalizeValue(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		return normalize(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalizeValue(e)
		}
		return out
	}
	return v
}
