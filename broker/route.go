package broker

import (
	"bytes"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/exchange"
)

// defaultRouter is the default exchange's router: every routing key names the queue of that name
// (route skips names with no queue). It has no bindings and takes none.
type defaultRouter struct{}

func (defaultRouter) Kind() exchange.Kind { return exchange.Direct }
func (defaultRouter) Route(key string, _ amqp.Table, out []exchange.Dest) []exchange.Dest {
	return append(out, exchange.Dest{Name: key})
}
func (defaultRouter) Bind(exchange.Binding) (bool, error) { return false, errDefaultExchange() }
func (defaultRouter) Unbind(exchange.Binding) bool        { return false }
func (defaultRouter) UnbindDestination(string, bool) int  { return 0 }
func (defaultRouter) Len() int                            { return 0 }
func (defaultRouter) Bindings() []exchange.Binding        { return nil }

// RouteBuf holds a router's scratch space; a publisher keeps one and reuses it for every publish
// (one goroutine at a time), so routing allocates nothing in the common case.
type RouteBuf struct {
	dests  []exchange.Dest
	queues []*Queue
	seen   map[*Queue]struct{}
	exSeen []*Exchange
}

// route resolves the queues a message reaches from ex, following exchange-to-exchange bindings
// and alternate exchanges; each queue appears once however many paths lead to it. A durable
// classic queue whose home node the cluster takes for dead is no destination, as in RabbitMQ
// 3.10 (observed on a 3-node cluster with the queue's node stopped): the message goes to the
// other queues, an alternate exchange takes it when that queue was the exchange's only one,
// and a publish it reaches nothing else with is unroutable (312 NO_ROUTE when mandatory, a
// confirm ack). Nothing is kept for that queue.
func (v *VHost) route(ex *Exchange, key string, headersRaw []byte, rb *RouteBuf) []*Queue {
	rb.queues = rb.queues[:0]
	rb.exSeen = rb.exSeen[:0]
	for k := range rb.seen {
		delete(rb.seen, k)
	}
	var headers amqp.Table
	headersDecoded := false
	v.mu.RLock()
	defer v.mu.RUnlock()
	if ex.name == "" {
		// What walk would do with defaultRouter, without the walk: most publishes go this way.
		if qs := v.queues[key]; qs != nil && !v.homeIsDown(qs) {
			rb.queues = append(rb.queues, qs)
		}
		return rb.queues
	}
	var walk func(ex *Exchange)
	walk = func(ex *Exchange) {
		for _, seen := range rb.exSeen {
			if seen == ex {
				return
			}
		}
		rb.exSeen = append(rb.exSeen, ex)
		if ex.kind == exchange.Headers && !headersDecoded {
			headersDecoded = true
			if len(headersRaw) > 0 {
				headers, _, _ = amqp.DecodeTable(headersRaw)
			}
		}
		start := len(rb.dests)
		rb.dests = ex.router.Route(key, headers, rb.dests)
		found := len(rb.queues)
		for i := start; i < len(rb.dests); i++ {
			d := rb.dests[i]
			if d.ToExchange {
				if next := v.exchanges[d.Name]; next != nil {
					walk(next)
				}
				continue
			}
			qs := v.queues[d.Name]
			if qs == nil || v.homeIsDown(qs) {
				continue
			}
			rb.addQueue(qs)
		}
		rb.dests = rb.dests[:start]
		if len(rb.queues) == found && ex.alternate != "" {
			if ae := v.exchanges[ex.alternate]; ae != nil {
				walk(ae)
			}
		}
	}
	walk(ex)
	return rb.queues
}

// senderKeys returns the CC and BCC routing keys of a headers table (RabbitMQ's sender-selected
// distribution). BCC keys route like CC keys but are removed from the delivered message.
func senderKeys(h amqp.Table) (cc, bcc []string) {
	for _, name := range [...]string{"CC", "BCC"} {
		arr, _ := h[name].([]any)
		for _, x := range arr {
			var k string
			switch v := x.(type) {
			case string:
				k = v
			case []byte:
				k = string(v)
			default:
				continue
			}
			if name == "CC" {
				cc = append(cc, k)
			} else {
				bcc = append(bcc, k)
			}
		}
	}
	return cc, bcc
}

// mayHaveSenderKeys is a cheap pre-check on raw header bytes so the table is decoded only when a
// CC or BCC field can be present.
func mayHaveSenderKeys(headersRaw []byte) bool {
	return bytes.Contains(headersRaw, []byte("\x02CCA")) || bytes.Contains(headersRaw, []byte("\x03BCCA"))
}

// routeKeys routes with several routing keys at once; each queue appears once.
func (v *VHost) routeKeys(ex *Exchange, keys []string, headersRaw []byte, rb *RouteBuf) []*Queue {
	var out []*Queue
	var tmp RouteBuf
	for _, k := range keys {
		for _, qs := range v.route(ex, k, headersRaw, &tmp) {
			rb.addUnique(&out, qs)
		}
	}
	return out
}

func (rb *RouteBuf) addUnique(out *[]*Queue, qs *Queue) {
	for _, x := range *out {
		if x == qs {
			return
		}
	}
	*out = append(*out, qs)
}

func (rb *RouteBuf) addQueue(qs *Queue) {
	if len(rb.queues) < 16 {
		for _, x := range rb.queues {
			if x == qs {
				return
			}
		}
		rb.queues = append(rb.queues, qs)
		return
	}
	if rb.seen == nil {
		rb.seen = make(map[*Queue]struct{})
	}
	if len(rb.seen) == 0 {
		for _, x := range rb.queues {
			rb.seen[x] = struct{}{}
		}
	}
	if _, ok := rb.seen[qs]; ok {
		return
	}
	rb.seen[qs] = struct{}{}
	rb.queues = append(rb.queues, qs)
}

// --- exchanges

// declareExchange implements exchange.declare for c (nil: declared by the configuration).
