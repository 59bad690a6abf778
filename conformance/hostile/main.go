// Command hostile plays a catalogue of hostile AMQP 0-9-1 clients against a broker and checks
// that each gets RabbitMQ's answer and that the broker survives it with bounded memory:
//
//	go run ./conformance/hostile -url amqp://guest:guest@127.0.0.1:5672/ -pid $(pgrep -f warren)
//
// It prints one line per case and then "N passed, M failed" (and how many were skipped), and
// exits 1 when a case failed. Cases that need something the command line did not give (a
// restricted user, an alarm hook) are skipped with the reason. The catalogue itself lives in
// the catalog package so that tests can call the same cases in-process.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strings"
	"time"

	"github.com/warrenmq/warren/conformance/hostile/catalog"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("hostile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "amqp://guest:guest@127.0.0.1:5672/", "broker under test (plain amqp://, loopback)")
	restricted := fs.String("restricted-url", "", "optional: a user of the same vhost with no configure and no write permission (read .*); enables the permission-bypass cases")
	pid := fs.Int("pid", 0, "broker process id: read /proc/PID/status VmRSS around every case")
	rssCmd := fs.String("rss-cmd", "", "shell command printing the broker's RSS in kB (instead of -pid), e.g. \"ps -o rss= -p $(pgrep beam.smp)\"")
	growth := fs.Int64("rss-growth-mib", 256, "fail a case whose peak broker RSS exceeds the RSS before it by more than this many MiB")
	rssMax := fs.Int64("rss-max-mib", 0, "fail a case whose peak broker RSS exceeds this many MiB (0: no absolute bound)")
	alarmCmd := fs.String("alarm-cmd", "", "shell command that raises a resource alarm (e.g. \"rabbitmqctl set_vm_memory_high_watermark 0.000001\"); enables the alarm cases")
	clearCmd := fs.String("clear-alarm-cmd", "", "shell command that clears the alarm again (e.g. \"rabbitmqctl set_vm_memory_high_watermark 0.4\")")
	alarmOn := fs.Bool("alarm-on", false, "the broker's alarm is on for the whole run (Warren with memory.limit: 1): run only the alarm cases that need nothing published first")
	only := fs.String("run", "", "run only the cases whose name matches this regular expression")
	list := fs.Bool("list", false, "list the cases with what they send and expect, and exit")
	verbose := fs.Bool("v", false, "print each case's notes (measured times, counts)")
	allowRemote := fs.Bool("allow-remote", false, "allow a broker URL whose host is not a loopback address (these inputs are meant to hurt a broker)")
	total := fs.Duration("timeout", 3*time.Minute, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cases := catalog.Catalogue()
	if *list {
		for _, c := range cases {
			f := ""
			if c.Finding != 0 {
				f = fmt.Sprintf(" [issue 23 finding %d]", c.Finding)
			}
			fmt.Fprintf(stdout, "%s%s\n  sends:  %s\n  expect: %s\n", c.Name, f, c.Sends, c.Expect)
		}
		fmt.Fprintf(stdout, "%d cases\n", len(cases))
		return 0
	}

	env, err := catalog.NewEnv(*url, *restricted)
	if err != nil {
		log.Error("bad arguments", "err", err)
		return 2
	}
	if !*allowRemote && !isLoopback(env.Addr) {
		log.Error("bad arguments: the broker is not on a loopback address; pass -allow-remote if you mean it", "addr", env.Addr)
		return 2
	}
	if (*alarmCmd == "") != (*clearCmd == "") {
		log.Error("bad arguments: -alarm-cmd and -clear-alarm-cmd go together")
		return 2
	}
	env.AlarmOn = *alarmOn
	if *alarmCmd != "" {
		env.RaiseAlarm = shellHook(*alarmCmd)
		env.ClearAlarm = shellHook(*clearCmd)
	}
	r := &catalog.Runner{Env: env, RSSGrowth: *growth << 20, RSSMax: *rssMax << 20}
	switch {
	case *pid != 0 && *rssCmd != "":
		log.Error("bad arguments: give -pid or -rss-cmd, not both")
		return 2
	case *pid != 0:
		r.RSS = catalog.ProcRSS(*pid)
	case *rssCmd != "":
		r.RSS = cmdRSS(*rssCmd)
		r.SampleEvery = 200 * time.Millisecond // a process per sample: keep it cheap
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			log.Error("bad -run pattern", "err", err)
			return 2
		}
		r.Filter = re
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *total)
	defer cancel()
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	err = env.Probe(pctx)
	pcancel()
	if err != nil {
		log.Error("broker does not answer", "err", err)
		return 2
	}
	fmt.Fprintf(stdout, "broker %q at %s; RSS checks: %s\n", env.Product, env.Addr, rssMode(r))

	var peak int64
	r.Progress = func(res catalog.Result) {
		peak = max(peak, res.RSSPeak)
		name := res.Case.Name
		if res.Case.Finding != 0 {
			name += fmt.Sprintf(" [finding %d]", res.Case.Finding)
		}
		mem := ""
		if res.RSSPeak != 0 {
			mem = fmt.Sprintf(", rss %s peak %+.1f MiB", catalog.MiB(res.RSSBefore), float64(res.RSSPeak-res.RSSBefore)/(1<<20))
		}
		switch {
		case res.Skipped != "":
			fmt.Fprintf(stdout, "SKIP %s: %s\n", name, res.Skipped)
		case res.Err != nil:
			fmt.Fprintf(stdout, "FAIL %s (%s%s): %s\n", name, res.Duration.Round(time.Millisecond), mem,
				strings.ReplaceAll(res.Err.Error(), "\n", "; "))
		default:
			fmt.Fprintf(stdout, "ok   %s (%s%s)\n", name, res.Duration.Round(time.Millisecond), mem)
		}
		if *verbose {
			for _, n := range res.Notes {
				fmt.Fprintf(stdout, "       %s\n", n)
			}
		}
	}
	start := time.Now()
	results := r.Run(ctx, cases)
	passed, failed, skipped := 0, 0, 0
	for _, res := range results {
		switch {
		case res.Skipped != "":
			skipped++
		case res.Err != nil:
			failed++
		default:
			passed++
		}
	}
	if r.RSS != nil {
		fmt.Fprintf(stdout, "peak broker RSS %s (bound: +%d MiB per case", catalog.MiB(peak), *growth)
		if *rssMax > 0 {
			fmt.Fprintf(stdout, ", %d MiB absolute", *rssMax)
		}
		fmt.Fprintln(stdout, ")")
	}
	if ctx.Err() != nil {
		fmt.Fprintf(stdout, "run stopped early: %v\n", ctx.Err())
		failed++
	}
	fmt.Fprintf(stdout, "%d passed, %d failed (%d skipped) in %s\n", passed, failed, skipped, time.Since(start).Round(time.Second))
	if failed > 0 {
		return 1
	}
	return 0
}

func rssMode(r *catalog.Runner) string {
	if r.RSS == nil {
		return "off (give -pid or -rss-cmd)"
	}
	s := fmt.Sprintf("peak growth per case <= %s", catalog.MiB(r.RSSGrowth))
	if r.RSSMax > 0 {
		s += fmt.Sprintf(", peak <= %s", catalog.MiB(r.RSSMax))
	}
	return s
}

// isLoopback reports whether host:port names this machine.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// shellHook runs cmd with sh -c; a non-zero exit is an error carrying its output.
func shellHook(cmd string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, "sh", "-c", cmd).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%q: %w: %s", cmd, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}

// cmdRSS reads the RSS (in kB) printed by a shell command.
func cmdRSS(cmd string) catalog.RSSFunc {
	return func() (int64, error) {
		out, err := exec.Command("sh", "-c", cmd).Output()
		if err != nil {
			return 0, fmt.Errorf("rss command %q: %w", cmd, err)
		}
		return catalog.ParseKB(string(out))
	}
}
