//go:build linux

// Command soak builds Warren, runs it as a child process (temp data dir on its own tmpfs, a
// config file it writes, every listener on a free loopback port) and drives a mixed load
// against it for -duration: confirmed persistent publishers to durable queues, transient
// publishers, consumers that ack, nack, reject, use prefetch or no-ack and come and go,
// declares and deletes of exchanges, queues and bindings, connection and channel churn,
// exclusive and auto-delete queues, a TTL queue dead-lettering into another, configuration
// reloads (SIGHUP), and a disk alarm crossed and cleared periodically (a file fills the
// broker's tmpfs to under disk.free_limit, then goes). It samples the broker's RSS, goroutines,
// heap and open files into a CSV and, at the end, checks:
//
//   - every confirmed persistent message to a durable queue was consumed (by id), and every
//     confirmed message to the TTL queue was dead-lettered and consumed;
//   - no client saw an unexpected error (expected ones - connection.blocked during an alarm,
//     404 after a delete - are counted);
//   - each alarm blocked the publishers and unblocked them when it cleared;
//   - every reload was applied;
//   - the broker still answers and shuts down cleanly on SIGTERM;
//   - no leak: RSS and goroutines at the end of the load are near their level after warm-up,
//     and goroutines back at their idle level once every client has gone (slopes printed).
//
// It prints what it checked and exits 1 on a failure. Linux only (/proc, tmpfs, Pdeathsig);
// the disk alarm needs root for the tmpfs and is reported as not run otherwise.
//
//	go run ./conformance/soak -duration 1h -csv /work/soak-1h.csv
package main

import (
	"context"
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

type options struct {
	duration      time.Duration
	repo          string
	bin           string
	csvPath       string
	brokerLog     string
	sampleEvery   time.Duration
	alarm         bool
	alarmEvery    time.Duration
	alarmHold     time.Duration
	reloadEvery   time.Duration
	publishers    int
	rateDurable   int
	rateTransient int
	rateTTL       int
	window        time.Duration
	drain         time.Duration
}

func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.DurationVar(&o.duration, "duration", time.Minute, "how long the load runs")
	fs.StringVar(&o.repo, "repo", ".", "Warren repository root to build")
	fs.StringVar(&o.bin, "warren", "", "prebuilt Warren binary (default: go build of -repo)")
	fs.StringVar(&o.csvPath, "csv", "", "write the samples to this CSV file")
	fs.StringVar(&o.brokerLog, "broker-log", "", "keep the broker's log in this file (default: temp, removed)")
	fs.DurationVar(&o.sampleEvery, "sample", 5*time.Second, "sampling interval")
	fs.BoolVar(&o.alarm, "alarm", true, "cross and clear the disk alarm periodically (needs root for a tmpfs)")
	fs.DurationVar(&o.alarmEvery, "alarm-every", 3*time.Minute, "interval between alarm cycles")
	fs.DurationVar(&o.alarmHold, "alarm-hold", 10*time.Second, "how long each alarm is held")
	fs.DurationVar(&o.reloadEvery, "reload-every", time.Minute, "interval between config reloads (SIGHUP)")
	fs.IntVar(&o.publishers, "publishers", 2, "confirmed persistent publishers (and as many transient ones)")
	fs.IntVar(&o.rateDurable, "rate-durable", 200, "persistent msgs/s per confirmed publisher")
	fs.IntVar(&o.rateTransient, "rate-transient", 400, "transient msgs/s per transient publisher")
	fs.IntVar(&o.rateTTL, "rate-ttl", 20, "msgs/s to the TTL queue")
	fs.DurationVar(&o.window, "window", 5*time.Minute, "width of the summary's RSS/goroutine windows")
	fs.DurationVar(&o.drain, "drain", 2*time.Minute, "how long consumers may take to drain after the load")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	case o.duration < 20*time.Second:
		return o, fmt.Errorf("-duration %v: at least 20s (warm-up and the windows compared need room)", o.duration)
	case o.sampleEvery <= 0 || o.sampleEvery > o.duration/4:
		return o, fmt.Errorf("-sample %v: above 0 and at most a quarter of -duration", o.sampleEvery)
	case o.publishers < 1 || o.rateDurable < 1 || o.rateTransient < 1 || o.rateTTL < 1:
		return o, fmt.Errorf("-publishers and the rates must be at least 1")
	case o.alarmEvery <= o.alarmHold:
		return o, fmt.Errorf("-alarm-every must exceed -alarm-hold")
	}
	return o, nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout))
}

