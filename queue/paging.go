package queue

import (
	"math"
	"sort"
	"sync/atomic"
)

// Span is the range of sequence numbers From..To, both included.
type Span struct {
	From, To uint64
}

// Pager keeps the entries a queue does not hold in memory. The owner implements it on its
// store (dependency inversion: this package knows no disk). All methods are called with
// the queue's lock held, so they must not block or call back into the queue.
type Pager interface {
	// PageOut takes an entry the queue will not keep in memory. An entry with Durable set is
	// stored already (its write was submitted before Push); any other must be written. A
	// priority queue also pages out never-delivered entries it held in memory, including ones
	// it paged in before, to keep its window when higher priorities arrive.
	PageOut(e *Entry)
	// PageIn reads, in the background, up to max entries with Seq >= from in ascending order
	// (stopping once about maxBytes of bodies are read, but not before the first), seeing at
	// least every entry paged out before the call, and passes them to done - never on the
	// calling goroutine.
	PageIn(from uint64, max int, maxBytes int64, done func([]*Entry, error))
	// Discard deletes the paged entries whose Seq lies in spans (purge, deletion).
	Discard(spans []Span)
}

// Paging bounds the memory a queue holds for ready messages.
type Paging struct {
	Pager Pager
	// Window is the number of ready messages kept in memory; beyond it, new messages are paged
	// out and read back ahead of the consumers as the window drains.
	Window int
	// Budget, when not nil, is shared by queues: while it is used up, new messages are paged
	// out even inside a queue's window.
	Budget *Budget
}

// Budget is a byte budget for the bodies of ready messages held in memory, shared by queues.
// Queues reserve it in chunks, so it is approximate by a chunk per queue.
type Budget struct {
	limit int64
	used  atomic.Int64
}

// NewBudget returns a budget of limit bytes.
func NewBudget(limit int64) *Budget { return &Budget{limit: limit} }

// Used returns the bytes reserved by queues.
func (b *Budget) Used() int64 { return b.used.Load() }

func (b *Budget) exhausted() bool { return b.used.Load() >= b.limit }

// budgetChunk is the granularity of Budget reservations.
const budgetChunk = 256 << 10

// minPageInBytes is what a page-in may read into an empty window even when the budget is
// used up, so a queue's consumers keep moving.
const minPageInBytes = 1 << 20

// pageSpan is a run of paged sequence numbers. An exact span holds every seq from lo to hi
// (paged out one by one at run time); a disk span holds whatever entries are on disk from
// lo to hi, n of them (a backlog found at start-up, counted but never listed).
type pageSpan struct {
	lo, hi uint64
	n      int64
	disk   bool
}

// pageSet is the set of a queue's paged-out entries, held as spans: in the common case of
// one publisher and one queue it is a single span, whatever the backlog.
type pageSet struct {
	spans []pageSpan // ascending, disjoint
	count int64
	bytes int64 // body bytes of the members
	// gen changes when members are added or discarded (not when paged in), so a page-in
	// knows whether the set it asked about is still the same.
	gen uint64
}

func (p *pageSet) min() uint64 { return p.spans[0].lo }

// find returns the index of the first span with hi >= seq.
func (p *pageSet) find(seq uint64) int {
	return sort.Search(len(p.spans), func(i int) bool { return p.spans[i].hi >= seq })
}

