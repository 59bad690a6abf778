//go:build linux

package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// point is one sampler reading taken at T since the load started.
type point struct {
	T     time.Duration
	Phase string // "idle-before", "load", "drain", "idle-after"
	sample
}

// slope fits y = a + b*x by least squares and returns b (per second of x) - the leak rate
// of a series over the load phase.
func slope(xs []time.Duration, ys []float64) float64 {
	n := float64(len(xs))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		x := xs[i].Seconds()
		sx += x
		sy += ys[i]
		sxx += x * x
		sxy += x * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

func median(ys []float64) float64 {
	if len(ys) == 0 {
		return 0
	}
	s := append([]float64(nil), ys...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// series picks one value of each point.
func series(ps []point, f func(point) float64) ([]time.Duration, []float64) {
	xs := make([]time.Duration, len(ps))
	ys := make([]float64, len(ps))
	for i, p := range ps {
		xs[i], ys[i] = p.T, f(p)
	}
	return xs, ys
}

// between returns the load-phase points with from <= T < to.
func between(ps []point, from, to time.Duration) []point {
	var out []point
	for _, p := range ps {
		if p.Phase == "load" && p.T >= from && p.T < to {
			out = append(out, p)
		}
	}
	return out
}

// window is the summary of the points of one time window.
type window struct {
	From, To                      time.Duration
	N                             int
	RSSMin, RSSMax, RSSFirst      float64 // anonymous RSS, MiB
	RSSLast                       float64
	VmRSSMax                      float64 // MiB, with the store's mapped files
	GorMin, GorMax, GorFirst, Gor float64 // Gor: last
}

// windows cuts the load-phase points into windows of width w.
func windows(ps []point, w time.Duration) []window {
	var out []window
	for _, p := range ps {
		if p.Phase != "load" {
			continue
		}
		from := p.T / w * w
		rss, gor := float64(p.AnonKiB)/1024, float64(p.Goroutines)
		if len(out) == 0 || out[len(out)-1].From != from {
			out = append(out, window{From: from, To: from + w, RSSMin: rss, RSSMax: rss, RSSFirst: rss,
				GorMin: gor, GorMax: gor, GorFirst: gor})
		}
		x := &out[len(out)-1]
		x.N++
		x.RSSMin, x.RSSMax, x.RSSLast = min(x.RSSMin, rss), max(x.RSSMax, rss), rss
		x.VmRSSMax = max(x.VmRSSMax, float64(p.RSSKiB)/1024)
		x.GorMin, x.GorMax, x.Gor = min(x.GorMin, gor), max(x.GorMax, gor), gor
	}
	return out
}

// sparkline draws ys with eight bar heights between the series' min and max.
func sparkline(ys []float64) string {
	if len(ys) == 0 {
		return ""
	}
	lo, hi := ys[0], ys[0]
	for _, y := range ys {
		lo, hi = min(lo, y), max(hi, y)
	}
	bars := []rune("▁▂▃▄▅▆▇█")
	var b strings.Builder
	for _, y := range ys {
		i := 0
		if hi > lo {
			i = int((y - lo) / (hi - lo) * float64(len(bars)-1))
		}
		b.WriteRune(bars[i])
	}
	return b.String()
}

// printWindows writes the windows as a markdown table plus sparklines of RSS and goroutines.
func printWindows(w io.Writer, ws []window) {
	fmt.Fprintln(w, "| minutes | anon RSS MiB min | max | first | last | VmRSS max | goroutines min | max | first | last |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	var rss, gor []float64
	for _, x := range ws {
		fmt.Fprintf(w, "| %s-%s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n",
			minutes(x.From), minutes(x.To), x.RSSMin, x.RSSMax, x.RSSFirst, x.RSSLast, x.VmRSSMax, x.GorMin, x.GorMax, x.GorFirst, x.Gor)
		rss = append(rss, x.RSSMax)
		gor = append(gor, x.GorMax)
	}
	fmt.Fprintf(w, "\nanon RSS max per window:   %s\n", sparkline(rss))
	fmt.Fprintf(w, "goroutines max per window: %s\n", sparkline(gor))
}

func minutes(d time.Duration) string {
	m := d.Minutes()
	if m == float64(int(m)) {
		return fmt.Sprintf("%d", int(m))
	}
	return fmt.Sprintf("%.1f", m)
}
