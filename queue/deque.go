package queue

// deque is a ring buffer of entries kept in ascending Seq order. Pushes at the back and pops at
// the front are O(1); a requeue inserts by Seq, shifting whichever side of the ring is shorter, so
// the common case (requeue near the head) stays cheap even in a deep queue.
type deque struct {
	buf  []*Entry
	head int
	n    int
}

func (d *deque) len() int { return d.n }

func (d *deque) at(i int) *Entry { return d.buf[(d.head+i)&(len(d.buf)-1)] }

func (d *deque) set(i int, e *Entry) { d.buf[(d.head+i)&(len(d.buf)-1)] = e }

func (d *deque) grow() {
	size := len(d.buf) * 2
	if size == 0 {
		size = 16
	}
	nb := make([]*Entry, size)
	for i := 0; i < d.n; i++ {
		nb[i] = d.at(i)
	}
	d.buf, d.head = nb, 0
}

func (d *deque) pushBack(e *Entry) {
	if d.n == len(d.buf) {
		d.grow()
	}
	d.n++
	d.set(d.n-1, e)
}

func (d *deque) front() *Entry {
	if d.n == 0 {
		return nil
	}
	return d.buf[d.head]
}

func (d *deque) popFront() *Entry {
	if d.n == 0 {
		return nil
	}
	e := d.buf[d.head]
	d.buf[d.head] = nil
	d.head = (d.head + 1) & (len(d.buf) - 1)
	d.n--
	if d.n == 0 {
		d.head = 0
	}
	// Give memory back after a deep backlog drains.
	if len(d.buf) > 1024 && d.n < len(d.buf)/8 {
		d.shrink()
	}
	return e
}

func (d *deque) shrink() {
	size := len(d.buf) / 2
	for size > 16 && d.n < size/4 {
		size /= 2
	}
	nb := make([]*Entry, size)
	for i := 0; i < d.n; i++ {
		nb[i] = d.at(i)
	}
	d.buf, d.head = nb, 0
}

// insertBySeq puts e before the first entry with a larger Seq.
func (d *deque) insertBySeq(e *Entry) {
	// A push is almost always the newest entry: skip the binary search, whose cache misses
	// dominate a push onto a deep queue.
	if d.n == 0 || d.at(d.n-1).Seq < e.Seq {
		d.pushBack(e)
		return
	}
	lo, hi := 0, d.n
	for lo < hi {
		mid := (lo + hi) / 2
		if d.at(mid).Seq < e.Seq {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if d.n == len(d.buf) {
		d.grow()
	}
	if lo < d.n/2 {
		d.head = (d.head - 1) & (len(d.buf) - 1)
		d.n++
		for i := 0; i < lo; i++ {
			d.set(i, d.at(i+1))
		}
	} else {
		d.n++
		for i := d.n - 1; i > lo; i-- {
			d.set(i, d.at(i-1))
		}
	}
	d.set(lo, e)
}

// drain removes and returns every entry in order.
func (d *deque) drain() []*Entry {
	out := make([]*Entry, 0, d.n)
	for d.n > 0 {
		out = append(out, d.popFront())
	}
	return out
}

// removeAt removes and returns the entry at i, shifting whichever side is shorter.
func (d *deque) removeAt(i int) *Entry {
	e := d.at(i)
	if i < d.n/2 {
		for j := i; j > 0; j-- {
			d.set(j, d.at(j-1))
		}
		d.set(0, nil)
		d.head = (d.head + 1) & (len(d.buf) - 1)
	} else {
		for j := i; j < d.n-1; j++ {
			d.set(j, d.at(j+1))
		}
		d.set(d.n-1, nil)
	}
	d.n--
	if d.n == 0 {
		d.head = 0
	}
	return e
}
