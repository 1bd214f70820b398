package report

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"median of odd", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"median of even is the lower", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p100 is the max", ms(hundred...), 100, 100 * time.Millisecond},
		{"p99 of 10 is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{"tiny p is the min", ms(4, 5, 6), 0.001, 4 * time.Millisecond},
	} {
		if got := Percentile(tc.in, tc.p); got != tc.want {
			t.Errorf("%s: Percentile(%v, %v) = %v, want %v", tc.name, tc.in, tc.p, got, tc.want)
		}
	}
}

func TestSummarizeSorts(t *testing.T) {
	l := Summarize([]time.Duration{5, 1, 4, 2, 3})
	if l.N != 5 || l.P50 != 3 || l.P99 != 5 || l.Max != 5 {
		t.Fatalf("summarize = %+v", l)
	}
}

func TestTableRender(t *testing.T) {
	tb := &Table{Header: []string{"N", "p99 ms", "result"}, Align: []bool{true, true, false}}
	tb.Add("50", "1.25", "ok")
	tb.Add("1600", "250", "limit: p99")
	var b bytes.Buffer
	tb.Render(&b)
	want := strings.Join([]string{
		"|    N | p99 ms | result     |",
		"| ---: | -----: | ---------- |",
		"|   50 |   1.25 | ok         |",
		"| 1600 |    250 | limit: p99 |",
		"",
	}, "\n")
	if b.String() != want {
		t.Fatalf("render:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestHistQuantiles(t *testing.T) {
	var h Hist
	if h.Quantile(50) != 0 {
		t.Fatal("empty histogram: want 0")
	}
	for i := 1; i <= 1000; i++ {
		h.Add(time.Duration(i) * 10 * time.Microsecond) // 10 µs .. 10 ms
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 5 * time.Millisecond}, {99, 9900 * time.Microsecond}, {99.9, 9990 * time.Microsecond}, {100, 10 * time.Millisecond}} {
		got := h.Quantile(tc.p)
		if got < tc.want || float64(got-tc.want) > 0.02*float64(tc.want) {
			t.Errorf("p%v = %v, want %v within 2%% above", tc.p, got, tc.want)
		}
	}
	var o Hist
	o.Add(time.Second)
	o.Add(-time.Millisecond) // clock skew: counted as 0
	h.Merge(&o)
	if h.n != 1002 || h.Quantile(100) != time.Second || h.Quantile(0.01) != time.Microsecond-1 {
		t.Errorf("merge: n=%d max=%v min=%v", h.n, h.Quantile(100), h.Quantile(0.01))
	}
	// Every bucket's top maps back to the bucket.
	for i := range len(h.counts) - 1 {
		if got := histIndex(histValue(i)); got != i {
			t.Fatalf("histIndex(histValue(%d)) = %d", i, got)
		}
	}
}
