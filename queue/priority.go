package queue

// Priority queues (Options.MaxPriority > 0) follow RabbitMQ's rabbit_priority_queue, which keeps
// one backing queue per priority and always serves the highest non-empty one: delivery, basic.get,
// head expiry (dropwhile) and drop-head overflow (drop) all walk the priorities from the highest
// down, so drop-head drops the oldest message of the HIGHEST priority present, and an expired
// lower-priority message can wait behind live higher-priority ones. (rabbitmq-server
// deps/rabbit/src/rabbit_priority_queue.erl: fetch/2, drop/2 and dropwhile/2 use find2 over
// bqss, which init/3 orders from the maximum priority down; and www.rabbitmq.com/priority.html:
// "Queues which have a max-length set drop messages as usual from the head of the queue ...
// higher priority messages might be dropped to make way for lower priority ones".)
//
// The priority of a message is encoded in its sequence number: priority p of a queue whose
// maximum is M gets seqs (M-p)<<levelShift | n, with a counter n per priority. Ascending Seq order
// is then exactly delivery order (higher priority first, FIFO within a priority), so everything
// built on Seq order works unchanged: requeue into the original position, the owner's disk index
// read back in Seq order by paging and restore, and page spans (one per priority in the common
// case, as each priority's seqs are consecutive). In memory each priority has its own deque,
// so a push or pop is O(1) whatever the mix of priorities.

// levelShift places the priority above a 56-bit per-priority counter.
const levelShift = 56

// counterMask selects the per-priority counter of a seq.
const counterMask = 1<<levelShift - 1

// MaxPriorityLimit is the largest Options.MaxPriority (RabbitMQ's ?MAX_SUPPORTED_PRIORITY).
const MaxPriorityLimit = 255

// level returns the priority a seq was reserved for; 0 in a queue that is not a priority queue.
func (q *Queue) level(seq uint64) int { return q.maxPrio - int(seq>>levelShift) }

// priorityOf returns the priority msg is queued with: its priority property, capped at the
// queue's maximum (RabbitMQ treats a higher one as the maximum; an absent one is 0).
func (q *Queue) priorityOf(msg *Message) int { return min(int(msg.Priority), q.maxPrio) }

// NextSeqFor reserves the next sequence number for msg: in a priority queue it encodes msg's
// priority (entries are kept in Seq order, which is delivery order); otherwise it is NextSeq.
// The owner must use it (not NextSeq) for every message pushed into a priority queue; a seq from
// NextSeq queues the message at priority 0.
func (q *Queue) NextSeqFor(msg *Message) uint64 {
	if q.maxPrio == 0 {
		return q.NextSeq()
	}
	p := q.priorityOf(msg)
	q.mu.Lock()
	q.prioSeq[p]++
	s := uint64(q.maxPrio-p)<<levelShift | q.prioSeq[p]&counterMask
	q.mu.Unlock()
	return s
}

// SeqRange returns the sequence numbers priority p of this queue can use, From..To (the whole
// range of a queue that is not a priority queue, for p 0). A restarting owner looks up the largest
// stored seq in each priority's range and passes it to RestoreSeq.
func (q *Queue) SeqRange(p int) Span {
	if q.maxPrio == 0 {
		return Span{From: 1, To: 1<<64 - 1}
	}
	p = min(max(p, 0), q.maxPrio)
	base := uint64(q.maxPrio-p) << levelShift
	return Span{From: base + 1, To: base + counterMask}
}

// RestoreSeq notes that seq is used by a stored entry, so that new sequence numbers (of its
// priority) continue after it. Restore and RestorePaged note the seqs they are given; in a
// priority queue RestorePaged's range does not tell the last seq of each priority inside it, so
// the owner passes the largest stored seq of every priority (see SeqRange) before new pushes.
func (q *Queue) RestoreSeq(seq uint64) {
	q.mu.Lock()
	q.noteSeq(seq)
	q.mu.Unlock()
}

// noteSeq raises the counter of seq's priority to seq. Call with mu held.
func (q *Queue) noteSeq(seq uint64) {
	if q.maxPrio == 0 {
		q.seq = max(q.seq, seq)
		return
	}
	if p := q.level(seq); p >= 0 && p <= q.maxPrio {
		q.prioSeq[p] = max(q.prioSeq[p], seq&counterMask)
	}
}

// prioReady holds a priority queue's ready entries: one deque per priority, each in Seq order.
type prioReady struct {
	levels []deque // index: priority
	top    int     // highest non-empty priority (0 when empty)
	n      int
}

func newPrioReady(maxPrio int) *prioReady { return &prioReady{levels: make([]deque, maxPrio+1)} }

func (r *prioReady) front() *Entry {
	if r.n == 0 {
		return nil
	}
	return r.levels[r.top].front()
}

func (r *prioReady) popFront() *Entry {
	if r.n == 0 {
		return nil
	}
	e := r.levels[r.top].popFront()
	r.n--
	r.settleTop()
	return e
}

// evictScan bounds how many requeued entries evictLast steps over, so a window full of them
// costs a push little: they may then hold the window over its size, as in a plain queue.
const evictScan = 64

// evictLast removes and returns the never-delivered entry delivered last, if it comes after
// seq and is not the head: the one to page out when the window is over. Entries delivered
// before (requeued) stay, as the owner's stored copy lacks their delivery state; an entry only
// assumed delivered after an unclean stop (MaybeDelivered, Deliveries 1) goes, as the owner
// flags its stored copy again when reading it back.
func (r *prioReady) evictLast(seq uint64) *Entry {
	scanned := 0
	for p := range r.levels {
		d := &r.levels[p]
		for i := d.len() - 1; i >= 0 && scanned < evictScan; i-- {
			e := d.at(i)
			if e.Seq <= seq {
				return nil
			}
			if p == r.top && i == 0 {
				return nil // never the head: the queue would wait to read it back at once
			}
			if e.Deliveries == 0 || (e.MaybeDelivered && e.Deliveries == 1) {
				d.removeAt(i)
				r.n--
				r.settleTop()
				return e
			}
			scanned++
		}
	}
	return nil
}

// settleTop moves top down past emptied priorities.
func (r *prioReady) settleTop() {
	if r.n == 0 {
		r.top = 0
		return
	}
	for r.levels[r.top].len() == 0 {
		r.top--
	}
}

func (r *prioReady) insert(p int, e *Entry) {
	r.levels[p].insertBySeq(e)
	r.n++
	r.top = max(r.top, p)
}

// drain removes and returns every entry in delivery order.
func (r *prioReady) drain() []*Entry {
	out := make([]*Entry, 0, r.n)
	for p := len(r.levels) - 1; p >= 0; p-- {
		out = append(out, r.levels[p].drain()...)
	}
	r.n, r.top = 0, 0
	return out
}

// The ready* methods are the queue's view of its ready entries, in delivery order, whichever
// structure holds them. Call with mu held.

func (q *Queue) readyLen() int {
	if q.prio != nil {
		return q.prio.n
	}
	return q.ready.len()
}

func (q *Queue) readyPop() *Entry {
	if q.prio != nil {
		return q.prio.popFront()
	}
	return q.ready.popFront()
}

func (q *Queue) readyInsert(e *Entry) {
	if q.prio != nil {
		q.prio.insert(min(max(q.level(e.Seq), 0), q.maxPrio), e)
		return
	}
	q.ready.insertBySeq(e)
}

func (q *Queue) readyDrain() []*Entry {
	if q.prio != nil {
		return q.prio.drain()
	}
	return q.ready.drain()
}
