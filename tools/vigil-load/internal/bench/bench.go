// Package bench is "vigil-load bench": the short or full version of
// every media scenario and of the forwarding Go benchmark, as one table.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/media"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/procstat"
)

// benchPlan is one scenario of "vigil-load bench".
type benchPlan struct {
	args  []string
	short []string
}

// The six benchmarks, short (make bench: under 5 minutes in all, so no
// step is run twice) and full (docs/benchmarks.md).
var benchPlans = []benchPlan{
	{args: []string{"-scenario", "fanout", "-subscribers", "100,200,400,600,800,1000,1200", "-duration", "10s", "-attempts", "2"},
		short: []string{"-scenario", "fanout", "-subscribers", "100,300", "-duration", "3s", "-contended-retries", "0"}},
	{args: []string{"-scenario", "audio", "-publishers", "10", "-subscribers", "20,50,100,150", "-duration", "10s", "-attempts", "2"},
		short: []string{"-scenario", "audio", "-publishers", "10", "-subscribers", "20", "-duration", "3s", "-contended-retries", "0"}},
	{args: []string{"-scenario", "meeting", "-subscribers", "4,8,12,16,20", "-duration", "10s", "-attempts", "2"},
		short: []string{"-scenario", "meeting", "-subscribers", "6", "-duration", "3s", "-contended-retries", "0"}},
	{args: []string{"-scenario", "latency", "-subscribers", "100", "-bitrate", "9M", "-duration", "10s", "-poll", "0"},
		short: []string{"-scenario", "latency", "-subscribers", "100", "-bitrate", "9M", "-duration", "3s", "-poll", "0", "-contended-retries", "0"}},
	{args: []string{"-scenario", "joinstorm", "-subscribers", "50", "-storm", "200", "-join-rate", "50"},
		short: []string{"-scenario", "joinstorm", "-subscribers", "20", "-storm", "200", "-join-rate", "50", "-contended-retries", "0"}},
}

// Run is "vigil-load bench".
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vigil-load bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: vigil-load bench [-short] [flags]

Runs the five media scenarios (fanout, audio, meeting, latency,
joinstorm) against Vigil and the stock-pion baseline forwarder, each on a
fresh server pinned to -server-cpu with this generator on -gen-cpu, then
the forwarding Go benchmark (sfu, BenchmarkForward, -benchmem) pinned to
-server-cpu, and prints one table: each figure for Vigil, the baseline,
and their ratio. Run it from the module root.

