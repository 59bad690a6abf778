package main

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestCrashKill9Stream: publishers with confirms append to a stream queue (and, through a
// fanout, to a second stream) until SIGKILL at a random moment, twice. After the restart a
// consumer from `first` reads every confirmed message of both streams, each once, in each
// publisher's order, and nothing that was never published: the stream's group commit
// confirms only synced records, and a torn tail is cut at start-up.
func TestCrashKill9Stream(t *testing.T) {
	rng := crashSeed(t)
	const rounds, publishers, perPublisher, window = 2, 3, 600, 64
	streams := []string{"crash.stream.a", "crash.stream.b"}
	streamArgs := amqp091.Table{"x-queue-type": "stream"}

	dataDir := filepath.Join(t.TempDir(), "data")
	b := startBroker(t, dataDir)
	setup := b.channel()
	if err := setup.ExchangeDeclare("crash.stream.fan", "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range streams {
		if _, err := setup.QueueDeclare(s, true, false, false, false, streamArgs); err != nil {
			t.Fatalf("declare stream %s: %v", s, err)
		}
		if err := setup.QueueBind(s, "", "crash.stream.fan", false, nil); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	attempted := map[string]bool{}
	confirmed := map[string]bool{}
	for round := 0; round < rounds; round++ {
		if round > 0 {
			b = startBroker(t, dataDir)
		}
		killAt := 50 + rng.IntN(publishers*perPublisher/2)
		t.Logf("round %d: kill after %d confirms", round, killAt)
		trigger := newKillTrigger(killAt)
		var load sync.WaitGroup
		for p := 0; p < publishers; p++ {
			ch := b.channel()
			if err := ch.Confirm(false); err != nil {
				t.Fatal(err)
			}
			load.Add(1)
			go func() {
				defer load.Done()
				var inflight []*amqp091.DeferredConfirmation
				var bodies []string
				settle := func() bool {
					dc, body := inflight[0], bodies[0]
					inflight, bodies = inflight[1:], bodies[1:]
					select {
					case <-dc.Done():
					case <-time.After(opTimeout):
						t.Errorf("publisher %d: no confirm or close for %q within %v", p, body, opTimeout)
						return false
					}
					if dc.Acked() {
						mu.Lock()
						confirmed[body] = true
						mu.Unlock()
						trigger.add(1)
					}
					return true
				}
				for i := 0; i < perPublisher; i++ {
					body := fmt.Sprintf("s%d-%d-%d", p, round, i)
					mu.Lock()
					attempted[body] = true
					mu.Unlock()
					dc, err := ch.PublishWithDeferredConfirm("crash.stream.fan", "", false, false, persistent(body))
					if err != nil {
						break // the broker is gone
					}
					inflight, bodies = append(inflight, dc), append(bodies, body)
					if len(inflight) >= window && !settle() {
						return
					}
				}
				for len(inflight) > 0 {
					if !settle() {
						return
					}
				}
			}()
		}
		killWhen(t, b, trigger, closedChan(), &load)
	}

	b = startBroker(t, dataDir)
	for _, s := range streams {
		got := readStream(t, b, s, len(attempted))
		seen := map[string]bool{}
		last := make([][2]int, publishers)
		for i := range last {
			last[i] = [2]int{-1, -1}
		}
		for _, body := range got {
			if seen[body] {
				t.Errorf("%s: %q read twice", s, body)
			}
			seen[body] = true
			if !attempted[body] {
				t.Errorf("%s: read %q, which was never published", s, body)
				continue
			}
			ids := parseIDs(t, body, "s")
			pos := [2]int{ids[1], ids[2]}
			if prev := last[ids[0]]; pos[0] < prev[0] || pos[0] == prev[0] && pos[1] <= prev[1] {
				t.Errorf("%s: publisher %d: %q after s%d-%d-%d (publish order lost)", s, ids[0], body, ids[0], prev[0], prev[1])
			}
			last[ids[0]] = pos
		}
		missing := 0
		for body := range confirmed {
			if !seen[body] {
				missing++
				if missing <= 10 {
					t.Errorf("%s: confirmed message %q missing after restart", s, body)
				}
			}
		}
		t.Logf("%s: published %d, confirmed %d, read back %d, missing %d", s, len(attempted), len(confirmed), len(got), missing)
	}
}

// readStream consumes stream from `first` and returns the bodies in offset order, stopping
// once no message arrived for a second (the stream's length is unknown after a crash: its
// unconfirmed tail may or may not have been written). It fails past max messages.
func readStream(t *testing.T, b *childBroker, stream string, max int) []string {
	t.Helper()
	ch := b.channel()
	if err := ch.Qos(500, 0, false); err != nil {
		t.Fatal(err)
	}
	msgs, err := ch.Consume(stream, "", false, false, false, false, amqp091.Table{"x-stream-offset": "first"})
	if err != nil {
		t.Fatalf("consume %s: %v", stream, err)
	}
	var got []string
	lastOffset := int64(-1)
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("%s: consumer closed after %d messages", stream, len(got))
			}
			off, _ := m.Headers["x-stream-offset"].(int64)
			if off <= lastOffset {
				t.Errorf("%s: offset %d after %d", stream, off, lastOffset)
			}
			lastOffset = off
			got = append(got, string(m.Body))
			if err := m.Ack(false); err != nil {
				t.Fatal(err)
			}
			if len(got) > max {
				t.Fatalf("%s: more than the %d messages published", stream, max)
			}
		case <-time.After(time.Second):
			return got
		}
	}
}
