package bench

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The floor: what any broker must do for a message, and nothing else. A forwarder process
// reads one length-prefixed message (4-byte big-endian length, then the body) from a producer
// socket and writes it to the consumer socket paired with it: one goroutine per pair, one
// read(2) and one write(2) per message when messages come one at a time (a buffered reader,
// and a buffered writer flushed whenever the reader has nothing more buffered, so messages that
// arrive together leave together, as they would from a broker's writer). No routing, no
// queue, no AMQP framing. Acks: with -autoack=false (the default in floor mode, as in many
// mode) each consumer sends an 8-byte ack per message back over its socket, batched as the
// bench's AMQP consumers batch theirs (written when its input runs dry or half of -prefetch
// waits), and the forwarder reads and drops them on a second goroutine per pair: the read(2)
// and goroutine wake-up an ack costs a broker, and nothing else. With -autoack there are none:
// the bare forwarder of issue 22. -mode floor runs the many-clients load through it and
// measures its CPU exactly as a broker's, so broker and floor are compared on the same host
// in the same run.
//
// The forwarder runs in its own process: the bench re-executes itself with forwarderEnv set
// (to the listen address, "127.0.0.1:0" when it starts it) and reads "forwarder listening
// ADDR" from the child's stdout; the child exits when its stdin closes. To run one by hand
// (for strace or perf), set the variable yourself, e.g.
// WARREN_BENCH_FORWARDER=127.0.0.1:7001 warren bench </dev/tty, and point -floor-addr at it.
//
// Pairing: every client connection first sends one role byte ('P' producer, 'C' consumer)
// and a 4-byte pair id; the forwarder starts forwarding when both sides of an id are there.
const forwarderEnv = "WARREN_BENCH_FORWARDER"

const (
	roleProducer = 'P'
	roleConsumer = 'C'
	floorMaxBody = 64 << 20
)

// serveForwarder is the forwarder child's whole life: listen, announce the address on out,
// forward until in closes.
func serveForwarder(in io.Reader, out io.Writer) error {
	addr := os.Getenv(forwarderEnv)
	if !strings.Contains(addr, ":") {
		addr = "127.0.0.1:0"
	}
	raiseFileLimit()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("bench: forwarder: %w", err)
	}
	defer ln.Close()
	if _, err := fmt.Fprintf(out, "forwarder listening %s\n", ln.Addr()); err != nil {
		return fmt.Errorf("bench: forwarder: %w", err)
	}
	go acceptForward(ln)
	_, _ = io.Copy(io.Discard, in) // the parent closes our stdin (or dies) when the run is over
	return nil
}

// acceptForward pairs the connections ln accepts and forwards each pair until ln closes.
func acceptForward(ln net.Listener) {
	var mu sync.Mutex
	waiting := map[uint32][2]net.Conn{} // pair id -> [producer, consumer]
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			var hello [5]byte
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadFull(c, hello[:]); err != nil || (hello[0] != roleProducer && hello[0] != roleConsumer) {
				c.Close()
				return
			}
			_ = c.SetReadDeadline(time.Time{})
			id := binary.BigEndian.Uint32(hello[1:])
			side := 0
			if hello[0] == roleConsumer {
				side = 1
			}
			mu.Lock()
			pair := waiting[id]
			if pair[side] != nil {
				pair[side].Close() // a stale half: the newer connection wins
			}
			pair[side] = c
			if pair[0] != nil && pair[1] != nil {
				delete(waiting, id)
				mu.Unlock()
				forward(pair[0], pair[1])
				return
			}
			waiting[id] = pair
			mu.Unlock()
		}()
	}
}

