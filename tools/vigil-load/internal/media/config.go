// Package media is "vigil-load media": synthetic WHIP publishers and
// thin WHEP subscribers in one scenario (fanout, audio, meeting,
// latency, joinstorm) against Vigil and the stock-pion baseline
// forwarder, step by step along a ramp. Its Runner also runs the steps
// of "vigil-load bench" and, through the Cluster hooks, of "vigil-load
// cluster".
package media

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

// The media scenarios.
const (
	ScFanout    = "fanout"
	ScAudio     = "audio"
	ScMeeting   = "meeting"
	ScLatency   = "latency"
	ScJoinstorm = "joinstorm"
)

var allScenarios = []string{ScFanout, ScAudio, ScMeeting, ScLatency, ScJoinstorm}

// The servers a scenario runs against.
const (
	TgVigil    = "vigil"
	TgBaseline = "baseline"
)

// Config is the flags of "vigil-load media".
type Config struct {
	Scenario    string
	Sizes       []int // subscribers (listeners; participants for meeting) per step
	Speakers    int
	Duration    time.Duration
	Bitrate     int64
	KeyEvery    time.Duration
	Storm       int
	JoinRate    float64
	MaxLoss     float64 // percent
	JoinWorkers int
	Attempts    int
	Targets     []string
	URL         string
	AdminKey    string
	ServerPID   int
	ServerUDP   int
	Spawn       bool
	VigilBin    string
	ServerCPU   int
	GenCPU      int
	GenProfile  string
	Poll        time.Duration
	Retries     int
}

func mediaFlags(c *Config, fs *flag.FlagSet) (sizes, targets *string, baseline *bool, bitrate *string) {
	fs.StringVar(&c.Scenario, "scenario", ScFanout, "fanout | audio | meeting | latency | joinstorm")
	sizes = fs.String("subscribers", "", "the ramp: subscribers per step (audio: listeners; meeting: participants; joinstorm: subscribers already watching when the storm starts). Default by scenario")
	fs.IntVar(&c.Speakers, "publishers", 0, "publishers: audio speakers (default 10); meeting: unused, see -subscribers; others: 1")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured window of each step")
	bitrate = fs.String("bitrate", "", "video bitrate per publisher, e.g. 1M, 500k (default: fanout and joinstorm 1M, meeting 500k, latency 9M)")
	fs.DurationVar(&c.KeyEvery, "keyframe-interval", 2*time.Second, "a keyframe every this long (and on PLI)")
	fs.IntVar(&c.Storm, "storm", 200, "joinstorm: subscribers that join during the storm")
	fs.Float64Var(&c.JoinRate, "join-rate", 50, "joinstorm: joins per second")
	fs.Float64Var(&c.MaxLoss, "max-loss", 0.5, "a step holds if the loss over every subscriber is at most this many percent")
	fs.IntVar(&c.JoinWorkers, "join-workers", 16, "concurrent joins (except in the storm)")
	fs.IntVar(&c.Attempts, "attempts", 1, "runs of a step that fails before the ramp stops; the best is reported")
	fs.IntVar(&c.Retries, "contended-retries", 1, "more runs of a failed step when other processes held more than a CPU during it (contended)")
	targets = fs.String("targets", "vigil,baseline", "servers to measure in turn at each step: vigil, baseline (the stock-pion forwarder)")
	baseline = fs.Bool("baseline", false, "measure only the stock-pion baseline forwarder (same as -targets baseline)")
	fs.StringVar(&c.URL, "url", "", "a running server on loopback (Vigil, or with -baseline a vigil-load baseline-server), instead of -spawn")
	fs.StringVar(&c.AdminKey, "admin-key", os.Getenv("VIGIL_ADMIN_KEY"), "its admin key (VIGIL_ADMIN_KEY)")
	fs.IntVar(&c.ServerPID, "server-pid", 0, "its process id, for CPU and RSS from /proc (with -url)")
	fs.IntVar(&c.ServerUDP, "server-udp-port", 0, "its media UDP port, for socket drops from /proc/net/udp (with -url)")
	fs.BoolVar(&c.Spawn, "spawn", false, "start a fresh server per step on free loopback ports (vigil is built once)")
	fs.StringVar(&c.VigilBin, "vigil-bin", "", "with -spawn: a vigil binary to run instead of building one")
	fs.IntVar(&c.ServerCPU, "server-cpu", 0, "with -spawn: the CPU servers are pinned to (-1: none)")
	fs.IntVar(&c.GenCPU, "gen-cpu", 1, "with -spawn: the CPU this generator is pinned to (-1: none)")
	fs.DurationVar(&c.Poll, "poll", time.Millisecond, "the subscribers' socket is read every this long (batches, no wakeups; adds up to this to latency); 0: block for each datagram")
	fs.StringVar(&c.GenProfile, "gen-cpuprofile", "", "write a CPU profile of this generator to this file")
	return
}

