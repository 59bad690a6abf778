// Package bench is Warren's load generator, a PerfTest-like tool that speaks
// plain AMQP 0-9-1, so the same numbers can be taken against Warren and
// against RabbitMQ (`warren bench -h` lists the flags; compare.sh runs the
// Warren/RabbitMQ matrix). Producers, consumers and churn use the bench's own
// lean client (leanConn) by default, or amqp091-go with -client amqp091;
// topology (declare, bind, delete), idle-conns and queues mode always use
// amqp091-go.
//
// Modes (-mode):
//
//	throughput  producers/consumers over N queues or one fanout exchange (default)
//	churn       open connection, open channel, close; repeat (connections/s);
//	            -producers sets how many churn in parallel
//	idle-conns  open -conns idle connections and hold them for -duration
//	queues      declare -count queues on one channel, then delete them
//	many        many small clients: throughput with one queue per producer/consumer
//	            pair, defaults -producers 400 -rate 25 -size 1024 -autoack=false
//	            -prefetch 10 (consumers and queues follow -producers)
//	ramp        many, repeated for each count in -ramp-counts until end-to-end p99
//	            passes -ramp-p99 or the consumers fall behind; reports the largest
//	            count that kept up
//	floor       the same load through a bare forwarder in its own process (see
//	            floor.go): the CPU per message any broker must spend at least
//	delayed     -pmessages messages through an x-delayed-message exchange, due times
//	            spread over -delay-span: lateness of delivery and broker RSS (delayed.go)
//
// Throughput topology: queues are <prefix>-1..N; producer i publishes to
// queue i mod N (default exchange, or -exchange declared direct and bound by
// queue name), consumer i consumes queue i mod N. With -fanout N every
// producer publishes to one fanout exchange bound to N queues and -consumers
// is per queue. Every producer and consumer has its own connection.
//
// Measurements: publish, consume and confirm rates; confirm latency (publish
// to its basic.ack) and end-to-end latency (the producer stamps the first 8
// body bytes with a monotonic clock reading the consumer subtracts from its
// own), both in a fixed-size log-linear histogram (~3% resolution).
//
// With -broker-pid the broker's CPU time (utime+stime from /proc/PID/stat)
// over the measured interval is reported as a share of one core and as
// microseconds per consumed message.
//
// Backlogs: -pmessages N -consumers 0 -keep -confirm W fills the queues (use
// confirms so the broker holds every message when the run returns), then
// -drain consumes them and reports the drain rate. Without -confirm, a
// -pmessages run ends when the last publish is written, not stored.
package bench

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Config is the parsed command line of one bench run.
type Config struct {
	URL         string
	Mode        string
	Producers   int
	Consumers   int // with Fanout > 0: consumers per queue
	Queues      int
	Size        int
	Persistent  bool
	Confirm     int // publisher confirm window; 0 = no confirms
	AutoAck     bool
	Prefetch    int
	MultiAck    int
	Fanout      int
	Rate        float64 // msgs/s per producer; 0 = unlimited
	Duration    time.Duration
	DurationSet bool // -duration given explicitly (matters with -pmessages)
	PMessages   int64
	Drain       bool
	JSON        bool
	QueuePrefix string
	Exchange    string
	Keep        bool
	Conns       int
	Count       int
	Quiet       bool
	Coalesce    bool          // batch producer/consumer socket writes (see coalescingConn)
	Client      string        // "lean" (leanConn) or "amqp091" for producers, consumers and churn
	BrokerPID   int           // if > 0: sample this local process's RSS and CPU time (see Result)
	CPUProfile  string        // write the load generator's own CPU profile here
	RampCounts  string        // ramp mode: client counts to try, ascending, comma-separated
	RampP99     time.Duration // ramp mode: the end-to-end p99 a step must stay under
	RampBehind  float64       // ramp mode: the share of the offered (or published) messages a step may miss
	FloorAddr   string        // floor mode: address of a running forwarder; "" = start one
	DelaySpan   time.Duration // delayed mode: the due times are spread over this (delayed.go)

	// Streams (see stream.go).
	Stream       bool   // queues are x-queue-type: stream
	StreamOffset string // stream consumers' x-stream-offset: first, last, next, spread or a number
	StreamLength int64  // -drain -stream: messages in each stream

	// Quorum queues are x-queue-type: quorum (durable, as RabbitMQ requires; issue 21's points).
	Quorum bool

	server *serverInfo // what the broker said about itself; set by Run
}

