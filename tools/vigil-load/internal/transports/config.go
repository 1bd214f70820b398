// Package transports is "vigil-load transports": one room's event
// stream driven through each signaling transport (WebSocket, SSE, long
// poll, short poll) to a ramp of idle clients.
package transports

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-media/vigil/tools/vigil-load/internal/api"
)

// transportsConfig is the flags of "vigil-load transports".
type transportsConfig struct {
	URL          string
	AdminKey     string
	ServerPID    int
	Spawn        bool
	VigilBin     string
	ServerCPU    int
	GenCPU       int
	Transports   []string
	Clients      []int
	Events       int
	Rate         float64
	PollInterval time.Duration
	LongPollWait time.Duration
	MaxP99       time.Duration
	Timeout      time.Duration
	Kind         string
	Workers      int
	Attempts     int
}

func parseTransportsFlags(args []string, stderr io.Writer) (*transportsConfig, error) {
	c := &transportsConfig{}
	fs := flag.NewFlagSet("vigil-load transports", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: vigil-load transports (-spawn | -url URL -admin-key KEY [-server-pid PID]) [flags]

Drives one room's event stream (chat messages from a driver session, sent
at -rate) through each transport to N idle clients per step of the ramp,
and reports delivery latency, HTTP requests and bytes per delivered event,
server memory per client and the most clients held before p99 passes
-max-p99. Loopback only.

flags:`)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.URL, "url", "", "a running Vigil on loopback, e.g. http://127.0.0.1:8080 (or use -spawn)")
	fs.StringVar(&c.AdminKey, "admin-key", os.Getenv("VIGIL_ADMIN_KEY"), "its admin key (VIGIL_ADMIN_KEY)")
	fs.IntVar(&c.ServerPID, "server-pid", 0, "its process id, to read RSS and CPU from /proc (with -url)")
	fs.BoolVar(&c.Spawn, "spawn", false, "build vigil and start a fresh one per step on free loopback ports")
	fs.StringVar(&c.VigilBin, "vigil-bin", "", "with -spawn: a vigil binary to run instead of building one")
	fs.IntVar(&c.ServerCPU, "server-cpu", 0, "with -spawn: the CPU the server is pinned to (-1: none)")
	fs.IntVar(&c.GenCPU, "gen-cpu", 1, "with -spawn: the CPU this generator is pinned to (-1: none)")
	transports := fs.String("transports", strings.Join(allTransports, ","), "transports to measure, in order; none is the baseline: sessions with no transport")
	clients := fs.String("clients", "50,100,200,400,800,1600", "the ramp: idle clients per step")
	fs.IntVar(&c.Events, "events", 100, "chat events per step")
	fs.Float64Var(&c.Rate, "rate", 20, "chat events per second")
	fs.DurationVar(&c.PollInterval, "poll-interval", 100*time.Millisecond, "short polling interval")
	fs.DurationVar(&c.LongPollWait, "longpoll-wait", 25*time.Second, "how long a long poll is held (wait=)")
	fs.DurationVar(&c.MaxP99, "max-p99", 100*time.Millisecond, "latency limit: the ramp stops at the first step whose p99 passes it (short polling: this plus -poll-interval)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "how long after the last event every client must have it")
	fs.StringVar(&c.Kind, "kind", "conference", "room kind: conference (clients see each other) or broadcast (viewers see only the driver)")
	fs.IntVar(&c.Workers, "workers", 16, "concurrent session opens and closes")
	fs.IntVar(&c.Attempts, "attempts", 2, "runs of a step that fails before the ramp stops; the best attempt (lowest p99) is reported: on a shared machine one failure may be someone else's load")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, t := range strings.Split(*transports, ",") {
		t = strings.TrimSpace(t)
		if !slices.Contains(allTransports, t) {
			return nil, fmt.Errorf("-transports: %q is not one of %v", t, allTransports)
		}
		c.Transports = append(c.Transports, t)
	}
	for _, s := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 9999 {
			return nil, fmt.Errorf("-clients: %q is not a count from 1 to 9999", s)
		}
		c.Clients = append(c.Clients, n)
	}
	switch {
	case c.Spawn == (c.URL != ""):
		return nil, errors.New("give either -spawn or -url")
	case c.URL != "" && c.AdminKey == "":
		return nil, errors.New("-url needs -admin-key")
	case c.Events < 1 || c.Rate <= 0 || c.PollInterval <= 0 || c.MaxP99 <= 0 || c.Timeout <= 0 || c.Workers < 1 || c.Attempts < 1:
		return nil, errors.New("-events, -rate, -poll-interval, -max-p99, -timeout and -workers must be positive")
	case c.LongPollWait <= 0 || c.LongPollWait > 30*time.Second:
		return nil, errors.New("-longpoll-wait must be in (0, 30s]")
	case c.Kind != "conference" && c.Kind != "broadcast":
		return nil, errors.New("-kind must be conference or broadcast")
	}
	if c.URL != "" {
		c.URL = strings.TrimRight(c.URL, "/")
		if !api.IsLoopbackURL(c.URL) {
			return nil, fmt.Errorf("-url %s: only http://127.0.0.1 (or another 127.0.0.0/8 address) may be targeted", c.URL)
		}
	}
	return c, nil
}

// limitFor is the p99 a step of transport tr may reach: short polling's
// floor is its interval, so it gets the interval on top.
func (c *transportsConfig) limitFor(tr string) time.Duration {
	if tr == trPoll {
		return c.MaxP99 + c.PollInterval
	}
	return c.MaxP99
}

// roles of the driver and of the clients, by room kind.
func (c *transportsConfig) roles() (driver, client string) {
	if c.Kind == "broadcast" {
		return "host", "viewer"
	}
	return "participant", "participant"
}

// joinEvents is how many events n clients receive before the first chat:
// each its joined event, and in a conference a participant_joined for
// every client that joined after it (the driver joined first).
func (c *transportsConfig) joinEvents(n int) int64 {
	if c.Kind == "broadcast" {
		return int64(n)
	}
	return int64(n) + int64(n)*int64(n-1)/2
}