// result collects the checks for the summary.
type result struct {
	mu       sync.Mutex
	checks   []string
	failures []string
}

func (r *result) check(ok bool, format string, a ...any) {
	line := fmt.Sprintf(format, a...)
	r.mu.Lock()
	defer r.mu.Unlock()
	if ok {
		r.checks = append(r.checks, "ok    "+line)
	} else {
		r.checks = append(r.checks, "FAIL  "+line)
		r.failures = append(r.failures, line)
	}
}

func (r *result) note(format string, a ...any) {
	r.mu.Lock()
	r.checks = append(r.checks, "note  "+fmt.Sprintf(format, a...))
	r.mu.Unlock()
}

func run(args []string, out io.Writer) int {
	o, err := parseFlags(args, out)
	if err != nil {
		fmt.Fprintln(out, "soak:", err)
		return 2
	}
	dir, err := os.MkdirTemp("", "warren-soak-")
	if err != nil {
		fmt.Fprintln(out, "soak:", err)
		return 2
	}
	b := &broker{dir: dir, bin: o.bin, logPath: o.brokerLog}
	cleanup := func() {
		b.kill()
		b.unmount()
		os.RemoveAll(dir)
	}
	defer cleanup()
	// Interrupted: the broker goes too (Pdeathsig covers SIGKILL of the soak).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintln(out, "soak: interrupted by", s)
		cleanup()
		os.Exit(2)
	}()

	if b.bin == "" {
		b.bin = filepath.Join(dir, "warren")
		fmt.Fprintln(out, "soak: building Warren from", o.repo)
		if err := buildWarren(context.Background(), o.repo, b.bin); err != nil {
			fmt.Fprintln(out, "soak:", err)
			return 2
		}
	}
	noAlarm := ""
	if o.alarm {
		noAlarm = b.prepare(true)
	} else {
		b.prepare(false)
		noAlarm = "-alarm=false"
	}
	if err := b.start(); err != nil {
		fmt.Fprintln(out, "soak:", err)
		return 2
	}
	fmt.Fprintf(out, "soak: warren pid %d on %s (pprof %s), data %s, load for %v\n", b.cmd.Process.Pid, b.addr, b.pprof, b.dataDir, o.duration)

	var csvw *csv.Writer
	if o.csvPath != "" {
		f, err := os.Create(o.csvPath)
		if err != nil {
			fmt.Fprintln(out, "soak:", err)
			return 2
		}
		defer f.Close()
		csvw = csv.NewWriter(f)
		_ = csvw.Write([]string{"t_s", "phase", "rss_kib", "rss_anon_kib", "rss_shmem_kib", "store_bytes", "goroutines", "heap_inuse", "heap_alloc", "fds", "alarm",
			"blocked_now", "durable_confirmed", "durable_consumed", "ttl_confirmed", "ttl_dead_consumed",
			"transient_published", "transient_consumed", "topology_cycles", "connection_cycles", "exclusive_cycles",
			"unexpected_errors"})
	}

	res := &result{}
	l := &load{url: "amqp://guest:guest@" + b.addr + "/", opts: o, errs: newErrorBook(),
		durable: newTracker("d"), ttl: newTracker("t")}

	// Idle level before any client: goroutines and live heap after a collection.
	var idleBefore []point
	for i := 0; i < 3; i++ {
		s, err := b.sample(true)
		if err != nil {
			fmt.Fprintln(out, "soak: sample:", err)
			return 2
		}
		idleBefore = append(idleBefore, point{Phase: "idle-before", sample: s})
		time.Sleep(500 * time.Millisecond)
	}
	if err := l.setup(); err != nil {
		fmt.Fprintln(out, "soak:", err)
		return 2
	}

	start := time.Now()
	var (
		phase  atomic.Value
		ptsMu  sync.Mutex
		points []point
	)
	phase.Store("load")
	record := func(p point) {
		ptsMu.Lock()
		points = append(points, p)
		ptsMu.Unlock()
		if csvw == nil {
			return
		}
		d, t := l.durable.stats(), l.ttl.stats()
		alarm := "0"
		if l.inAlarm.Load() {
			alarm = "1"
		}
		i := func(v int64) string { return strconv.FormatInt(v, 10) }
		_ = csvw.Write([]string{strconv.FormatFloat(p.T.Seconds(), 'f', 1, 64), p.Phase, i(p.RSSKiB), i(p.AnonKiB), i(p.ShmemKiB), i(p.StoreBytes), i(p.Goroutines),
			i(p.HeapInuse), i(p.HeapAlloc), i(p.FDs), alarm, i(l.blockedNow.Load()), i(d.Confirmed), i(d.Consumed),
			i(t.Confirmed), i(t.Consumed), i(l.transPub.Load()), i(l.transCons.Load()), i(l.churnCycles.Load()),
			i(l.connCycles.Load()), i(l.exclCycles.Load()), i(l.errs.unexpectedTotal())})
		csvw.Flush()
	}
	for _, p := range idleBefore {
		record(p)
	}
	samplerCtx, stopSampler := context.WithCancel(context.Background())
	samplerDone := make(chan struct{})
	var sampleErrs atomic.Int64
	go func() {
		defer close(samplerDone)
		tk := time.NewTicker(o.sampleEvery)
		defer tk.Stop()
		for {
			select {
			case <-samplerCtx.Done():
				return
			case <-tk.C:
			}
			s, err := b.sample(false)
			if err != nil {
				sampleErrs.Add(1)
				continue
			}
			record(point{T: time.Since(start), Phase: phase.Load().(string), sample: s})
		}
	}()

	// Publishers, churn, alarms and reloads stop at the deadline; consumers drain after it.
	loadCtx, stopLoad := context.WithTimeout(context.Background(), o.duration)
	defer stopLoad()
	consCtx, stopCons := context.WithCancel(context.Background())
	defer stopCons()
	// pubWG: the workers that stop at the deadline (publishers wait for their last confirms);
	// wg: all of them.
	var wg, pubWG sync.WaitGroup
	goWorker := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	goPublisher := func(f func()) {
		pubWG.Add(1)
		goWorker(func() { defer pubWG.Done(); f() })
	}
	for p := 0; p < o.publishers; p++ {
		goPublisher(func() {
			l.confirmedPublisher(loadCtx, fmt.Sprintf("durable-publisher-%d", p), l.durable, p, o.rateDurable, durableExchange,
				func(seq uint64) string { return fmt.Sprintf("q%d", seq%durableQueues) })
		})
		goPublisher(func() { l.transientPublisher(loadCtx, fmt.Sprintf("transient-publisher-%d", p), o.rateTransient) })
	}
	goPublisher(func() {
		l.confirmedPublisher(loadCtx, "ttl-publisher", l.ttl, 0, o.rateTTL, "", func(uint64) string { return ttlQueue })
	})
	recordDurable := func(d amqp.Delivery) { l.durable.consume(d.MessageId) }
	for q := 0; q < durableQueues; q++ {
		name := fmt.Sprintf("soak.durable.%d", q)
		goWorker(func() { l.consumer(consCtx, "consumer-"+name+"-p10", name, 10, recordDurable) })
		goWorker(func() { l.consumer(consCtx, "consumer-"+name+"-p200", name, 200, recordDurable) })
	}
	goWorker(func() {
		l.consumer(consCtx, "consumer-dead", deadQueue, 50, func(d amqp.Delivery) { l.ttl.consume(d.MessageId) })
	})
	goWorker(func() { l.autoAckConsumer(consCtx, "autoack-consumer", "soak.t.auto") })
	goWorker(func() {
		l.consumer(consCtx, "prefetch-consumer", "soak.t.prefetch", 20, func(amqp.Delivery) { l.transCons.Add(1) })
	})
	goPublisher(func() { l.topologyChurn(loadCtx, "topology-churn") })
	goPublisher(func() { l.exclusiveChurn(loadCtx, "exclusive-churn") })
	goPublisher(func() { l.connChurn(loadCtx, "connection-churn-0") })
	goPublisher(func() { l.connChurn(loadCtx, "connection-churn-1") })

	// Reloads.
	reloadsDone := make(chan struct{})
	go func() {
		defer close(reloadsDone)
		tk := time.NewTicker(o.reloadEvery)
		defer tk.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-tk.C:
			}
			if err := b.reload(); err != nil {
				l.errs.fail("reload", err)
			}
		}
	}()

	// Alarm cycles.
	warm := min(max(o.duration/6, 10*time.Second), 10*time.Minute)
	var alarmCycles, alarmOK int
	var alarmBlockSecs, alarmClearSecs []float64
	alarmDone := make(chan struct{})
	go func() {
		defer close(alarmDone)
		if noAlarm != "" {
			return
		}
		next := time.NewTimer(min(warm, o.alarmEvery))
		defer next.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-next.C:
			}
			next.Reset(o.alarmEvery)
			alarmCycles++
			if bs, cs, err := alarmCycle(loadCtx, b, l, o.alarmHold); err != nil {
				if loadCtx.Err() == nil {
					l.errs.fail("alarm", err)
				} else {
					alarmCycles-- // cut short by the end of the load
				}
			} else {
				alarmOK++
				alarmBlockSecs = append(alarmBlockSecs, bs)
				alarmClearSecs = append(alarmClearSecs, cs)
			}
		}
	}()

	<-loadCtx.Done()
	<-alarmDone
	<-reloadsDone
	phase.Store("drain")
	loadEnd := time.Since(start)
	fmt.Fprintf(out, "soak: load ended after %v; draining\n", loadEnd.Round(time.Second))
	pubsDone := make(chan struct{})
	go func() { pubWG.Wait(); close(pubsDone) }()
	select {
	case <-pubsDone:
	case <-time.After(3 * time.Minute):
		res.check(false, "publishers and churn workers stopped: some still running 3 min after the end (a hung call)")
	}
	drainStart := time.Now()
	for time.Since(drainStart) < o.drain {
		if l.durable.stats().Missing == 0 && l.ttl.stats().Missing == 0 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	drainTime := time.Since(drainStart)
	stopCons()
	workersDone := make(chan struct{})
	go func() { wg.Wait(); close(workersDone) }()
	select {
	case <-workersDone:
		res.check(true, "every client worker stopped")
	case <-time.After(90 * time.Second):
		res.check(false, "every client worker stopped: some still running 90 s after the end (a hung call)")
	}

	// Idle level after every client has gone.
	phase.Store("idle-after")
	time.Sleep(5 * time.Second)
	var idleAfter []point
	for i := 0; i < 3; i++ {
		s, err := b.sample(true)
		if err == nil {
			p := point{T: time.Since(start), Phase: "idle-after", sample: s}
			idleAfter = append(idleAfter, p)
			record(p)
		}
		time.Sleep(time.Second)
	}
	stopSampler()
	<-samplerDone

	// Checks.
	d := l.durable.stats()
	res.check(d.Confirmed > 0 && d.Missing == 0, "durable queues: %d persistent messages confirmed, %d consumed (%d acked twice), confirmed but never consumed: %d %v (drain took %v)",
		d.Confirmed, d.Consumed, d.Duplicates, d.Missing, d.Examples, drainTime.Round(100*time.Millisecond))
	t := l.ttl.stats()
	res.check(t.Confirmed > 0 && t.Missing == 0, "TTL queue: %d confirmed, %d dead-lettered after %d ms and consumed, missing: %d %v",
		t.Confirmed, t.Consumed, ttlMillis, t.Missing, t.Examples)
	res.check(d.Foreign == 0 && t.Foreign == 0, "no foreign message ids in the durable and dead-letter queues (%d, %d)", d.Foreign, t.Foreign)
	res.check(l.nacked.Load() == 0, "publisher nacks: %d", l.nacked.Load())
	res.check(l.transPub.Load() > 0 && l.transCons.Load() > 0, "transient: %d published, %d consumed (the rest dropped by max-length, as configured)",
		l.transPub.Load(), l.transCons.Load())
	res.check(l.churnCycles.Load() > 0 && l.exclCycles.Load() > 0 && l.connCycles.Load() > 0,
		"churn: %d exchange/queue/binding declare-use-delete cycles, %d exclusive + auto-delete queue cycles, %d connection cycles",
		l.churnCycles.Load(), l.exclCycles.Load(), l.connCycles.Load())
	if noAlarm != "" {
		res.note("resource alarm not crossed: %s", noAlarm)
	} else {
		res.check(alarmCycles > 0 && alarmOK == alarmCycles,
			"disk alarm crossed and cleared %d/%d times; blocked after %s s, unblocked after %s s (per cycle, max)",
			alarmOK, alarmCycles, fmtMax(alarmBlockSecs), fmtMax(alarmClearSecs))
		res.check(l.blockedEvents.Load() == l.unblockedEvents.Load(), "connection.blocked %d times, connection.unblocked %d times",
			l.blockedEvents.Load(), l.unblockedEvents.Load())
	}
	reloaded, rejected := b.logCount(`msg="config reloaded"`), b.logCount("config reload rejected")
	res.check(reloaded >= b.reloads && rejected == 0 && b.reloads > 0, "reloads: %d sent (SIGHUP), %d applied, %d rejected", b.reloads, reloaded, rejected)
	res.check(sampleErrs.Load() == 0, "sampler errors (pprof or /proc unreadable): %d", sampleErrs.Load())
	l.errs.mu.Lock()
	unexpected := int64(0)
	for _, k := range sortedKeys(l.errs.unexpected) {
		unexpected += l.errs.unexpected[k]
	}
	res.check(unexpected == 0, "unexpected client errors: %d", unexpected)
	for _, k := range sortedKeys(l.errs.unexpected) {
		res.note("  unexpected %-60s %d", k, l.errs.unexpected[k])
	}
	for _, s := range l.errs.samples {
		res.note("  e.g. %s", s)
	}
	for _, k := range sortedKeys(l.errs.expected) {
		res.note("  expected   %-60s %d", k, l.errs.expected[k])
	}
	l.errs.mu.Unlock()

	// Leaks: the load-phase windows after warm-up and at the end, and the idle levels.
	span := max(o.duration/6, 3*o.sampleEvery)
	early := between(points, warm, warm+span)
	late := between(points, loadEnd-span, loadEnd+time.Second)
	if len(early) == 0 || len(late) == 0 {
		res.check(false, "leak check: not enough samples (early %d, late %d)", len(early), len(late))
	} else {
		anon := func(p point) float64 { return float64(p.AnonKiB) / 1024 }
		_, er := series(early, anon)
		_, lr := series(late, anon)
		_, eg := series(early, func(p point) float64 { return float64(p.Goroutines) })
		_, lg := series(late, func(p point) float64 { return float64(p.Goroutines) })
		steady := between(points, warm, loadEnd+time.Second)
		xs, as := series(steady, anon)
		_, rs := series(steady, func(p point) float64 { return float64(p.RSSKiB) / 1024 })
		_, gs := series(steady, func(p point) float64 { return float64(p.Goroutines) })
		_, hs := series(steady, func(p point) float64 { return float64(p.HeapInuse) / (1 << 20) })
		_, ss := series(steady, func(p point) float64 { return float64(p.StoreBytes) / (1 << 20) })
		mE, mL := median(er), median(lr)
		// The bound is on anonymous memory: VmRSS also counts the pages of the store's
		// memory-mapped files (on the tmpfs here), which follow the value log's rotation.
		res.check(mL <= mE*1.5+64, "anonymous RSS under load: median %.0f MiB after warm-up (%v-%v), %.0f MiB at the end; slope %+.1f MiB/h (bound: end <= 1.5 x warm + 64 MiB)",
			mE, warm.Round(time.Second), (warm + span).Round(time.Second), mL, slope(xs, as)*3600)
		res.note("VmRSS (with the store's mapped files) under load: median %.0f MiB after warm-up, %.0f MiB at the end, slope %+.1f MiB/h; store size slope %+.1f MiB/h",
			median(rssOf(early)), median(rssOf(late)), slope(xs, rs)*3600, slope(xs, ss)*3600)
		gE, gL := median(eg), median(lg)
		res.check(gL <= gE*1.3+30, "goroutines under load: median %.0f after warm-up, %.0f at the end; slope %+.1f/h (bound: end <= 1.3 x warm + 30)",
			gE, gL, slope(xs, gs)*3600)
		res.note("heap in use under load: slope %+.1f MiB/h", slope(xs, hs)*3600)
	}
	if len(idleAfter) == 0 {
		res.check(false, "idle after the load: broker not sampled")
	} else {
		gb, ga := minOf(idleBefore, func(p point) int64 { return p.Goroutines }), minOf(idleAfter, func(p point) int64 { return p.Goroutines })
		res.check(ga <= gb+10, "idle goroutines: %d before the load, %d after every client left (bound: +10)", gb, ga)
		hb, ha := minOf(idleBefore, func(p point) int64 { return p.HeapInuse }), minOf(idleAfter, func(p point) int64 { return p.HeapInuse })
		rb, ra := minOf(idleBefore, func(p point) int64 { return p.AnonKiB }), minOf(idleAfter, func(p point) int64 { return p.AnonKiB })
		fb, fa := minOf(idleBefore, func(p point) int64 { return p.FDs }), minOf(idleAfter, func(p point) int64 { return p.FDs })
		res.check(fa <= fb+10, "idle open files: %d before, %d after (bound: +10)", fb, fa)
		res.note("idle heap in use after a GC: %.1f MiB before, %.1f MiB after; idle anonymous RSS %.0f MiB before, %.0f MiB after",
			float64(hb)/(1<<20), float64(ha)/(1<<20), float64(rb)/1024, float64(ra)/1024)
	}

	// Still responsive, then a clean shutdown.
	if err := probe(l); err != nil {
		res.check(false, "broker responsive after the soak: %v", err)
	} else {
		res.check(true, "broker responsive after the soak (connect, declare, publish, get)")
	}
	clean, err := b.stop(30 * time.Second)
	res.check(clean, "clean shutdown on SIGTERM (%v)", errOrNil(err))
	b.unmount()

	win := o.window
	if win > o.duration/4 { // a short run gets six windows
		win = o.duration / 6
	}
	fmt.Fprintf(out, "\nRSS and goroutines under load, per %v window:\n\n", win)
	printWindows(out, windows(points, win))
	fmt.Fprintf(out, "\nsoak summary (%v of load, %d samples):\n", o.duration, len(points))
	for _, c := range res.checks {
		fmt.Fprintln(out, "  "+c)
	}
	if len(res.failures) > 0 {
		fmt.Fprintf(out, "soak: FAILED (%d checks)\n", len(res.failures))
		if o.brokerLog == "" {
			fmt.Fprintf(out, "broker log tail:\n%s\n", tail(b.logPath, 40))
		}
		return 1
	}
	fmt.Fprintln(out, "soak: PASSED")
	return 0
}