// serverInfo records the broker's product and version from connection.start.
type serverInfo struct {
	mu   sync.Mutex
	name string
}

func (s *serverInfo) set(props map[string]any) {
	if s == nil {
		return
	}
	product, _ := props["product"].(string)
	version, _ := props["version"].(string)
	s.mu.Lock()
	if s.name == "" {
		s.name = strings.TrimSpace(product + " " + version)
	}
	s.mu.Unlock()
}

func (s *serverInfo) get() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.name
}

var modes = map[string]bool{"throughput": true, "churn": true, "idle-conns": true, "queues": true,
	"many": true, "ramp": true, "floor": true}

// ParseFlags parses bench arguments; usage text goes to out.
func ParseFlags(args []string, out io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.URL, "url", "amqp://guest:guest@localhost:5672/", "broker URL")
	fs.StringVar(&c.Mode, "mode", "throughput", "throughput | churn | idle-conns | queues | many | ramp | floor")
	fs.IntVar(&c.Producers, "producers", 1, "producers (one connection each); in churn mode: parallel churners")
	fs.IntVar(&c.Consumers, "consumers", 1, "consumers (one connection each); with -fanout: per queue")
	fs.IntVar(&c.Queues, "queues", 1, "queues; producer/consumer i uses queue i mod N")
	fs.IntVar(&c.Size, "size", 16, "message body size in bytes (>= 8 carries the latency timestamp)")
	fs.BoolVar(&c.Persistent, "persistent", false, "durable queues and delivery-mode 2 messages")
	fs.IntVar(&c.Confirm, "confirm", 0, "publisher confirm window (outstanding unconfirmed); 0 = no confirms")
	fs.BoolVar(&c.AutoAck, "autoack", true, "consume with no-ack")
	fs.IntVar(&c.Prefetch, "prefetch", 0, "basic.qos prefetch count for consumers (0 = unlimited)")
	fs.IntVar(&c.MultiAck, "multi-ack", 1, "with manual ack: ack every N deliveries with multiple=true")
	fs.IntVar(&c.Fanout, "fanout", 0, "if > 0: publish to one fanout exchange bound to N queues")
	fs.Float64Var(&c.Rate, "rate", 0, "publish rate limit in msgs/s per producer (0 = unlimited)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "run time (with -pmessages: a timeout, unlimited unless given)")
	fs.Int64Var(&c.PMessages, "pmessages", 0, "publish exactly N messages per producer then stop")
	fs.BoolVar(&c.Drain, "drain", false, "consume only: drain the existing queues, report the drain rate")
	fs.BoolVar(&c.JSON, "json", false, "print the final result as one JSON object (no live lines)")
	fs.StringVar(&c.QueuePrefix, "queue-prefix", "bench", "queue name prefix (queues are <prefix>-<i>)")
	fs.StringVar(&c.Exchange, "exchange", "", "exchange to publish to (declared direct, or fanout with -fanout); empty = default exchange")
	fs.BoolVar(&c.Keep, "keep", false, "keep queues and exchange at the end")
	fs.IntVar(&c.Conns, "conns", 100, "idle-conns mode: connections to open")
	fs.IntVar(&c.Count, "count", 1000, "queues mode: queues to declare")
	fs.BoolVar(&c.Quiet, "quiet", false, "no live per-second lines")
	fs.BoolVar(&c.Coalesce, "coalesce", true, "with -client amqp091: batch producer/consumer socket writes instead of one write(2) per publish")
	fs.IntVar(&c.BrokerPID, "broker-pid", 0, "PID of the broker when it runs on this host: report its RSS before the run and at the measurement point, and its CPU time over the measured interval")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write the load generator's own CPU profile (pprof) to this file, to check it is not the bottleneck")
	fs.StringVar(&c.Client, "client", "lean", "AMQP client for producers, consumers and churn: lean (the bench's own, cheap per message) or amqp091 (amqp091-go)")
	fs.StringVar(&c.RampCounts, "ramp-counts", "100,200,400,600,800,1000,1200,1600,2000", "ramp mode: comma-separated client counts to try, ascending")
	fs.DurationVar(&c.RampP99, "ramp-p99", 100*time.Millisecond, "ramp mode: a step passes while its end-to-end p99 stays under this")
	fs.Float64Var(&c.RampBehind, "ramp-behind", 0.05, "ramp mode: a step has fallen behind when its producers sent, or its consumers received, less than 1 minus this share of what was offered, or published")
	fs.StringVar(&c.FloorAddr, "floor-addr", "", "floor mode: host:port of a forwarder already running (-broker-pid its PID); empty = start one in a child process")
	fs.BoolVar(&c.Stream, "stream", false, "declare the queues as streams (x-queue-type: stream, durable; implies -persistent); consumers need -autoack=false and -prefetch")
	fs.BoolVar(&c.Quorum, "quorum", false, "declare the queues as quorum queues (x-queue-type: quorum, durable; implies -persistent)")
	fs.StringVar(&c.StreamOffset, "stream-offset", "next", "with -stream: consumers' x-stream-offset: first, last, next, an offset, or spread (consumer i of n on a stream starts at i*N/n of -stream-length N; needs -drain)")
	fs.Int64Var(&c.StreamLength, "stream-length", 0, "with -drain -stream: messages in each stream; each consumer reads from its offset to the end")
	fs.DurationVar(&c.DelaySpan, "delay-span", 0, "delayed mode (x-delayed-message, see delayed.go): spread the due times of the -pmessages messages over this (0: 1m)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if _, err := parseCounts(c.RampCounts); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("bench: unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	c.DurationSet = set["duration"]
	c.manyDefaults(set)
	if c.Stream || c.Quorum {
		c.Persistent = true // streams and quorum queues are durable
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	switch {
	case !modes[c.Mode]:
		return fmt.Errorf("bench: unknown -mode %q", c.Mode)
	case c.Producers < 0 || c.Consumers < 0:
		return errors.New("bench: -producers and -consumers must be >= 0")
	case c.Queues < 1:
		return errors.New("bench: -queues must be >= 1")
	case c.Size < 0:
		return errors.New("bench: -size must be >= 0")
	case c.Confirm < 0 || c.Prefetch < 0 || c.Fanout < 0 || c.PMessages < 0 || c.Rate < 0:
		return errors.New("bench: -confirm, -prefetch, -fanout, -pmessages and -rate must be >= 0")
	case c.Client != "lean" && c.Client != "amqp091":
		return fmt.Errorf("bench: unknown -client %q (lean or amqp091)", c.Client)
	case c.BrokerPID < 0:
		return errors.New("bench: -broker-pid must be >= 0")
	case c.Prefetch > 65535:
		return errors.New("bench: -prefetch must be at most 65535")
	case c.MultiAck < 1:
		return errors.New("bench: -multi-ack must be >= 1")
	case !c.AutoAck && c.Prefetch > 0 && c.MultiAck > c.Prefetch:
		// The consumer would wait forever for the delivery that triggers the ack.
		return fmt.Errorf("bench: -multi-ack %d exceeds -prefetch %d", c.MultiAck, c.Prefetch)
	case c.Duration <= 0:
		return errors.New("bench: -duration must be > 0")
	case c.Mode == "idle-conns" && c.Conns < 1:
		return errors.New("bench: -conns must be >= 1")
	case c.Mode == "queues" && c.Count < 1:
		return errors.New("bench: -count must be >= 1")
	case c.Mode == "churn" && c.Producers < 1:
		return errors.New("bench: churn mode needs -producers >= 1")
	case c.Quorum && c.Stream:
		return errors.New("bench: -quorum and -stream are exclusive (one x-queue-type)")
	case c.RampBehind < 0 || c.RampBehind >= 1:
		return errors.New("bench: -ramp-behind must be at least 0 and under 1")
	}
	if err := c.validateStream(); err != nil {
		return err
	}
	if _, err := amqp.ParseURI(c.URL); err != nil {
		return fmt.Errorf("bench: bad -url: %w", err)
	}
	return nil
}

// Result is everything a run measured; -json prints it. Fields that do not
// apply to the mode are omitted.
type Result struct {
	Mode       string  `json:"mode"`
	URL        string  `json:"url"`
	Client     string  `json:"client"`
	Producers  int     `json:"producers,omitempty"`
	Consumers  int     `json:"consumers,omitempty"`
	Queues     int     `json:"queues,omitempty"`
	Size       int     `json:"size,omitempty"`
	Persistent bool    `json:"persistent,omitempty"`
	Confirm    int     `json:"confirm,omitempty"`
	AutoAck    bool    `json:"autoack"`
	Prefetch   int     `json:"prefetch,omitempty"`
	MultiAck   int     `json:"multi_ack,omitempty"`
	Fanout     int     `json:"fanout,omitempty"`
	Rate       float64 `json:"rate,omitempty"`
	Stream     bool    `json:"stream,omitempty"`
	Quorum     bool    `json:"quorum,omitempty"`
	Offset     string  `json:"stream_offset,omitempty"`
	Seconds    float64 `json:"seconds"`

	Published      int64           `json:"published"`
	PublishSeconds float64         `json:"publish_seconds,omitempty"`
	PublishRate    float64         `json:"publish_rate"`
	Received       int64           `json:"received"`
	ConsumeRate    float64         `json:"consume_rate"`
	Confirmed      int64           `json:"confirmed,omitempty"`
	Nacked         int64           `json:"nacked,omitempty"`
	ConfirmRate    float64         `json:"confirm_rate,omitempty"`
	ConfirmLatency *LatencySummary `json:"confirm_latency,omitempty"`
	// The longest time one producer went without a confirm, and the wall clock (Unix ms) of
	// the confirm that ended it: with a node killed during the run, that confirm is the first
	// after the kill (compare.sh qf).
	ConfirmGapMaxMs     float64 `json:"confirm_gap_max_ms,omitempty"`
	ConfirmGapEndUnixMs int64   `json:"confirm_gap_end_unix_ms,omitempty"`
	// Every gap of 50 ms or more without a confirm, [start, end] in Unix ms (at most 100 a
	// producer): the one spanning a kill ends at the first confirm after it.
	ConfirmGaps [][2]int64      `json:"confirm_gaps,omitempty"`
	Latency     *LatencySummary `json:"latency,omitempty"`
	Backlog     int64           `json:"backlog,omitempty"` // drain: messages found at start

	Connections    int64           `json:"connections,omitempty"`
	ConnRate       float64         `json:"conn_rate,omitempty"`
	ConnLatency    *LatencySummary `json:"conn_latency,omitempty"`
	Failed         int64           `json:"failed,omitempty"`
	Alive          int64           `json:"alive,omitempty"`
	OpenSeconds    float64         `json:"open_seconds,omitempty"`
	Declared       int64           `json:"declared,omitempty"`
	DeclareSeconds float64         `json:"declare_seconds,omitempty"`
	DeclareRate    float64         `json:"declare_rate,omitempty"`
	DeleteSeconds  float64         `json:"delete_seconds,omitempty"`

	// LoadAvg is the host's 1-minute load average when the run ended (Linux
	// only): a loaded host makes broker comparisons meaningless.
	LoadAvg float64 `json:"loadavg,omitempty"`
	// Server is the broker's product and version from connection.start.
	Server string `json:"server,omitempty"`
	// With -broker-pid: the broker's resident set size before the run and at the measurement
	// point: the end of a throughput run (before queues are deleted; the top of a -pmessages
	// backlog), all idle connections open, all queues declared.
	RSSBefore int64 `json:"rss_before_bytes,omitempty"`
	RSS       int64 `json:"rss_bytes,omitempty"`
	// RSSMax is the largest RSS seen, sampled once a second during a throughput run and at its
	// measurement point.
	RSSMax int64 `json:"rss_max_bytes,omitempty"`

	// With -broker-pid (or the floor's own forwarder): the broker's CPU time over the measured
	// interval (utime+stime from /proc/PID/stat, 10 ms ticks), as a share of one core, and per
	// consumed message; BenchCPUPercent is this load generator's own share, for comparison.
	BrokerCPUSeconds float64 `json:"broker_cpu_seconds,omitempty"`
	BrokerCPUPercent float64 `json:"broker_cpu_percent,omitempty"`
	BrokerUsPerMsg   float64 `json:"broker_us_per_msg,omitempty"`
	BenchCPUPercent  float64 `json:"bench_cpu_percent,omitempty"`

	// Ramp mode: one entry per count tried, and the largest count whose step kept up
	// (sent >= 95% of offered, consumed >= 95% of published: -ramp-behind) with its p99
	// under -ramp-p99 (0: none did).
	Ramp          []RampStep `json:"ramp,omitempty"`
	RampMax       int        `json:"ramp_max_clients,omitempty"`
	RampStopCause string     `json:"ramp_stop,omitempty"`

	// Delayed mode: messages that arrived more than 1 ms before they were due.
	Early int64 `json:"early,omitempty"`

	Errors []string `json:"errors,omitempty"`
}

// loadAvg reads the 1-minute load average; 0 where /proc is unavailable.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return f
}

// Run executes `warren bench args...`, writing live lines and the summary (or
// the JSON result with -json) to stdout. -h prints usage and returns nil.
func Run(args []string, stdout io.Writer) error {
	if os.Getenv(forwarderEnv) != "" {
		// This process is the child a floor run started: be the forwarder, nothing else.
		return serveForwarder(os.Stdin, stdout)
	}
	cfg, err := ParseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	res := &Result{
		Mode: cfg.Mode, URL: redact(cfg.URL), Client: cfg.Client, Producers: cfg.Producers, Consumers: cfg.Consumers,
		Queues: cfg.Queues, Size: cfg.Size, Persistent: cfg.Persistent, Confirm: cfg.Confirm,
		AutoAck: cfg.AutoAck, Prefetch: cfg.Prefetch, MultiAck: cfg.MultiAck, Fanout: cfg.Fanout, Rate: cfg.Rate,
		Stream: cfg.Stream, Quorum: cfg.Quorum,
	}
	if cfg.Stream {
		res.Offset = cfg.StreamOffset
	}
	if cfg.Mode == "idle-conns" || cfg.Mode == "queues" {
		res.Client = "amqp091" // these modes always use amqp091-go
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return fmt.Errorf("bench: -cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("bench: -cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	cfg.server = &serverInfo{}
	// Many connections need as many descriptors on this side of the sockets.
	raiseFileLimit()
	res.RSSBefore = cfg.rss()
	live := stdout
	if cfg.JSON || cfg.Quiet {
		live = io.Discard
	}
	if run := featureModes[cfg.Mode]; run != nil { // features.go
		err = run(&cfg, res, live)
	}
	switch cfg.Mode {
	case "throughput":
		err = runThroughput(&cfg, res, live)
	case "churn":
		err = runChurn(&cfg, res, live)
	case "idle-conns":
		err = runIdleConns(&cfg, res, live)
	case "queues":
		err = runQueues(&cfg, res)
	case "many":
		err = runThroughput(&cfg, res, live)
	case "ramp":
		err = runRamp(&cfg, res, live)
	case "floor":
		err = runFloor(&cfg, res, live)
	case "delayed":
		err = runDelayed(&cfg, res, live)
	}
	res.LoadAvg = loadAvg()
	res.Server = cfg.server.get()
	if err != nil && res.Seconds == 0 {
		return err // failed during setup: nothing was measured
	}
	// A run aborted mid-way (e.g. the broker closed a channel) still reports
	// what it measured, with the error in Errors, and then fails.
	if cfg.JSON {
		if perr := json.NewEncoder(stdout).Encode(res); perr != nil {
			return fmt.Errorf("bench: write result: %w", perr)
		}
	} else {
		printSummary(stdout, res)
	}
	return err
}

// rss returns the broker's resident set size in bytes (VmRSS), 0 without -broker-pid or /proc.
func (c *Config) rss() int64 {
	if c.BrokerPID <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.BrokerPID))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// redact hides the password so results can be pasted into reports.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxx")
	}
	return u.String()
}

