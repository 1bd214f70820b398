package clusterbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

type metricSample struct {
	name   string
	labels map[string]string
	value  float64
}

type metricSet []metricSample

// parseMetrics reads the Prometheus text exposition format: one
// `name{label="value",...} number` per line; comments skipped.
func parseMetrics(b []byte) metricSet {
	var out metricSet
	for _, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		s := metricSample{labels: map[string]string{}}
		rest := line
		if i := bytes.IndexByte(line, '{'); i >= 0 {
			j := bytes.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			s.name = string(line[:i])
			parseLabels(string(line[i+1:j]), s.labels)
			rest = line[j+1:]
		} else {
			f := bytes.Fields(line)
			if len(f) < 2 {
				continue
			}
			s.name = string(f[0])
			rest = line[len(f[0]):]
		}
		f := bytes.Fields(rest)
		if len(f) < 1 {
			continue
		}
		v, err := strconv.ParseFloat(string(f[0]), 64)
		if err != nil {
			continue
		}
		s.value = v
		out = append(out, s)
	}
	return out
}

// parseLabels reads `a="x",b="y \"q\""` into m.
func parseLabels(s string, m map[string]string) {
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			return
		}
		key := strings.TrimSpace(strings.TrimLeft(s[:eq], ", "))
		var val strings.Builder
		i := eq + 2
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[i])
				}
				continue
			}
			val.WriteByte(s[i])
		}
		m[key] = val.String()
		if i >= len(s) {
			return
		}
		s = s[i+1:]
	}
}

// sum adds the samples of name whose label has value (label "": all).
func (ms metricSet) sum(name, label, value string) float64 {
	var v float64
	for _, s := range ms {
		if s.name == name && (label == "" || s.labels[label] == value) {
			v += s.value
		}
	}
	return v
}

// byLabel sums the samples of name by the value of one label.
func (ms metricSet) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ms {
		if s.name == name {
			out[s.labels[label]] += s.value
		}
	}
	return out
}

func scrape(ctx context.Context, hc *http.Client, base string) (metricSet, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(b), nil
}