// forward copies length-prefixed messages from p to c, message by message, until either fails.
func forward(p, c net.Conn) {
	defer p.Close()
	defer c.Close()
	// Acks from the consumer, if it sends any: read and dropped (see above). This goroutine
	// ends when c is closed.
	go func() { _, _ = io.CopyBuffer(io.Discard, c, make([]byte, 4<<10)) }()
	br := bufio.NewReaderSize(p, 64<<10)
	bw := bufio.NewWriterSize(c, 64<<10)
	var hdr [4]byte
	buf := make([]byte, 4<<10)
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > floorMaxBody {
			return
		}
		if int(n) > cap(buf) {
			buf = make([]byte, n)
		}
		body := buf[:n]
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		bw.Write(hdr[:])
		bw.Write(body)
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return
			}
		}
	}
}

// startForwarder starts the forwarder child process and returns its address and process.
func startForwarder() (string, *exec.Cmd, io.Closer, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, nil, fmt.Errorf("bench: floor: %w", err)
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), forwarderEnv+"=127.0.0.1:0")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, nil, fmt.Errorf("bench: floor: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, nil, fmt.Errorf("bench: floor: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return "", nil, nil, fmt.Errorf("bench: floor: start forwarder: %w", err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "forwarder listening ")
	if err != nil || !ok {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return "", nil, nil, fmt.Errorf("bench: floor: forwarder did not start (said %q): %v", line, err)
	}
	return addr, cmd, stdin, nil
}

// floorClient is one producer or consumer connection of a floor run.
type floorClient struct {
	id   int
	conn net.Conn
	n    atomic.Int64
	lat  Histogram
}

func dialFloor(addr string, role byte, id int) (*floorClient, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("bench: floor: dial: %w", err)
	}
	hello := []byte{role, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hello[1:], uint32(id))
	if _, err := c.Write(hello); err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: floor: hello: %w", err)
	}
	return &floorClient{id: id, conn: c}, nil
}

