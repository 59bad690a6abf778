package exchange

import (
	"slices"
	"strings"

	"warren/amqp"
)

// hmatcher is a headers binding compiled at Bind time, so Route does no
// argument parsing and no x-* filtering per message.
type hmatcher struct {
	any     bool
	entries []hentry
}

type hentry struct {
	key  string
	val  any
	void bool // a void argument matches on the header's presence alone
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
		m.entries = append(m.entries, hentry{key: k, val: v, void: v == nil})
	}
	slices.SortFunc(m.entries, func(a, b hentry) int { return strings.Compare(a.key, b.key) })
	return m, nil
}

func (m *hmatcher) match(h amqp.Table) bool {
	if m.any {
		for i := range m.entries {
			e := &m.entries[i]
			if v, ok := h[e.key]; ok && (e.void || valueEqual(e.val, v)) {
				return true
			}
		}
		return false
	}
	for i := range m.entries {
		e := &m.entries[i]
		v, ok := h[e.key]
		if !ok || !(e.void || valueEqual(e.val, v)) {
			return false
		}
	}
	return true
}

// headersTable is a flat list: headers bindings cannot be indexed by key,
// so Route evaluates each compiled matcher, skipping destinations that have
// already matched.
type headersTable struct {
	list []*entry
}

func (t *headersTable) add(e *entry) {
	e.pos = len(t.list)
	t.list = append(t.list, e)
}

func (t *headersTable) remove(e *entry) {
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
	st := s.stamp()
	for _, e := range t.list {
		if s.destMarks[e.did] == st {
			continue
		}
		if e.hm.match(headers) {
			s.destMarks[e.did] = st
			out = append(out, e.id.dest)
		}
	}
	scratchPool.Put(s)
	return out
}