// dial opens a named connection; coalesce selects the batching socket
// wrapper, worth it only on connections that publish or ack at high rates.
func dial(cfg *Config, name string, coalesce bool) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(name)
	ac := amqp.Config{Properties: props}
	if coalesce {
		ac.Dial = coalescingDial
	}
	conn, err := amqp.DialConfig(cfg.URL, ac)
	if err != nil {
		return nil, fmt.Errorf("bench: dial %s: %w", name, err)
	}
	cfg.server.set(conn.Properties)
	return conn, nil
}

func trimFloat(f float64) string {
	switch {
	case f >= 100:
		return strconv.FormatFloat(f, 'f', 0, 64)
	case f >= 10:
		return strconv.FormatFloat(f, 'f', 1, 64)
	default:
		return strconv.FormatFloat(f, 'f', 2, 64)
	}
}

func rate(n int64, secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return float64(int64(float64(n)/secs*10)) / 10
}

func printLat(w io.Writer, name string, l *LatencySummary) {
	if l == nil || l.Count == 0 {
		return
	}
	fmt.Fprintf(w, "%-18s n=%d mean=%.3fms p50=%.3fms p95=%.3fms p99=%.3fms p99.9=%.3fms max=%.3fms\n",
		name+":", l.Count, l.MeanMs, l.P50Ms, l.P95Ms, l.P99Ms, l.P999Ms, l.MaxMs)
}

