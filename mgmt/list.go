package mgmt

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// row is one item of a list endpoint: i indexes the broker's list, which the endpoint's render
// function turns into JSON. Rendering is deferred so that filtering, sorting by name and paging
// a list of 100,000 queues renders only the page (and allocates no closure per row).
type row struct {
	vhost, name string
	i           int32
	o           obj
}

// rendered returns the row's JSON, rendering it on first use.
func (r *row) rendered(render func(int) obj) obj {
	if r.o == nil {
		r.o = render(int(r.i))
	}
	return r.o
}

// listParams are RabbitMQ's list parameters.
type listParams struct {
	paged       bool
	page, size  int
	name        string
	useRegex    bool
	re          *regexp.Regexp
	sort        string
	reverse     bool
	columns     []string
	noStats     bool
	queueTotals bool
}

const (
	defaultPageSize = 100
	maxPageSize     = 500
)

// parseList reads the list parameters; it answers 400 and returns false when they are invalid.
func parseList(w http.ResponseWriter, r *http.Request) (listParams, bool) {
	q := r.URL.Query()
	p := listParams{page: 1, size: defaultPageSize}
	bad := func() (listParams, bool) {
		badRequest(w, "Pagination parameters are invalid")
		return p, false
	}
	// RabbitMQ pages only when "page" is given; page_size alone is ignored.
	if s := q.Get("page"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return bad()
		}
		p.page, p.paged = n, true
		sizeText := "undefined"
		if s := q.Get("page_size"); s != "" {
			m, err := strconv.Atoi(s)
			if err != nil {
				return bad()
			}
			p.size, sizeText = m, s
		}
		if p.page < 1 || p.size < 1 || p.size > maxPageSize {
			writeError(w, http.StatusBadRequest, "invalid_pagination_parameters",
				fmt.Sprintf("Invalid pagination parameters: page number %d, page size %s", p.page, sizeText))
			return p, false
		}
	}
	p.name = q.Get("name")
	p.useRegex = q.Get("use_regex") == "true"
	if p.name != "" && p.paged {
		pat := p.name
		if !p.useRegex {
			pat = regexp.QuoteMeta(pat)
		}
		re, err := regexp.Compile("(?i)" + pat)
		if err != nil {
			badRequest(w, fmt.Sprintf("invalid regular expression in name: %v", err))
			return p, false
		}
		p.re = re
	}
	p.sort = q.Get("sort")
	p.reverse = q.Get("sort_reverse") == "true"
	if s := q.Get("columns"); s != "" {
		for _, c := range strings.Split(s, ",") {
			if c = strings.TrimSpace(c); c != "" {
				p.columns = append(p.columns, c)
			}
		}
	}
	p.noStats = q.Get("disable_stats") == "true"
	p.queueTotals = q.Get("enable_queue_totals") == "true"
	return p, true
}

// writeList filters, sorts, pages and renders rows, in RabbitMQ's envelope when a page was asked
// for and as a plain array otherwise. As in RabbitMQ, the name filter applies only to paged
// requests (RabbitMQ 3.10 ignores ?name= without page or page_size) and sorting to both. It sorts indexes, not rows, so that a list of 100,000
// moves little memory.
func writeList(w http.ResponseWriter, p listParams, rows []row, render func(int) obj) {
	total := len(rows)
	order := make([]int32, 0, len(rows))
	for i := range rows {
		if !p.paged || p.re == nil || p.re.MatchString(rows[i].name) {
			order = append(order, int32(i))
		}
	}
	sortRows(rows, order, p.sort, p.reverse, render)
	filtered := len(order)
	if p.paged {
		pageCount := (filtered + p.size - 1) / p.size
		if p.page > pageCount && !(p.page == 1 && filtered == 0) {
			writeError(w, http.StatusBadRequest, "page_out_of_range",
				fmt.Sprintf("Page out of range, page: %d page size: %d, len: %d", p.page, p.size, filtered))
			return
		}
		start := (p.page - 1) * p.size
		end := min(start+p.size, filtered)
		items := renderRows(rows, order[start:end], p.columns, render)
		writeJSON(w, http.StatusOK, obj{
			"filtered_count": filtered, "item_count": len(items), "items": items,
			"page": p.page, "page_count": pageCount, "page_size": p.size, "total_count": total,
		})
		return
	}
	writeJSON(w, http.StatusOK, renderRows(rows, order, p.columns, render))
}

func renderRows(rows []row, order []int32, columns []string, render func(int) obj) []obj {
	out := make([]obj, 0, len(order))
	for _, i := range order {
		o := rows[i].rendered(render)
		if len(columns) > 0 {
			o = project(o, columns)
		}
		out = append(out, o)
	}
	return out
}

// sortRows orders the indexes in order by the sort key (a dotted field path), then vhost and
// name; sorting by name or vhost (and the default order) renders nothing.
func sortRows(rows []row, order []int32, key string, reverse bool, render func(int) obj) {
	byName := func(a, b *row) int {
		if c := strings.Compare(a.vhost, b.vhost); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	}
	var cmp func(a, b *row) int
	switch key {
	case "", "vhost":
		cmp = byName
	case "name":
		cmp = func(a, b *row) int {
			if c := strings.Compare(a.name, b.name); c != 0 {
				return c
			}
			return strings.Compare(a.vhost, b.vhost)
		}
	default:
		for _, i := range order {
			rows[i].rendered(render)
		}
		cmp = func(a, b *row) int {
			if c := less(lookup(a.o, key), lookup(b.o, key)); c != 0 {
				return c
			}
			return byName(a, b)
		}
	}
	sign := 1
	if reverse {
		sign = -1
	}
	slices.SortFunc(order, func(x, y int32) int {
		if c := cmp(&rows[x], &rows[y]); c != 0 {
			return sign * c
		}
		return int(x - y) // equal keys keep the broker's order
	})
}
