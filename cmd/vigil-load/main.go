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
//
// Run "vigil-load <command> -h" for the flags of a command.
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
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"transports", "compare the signaling transports under a ramp of idle clients", runTransports},
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
	for _, c := range commands {
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
	for _, c := range commands {
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