// add makes seq a member (it must not be one yet).
func (p *pageSet) add(seq uint64) {
	p.count++
	p.gen++
	if n := len(p.spans); n > 0 {
		last := &p.spans[n-1]
		if !last.disk && last.hi < math.MaxUint64 && last.hi+1 == seq {
			last.hi, last.n = seq, last.n+1
			return
		}
		if last.hi < seq {
			p.spans = append(p.spans, pageSpan{lo: seq, hi: seq, n: 1})
			return
		}
	}
	i := p.find(seq)
	if i < len(p.spans) && p.spans[i].disk && p.spans[i].lo <= seq {
		// Inside a disk span (a priority queue's entry of a priority whose backlog was found
		// at start-up): the span holds whatever is on disk in its range, and seq is on disk
		// too, so it is one more of its n. A separate span inside it would break the order of
		// the spans, and a read of the disk span would take seq a second time.
		p.spans[i].n++
		return
	}
	// Out of order (publishers racing for sequence numbers): insert, merging neighbours.
	p.spans = append(p.spans, pageSpan{})
	copy(p.spans[i+1:], p.spans[i:])
	p.spans[i] = pageSpan{lo: seq, hi: seq, n: 1}
	if i+1 < len(p.spans) && !p.spans[i+1].disk && p.spans[i+1].lo == seq+1 {
		p.spans[i].hi, p.spans[i].n = p.spans[i+1].hi, p.spans[i+1].n+1
		p.spans = append(p.spans[:i+1], p.spans[i+2:]...)
	}
	if i > 0 && !p.spans[i-1].disk && p.spans[i-1].hi+1 == seq {
		p.spans[i-1].hi, p.spans[i-1].n = p.spans[i].hi, p.spans[i-1].n+p.spans[i].n
		p.spans = append(p.spans[:i], p.spans[i+1:]...)
	}
}

// addDisk adds the n entries on disk from lo to hi, above every member.
func (p *pageSet) addDisk(lo, hi uint64, n, bytes int64) {
	p.spans = append(p.spans, pageSpan{lo: lo, hi: hi, n: n, disk: true})
	p.count += n
	p.bytes += bytes
	p.gen++
}

// take removes seq (of size body bytes), read back from disk, and reports whether it was
// a member. Disk spans are read from their start, so taking one of their seqs shrinks them
// from the front.
func (p *pageSet) take(seq uint64, size int64) bool {
	i := p.find(seq)
	if i == len(p.spans) || p.spans[i].lo > seq {
		return false
	}
	s := &p.spans[i]
	p.count--
	p.bytes -= size
	switch {
	case s.disk:
		s.lo, s.n = seq+1, s.n-1
		if s.n <= 0 || seq == s.hi {
			p.count -= max(s.n, 0) // a miscount: nothing else is on disk there
			p.remove(i)
		}
	case s.lo == s.hi:
		p.remove(i)
	case seq == s.lo:
		s.lo, s.n = seq+1, s.n-1
	case seq == s.hi:
		s.hi, s.n = seq-1, s.n-1
	default:
		right := pageSpan{lo: seq + 1, hi: s.hi, n: int64(s.hi - seq)}
		s.hi, s.n = seq-1, int64(seq-s.lo)
		p.spans = append(p.spans, pageSpan{})
		copy(p.spans[i+2:], p.spans[i+1:])
		p.spans[i+1] = right
	}
	if p.count <= 0 {
		p.clearCounts()
	}
	return true
}

func (p *pageSet) remove(i int) { p.spans = append(p.spans[:i], p.spans[i+1:]...) }

// dropBelow removes every member below seq (lost: they were not on disk when they should
// have been) and returns how many went. A disk span reaching past seq stays: how many of
// its entries lie below seq is unknown.
func (p *pageSet) dropBelow(seq uint64) int64 {
	var n int64
	keep := p.spans[:0]
	for _, s := range p.spans {
		switch {
		case s.hi < seq:
			n += s.n
			continue
		case s.lo < seq && !s.disk:
			cut := int64(seq - s.lo)
			s.lo, s.n = seq, s.n-cut
			n += cut
		}
		keep = append(keep, s)
	}
	clear(p.spans[len(keep):])
	p.spans = keep
	p.count -= n
	if p.count <= 0 || len(p.spans) == 0 {
		p.spans = nil
		p.clearCounts()
	}
	return n
}

// clear empties the set and returns its spans, for Pager.Discard.
func (p *pageSet) clear() []Span {
	out := make([]Span, len(p.spans))
	for i, s := range p.spans {
		out[i] = Span{From: s.lo, To: s.hi}
	}
	p.spans = nil
	p.clearCounts()
	p.gen++
	return out
}

func (p *pageSet) clearCounts() {
	p.count, p.bytes = 0, 0
}