// runFloor runs -producers pairs through the forwarder, each producer at -rate msgs/s of
// -size bytes, and measures rates, end-to-end latency and the forwarder's CPU and RSS.
func runFloor(cfg *Config, res *Result, live io.Writer) error {
	res.Client = "raw"
	res.Consumers, res.Queues, res.MultiAck = cfg.Producers, 0, 0
	addr, pid := cfg.FloorAddr, cfg.BrokerPID
	if addr == "" {
		a, cmd, stdin, err := startForwarder()
		if err != nil {
			return err
		}
		addr, pid = a, cmd.Process.Pid
		defer func() {
			stdin.Close()
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}()
	}
	cfg.server.set(map[string]any{"product": "warren-bench floor forwarder"})
	meas := *cfg
	meas.BrokerPID = pid
	res.RSSBefore = meas.rss()

	var prods, cons []*floorClient
	defer func() {
		for _, c := range append(prods, cons...) {
			c.conn.Close()
		}
	}()
	for i := 0; i < cfg.Producers; i++ {
		c, err := dialFloor(addr, roleConsumer, i)
		if err != nil {
			return err
		}
		cons = append(cons, c)
		p, err := dialFloor(addr, roleProducer, i)
		if err != nil {
			return err
		}
		prods = append(prods, p)
	}

	var (
		stop     atomic.Bool
		stopCh   = make(chan struct{})
		errCh    = make(chan error, 1)
		wg       sync.WaitGroup
		t        = &throughput{cfg: cfg}
		start    = time.Now()
		startNs  = nowNanos()
		cpu      = startCPU(pid)
		failOnce = func(err error) {
			if !stop.Load() {
				select {
				case errCh <- err:
				default:
				}
			}
		}
	)
	for _, c := range cons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReaderSize(c.conn, 64<<10)
			var hdr [4]byte
			body := make([]byte, cfg.Size)
			var acks []byte // unwritten acks: one 8-byte stamp per message
			flushAt := 1 << 30
			if cfg.Prefetch > 0 {
				flushAt = max(1, cfg.Prefetch/2)
			}
			for {
				if len(acks) > 0 && (br.Buffered() == 0 || len(acks)/8 >= flushAt) {
					if _, err := c.conn.Write(acks); err != nil {
						failOnce(fmt.Errorf("bench: floor consumer %d ack: %w", c.id, err))
						return
					}
					acks = acks[:0]
				}
				if _, err := io.ReadFull(br, hdr[:]); err != nil {
					failOnce(fmt.Errorf("bench: floor consumer %d: %w", c.id, err))
					return
				}
				n := binary.BigEndian.Uint32(hdr[:])
				if int(n) > cap(body) {
					body = make([]byte, n)
				}
				if _, err := io.ReadFull(br, body[:n]); err != nil {
					failOnce(fmt.Errorf("bench: floor consumer %d: %w", c.id, err))
					return
				}
				ts, ok := readStamp(body[:n])
				if ok {
					c.lat.Record(nowNanos() - ts)
				}
				c.n.Add(1)
				if !cfg.AutoAck {
					acks = binary.BigEndian.AppendUint64(acks, uint64(ts))
				}
			}
		}()
	}
	for _, p := range prods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bw := bufio.NewWriterSize(p.conn, 16<<10)
			msg := make([]byte, 4+cfg.Size)
			binary.BigEndian.PutUint32(msg, uint32(cfg.Size))
			pace := newPacer(cfg.Rate, startNs+t.phase(p.id))
			for n := int64(0); !stop.Load(); n++ {
				if cfg.PMessages > 0 && n >= cfg.PMessages {
					break
				}
				if !pace.wait(n, stopCh) {
					return
				}
				putStamp(msg[4:], nowNanos())
				_, err := bw.Write(msg)
				if err == nil && pace.due(n+1) > 0 {
					err = bw.Flush() // the next one is not due yet: do not hold this one back
				}
				if err != nil {
					failOnce(fmt.Errorf("bench: floor producer %d: %w", p.id, err))
					return
				}
				p.n.Add(1)
			}
			if err := bw.Flush(); err != nil {
				failOnce(fmt.Errorf("bench: floor producer %d: %w", p.id, err))
			}
		}()
	}

	sum := func() (sent, recv int64, lat *Snapshot) {
		lat = &Snapshot{}
		for _, p := range prods {
			sent += p.n.Load()
		}
		for _, c := range cons {
			recv += c.n.Load()
			c.lat.AddTo(lat)
		}
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	deadline := time.NewTimer(cfg.Duration)
	defer deadline.Stop()
	var prevSent, prevRecv int64
	prevLat := &Snapshot{}
	var runErr error
loop:
	for sec := 1; ; sec++ {
		select {
		case <-deadline.C:
			break loop
		case runErr = <-errCh:
			res.Errors = append(res.Errors, runErr.Error())
			break loop
		case <-tick.C:
			s, r, l := sum()
			iv := l.Sub(prevLat)
			fmt.Fprintf(live, "t=%ds sent=%d/s received=%d/s p50=%s p99=%s\n", sec, s-prevSent, r-prevRecv,
				fmtDur(iv.Quantile(0.5)), fmtDur(iv.Quantile(0.99)))
			prevSent, prevRecv, prevLat = s, r, l
		}
	}
	elapsed := time.Since(start).Seconds()
	_, recvAtEnd, _ := sum()
	cpu.stop(res, recvAtEnd)
	res.RSS = meas.rss()
	stop.Store(true)
	close(stopCh)
	for _, c := range append(prods, cons...) {
		c.conn.Close()
	}
	waitTimeout(&wg, 5*time.Second)
	// Counted once the workers are gone, so sent, received and the latency count agree (a
	// running consumer can count a message before its producer has counted it sent).
	sent, recv, lat := sum()
	res.Seconds = elapsed
	res.Published, res.Received = sent, recv
	res.PublishRate, res.ConsumeRate = rate(sent, elapsed), rate(recv, elapsed)
	if cfg.Size >= 8 {
		res.Latency = lat.Summary()
	}
	if runErr != nil {
		return fmt.Errorf("bench: floor run aborted: %w", runErr)
	}
	if recv == 0 {
		return errors.New("bench: floor: nothing arrived")
	}
	return nil
}
