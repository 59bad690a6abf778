package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/server"
)

// startWarren runs a Warren in-process on a free loopback port with a temp data dir.
func startWarren(t *testing.T) *Env {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	e, err := NewEnv("amqp://guest:guest@"+srv.Addr().String()+"/", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.Probe(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestParseKB(t *testing.T) {
	for in, want := range map[string]int64{"  123 kB": 123 << 10, "42\n": 42 << 10} {
		got, err := ParseKB(in)
		if err != nil || got != want {
			t.Errorf("ParseKB(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "  ", "abc kB"} {
		if _, err := ParseKB(in); err == nil {
			t.Errorf("ParseKB(%q): no error", in)
		}
	}
}

func TestProcRSSOfThisProcess(t *testing.T) {
	n, err := ProcRSS(os.Getpid())()
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	if n < 1<<20 {
		t.Fatalf("RSS of a running Go test = %d bytes, want at least 1 MiB", n)
	}
}

func TestNewEnv(t *testing.T) {
	e, err := NewEnv("amqp://u:p@127.0.0.1:5690/v", "amqp://ro:rp@127.0.0.1:5690/v")
	if err != nil {
		t.Fatal(err)
	}
	if e.Addr != "127.0.0.1:5690" || e.User != "u" || e.Pass != "p" || e.VHost != "v" || e.RestrictedUser != "ro" || e.RestrictedPass != "rp" {
		t.Fatalf("env %+v", e)
	}
	if _, err := NewEnv("amqp://u:p@127.0.0.1:5690/", "amqp://ro:rp@127.0.0.1:5691/"); err == nil {
		t.Fatal("a restricted URL naming another broker was accepted")
	}
	if _, err := NewEnv("amqps://u:p@127.0.0.1:5671/", ""); err == nil {
		t.Fatal("amqps was accepted although the raw cases speak plain TCP")
	}
}

// The catalogue is what the issue asks for: at least 40 cases, unique names, each saying what it
// sends and expects, and findings 1, 2, 3, 7 and 8 all covered.
func TestCatalogueShape(t *testing.T) {
	cs := Catalogue()
	if len(cs) < 40 {
		t.Fatalf("%d cases, want at least 40", len(cs))
	}
	seen := map[string]bool{}
	findings := map[int]bool{}
	for _, c := range cs {
		if seen[c.Name] {
			t.Errorf("duplicate case %q", c.Name)
		}
		seen[c.Name] = true
		if c.Sends == "" || c.Expect == "" || c.Run == nil {
			t.Errorf("case %q lacks Sends, Expect or Run", c.Name)
		}
		findings[c.Finding] = true
	}
	for _, f := range []int{1, 2, 3, 7, 8} {
		if !findings[f] {
			t.Errorf("no case for finding %d", f)
		}
	}
}

// deepTable must be what it claims: a valid field table (the amqp package decodes 32 levels).
func TestDeepTable(t *testing.T) {
	tbl, n, err := amqp.DecodeTable(deepTable(20))
	if err != nil || n != len(deepTable(20)) {
		t.Fatalf("DecodeTable: %v (%d of %d bytes)", err, n, len(deepTable(20)))
	}
	depth := 0
	for {
		inner, ok := tbl["d"].(amqp.Table)
		if !ok {
			break
		}
		depth++
		tbl = inner
	}
	if depth != 20 {
		t.Fatalf("depth %d, want 20", depth)
	}
}

func TestRunnerSkips(t *testing.T) {
	e := &Env{Product: "RabbitMQ"}
	r := &Runner{Env: e}
	ran := false
	run := func(*T) error { ran = true; return nil }
	cs := []Case{
		{Name: "restricted", Needs: NeedRestricted, Run: run},
		{Name: "alarm", Needs: NeedAlarm, Run: run},
		{Name: "warren", Needs: NeedWarren, Run: run},
	}
	for _, res := range r.Run(context.Background(), cs) {
		if res.Skipped == "" {
			t.Errorf("%s: not skipped", res.Case.Name)
		}
	}
	if ran {
		t.Fatal("a skipped case ran")
	}
	// Under -alarm-on only the alarm cases run, and not those that raise the alarm themselves.
	e.AlarmOn = true
	r.Filter = regexp.MustCompile("^other$")
	res := r.Run(context.Background(), []Case{{Name: "other", Run: run}, {Name: "alarm", Run: run}})
	if len(res) != 1 || !strings.Contains(res[0].Skipped, "alarm") {
		t.Fatalf("results %+v: want only \"other\", skipped for the alarm", res)
	}
	if why := r.skipReason(&Case{Needs: NeedAlarm | NeedAlarmHook}); why == "" {
		t.Fatal("a case needing the alarm hook runs under -alarm-on")
	}
	if why := r.skipReason(&Case{Needs: NeedAlarm}); why != "" {
		t.Fatalf("an alarm case is skipped under -alarm-on: %s", why)
	}
}

// The runner fails a case that passes but grows the broker's RSS past the bound, fails a case that
// outlives its timeout, and reports the broker's death.
func TestRunnerVerdicts(t *testing.T) {
	e := startWarren(t)
	var rss atomic.Int64
	rss.Store(100 << 20)
	r := &Runner{Env: e, RSS: func() (int64, error) { return rss.Load(), nil }, RSSGrowth: 50 << 20}
	cs := []Case{
		{Name: "grows", Run: func(t *T) error {
			rss.Add(60 << 20)
			time.Sleep(100 * time.Millisecond)
			rss.Add(-60 << 20) // freed before the end: the peak still counts
			return nil
		}},
		{Name: "small", Run: func(t *T) error { rss.Add(10 << 20); return nil }},
		{Name: "slow", Timeout: 200 * time.Millisecond, Run: func(t *T) error {
			<-t.Ctx.Done()
			time.Sleep(time.Second)
			return nil
		}},
		{Name: "fails", Run: func(t *T) error { return errors.New("boom") }},
	}
	res := r.Run(context.Background(), cs)
	if len(res) != 4 {
		t.Fatalf("%d results", len(res))
	}
	if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "RSS grew by 60.0 MiB") {
		t.Errorf("grows: %v", res[0].Err)
	}
	if res[1].Err != nil || res[1].RSSPeak-res[1].RSSBefore != 10<<20 {
		t.Errorf("small: %v, peak %d before %d", res[1].Err, res[1].RSSPeak, res[1].RSSBefore)
	}
	if res[2].Err == nil || !strings.Contains(res[2].Err.Error(), "timed out") {
		t.Errorf("slow: %v", res[2].Err)
	}
	if res[3].Err == nil || res[3].Err.Error() != "boom" {
		t.Errorf("fails: %v", res[3].Err)
	}
}

// A few cases that today's Warren answers as RabbitMQ does, run end to end through the runner:
// the raw client, the expectations and the liveness check work against a real broker.
func TestRunnerCasesAgainstWarren(t *testing.T) {
	e := startWarren(t)
	r := &Runner{Env: e, Filter: regexp.MustCompile(`^(header-http|frame-bad-end-octet|channel-churn|exclusive-queue-of-another-connection|x-max-length-negative|tx-uncommitted-flood)$`)}
	res := r.Run(context.Background(), Catalogue())
	if len(res) != 6 {
		t.Fatalf("%d cases ran, want 6", len(res))
	}
	for _, x := range res {
		if x.Err != nil || x.Skipped != "" {
			t.Errorf("%s: err %v, skipped %q", x.Case.Name, x.Err, x.Skipped)
		}
	}
}

func TestCloseCode(t *testing.T) {
	closeErr := &unexpectedError{got: frame{typ: amqp.FrameMethod, method: &amqp.ConnectionClose{ReplyCode: 403}}, want: "connection.tune"}
	if got := closeCode(fmt.Errorf("handshake: %w", closeErr)); got != 403 {
		t.Errorf("closeCode of a wrapped connection.close 403 = %d", got)
	}
	other := &unexpectedError{got: frame{typ: amqp.FrameMethod, method: &amqp.ConnectionTune{}}, want: "connection.open-ok"}
	if got := closeCode(other); got != 0 {
		t.Errorf("closeCode of a tune = %d, want 0", got)
	}
	if closeCode(errors.New("x")) != 0 || closedByPeer(errors.New("x")) {
		t.Error("a plain error counts as a close")
	}
	if !closedByPeer(fmt.Errorf("read: %w", io.EOF)) {
		t.Error("EOF does not count as closed by the peer")
	}
}
