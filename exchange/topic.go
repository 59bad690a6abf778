package exchange

import (
	"strings"

	"github.com/warrenmq/warren/amqp"
)

// tnode is a trie node: the state reached after matching a prefix of a
// binding pattern. Literal words, "*" and "#" get separate edges so a
// routing word is one map lookup plus two pointer checks.
type tnode struct {
	id     int32
	parent *tnode
	word   string // edge label from parent, used to unlink on prune
	isHash bool   // reached through a "#" edge: may absorb more words
	lit    map[string]*tnode
	star   *tnode
	hash   *tnode
	dests  destSet
}

func (n *tnode) leaf() bool {
	return n.dests.empty() && len(n.lit) == 0 && n.star == nil && n.hash == nil
}

type topicTable struct {
	root    *tnode
	nodeIDs idAlloc
}

func newTopicTable() *topicTable {
	t := &topicTable{}
	t.root = &tnode{id: t.nodeIDs.get()}
	return t
}

// nextWord splits off the first word of a dot-separated key. RabbitMQ
// treats "" as zero words and every dot as a separator, so "a." is
// ["a", ""]; callers handle the empty key before the first call.
func nextWord(rest string) (word, tail string, more bool) {
	if i := strings.IndexByte(rest, '.'); i >= 0 {
		return rest[:i], rest[i+1:], true
	}
	return rest, "", false
}

func (t *topicTable) add(e *entry) {
	n := t.root
	if key := e.b.Key; key != "" {
		for more := true; more; {
			var w string
			w, key, more = nextWord(key)
			n = t.child(n, w)
		}
	}
	n.dests.add(e.id.dest, e.did)
}

func (t *topicTable) child(n *tnode, w string) *tnode {
	var c *tnode
	switch w {
	case "*":
		c = n.star
	case "#":
		c = n.hash
	default:
		c = n.lit[w]
	}
	if c != nil {
		return c
	}
	c = &tnode{id: t.nodeIDs.get(), parent: n, word: w, isHash: w == "#"}
	switch w {
	case "*":
		n.star = c
	case "#":
		n.hash = c
	default:
		if n.lit == nil {
			n.lit = make(map[string]*tnode)
		}
		n.lit[w] = c
	}
	return c
}

func (t *topicTable) remove(e *entry) {
	n := t.root
	if key := e.b.Key; key != "" {
		for more := true; more && n != nil; {
			var w string
			w, key, more = nextWord(key)
			switch w {
			case "*":
				n = n.star
			case "#":
				n = n.hash
			default:
				n = n.lit[w]
			}
		}
	}
	if n == nil {
		return
	}
	n.dests.remove(e.id.dest)
	// Prune so that churn (bind/unbind of ever-new keys) cannot grow the
	// trie or the id space without bound.
	for n != t.root && n.leaf() {
		p := n.parent
		switch {
		case p.star == n:
			p.star = nil
		case p.hash == n:
			p.hash = nil
		default:
			delete(p.lit, n.word)
		}
		t.nodeIDs.put(n.id)
		n = p
	}
}

// addState adds n and the chain of "#" children reachable from it without
// consuming a word (a "#" may match zero words).
func addState(set []*tnode, marks []uint32, st uint32, n *tnode) []*tnode {
	for n != nil && marks[n.id] != st {
		marks[n.id] = st
		set = append(set, n)
		n = n.hash
	}
	return set
}

func (t *topicTable) route(r *router, key string, _ amqp.Table, out []Dest) []Dest {
	s := getScratch(r.destIDs.next, t.nodeIDs.next)
	marks := s.nodeMarks
	cur := addState(s.cur[:0], marks, s.stamp(), t.root)
	next := s.next[:0]
	for more := key != ""; more && len(cur) > 0; {
		var w string
		w, key, more = nextWord(key)
		st := s.stamp()
		next = next[:0]
		for _, n := range cur {
			if n.isHash {
				next = addState(next, marks, st, n)
			}
			if n.star != nil {
				next = addState(next, marks, st, n.star)
			}
			if c := n.lit[w]; c != nil {
				next = addState(next, marks, st, c)
			}
		}
		cur, next = next, cur
	}
	ds := s.stamp()
	for _, n := range cur {
		for i := range n.dests.list {
			ref := &n.dests.list[i]
			if s.destMarks[ref.id] != ds {
				s.destMarks[ref.id] = ds
				out = append(out, ref.d)
			}
		}
	}
	s.cur, s.next = cur[:0], next[:0]
	scratchPool.Put(s)
	return out
}
