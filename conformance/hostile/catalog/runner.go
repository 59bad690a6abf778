package catalog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Need is what a case requires beyond a broker URL; a case whose needs are not met is skipped
// with the reason printed.
type Need uint8

const (
	// NeedRestricted: a second login (Env.RestrictedURL) with no configure or write permission.
	NeedRestricted Need = 1 << iota
	// NeedAlarm: a way to raise and clear a resource alarm (Env.RaiseAlarm, Env.ClearAlarm).
	NeedAlarm
	// NeedWarren: the case tests a Warren extension that other brokers ignore.
	NeedWarren
	// NeedAlarmHook: like NeedAlarm, but the alarm must be raised by the case (it publishes first),
	// so a broker whose alarm is on for the whole run (Env.AlarmOn) does not do.
	NeedAlarmHook
)

// Case is one hostile input.
type Case struct {
	Name    string
	Finding int    // the finding of issue 23 it reproduces, 0 for none
	Sends   string // what the hostile client sends
	Expect  string // RabbitMQ's answer, which the broker under test must give
	Needs   Need
	// Timeout bounds the case; 0 means DefaultCaseTimeout.
	Timeout time.Duration
	Run     func(t *T) error
}

// DefaultCaseTimeout bounds a case that does not set its own.
const DefaultCaseTimeout = 8 * time.Second

// Env is the broker under test and the optional hooks some cases need.
type Env struct {
	URL                            string // amqp://user:pass@host:port/vhost
	Addr                           string // host:port, for raw sockets
	User, Pass, VHost              string
	RestrictedURL                  string // optional: a user without configure/write permission on VHost
	RestrictedUser, RestrictedPass string
	// RaiseAlarm and ClearAlarm switch a resource alarm on and off (nil: alarm cases are skipped).
	RaiseAlarm, ClearAlarm func(ctx context.Context) error
	// AlarmOn says the broker's alarm is on for the whole run (Warren with memory.limit: 1, whose
	// alarm cannot be switched while it runs): only the alarm cases run, with nothing published
	// before the alarm.
	AlarmOn bool
	// Product is the broker's "product" server property ("RabbitMQ", "Warren"), set by Probe.
	Product string
	// Prefix starts every name the cases declare, unique per run.
	Prefix string
	seq    atomic.Uint64
}

// NewEnv parses an AMQP URL (and an optional restricted user's URL) into an Env.
func NewEnv(brokerURL, restrictedURL string) (*Env, error) {
	u, err := amqp091.ParseURI(brokerURL)
	if err != nil {
		return nil, fmt.Errorf("broker url: %w", err)
	}
	if u.Scheme != "amqp" {
		return nil, fmt.Errorf("broker url: scheme %q: raw cases need plain amqp://", u.Scheme)
	}
	e := &Env{
		URL: brokerURL, Addr: fmt.Sprintf("%s:%d", u.Host, u.Port),
		User: u.Username, Pass: u.Password, VHost: u.Vhost,
		Prefix: fmt.Sprintf("hostile.%x", time.Now().UnixNano()&0xffffffff),
	}
	if restrictedURL != "" {
		r, err := amqp091.ParseURI(restrictedURL)
		if err != nil {
			return nil, fmt.Errorf("restricted url: %w", err)
		}
		if r.Host != u.Host || r.Port != u.Port || r.Vhost != u.Vhost {
			return nil, errors.New("restricted url: must name the same broker and vhost as the broker url")
		}
		e.RestrictedURL, e.RestrictedUser, e.RestrictedPass = restrictedURL, r.Username, r.Password
	}
	return e, nil
}

// Probe connects once, records the broker's product name and checks that it answers.
func (e *Env) Probe(ctx context.Context) error {
	c, err := dialURL(ctx, e.URL)
	if err != nil {
		return err
	}
	defer c.Close()
	e.Product, _ = c.Properties["product"].(string)
	return nil
}

func (e *Env) name(what string) string {
	return fmt.Sprintf("%s.%s.%d", e.Prefix, what, e.seq.Add(1))
}

// dialURL connects with amqp091-go, bounded by ctx's deadline.
func dialURL(ctx context.Context, u string) (*amqp091.Connection, error) {
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	c, err := amqp091.DialConfig(u, amqp091.Config{Dial: amqp091.DefaultDial(timeout), Heartbeat: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", redact(u), err)
	}
	return c, nil
}

func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable url)"
	}
	return p.Redacted()
}

// T is a running case's handle: its deadline, its environment, and what to close when it ends
// (even when it ends by timing out, so a stuck case leaves no connection behind).
type T struct {
	// Ctx ends at the case's deadline; every dial, read and write of the case is bounded by it.
	Ctx context.Context
	// Env is the broker under test.
	Env *Env

	mu       sync.Mutex
	closers  []io.Closer
	cleanups []func(ctx context.Context)
	notes    []string
}

// Dial opens an amqp091-go connection to the broker, closed when the case ends.
func (t *T) Dial() (*amqp091.Connection, error) { return t.dialURL(t.Env.URL) }