func (c *Config) Finish(sizes, targets string, baseline bool, bitrate string) error {
	if !slices.Contains(allScenarios, c.Scenario) {
		return fmt.Errorf("-scenario: %q is not one of %v", c.Scenario, allScenarios)
	}
	if sizes == "" {
		sizes = map[string]string{ScFanout: "100,200,400,600,800", ScAudio: "20,50,100", ScMeeting: "4,8,12", ScLatency: "100", ScJoinstorm: "50"}[c.Scenario]
	}
	c.Sizes = nil
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 5000 {
			return fmt.Errorf("-subscribers: %q is not a count from 1 to 5000", s)
		}
		c.Sizes = append(c.Sizes, n)
	}
	if c.Scenario == ScMeeting && slices.Min(c.Sizes) < 2 {
		return errors.New("-subscribers: a meeting needs at least 2 participants")
	}
	if c.Speakers <= 0 {
		c.Speakers = 1
		if c.Scenario == ScAudio {
			c.Speakers = 10
		}
	}
	if bitrate == "" {
		bitrate = map[string]string{ScFanout: "1M", ScAudio: "0", ScMeeting: "500k", ScLatency: "9M", ScJoinstorm: "1M"}[c.Scenario]
	}
	br, err := parseBitrate(bitrate)
	if err != nil {
		return err
	}
	c.Bitrate = br
	c.Targets = nil
	if baseline {
		targets = TgBaseline
	}
	for _, t := range strings.Split(targets, ",") {
		t = strings.TrimSpace(t)
		if t != TgVigil && t != TgBaseline {
			return fmt.Errorf("-targets: %q is not vigil or baseline", t)
		}
		c.Targets = append(c.Targets, t)
	}
	switch {
	case c.Spawn == (c.URL != ""):
		return errors.New("give either -spawn or -url")
	case c.URL != "" && len(c.Targets) != 1:
		return errors.New("-url measures one server: add -targets vigil or -baseline")
	case c.URL != "" && c.Targets[0] == TgVigil && c.AdminKey == "":
		return errors.New("-url needs -admin-key")
	case c.Duration <= 0 || c.JoinWorkers < 1 || c.Attempts < 1 || c.JoinRate <= 0 || c.Storm < 1 || c.KeyEvery <= 0:
		return errors.New("-duration, -join-workers, -attempts, -join-rate, -storm and -keyframe-interval must be positive")
	}
	if c.URL != "" {
		c.URL = strings.TrimRight(c.URL, "/")
		if !api.IsLoopbackURL(c.URL) {
			return fmt.Errorf("-url %s: only http://127.0.0.1 (or another 127.0.0.0/8 address) may be targeted", c.URL)
		}
	}
	return nil
}

// parseBitrate reads 1M, 500k, 2.5M or a plain number of bits/s.
func parseBitrate(s string) (int64, error) {
	mult := 1.0
	switch {
	case strings.HasSuffix(s, "M"), strings.HasSuffix(s, "m"):
		mult, s = 1e6, s[:len(s)-1]
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mult, s = 1e3, s[:len(s)-1]
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v*mult > 1e9 {
		return 0, fmt.Errorf("bitrate %q: want e.g. 1M, 500k or 250000", s)
	}
	return int64(v * mult), nil
}

func ParseFlags(args []string, stderr io.Writer) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet("vigil-load media", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: vigil-load media (-spawn | -url URL ...) -scenario S [flags]

Synthetic WHIP publishers (VP8 with a keyframe every -keyframe-interval,
Opus at 50 packets/s) and thin WHEP subscribers against Vigil and, in the
same invocation, the stock-pion baseline forwarder; per step: forwarded
packets/s, loss, SFU-added latency, join times, the server's CPU per
forwarded packet and peak RSS, and the generator's own CPU per received
packet. Loopback only. See docs/benchmarks.md.

scenarios:
  fanout     1 publisher (video+audio) to N subscribers; the ramp stops at loss > -max-loss
  audio      -publishers speakers (audio only) to N listeners, each receiving every speaker
  meeting    N participants each publishing audio+video, each receiving all others
  latency    1 publisher at a high bitrate (9M: ~100k forwarded packets/s at N=100)
  joinstorm  N subscribers watching, then -storm more join at -join-rate per second

flags:`)
		fs.PrintDefaults()
	}
	sizes, targets, baseline, bitrate := mediaFlags(c, fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := c.Finish(*sizes, *targets, *baseline, *bitrate); err != nil {
		return nil, err
	}
	return c, nil
}

func ScenarioTitle(c *Config) string {
	switch c.Scenario {
	case ScFanout:
		return fmt.Sprintf("fanout: 1 publisher (VP8 %s + Opus) to N subscribers", fmtBitrate(c.Bitrate))
	case ScAudio:
		return fmt.Sprintf("audio: %d speakers (Opus) to N listeners, each receiving every speaker", c.Speakers)
	case ScMeeting:
		return fmt.Sprintf("meeting: N participants each publishing VP8 %s + Opus, each receiving all others", fmtBitrate(c.Bitrate))
	case ScLatency:
		return fmt.Sprintf("latency: 1 publisher (VP8 %s + Opus) to N subscribers", fmtBitrate(c.Bitrate))
	case ScJoinstorm:
		return fmt.Sprintf("joinstorm: N subscribers watching 1 publisher (VP8 %s + Opus), then %d join at %.0f/s", fmtBitrate(c.Bitrate), c.Storm, c.JoinRate)
	}
	return c.Scenario
}

func fmtBitrate(b int64) string {
	switch {
	case b >= 1e6:
		return strconv.FormatFloat(float64(b)/1e6, 'f', -1, 64) + " Mbit/s"
	case b >= 1e3:
		return strconv.FormatFloat(float64(b)/1e3, 'f', -1, 64) + " kbit/s"
	}
	return strconv.FormatInt(b, 10) + " bit/s"
}
