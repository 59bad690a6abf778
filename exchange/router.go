package exchange

import (
	"cmp"
	"maps"
	"slices"
	"sync"

	"github.com/warrenmq/warren/amqp"
)

// table is the kind-specific part of a router. All methods run with the
// router's lock held (write lock for add/remove, read lock for route).
type table interface {
	add(e *entry)
	remove(e *entry)
	route(r *router, key string, headers amqp.Table, out []Dest) []Dest
}

// bindKey is a binding's identity; args is the canonical encoding of the
// arguments table so that equal tables give equal keys whatever the map
// iteration order.
type bindKey struct {
	dest Dest
	key  string
	args string
}

// entry is one stored binding.
type entry struct {
	id  bindKey
	b   Binding
	did int32     // dense destination id, index into the dedup mark array
	hm  *hmatcher // compiled headers matcher (Headers kind only)
	pos int       // position in headersTable.list (Headers kind only)
}

// destInfo tracks the bindings of one destination so UnbindDestination does
// not scan the whole table, and owns the destination's dense id.
type destInfo struct {
	id    int32
	binds map[bindKey]*entry
}

type router struct {
	kind    Kind
	mu      sync.RWMutex
	entries map[bindKey]*entry
	dests   map[Dest]*destInfo
	destIDs idAlloc
	tab     table
}

func (r *router) Kind() Kind { return r.kind }

func (r *router) Bind(b Binding) (bool, error) {
	e := &entry{b: b}
	e.b.Args = maps.Clone(b.Args)
	if r.kind == Headers {
		hm, err := compileHeaders(e.b.Args)
		if err != nil {
			return false, err
		}
		e.hm = hm
	}
	d := Dest{Name: b.Destination, ToExchange: b.ToExchange}
	e.id = bindKey{dest: d, key: b.Key, args: canonArgs(b.Args)}

	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.entries[e.id]; dup {
		return false, nil
	}
	di := r.dests[d]
	if di == nil {
		di = &destInfo{id: r.destIDs.get(), binds: make(map[bindKey]*entry, 1)}
		r.dests[d] = di
	}
	e.did = di.id
	di.binds[e.id] = e
	r.entries[e.id] = e
	r.tab.add(e)
	return true, nil
}

func (r *router) Unbind(b Binding) bool {
	k := bindKey{
		dest: Dest{Name: b.Destination, ToExchange: b.ToExchange},
		key:  b.Key,
		args: canonArgs(b.Args),
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok {
		return false
	}
	r.removeLocked(e)
	return true
}

func (r *router) UnbindDestination(name string, toExchange bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	di, ok := r.dests[Dest{Name: name, ToExchange: toExchange}]
	if !ok {
		return 0
	}
	n := 0
	for _, e := range di.binds {
		r.removeLocked(e)
		n++
	}
	return n
}

func (r *router) removeLocked(e *entry) {
	delete(r.entries, e.id)
	di := r.dests[e.id.dest]
	delete(di.binds, e.id)
	r.tab.remove(e)
	if len(di.binds) == 0 {
		delete(r.dests, e.id.dest)
		r.destIDs.put(di.id)
	}
}

func (r *router) Route(routingKey string, headers amqp.Table, out []Dest) []Dest {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.tab.route(r, routingKey, headers, out)
}

func (r *router) Bindings() []Binding {
	r.mu.RLock()
	es := make([]*entry, 0, len(r.entries))
	for _, e := range r.entries {
		es = append(es, e)
	}
	r.mu.RUnlock()
	slices.SortFunc(es, func(a, b *entry) int {
		if c := cmp.Compare(a.id.dest.Name, b.id.dest.Name); c != 0 {
			return c
		}
		if a.id.dest.ToExchange != b.id.dest.ToExchange {
			if a.id.dest.ToExchange {
				return 1
			}
			return -1
		}
		if c := cmp.Compare(a.id.key, b.id.key); c != 0 {
			return c
		}
		return cmp.Compare(a.id.args, b.id.args)
	})
	out := make([]Binding, len(es))
	for i, e := range es {
		out[i] = e.b
		out[i].Args = maps.Clone(e.b.Args)
	}
	return out
}

func (r *router) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.entries)
}

// idAlloc hands out small dense ids and recycles freed ones, so mark arrays
// indexed by id stay as small as the live population even under churn.
type idAlloc struct {
	next int32
	free []int32
}

func (a *idAlloc) get() int32 {
	if n := len(a.free); n > 0 {
		id := a.free[n-1]
		a.free = a.free[:n-1]
		return id
	}
	id := a.next
	a.next++
	return id
}

func (a *idAlloc) put(id int32) { a.free = append(a.free, id) }