func (t *T) dialURL(u string) (*amqp091.Connection, error) {
	c, err := dialURL(t.Ctx, u)
	if err != nil {
		return nil, err
	}
	t.track(c)
	return c, nil
}

// Channel dials and opens a channel.
func (t *T) Channel() (*amqp091.Connection, *amqp091.Channel, error) {
	c, err := t.Dial()
	if err != nil {
		return nil, nil, err
	}
	ch, err := c.Channel()
	if err != nil {
		return nil, nil, fmt.Errorf("channel.open: %w", err)
	}
	return c, ch, nil
}

// raw opens a raw connection (TCP only), closed when the case ends.
func (t *T) raw() (*rawConn, error) {
	r, err := dialRaw(t.Ctx, t.Env)
	if err != nil {
		return nil, err
	}
	t.track(r)
	return r, nil
}

// session opens a raw connection with a finished handshake and channel 1 open.
func (t *T) session(o hsOpts) (*rawConn, error) {
	r, err := rawSession(t.Ctx, t.Env, o)
	if err != nil {
		return nil, err
	}
	t.track(r)
	return r, nil
}

func (t *T) track(c io.Closer) {
	t.mu.Lock()
	t.closers = append(t.closers, c)
	t.mu.Unlock()
}

// Cleanup registers f to run when the case ends, after its connections are closed.
func (t *T) Cleanup(f func(ctx context.Context)) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

// Logf records a note printed with the case's result in verbose mode (a measured value, say).
func (t *T) Logf(format string, args ...any) {
	t.mu.Lock()
	t.notes = append(t.notes, fmt.Sprintf(format, args...))
	t.mu.Unlock()
}

// Queue declares a transient queue with a unique name (and args) through an admin connection
// and deletes it when the case ends.
func (t *T) Queue(args amqp091.Table) (string, error) {
	name := t.Env.name("q")
	_, ch, err := t.Channel()
	if err != nil {
		return "", err
	}
	if _, err := ch.QueueDeclare(name, false, false, false, false, args); err != nil {
		return "", fmt.Errorf("queue.declare %s: %w", name, err)
	}
	t.DeleteQueueLater(name)
	return name, nil
}

// DeleteQueueLater deletes queue name (if it exists) when the case ends.
func (t *T) DeleteQueueLater(name string) {
	t.Cleanup(func(ctx context.Context) {
		adminDo(ctx, t.Env, func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(name, false, false, false); return err })
	})
}

// DeleteExchangeLater deletes exchange name when the case ends.
func (t *T) DeleteExchangeLater(name string) {
	t.Cleanup(func(ctx context.Context) {
		adminDo(ctx, t.Env, func(ch *amqp091.Channel) error { return ch.ExchangeDelete(name, false, false) })
	})
}

// adminDo runs f on a channel of a fresh connection.
func adminDo(ctx context.Context, e *Env, f func(ch *amqp091.Channel) error) error {
	c, err := dialURL(ctx, e.URL)
	if err != nil {
		return err
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return err
	}
	return f(ch)
}

func (t *T) finish(ctx context.Context) {
	t.mu.Lock()
	closers, cleanups := t.closers, t.cleanups
	t.closers, t.cleanups = nil, nil
	t.mu.Unlock()
	for _, c := range closers {
		closeQuietly(c)
	}
	for _, f := range cleanups {
		f(ctx)
	}
}

// closeQuietly closes c without waiting long on a broker that does not answer: amqp091-go's
// Close waits for close-ok, so it is given a second and then abandoned.
func closeQuietly(c io.Closer) {
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
	}
}

// Result is the outcome of one case.
type Result struct {
	Case     *Case
	Err      error  // nil when the case passed
	Skipped  string // why the case did not run, "" when it ran
	Duration time.Duration
	// RSS in bytes before the case and at its peak (sampled while it ran and after), 0 when unknown.
	RSSBefore, RSSPeak int64
	Notes              []string
}

// RSSFunc returns the broker's resident set size in bytes.
type RSSFunc func() (int64, error)

// ProcRSS reads VmRSS of pid from /proc.
func ProcRSS(pid int) RSSFunc {
	return func() (int64, error) {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, fmt.Errorf("read RSS: %w", err)
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
				return ParseKB(rest)
			}
		}
		return 0, fmt.Errorf("read RSS: no VmRSS in /proc/%d/status", pid)
	}
}

// ParseKB parses "  123456 kB" (or a bare number of kB) into bytes.
func ParseKB(s string) (int64, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, errors.New("read RSS: empty value")
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w", err)
	}
	return n << 10, nil
}

// Runner plays cases against Env one at a time.
type Runner struct {
	Env *Env
	// RSS reads the broker's resident set size; nil skips the memory checks.
	RSS RSSFunc
	// RSSGrowth fails a case whose peak RSS exceeds the RSS before it by more than this.
	RSSGrowth int64
	// RSSMax, when positive, fails a case whose peak RSS exceeds it.
	RSSMax int64
	// Filter, when set, runs only the cases whose name it matches.
	Filter *regexp.Regexp
	// Progress, when set, is called with each result as soon as it is known.
	Progress func(Result)
	// SampleEvery is how often RSS is sampled while a case runs; 0 means 25 ms.
	SampleEvery time.Duration
}