func printSummary(w io.Writer, r *Result) {
	var b strings.Builder
	fmt.Fprintf(&b, "--- bench %s %s (%s, client %s): %.2fs (load average %.2f)\n", r.Mode, r.URL, r.Server, r.Client, r.Seconds, r.LoadAvg)
	if r.RSS > 0 {
		fmt.Fprintf(&b, "%-18s %.1f MB before, %.1f MB at the measurement point", "broker RSS:", float64(r.RSSBefore)/1e6, float64(r.RSS)/1e6)
		if r.RSSMax > r.RSS {
			fmt.Fprintf(&b, ", %.1f MB at most", float64(r.RSSMax)/1e6)
		}
		b.WriteByte('\n')
	}
	if r.BrokerCPUSeconds > 0 {
		fmt.Fprintf(&b, "%-18s %.1f%% of a core", "broker CPU:", r.BrokerCPUPercent)
		if r.BrokerUsPerMsg > 0 {
			fmt.Fprintf(&b, ", %.1f us per consumed message", r.BrokerUsPerMsg)
		}
		fmt.Fprintf(&b, " (load generator: %.1f%%)\n", r.BenchCPUPercent)
	}
	switch r.Mode {
	case "ramp":
		for _, s := range r.Ramp {
			fmt.Fprintf(&b, "%5d clients: sent %.0f/s received %.0f/s p50=%.1fms p99=%.1fms p99.9=%.1fms cpu=%.0f%% (%.1f us/msg)%s\n",
				s.Clients, s.PublishRate, s.ConsumeRate, s.P50Ms, s.P99Ms, s.P999Ms, s.BrokerCPU, s.BrokerUsPerMsg, errSuffix(s.Error))
		}
		fmt.Fprintf(&b, "%-18s %d (stopped: %s)\n", "max clients:", r.RampMax, r.RampStopCause)
	case "throughput", "many", "floor":
		fmt.Fprintf(&b, "producers=%d consumers=%d queues=%d fanout=%d size=%d persistent=%v confirm=%d autoack=%v prefetch=%d multi-ack=%d",
			r.Producers, r.Consumers, r.Queues, r.Fanout, r.Size, r.Persistent, r.Confirm, r.AutoAck, r.Prefetch, r.MultiAck)
		if r.Stream {
			fmt.Fprintf(&b, " stream offset=%s", r.Offset)
		}
		b.WriteByte('\n')
		if r.Backlog > 0 {
			fmt.Fprintf(&b, "%-18s %d msgs\n", "backlog:", r.Backlog)
		}
		fmt.Fprintf(&b, "%-18s %d msgs, %.1f msgs/s", "published:", r.Published, r.PublishRate)
		if r.PublishSeconds > 0 {
			fmt.Fprintf(&b, " (in %.2fs)", r.PublishSeconds)
		}
		b.WriteByte('\n')
		if r.Confirm > 0 {
			fmt.Fprintf(&b, "%-18s %d msgs, %.1f msgs/s, nacked %d\n", "confirmed:", r.Confirmed, r.ConfirmRate, r.Nacked)
		}
		fmt.Fprintf(&b, "%-18s %d msgs, %.1f msgs/s\n", "received:", r.Received, r.ConsumeRate)
		printLat(&b, "confirm latency", r.ConfirmLatency)
		printLat(&b, "e2e latency", r.Latency)
	case "delayed":
		printDelayed(&b, r)
	case "churn":
		fmt.Fprintf(&b, "%-18s %d (%.1f/s), failed %d\n", "connections:", r.Connections, r.ConnRate, r.Failed)
		printLat(&b, "open+close", r.ConnLatency)
	case "idle-conns":
		fmt.Fprintf(&b, "%-18s %d in %.2fs, failed %d, alive at end %d\n", "opened:", r.Connections, r.OpenSeconds, r.Failed, r.Alive)
	case "queues":
		fmt.Fprintf(&b, "%-18s %d in %.3fs (%.1f/s), deleted in %.3fs\n", "declared:", r.Declared, r.DeclareSeconds, r.DeclareRate, r.DeleteSeconds)
	}
	printFeature(&b, r) // features.go
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "error: %s\n", e)
	}
	io.WriteString(w, b.String())
}

// epoch anchors the latency timestamps: time.Since uses the monotonic clock,
// and producers and consumers share this process, so body timestamps are
// comparable without any wall-clock synchronisation.
var epoch = time.Now()

func nowNanos() int64 { return int64(time.Since(epoch)) }

func putStamp(body []byte, ts int64) {
	if len(body) >= 8 {
		binary.LittleEndian.PutUint64(body, uint64(ts))
	}
}

func readStamp(body []byte) (int64, bool) {
	if len(body) < 8 {
		return 0, false
	}
	return int64(binary.LittleEndian.Uint64(body)), true
}
