package exchange

import (
	"slices"
	"strings"

	"github.com/warrenmq/warren/amqp"
)

// hmatcher is a headers binding compiled at Bind time, so Route does no
// argument parsing and no x-* filtering per message.
type hmatcher struct {
	any     bool
	entries []hentry
}

type hentry struct {
	key  string
	kid  int32 // interned key id, index into the per-Route value array
	val  any
	void bool // a void argument matches on the header's presence alone
	cls  valClass
	n    num    // val as a number when cls == classNum
	s    string // val as bytes when cls == classStr
}

// valClass pre-sorts a binding value into the comparison family it belongs
// to, so Route skips the generic type switch on the binding side.
type valClass uint8

const (
	classOther valClass = iota
	classNum
	classStr
)

func newHentry(k string, v any) hentry {
	e := hentry{key: k, val: v, void: v == nil}
	if n, ok := toNum(v); ok {
		e.cls, e.n = classNum, n
	} else if s, ok := v.(string); ok {
		e.cls, e.s = classStr, s
	} else if b, ok := v.([]byte); ok {
		e.cls, e.s = classStr, string(b)
	}
	return e
}

// matches applies RabbitMQ's per-key rule to a header that is present.
func (e *hentry) matches(d any) bool {
	switch {
	case e.void:
		return true
	case e.cls == classNum:
		dn, ok := toNum(d)
		return ok && e.n.eq(dn)
	case e.cls == classStr:
		switch dv := d.(type) {
		case string:
			return dv == e.s
		case []byte:
			return string(dv) == e.s
		}
		return false
	}
	return valueEqual(e.val, d)
}

// compileHeaders validates x-match exactly as RabbitMQ's validate_binding
// does and keeps the arguments that take part in matching.
func compileHeaders(args amqp.Table) (*hmatcher, error) {
	m := &hmatcher{}
	withX := false
	if v, ok := args["x-match"]; ok {
		s, isStr := v.(string)
		if !isStr {
			return nil, amqp.Errorf(amqp.PreconditionFailed,
				"Invalid x-match field type %s (value %s); expected longstr", erlType(v), erlTerm(v))
		}
		switch s {
		case "all":
		case "any":
			m.any = true
		case "all-with-x":
			withX = true
		case "any-with-x":
			m.any, withX = true, true
		default:
			return nil, amqp.Errorf(amqp.PreconditionFailed,
				"Invalid x-match field value %s; expected all, any, all-with-x, or any-with-x", erlBinary(s))
		}
	}
	for k, v := range args {
		if k == "x-match" || (!withX && strings.HasPrefix(k, "x-")) {
			continue
		}
		m.entries = append(m.entries, newHentry(k, v))
	}
	slices.SortFunc(m.entries, func(a, b hentry) int { return strings.Compare(a.key, b.key) })
	return m, nil
}

// match evaluates the binding against the message headers, which Route has
// already spread into vals/marks by interned key id (mark == st: present).
func (m *hmatcher) match(vals []any, marks []uint32, st uint32) bool {
	if m.any {
		for i := range m.entries {
			e := &m.entries[i]
			if marks[e.kid] == st && e.matches(vals[e.kid]) {
				return true
			}
		}
		return false
	}
	for i := range m.entries {
		e := &m.entries[i]
		if marks[e.kid] != st || !e.matches(vals[e.kid]) {
			return false
		}
	}
	return true
}

// headersTable is a flat list: headers bindings cannot be indexed by key,
// so Route evaluates each compiled matcher, skipping destinations that have
// already matched. Header names used by any binding are interned to dense
// ids so that a message's headers are hashed once per Route, not once per
// binding argument.
type headersTable struct {
	list    []*entry
	keyIDs  map[string]int32
	keyRefs []int32 // bindings arguments using each key id
	keyFree idAlloc
}

func (t *headersTable) add(e *entry) {
	if t.keyIDs == nil {
		t.keyIDs = make(map[string]int32)
	}
	for i := range e.hm.entries {
		he := &e.hm.entries[i]
		id, ok := t.keyIDs[he.key]
		if !ok {
			id = t.keyFree.get()
			t.keyIDs[he.key] = id
			if int(id) >= len(t.keyRefs) {
				t.keyRefs = append(t.keyRefs, 0)
			}
		}
		t.keyRefs[id]++
		he.kid = id
	}
	e.pos = len(t.list)
	t.list = append(t.list, e)
}

func (t *headersTable) remove(e *entry) {
	for i := range e.hm.entries {
		he := &e.hm.entries[i]
		if t.keyRefs[he.kid]--; t.keyRefs[he.kid] == 0 {
			delete(t.keyIDs, he.key)
			t.keyFree.put(he.kid)
		}
	}
	last := len(t.list) - 1
	if e.pos != last {
		t.list[e.pos] = t.list[last]
		t.list[e.pos].pos = e.pos
	}
	t.list[last] = nil
	t.list = t.list[:last]
}

func (t *headersTable) route(r *router, _ string, headers amqp.Table, out []Dest) []Dest {
	if len(t.list) == 0 {
		return out
	}
	s := getScratch(r.destIDs.next, 0)
	nk := int(t.keyFree.next)
	if nk > len(s.hvals) {
		s.hvals = make([]any, max(nk, 2*len(s.hvals)))
		s.hmarks = growMarks(s.hmarks, len(s.hvals))
	}
	hs := s.stamp()
	for k, v := range headers {
		if id, ok := t.keyIDs[k]; ok {
			s.hvals[id] = v
			s.hmarks[id] = hs
		}
	}
	st := s.stamp()
	for _, e := range t.list {
		if s.destMarks[e.did] == st {
			continue
		}
		if e.hm.match(s.hvals, s.hmarks, hs) {
			s.destMarks[e.did] = st
			out = append(out, e.id.dest)
		}
	}
	clear(s.hvals[:nk]) // do not keep message values alive in the pool
	scratchPool.Put(s)
	return out
}