// Run plays the cases in order and returns their results.
func (r *Runner) Run(ctx context.Context, cases []Case) []Result {
	var out []Result
	for i := range cases {
		c := &cases[i]
		if r.Filter != nil && !r.Filter.MatchString(c.Name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		res := r.runOne(ctx, c)
		if r.Progress != nil {
			r.Progress(res)
		}
		out = append(out, res)
	}
	return out
}

// skipReason says why c cannot run against r.Env, "" when it can.
func (r *Runner) skipReason(c *Case) string {
	switch {
	case c.Needs&NeedRestricted != 0 && r.Env.RestrictedURL == "":
		return "needs a user without configure/write permission (-restricted-url)"
	case r.Env.AlarmOn && c.Needs&NeedAlarm == 0:
		return "the broker is under an alarm for the whole run (-alarm-on): only alarm cases run"
	case c.Needs&NeedAlarmHook != 0 && (r.Env.RaiseAlarm == nil || r.Env.ClearAlarm == nil):
		return "needs a way to raise and clear a resource alarm (-alarm-cmd and -clear-alarm-cmd)"
	case c.Needs&NeedAlarm != 0 && (r.Env.RaiseAlarm == nil || r.Env.ClearAlarm == nil) && !r.Env.AlarmOn:
		return "needs a way to raise and clear a resource alarm (-alarm-cmd and -clear-alarm-cmd, or -alarm-on)"
	case c.Needs&NeedWarren != 0 && r.Env.Product != "Warren":
		return fmt.Sprintf("tests a Warren extension; the broker is %q", r.Env.Product)
	}
	return ""
}

func (r *Runner) runOne(ctx context.Context, c *Case) Result {
	res := Result{Case: c}
	if why := r.skipReason(c); why != "" {
		res.Skipped = why
		return res
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = DefaultCaseTimeout
	}
	var peak atomic.Int64
	sample := func() {
		if r.RSS == nil {
			return
		}
		if v, err := r.RSS(); err == nil {
			for {
				p := peak.Load()
				if v <= p || peak.CompareAndSwap(p, v) {
					break
				}
			}
		}
	}
	if r.RSS != nil {
		before, err := r.RSS()
		if err != nil {
			res.Err = fmt.Errorf("before the case: %w (is the broker still running?)", err)
			return res
		}
		res.RSSBefore = before
		peak.Store(before)
	}
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		every := r.SampleEvery
		if every <= 0 {
			every = 25 * time.Millisecond
		}
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tk.C:
				sample()
			}
		}
	}()

	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	t := &T{Ctx: cctx, Env: r.Env}
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("case panicked: %v", p)
			}
		}()
		done <- c.Run(t)
	}()
	select {
	case res.Err = <-done:
	case <-cctx.Done():
		res.Err = fmt.Errorf("timed out after %s", timeout)
	}
	// Memory is sampled once more before the case's connections go, so what they hold counts.
	sample()
	cancel()
	fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
	t.finish(fctx)
	fcancel()
	res.Duration = time.Since(start)

	// The broker must still answer a fresh client.
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	aliveErr := Alive(actx, r.Env)
	acancel()
	sample()
	close(stopSampling)
	<-sampled
	if aliveErr != nil {
		res.Err = errors.Join(res.Err, fmt.Errorf("broker no longer answers a fresh connection: %w", aliveErr))
	}
	res.RSSPeak = peak.Load()
	if r.RSS != nil {
		if grown := res.RSSPeak - res.RSSBefore; r.RSSGrowth > 0 && grown > r.RSSGrowth {
			res.Err = errors.Join(res.Err, fmt.Errorf("broker RSS grew by %s (%s -> %s), bound %s",
				MiB(grown), MiB(res.RSSBefore), MiB(res.RSSPeak), MiB(r.RSSGrowth)))
		}
		if r.RSSMax > 0 && res.RSSPeak > r.RSSMax {
			res.Err = errors.Join(res.Err, fmt.Errorf("broker RSS peaked at %s, bound %s", MiB(res.RSSPeak), MiB(r.RSSMax)))
		}
	}
	t.mu.Lock()
	res.Notes = t.notes
	t.mu.Unlock()
	return res
}

// Alive checks that the broker completes a handshake, opens a channel and declares a queue for
// a new connection.
func Alive(ctx context.Context, e *Env) error {
	c, err := dialURL(ctx, e.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(c)
	ch, err := c.Channel()
	if err != nil {
		return fmt.Errorf("channel.open: %w", err)
	}
	if _, err := ch.QueueDeclare("", false, true, true, false, nil); err != nil {
		return fmt.Errorf("queue.declare: %w", err)
	}
	return nil
}

// MiB formats a byte count in MiB.
func MiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