func rssOf(ps []point) []float64 {
	_, ys := series(ps, func(p point) float64 { return float64(p.RSSKiB) / 1024 })
	return ys
}

func errOrNil(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func fmtMax(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return strconv.FormatFloat(m, 'f', 1, 64)
}

func minOf(ps []point, f func(point) int64) int64 {
	m := f(ps[0])
	for _, p := range ps {
		m = min(m, f(p))
	}
	return m
}

// alarmCycle fills the broker's tmpfs to under disk.free_limit, waits until a publisher is
// blocked, holds, removes the filler and waits until no connection is blocked and the
// confirmed publishers make progress again. It returns the seconds to blocked and to cleared.
func alarmCycle(ctx context.Context, b *broker, l *load, hold time.Duration) (float64, float64, error) {
	l.inAlarm.Store(true)
	before := l.blockedEvents.Load()
	// Leave less than the limit free, but more than the store's own reserve so that it never
	// has to refuse a commit: the alarm, not ENOSPC, stops the publishers.
	path, _, err := b.fill(b.freeMin - 128<<20)
	if err != nil {
		l.inAlarm.Store(false)
		return 0, 0, fmt.Errorf("fill the data file system: %w", err)
	}
	t0 := time.Now()
	removed := false
	remove := func() {
		if !removed {
			os.Remove(path)
			removed = true
		}
	}
	defer remove()
	for l.blockedEvents.Load() == before {
		if time.Since(t0) > 15*time.Second {
			l.inAlarm.Store(false)
			return 0, 0, fmt.Errorf("no publisher got connection.blocked within 15 s of the disk filling up")
		}
		sleep(ctx, 50*time.Millisecond)
		if ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
	}
	blockedAfter := time.Since(t0).Seconds()
	sleep(ctx, hold)
	confirmed := l.durable.stats().Confirmed
	remove()
	t1 := time.Now()
	for l.blockedNow.Load() > 0 || l.durable.stats().Confirmed == confirmed {
		if time.Since(t1) > 30*time.Second {
			l.inAlarm.Store(false)
			return 0, 0, fmt.Errorf("30 s after the disk was freed: %d connections still blocked, %d more confirms",
				l.blockedNow.Load(), l.durable.stats().Confirmed-confirmed)
		}
		sleep(ctx, 50*time.Millisecond)
		if ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
	}
	clearedAfter := time.Since(t1).Seconds()
	// Late connection.blocked of a publisher that raced the clear still counts as expected.
	time.AfterFunc(2*time.Second, func() { l.inAlarm.Store(false) })
	return blockedAfter, clearedAfter, nil
}

// probe checks the broker still does its job: a new connection declares a queue, publishes
// and gets the message back.
func probe(l *load) error {
	c, _, err := l.dial("soak-probe")
	if err != nil {
		return err
	}
	defer closeConn(c)
	ch, err := c.Channel()
	if err != nil {
		return err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return err
	}
	if err := ch.Publish("", q.Name, false, false, amqp.Publishing{Body: []byte("probe")}); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		m, ok, err := ch.Get(q.Name, true)
		if err != nil {
			return err
		}
		if ok && string(m.Body) == "probe" {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("the probe message did not come back within 10 s")
}
