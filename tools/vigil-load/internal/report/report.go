// Package report holds what the load lab's subcommands print with: the
// markdown tables, the formats of milliseconds and ratios, percentiles
// and a latency histogram.
package report

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest value such that at least p percent of
// the values are at or below it. It returns 0 for no values.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

// Latencies summarises a set of delivery Latencies.
type Latencies struct {
	N             int
	P50, P99, Max time.Duration
}

func Summarize(d []time.Duration) Latencies {
	slices.Sort(d)
	l := Latencies{N: len(d), P50: Percentile(d, 50), P99: Percentile(d, 99)}
	if len(d) > 0 {
		l.Max = d[len(d)-1]
	}
	return l
}

// Table is a markdown table.
type Table struct {
	Header []string
	Align  []bool // true: right-aligned
	rows   [][]string
}

func (t *Table) Add(cells ...string) { t.rows = append(t.rows, cells) }

// Render writes the table as GitHub markdown, with columns padded so
// that it also reads well as plain text.
func (t *Table) Render(w io.Writer) {
	width := make([]int, len(t.Header))
	for i, h := range t.Header {
		width[i] = max(3, len(h))
	}
	for _, r := range t.rows {
		for i, c := range r {
			if i < len(width) {
				width[i] = max(width[i], len(c))
			}
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i := range width {
			c := ""
			if i < len(cells) {
				c = cells[i]
			}
			pad := strings.Repeat(" ", width[i]-len(c))
			if i < len(t.Align) && t.Align[i] {
				b.WriteString(" " + pad + c + " |")
			} else {
				b.WriteString(" " + c + pad + " |")
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(t.Header)
	var b strings.Builder
	b.WriteString("|")
	for i := range width {
		if i < len(t.Align) && t.Align[i] {
			b.WriteString(" " + strings.Repeat("-", width[i]-1) + ": |")
		} else {
			b.WriteString(" " + strings.Repeat("-", width[i]) + " |")
		}
	}
	fmt.Fprintln(w, b.String())
	for _, r := range t.rows {
		line(r)
	}
}

// Ms formats a duration in milliseconds.
func Ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// Ratio formats a/b, or "-" when b is 0.
func Ratio(a, b int64, prec int) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.*f", prec, float64(a)/float64(b))
}

// F2 formats v with two decimals, or "-" for NaN.
func F2(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}
