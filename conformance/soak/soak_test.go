//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestTracker(t *testing.T) {
	tests := []struct {
		name                   string
		confirm                [][2]int // publisher, seq
		consume                []string
		wantMissing, wantDups  int64
		wantForeign            int64
		wantExamples           []string
		wantConfirmed, wantCon int64
	}{
		{name: "nothing"},
		{name: "all consumed", confirm: [][2]int{{0, 0}, {0, 1}, {1, 0}}, consume: []string{"d0-0", "d0-1", "d1-0"},
			wantConfirmed: 3, wantCon: 3},
		{name: "one missing past a word boundary", confirm: [][2]int{{0, 63}, {0, 64}, {2, 200}}, consume: []string{"d0-63", "d2-200"},
			wantConfirmed: 3, wantCon: 2, wantMissing: 1, wantExamples: []string{"d0-64"}},
		{name: "redelivered and unconfirmed", confirm: [][2]int{{0, 5}}, consume: []string{"d0-5", "d0-5", "d0-6"},
			wantConfirmed: 1, wantCon: 2, wantDups: 1},
		{name: "foreign ids", consume: []string{"x0-1", "d0", "dA-1", "d0-x", ""}, wantForeign: 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker("d")
			for _, c := range tc.confirm {
				tr.confirm(c[0], uint64(c[1]))
				tr.confirm(c[0], uint64(c[1])) // a second confirm of the same id counts once
			}
			for _, id := range tc.consume {
				tr.consume(id)
			}
			st := tr.stats()
			if st.Confirmed != tc.wantConfirmed || st.Consumed != tc.wantCon || st.Missing != tc.wantMissing ||
				st.Duplicates != tc.wantDups || st.Foreign != tc.wantForeign || !slices.Equal(st.Examples, tc.wantExamples) {
				t.Errorf("stats = %+v, want confirmed %d consumed %d missing %d %v dups %d foreign %d", st,
					tc.wantConfirmed, tc.wantCon, tc.wantMissing, tc.wantExamples, tc.wantDups, tc.wantForeign)
			}
		})
	}
}

func TestTrackerIDRoundTrip(t *testing.T) {
	tr := newTracker("t")
	for _, c := range [][2]int{{0, 0}, {3, 1 << 20}, {7, 12345}} {
		p, seq, err := tr.parse(tr.id(c[0], uint64(c[1])))
		if err != nil || p != c[0] || seq != uint64(c[1]) {
			t.Errorf("parse(id(%d, %d)) = %d, %d, %v", c[0], c[1], p, seq, err)
		}
	}
}

func TestSlopeAndMedian(t *testing.T) {
	tests := []struct {
		name      string
		ys        []float64
		wantSlope float64 // per second; samples 1 s apart
		wantMed   float64
	}{
		{"flat", []float64{5, 5, 5, 5}, 0, 5},
		{"rising", []float64{0, 2, 4, 6, 8}, 2, 4},
		{"falling even count", []float64{9, 6, 3, 0}, -3, 4.5},
		{"one point", []float64{7}, 0, 7},
		{"none", nil, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			xs := make([]time.Duration, len(tc.ys))
			for i := range xs {
				xs[i] = time.Duration(i) * time.Second
			}
			if got := slope(xs, tc.ys); math.Abs(got-tc.wantSlope) > 1e-9 {
				t.Errorf("slope = %v, want %v", got, tc.wantSlope)
			}
			if got := median(tc.ys); got != tc.wantMed {
				t.Errorf("median = %v, want %v", got, tc.wantMed)
			}
		})
	}
}

func TestWindows(t *testing.T) {
	var ps []point
	ps = append(ps, point{T: 0, Phase: "idle-before", sample: sample{AnonKiB: 1 << 20, Goroutines: 999}})
	for i, rss := range []int64{10, 30, 20, 40, 50, 45} {
		ps = append(ps, point{T: time.Duration(i) * time.Minute, Phase: "load",
			sample: sample{AnonKiB: rss * 1024, RSSKiB: (rss + 100) * 1024, Goroutines: int64(100 + i)}})
	}
	ws := windows(ps, 3*time.Minute)
	want := []window{
		{From: 0, To: 3 * time.Minute, N: 3, RSSMin: 10, RSSMax: 30, RSSFirst: 10, RSSLast: 20, VmRSSMax: 130, GorMin: 100, GorMax: 102, GorFirst: 100, Gor: 102},
		{From: 3 * time.Minute, To: 6 * time.Minute, N: 3, RSSMin: 40, RSSMax: 50, RSSFirst: 40, RSSLast: 45, VmRSSMax: 150, GorMin: 103, GorMax: 105, GorFirst: 103, Gor: 105},
	}
	if !slices.Equal(ws, want) {
		t.Fatalf("windows =\n%+v\nwant\n%+v", ws, want)
	}
	var b strings.Builder
	printWindows(&b, ws)
	if !strings.Contains(b.String(), "| 0-3 | 10 | 30 | 10 | 20 | 130 | 100 | 102 | 100 | 102 |") ||
		!strings.Contains(b.String(), "▁█") {
		t.Errorf("printWindows:\n%s", b.String())
	}
}

func TestSparkline(t *testing.T) {
	for _, tc := range []struct {
		ys   []float64
		want string
	}{
		{nil, ""},
		{[]float64{3, 3}, "▁▁"},
		{[]float64{0, 7, 14}, "▁▄█"},
	} {
		if got := sparkline(tc.ys); got != tc.want {
			t.Errorf("sparkline(%v) = %q, want %q", tc.ys, got, tc.want)
		}
	}
}

func TestErrKind(t *testing.T) {
	tests := []struct {
		err  error
		want string
		code int
	}{
		{&amqp.Error{Code: 404, Reason: "NOT_FOUND - no queue 'x'"}, "AMQP 404", 404},
		{fmt.Errorf("queue.declare: %w", &amqp.Error{Code: 405}), "AMQP 405", 405},
		{errors.New("dial tcp 127.0.0.1:4567: connection refused"), "dial tcp ###.#.#.#:####: connection refused", 0},
	}
	for _, tc := range tests {
		if got := errKind(tc.err); got != tc.want {
			t.Errorf("errKind(%v) = %q, want %q", tc.err, got, tc.want)
		}
		if got := amqpCode(tc.err); got != tc.code {
			t.Errorf("amqpCode(%v) = %d, want %d", tc.err, got, tc.code)
		}
	}
	b := newErrorBook()
	b.fail("w", errors.New("x"))
	b.fail("w", errors.New("x"))
	b.expect("404")
	if b.unexpectedTotal() != 2 || b.expected["404"] != 1 || len(b.samples) != 2 {
		t.Errorf("errorBook: %+v", b)
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{nil, ""},
		{[]string{"-duration", "1h", "-csv", "x.csv"}, ""},
		{[]string{"-duration", "5s"}, "at least 20s"},
		{[]string{"-sample", "30s"}, "-sample"},
		{[]string{"-publishers", "0"}, "at least 1"},
		{[]string{"-alarm-every", "5s", "-alarm-hold", "10s"}, "-alarm-every"},
		{[]string{"extra"}, "unexpected arguments"},
	}
	for _, tc := range tests {
		_, err := parseFlags(tc.args, io.Discard)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("parseFlags(%v) = %v, want error containing %q", tc.args, err, tc.wantErr)
		}
	}
}