// destRef is a destination in a destSet. refs counts the bindings that put
// it there (same destination, same key, different arguments), so removing
// one of them keeps the destination routable.
type destRef struct {
	d    Dest
	id   int32
	refs int32
}

// destSet is an unordered set of destinations with O(1) add and remove
// (swap-delete) and a plain slice to walk on the hot path. Most sets are
// tiny (a topic leaf, a direct key), so the index map is only built once a
// set outgrows a short linear scan; that keeps 100k-binding tables lean.
type destSet struct {
	list []destRef
	idx  map[Dest]int32 // nil while len(list) <= destSetScan
}

const destSetScan = 8

func (s *destSet) find(d Dest) (int32, bool) {
	if s.idx != nil {
		i, ok := s.idx[d]
		return i, ok
	}
	for i := range s.list {
		if s.list[i].d == d {
			return int32(i), true
		}
	}
	return 0, false
}

func (s *destSet) add(d Dest, id int32) {
	if i, ok := s.find(d); ok {
		s.list[i].refs++
		return
	}
	s.list = append(s.list, destRef{d: d, id: id, refs: 1})
	switch n := len(s.list); {
	case s.idx != nil:
		s.idx[d] = int32(n - 1)
	case n > destSetScan:
		s.idx = make(map[Dest]int32, n)
		for i := range s.list {
			s.idx[s.list[i].d] = int32(i)
		}
	}
}

func (s *destSet) remove(d Dest) {
	i, ok := s.find(d)
	if !ok {
		return
	}
	if s.list[i].refs--; s.list[i].refs > 0 {
		return
	}
	last := int32(len(s.list) - 1)
	if i != last {
		s.list[i] = s.list[last]
		if s.idx != nil {
			s.idx[s.list[i].d] = i
		}
	}
	s.list[last] = destRef{}
	s.list = s.list[:last]
	if s.idx != nil {
		delete(s.idx, d)
	}
}

func (s *destSet) empty() bool { return len(s.list) == 0 }

func (s *destSet) appendTo(out []Dest) []Dest {
	for i := range s.list {
		out = append(out, s.list[i].d)
	}
	return out
}

// scratch is per-Route working memory, pooled so routing does not allocate.
// Marks are compared with an epoch instead of being cleared, which keeps a
// Route over a large table from paying O(table) to reset them.
type scratch struct {
	gen       uint32
	destMarks []uint32
	nodeMarks []uint32
	cur, next []*tnode
	hvals     []any    // message header values by interned key id
	hmarks    []uint32 // epoch marks for hvals: stamped = header present
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch(nDest, nNode int32) *scratch {
	s := scratchPool.Get().(*scratch)
	if int(nDest) > len(s.destMarks) {
		s.destMarks = growMarks(s.destMarks, int(nDest))
	}
	if int(nNode) > len(s.nodeMarks) {
		s.nodeMarks = growMarks(s.nodeMarks, int(nNode))
	}
	return s
}

func growMarks(m []uint32, n int) []uint32 {
	if n < 2*len(m) {
		n = 2 * len(m)
	}
	return append(m, make([]uint32, n-len(m))...)
}

// stamp starts a new marking round; on wrap-around the arrays are cleared
// so a stale mark can never collide with a live epoch.
func (s *scratch) stamp() uint32 {
	s.gen++
	if s.gen == 0 {
		clear(s.destMarks)
		clear(s.nodeMarks)
		clear(s.hmarks)
		s.gen = 1
	}
	return s.gen
}

// directTable maps an exact routing key to its destinations.
type directTable struct {
	keys map[string]*destSet
}

func (t *directTable) add(e *entry) {
	s := t.keys[e.b.Key]
	if s == nil {
		s = &destSet{}
		t.keys[e.b.Key] = s
	}
	s.add(e.id.dest, e.did)
}

func (t *directTable) remove(e *entry) {
	s := t.keys[e.b.Key]
	if s == nil {
		return
	}
	s.remove(e.id.dest)
	if s.empty() {
		delete(t.keys, e.b.Key)
	}
}

func (t *directTable) route(_ *router, key string, _ amqp.Table, out []Dest) []Dest {
	if s := t.keys[key]; s != nil {
		out = s.appendTo(out)
	}
	return out
}

// fanoutTable ignores keys: every bound destination gets every message.
type fanoutTable struct {
	all destSet
}

func (t *fanoutTable) add(e *entry)    { t.all.add(e.id.dest, e.did) }
func (t *fanoutTable) remove(e *entry) { t.all.remove(e.id.dest) }
func (t *fanoutTable) route(_ *router, _ string, _ amqp.Table, out []Dest) []Dest {
	return t.all.appendTo(out)
}