flags:`)
		fs.PrintDefaults()
	}
	short := fs.Bool("short", false, "the short version (make bench): about 3 minutes")
	vigilBin := fs.String("vigil-bin", "", "a vigil binary to run instead of building one")
	serverCPU := fs.Int("server-cpu", 0, "the CPU servers (and the Go benchmark) are pinned to (-1: none)")
	genCPU := fs.Int("gen-cpu", 1, "the CPU this generator is pinned to (-1: none)")
	only := fs.String("only", "", "comma-separated subset: fanout,audio,meeting,latency,joinstorm,gobench")
	profile := fs.String("cpuprofile", "", "write the Go benchmark's CPU profile here and print its top entries")
	if err := fs.Parse(args); err != nil {
		return err
	}
	want := func(s string) bool { return *only == "" || slices.Contains(strings.Split(*only, ","), s) }
	start := time.Now()

	// Build what runs pinned before pinning this process.
	var testBin string
	var buildErr error
	if want("gobench") {
		dir, err := os.MkdirTemp("", "vigil-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		testBin = filepath.Join(dir, "sfu.test")
		cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", testBin, "github.com/vigil-media/vigil/sfu")
		cmd.Stdout, cmd.Stderr = stderr, stderr
		buildErr = cmd.Run()
	}
	sh, err := media.NewRunner(ctx, stdout, stderr)
	if err != nil {
		return err
	}
	pinned, cleanup, err := sh.Setup(ctx, true, *vigilBin, *serverCPU, *genCPU, []string{media.TgVigil, media.TgBaseline})
	if err != nil {
		return err
	}
	defer cleanup()
	mode := "full"
	if *short {
		mode = "short"
	}
	fmt.Fprintf(stdout, "# vigil-load bench %s (%s)\n", strings.Join(args, " "), mode)
	fmt.Fprintf(stdout, "# %s, %d CPUs (%s), %s, RLIMIT_NOFILE %d; pinned: %s\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), procstat.CPUModel(), runtime.Version(), procstat.RaiseNoFile(), pinned)

	var rows []media.SumRow
	for _, p := range benchPlans {
		a := p.args
		if *short {
			a = p.short
		}
		if !want(a[1]) || ctx.Err() != nil {
			continue
		}
		a = append(slices.Clone(a), "-spawn")
		cfg, err := media.ParseFlags(a, stderr)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "== %s: vigil-load media %s\n", cfg.Scenario, strings.Join(a, " "))
		res := sh.RunScenario(ctx, cfg)
		fmt.Fprintf(stdout, "\n### %s\n\n`vigil-load media %s`\n\n", media.ScenarioTitle(cfg), strings.Join(a, " "))
		media.Table(res).Render(stdout)
		rows = append(rows, media.Summarize(cfg, res)...)
	}
	if want("gobench") && ctx.Err() == nil {
		if buildErr != nil {
			rows = append(rows, media.SumRow{Bench: "gobench", Figure: "build failed: " + buildErr.Error(), Vigil: "-", Baseline: "-", V: math.NaN(), B: math.NaN()})
		} else {
			rows = append(rows, goBench(ctx, sh.Out, sh.ProgOut, testBin, *short, *serverCPU, *profile)...)
		}
	}
	fmt.Fprintf(stdout, "\n### Summary (%s, %.0f s)\n\n", mode, time.Since(start).Seconds())
	media.SumTable(rows).Render(stdout)
	sh.ServerLogs()
	return ctx.Err()
}

// goBench runs BenchmarkForward of package sfu pinned to cpu, count
// times in separate processes (so that Vigil and the baseline alternate
// and a burst of other load hits both), and reports the median ns and
// allocations per forwarded packet. With profile, it then profiles the
// Vigil and the baseline 100-subscriber cases, each alone.
func goBench(ctx context.Context, out, prog io.Writer, bin string, short bool, cpu int, profile string) []media.SumRow {
	count, benchtime := 5, "3000x"
	if short {
		count, benchtime = 3, "1000x"
	}
	pin := func(argv []string) []string {
		if cpu >= 0 {
			if ts, err := exec.LookPath("taskset"); err == nil {
				return append([]string{ts, "-c", strconv.Itoa(cpu)}, argv...)
			}
		}
		return argv
	}
	runBin := func(args ...string) (string, error) {
		argv := pin(append([]string{bin, "-test.run", "^$", "-test.benchmem"}, args...))
		fmt.Fprintf(prog, "== gobench: %s\n", strings.Join(argv, " "))
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Dir = filepath.Dir(bin)
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = io.MultiWriter(&buf, prog), prog
		err := cmd.Run()
		return buf.String(), err
	}
	var all strings.Builder
	for range count {
		got, err := runBin("-test.bench", "^BenchmarkForward$", "-test.benchtime", benchtime)
		if err != nil {
			return []media.SumRow{{Bench: "gobench", Figure: "failed: " + err.Error(), Vigil: "-", Baseline: "-", V: math.NaN(), B: math.NaN()}}
		}
		all.WriteString(got)
	}
	fmt.Fprintf(out, "\n### gobench: `go test -run '^$' -bench '^BenchmarkForward$' -benchmem -benchtime %s ./sfu/`, %d times, pinned to CPU %d\n\n```\n", benchtime, count, cpu)
	for _, l := range strings.Split(all.String(), "\n") {
		if strings.HasPrefix(l, "Benchmark") {
			fmt.Fprintln(out, l)
		}
	}
	fmt.Fprintln(out, "```")
	res := parseBenchOutput(all.String())
	var rows []media.SumRow
	for _, size := range res.sizes() {
		for _, unit := range []string{"ns/fwd", "allocs/fwd", "B/fwd"} {
			v, okv := res.median("vigil", size, unit)
			b, okb := res.median("pion", size, unit)
			row := media.SumRow{Bench: "gobench", Figure: fmt.Sprintf("%s, %d down-tracks (median of %d)", unit, size, count), Vigil: "-", Baseline: "-", V: math.NaN(), B: math.NaN()}
			if okv {
				row.V, row.Vigil = v, strconv.FormatFloat(v, 'f', 1, 64)
			}
			if okb {
				row.B, row.Baseline = b, strconv.FormatFloat(b, 'f', 1, 64)
			}
			rows = append(rows, row)
		}
	}
	if profile != "" {
		for _, server := range []string{"vigil", "pion"} {
			p := strings.TrimSuffix(profile, ".prof") + "." + server + ".prof"
			if _, err := runBin("-test.bench", "^BenchmarkForward$/^"+server+"$/^subs=100$", "-test.benchtime", "5000x", "-test.cpuprofile", p); err != nil {
				continue
			}
			for _, mode := range [][]string{{"-top"}, {"-top", "-cum"}} {
				args := append([]string{"tool", "pprof"}, mode...)
				args = append(args, "-nodecount", "30", bin, p)
				b, err := exec.CommandContext(ctx, "go", args...).Output()
				if err == nil {
					fmt.Fprintf(out, "\n### CPU profile, %s/subs=100 (go tool pprof %s)\n\n```\n%s```\n", server, strings.Join(mode, " "), b)
				}
			}
		}
	}
	return rows
}

// benchResults are the metrics of "go test -bench" output lines, by
// server (vigil, pion), size and unit.
type benchResults map[string]map[int]map[string][]float64

// parseBenchOutput reads lines such as
// "BenchmarkForward/vigil/subs=100-2  1000  512345 ns/op  5123 ns/fwd  12.0 allocs/fwd  300 B/op  12 allocs/op".
func parseBenchOutput(out string) benchResults {
	res := benchResults{}
	s := bufio.NewScanner(strings.NewReader(out))
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkForward/") {
			continue
		}
		parts := strings.Split(strings.TrimPrefix(f[0], "BenchmarkForward/"), "/")
		if len(parts) != 2 {
			continue
		}
		sz := strings.TrimPrefix(parts[1], "subs=")
		if i := strings.LastIndexByte(sz, '-'); i >= 0 {
			sz = sz[:i]
		}
		n, err := strconv.Atoi(sz)
		if err != nil {
			continue
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			if res[parts[0]] == nil {
				res[parts[0]] = map[int]map[string][]float64{}
			}
			if res[parts[0]][n] == nil {
				res[parts[0]][n] = map[string][]float64{}
			}
			res[parts[0]][n][f[i+1]] = append(res[parts[0]][n][f[i+1]], v)
		}
	}
	return res
}

func (r benchResults) sizes() []int {
	var out []int
	for _, m := range r {
		for n := range m {
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return out
}

func (r benchResults) median(server string, n int, unit string) (float64, bool) {
	v := slices.Clone(r[server][n][unit])
	if len(v) == 0 {
		return 0, false
	}
	slices.Sort(v)
	return v[(len(v)-1)/2], true
}
