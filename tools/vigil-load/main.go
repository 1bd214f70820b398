// Command vigil-load generates load against a Vigil server on loopback.
//
// Usage:
//
//	vigil-load <command> [flags]
//
// Commands:
//
//	transports  drive one room-event stream through each signaling
//	            transport (WebSocket, SSE, long poll, short poll) with a
//	            ramp of idle clients, and report latency, requests and
//	            bytes per event, server memory per client and the most
//	            clients held under a latency limit
//	media       synthetic WHIP publishers and thin WHEP subscribers in one
//	            scenario (fanout, audio, meeting, latency, joinstorm),
//	            against Vigil and a stock-pion baseline forwarder: packets
//	            forwarded per second, loss, added latency, join times, and
//	            the server's CPU per forwarded packet
//	bench       the short version of every media scenario and of the
//	            forwarding Go benchmark, as one table (make bench)
//	cluster     the fan-out scenario against 1 and 2 Vigil nodes joined by
//	            a private Redis, each held to the same CPU budget: the
//	            most subscribers held with each (make bench-cluster)
//
// Run "vigil-load <command> -h" for the flags of a command.
//
// The layout: this package is the dispatch; each command is a package of
// internal/ (transports, media, bench, clusterbench, baseline), over
// spawn (starting the servers), procstat (CPU, memory and drops from
// /proc, CPU pinning), api (Vigil's REST API), report (tables,
// percentiles, the latency histogram) and par.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/baseline"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/bench"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/clusterbench"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/media"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/transports"
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
	hidden  bool
}

// commands is the subcommands; each is a package of internal/.
func commands() []command {
	return []command{
		{"transports", "compare the signaling transports under a ramp of idle clients", transports.Run, false},
		{"media", "forward synthetic media through Vigil and a stock-pion baseline", media.Run, false},
		{"bench", "the short version of every media benchmark, and the Go forwarding benchmark", bench.Run, false},
		{"cluster", "the fan-out benchmark on 1 and 2 cluster nodes, each with the same CPU budget", clusterbench.Run, false},
		// The stock-pion forwarder the media benchmarks compare Vigil with;
		// started by media and bench themselves.
		{"baseline-server", "a minimal stock-pion WHIP/WHEP forwarder (the baseline)", baseline.Run, true},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: vigil-load <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		if c.hidden {
			continue
		}
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nrun \"vigil-load <command> -h\" for its flags")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		default:
			fmt.Fprintf(stderr, "vigil-load %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "vigil-load: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}
