package bench

import "testing"

func TestParseBenchOutput(t *testing.T) {
	out := `goos: linux
BenchmarkForward/vigil/subs=100-2   1000   894252 ns/op   1890 B/fwd   6.087 allocs/fwd   8943 ns/fwd   189003 B/op   608 allocs/op
BenchmarkForward/vigil/subs=100-2   1000   900000 ns/op   1890 B/fwd   6.000 allocs/fwd   9000 ns/fwd   189003 B/op   608 allocs/op
BenchmarkForward/vigil/subs=100-2   1000   700000 ns/op   1890 B/fwd   6.000 allocs/fwd   7000 ns/fwd   189003 B/op   608 allocs/op
BenchmarkForward/pion/subs=100     1000  1078452 ns/op   1790 B/fwd   5.039 allocs/fwd  10785 ns/fwd   179013 B/op   503 allocs/op
PASS`
	r := parseBenchOutput(out)
	if v, ok := r.median("vigil", 100, "ns/fwd"); !ok || v != 8943 {
		t.Fatalf("vigil median = %v, %v", v, ok)
	}
	if v, ok := r.median("pion", 100, "allocs/fwd"); !ok || v != 5.039 {
		t.Fatalf("pion allocs = %v, %v", v, ok)
	}
	if _, ok := r.median("pion", 10, "ns/fwd"); ok {
		t.Fatal("a size not run: want none")
	}
	if s := r.sizes(); len(s) != 1 || s[0] != 100 {
		t.Fatalf("sizes = %v", s)
	}
}
