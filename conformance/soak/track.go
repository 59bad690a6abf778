//go:build linux

package main

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// tracker records which message ids were confirmed by the broker and which were consumed, so
// that the end of the run can name every confirmed message that never arrived. Ids are
// "<prefix><publisher>-<seq>" with dense sequence numbers per publisher, kept as bitsets: an
// hour of load is millions of messages, and a map of strings would make the soak itself the
// memory hog.
type tracker struct {
	prefix string

	mu        sync.Mutex
	confirmed [][]uint64 // per publisher, bit seq
	consumed  [][]uint64
	nConf     int64
	nCons     int64 // distinct consumed ids
	dups      int64 // deliveries of an id already consumed (redeliveries after a requeue)
	foreign   int64 // consumed ids that do not parse
}

func newTracker(prefix string) *tracker { return &tracker{prefix: prefix} }

// id returns the message id of publisher p's message seq.
func (t *tracker) id(p int, seq uint64) string {
	return t.prefix + strconv.Itoa(p) + "-" + strconv.FormatUint(seq, 10)
}

func setBit(sets *[][]uint64, p int, seq uint64) bool {
	for len(*sets) <= p {
		*sets = append(*sets, nil)
	}
	s := (*sets)[p]
	w := int(seq / 64)
	if w >= len(s) {
		n := make([]uint64, max(w+1, 2*len(s)))
		copy(n, s)
		s = n
		(*sets)[p] = s
	}
	bit := uint64(1) << (seq % 64)
	if s[w]&bit != 0 {
		return false
	}
	s[w] |= bit
	return true
}

func hasBit(sets [][]uint64, p int, seq uint64) bool {
	if p >= len(sets) {
		return false
	}
	w := int(seq / 64)
	return w < len(sets[p]) && sets[p][w]&(1<<(seq%64)) != 0
}

// confirm records that the broker confirmed publisher p's message seq.
func (t *tracker) confirm(p int, seq uint64) {
	t.mu.Lock()
	if setBit(&t.confirmed, p, seq) {
		t.nConf++
	}
	t.mu.Unlock()
}

// consume records the delivery of message id and reports whether it was the first one.
func (t *tracker) consume(id string) bool {
	p, seq, err := t.parse(id)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.foreign++
		return false
	}
	if !setBit(&t.consumed, p, seq) {
		t.dups++
		return false
	}
	t.nCons++
	return true
}

func (t *tracker) parse(id string) (int, uint64, error) {
	rest, ok := strings.CutPrefix(id, t.prefix)
	if !ok {
		return 0, 0, fmt.Errorf("message id %q lacks prefix %q", id, t.prefix)
	}
	ps, ss, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, 0, fmt.Errorf("message id %q: no sequence", id)
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p < 0 || p > 1<<16 {
		return 0, 0, fmt.Errorf("message id %q: bad publisher", id)
	}
	seq, err := strconv.ParseUint(ss, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("message id %q: bad sequence", id)
	}
	return p, seq, nil
}

// trackStats is a tracker's counts at one moment.
type trackStats struct {
	Confirmed, Consumed, Duplicates, Foreign int64
	Missing                                  int64    // confirmed and never consumed
	Examples                                 []string // up to 10 missing ids
}

func (t *tracker) stats() trackStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := trackStats{Confirmed: t.nConf, Consumed: t.nCons, Duplicates: t.dups, Foreign: t.foreign}
	for p, set := range t.confirmed {
		for w, word := range set {
			var cons uint64
			if p < len(t.consumed) && w < len(t.consumed[p]) {
				cons = t.consumed[p][w]
			}
			miss := word &^ cons
			for miss != 0 {
				b := uint64(0)
				for miss&(1<<b) == 0 {
					b++
				}
				miss &^= 1 << b
				st.Missing++
				if len(st.Examples) < 10 {
					st.Examples = append(st.Examples, t.id(p, uint64(w)*64+b))
				}
			}
		}
	}
	return st
}

// errorBook counts what went wrong for the clients: expected outcomes (a 404 after a delete,
// connection.blocked during an alarm) by kind, and everything else as unexpected, with the
// first few kept verbatim for the summary.
type errorBook struct {
	mu         sync.Mutex
	expected   map[string]int64
	unexpected map[string]int64
	samples    []string
}

func newErrorBook() *errorBook {
	return &errorBook{expected: map[string]int64{}, unexpected: map[string]int64{}}
}

func (b *errorBook) expect(kind string) {
	b.mu.Lock()
	b.expected[kind]++
	b.mu.Unlock()
}

// fail records an unexpected error of a worker.
func (b *errorBook) fail(worker string, err error) {
	kind := worker + ": " + errKind(err)
	b.mu.Lock()
	b.unexpected[kind]++
	if len(b.samples) < 20 {
		b.samples = append(b.samples, worker+": "+err.Error())
	}
	b.mu.Unlock()
}

func (b *errorBook) unexpectedTotal() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int64
	for _, c := range b.unexpected {
		n += c
	}
	return n
}

// errKind groups errors for counting: an AMQP error by its reply code, anything else by its
// text without numbers (ports and ids would make every error its own kind).
func errKind(err error) string {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return fmt.Sprintf("AMQP %d", ae.Code)
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return '#'
		}
		return r
	}, s)
}

// amqpCode returns the reply code of an AMQP error in err's chain, or 0.
func amqpCode(err error) int {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return 0
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
