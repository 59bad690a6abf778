package exchange

import "slices"

// names renders a route result as sorted names, marking exchanges with a
// "x:" prefix, so assertions do not depend on routing order.
func names(ds []Dest) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		if d.ToExchange {
			out = append(out, "x:"+d.Name)
		} else {
			out = append(out, d.Name)
		}
	}
	slices.Sort(out)
	return out
}
