package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/signaling"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

// commands are the subcommands, as `vigil --help` lists them.
var commands = []struct{ name, summary string }{
	{"serve", "run the server (the default when no command is given)"},
	{"token", "mint a join token offline from the admin key"},
	{"verify", "check recordings against the SHA-256 in their manifests"},
	{"config", "print the effective configuration, secrets masked (vigil config print)"},
	{"version", "print the version"},
}

func mainUsage(w io.Writer) {
	fmt.Fprint(w, `Vigil is a WebRTC media server (SFU) for live broadcasting and exam
proctoring: one binary with the web client, the admin API and signaling.

Usage:
  vigil [command] [flags]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
With no command, or with flags only, vigil runs "serve". Run
"vigil <command> --help" for the flags of a command.

Every setting is a flag, an environment variable (VIGIL_...) or a key of
a YAML config file (-config FILE or VIGIL_CONFIG): a flag wins over the
environment, which wins over the file, which wins over the default.
`)
}

// cli runs the command args name and returns the process exit code:
// 0 done, 1 failed, 2 bad usage.
func cli(args []string, stdout, stderr io.Writer) int {
	cmd, rest := "serve", args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, rest = args[0], args[1:]
	}
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		mainUsage(stdout)
		return 0
	}
	var err error
	switch cmd {
	case "serve":
		err = run(rest, stdout, stderr)
	case "token":
		err = runToken(rest, stdout, stderr)
	case "verify":
		return runVerify(rest, stdout, stderr)
	case "config":
		err = runConfig(rest, stdout, stderr)
	case "version":
		err = runVersion(rest, stdout, stderr)
	case "help":
		if len(rest) > 0 {
			return cli([]string{rest[0], "--help"}, stdout, stderr)
		}
		mainUsage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "vigil: unknown command %q\n\n", cmd)
		mainUsage(stderr)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "vigil "+cmd+":", err)
		return 2
	}
	fmt.Fprintln(stderr, "vigil:", err)
	return 1
}

// errUsage marks a bad command line.
var errUsage = errors.New("usage")

func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// helpFor prints a command's help: its synopsis and description, then
// its flags.
func helpFor(synopsis, description string) func(fs *flag.FlagSet) {
	return func(fs *flag.FlagSet) {
		w := fs.Output()
		fmt.Fprintf(w, "Usage:\n  %s\n\n%s\nFlags:\n", synopsis, description)
		fs.PrintDefaults()
	}
}

const serveHelp = `Runs the server: the SFU on one UDP port, and the admin API, signaling
transports, web client, /metrics, /healthz and /readyz on one HTTP
address. Prints the URL to open and, when generated, the admin key.

Signals: SIGINT or SIGTERM shut down gracefully (every participant told,
recordings finalized, exit 0). SIGUSR1 starts draining, as POST /v1/drain
does: new rooms are refused (503 draining), /readyz answers 503, rooms in
use go on, empty rooms end; when no room is left (or -drain-timeout
passes) the server shuts down and exits 0.

Every setting is a flag, an environment variable or a key of the YAML
config file; a flag wins over the environment, which wins over the file,
which wins over the default.
`

// parseConfig resolves the serve settings from args, the environment
// and the config file.
func parseConfig(args []string, stdout, stderr io.Writer) (config, error) {
	l, err := resolve("vigil serve", nil, nil, args, os.LookupEnv, stdout, stderr,
		helpFor("vigil [serve] [-config FILE] [flags]", serveHelp))
	if err != nil {
		return config{}, err
	}
	if len(l.args) > 0 {
		return config{}, usageError("unexpected argument %q", l.args[0])
	}
	return configFrom(l)
}

// configFrom converts resolved settings into a config, checking each.
func configFrom(l *layered) (config, error) {
	c := config{
		File:          l.file,
		HTTPAddr:      l.get("http-addr"),
		AdminKey:      l.get("admin-key"),
		TokenSecret:   l.get("token-secret"),
		PublicIP:      l.get("public-ip"),
		RecordingsDir: l.get("recordings-dir"),
		DataDir:       l.get("data-dir"),
		ICEServers:    l.get("ice-servers"),
		LogLevel:      l.get("log-level"),
		LogFormat:     l.get("log-format"),
		WebhookSecret: l.get("webhook-secret"),
	}
	where := func(flagName string) string {
		for _, v := range l.values {
			if v.flag == flagName {
				switch v.source {
				case "env":
					return v.env
				case "file":
					return "config file key " + v.key
				}
				return "-" + v.flag
			}
		}
		return flagName
	}
	port, err := strconv.Atoi(l.get("udp-port"))
	if err != nil || port < 0 || port > 65535 {
		return c, fmt.Errorf("%s: udp port %q: want 0 to 65535", where("udp-port"), l.get("udp-port"))
	}
	c.UDPPort = port
	for _, p := range []struct {
		name string
		to   *int
	}{{"tcp-port", &c.TCPPort}, {"turn-port", &c.TURNPort}} {
		v, err := strconv.Atoi(l.get(p.name))
		if err != nil || v < 0 || v > 65535 {
			return c, fmt.Errorf("%s: port %q: want 0 (off) to 65535", where(p.name), l.get(p.name))
		}
		*p.to = v
	}
	if c.TCPPort != 0 && c.TURNPort == c.TCPPort {
		return c, fmt.Errorf("%s and %s: the ICE TCP port and the TURN port must differ", where("tcp-port"), where("turn-port"))
	}
	c.TURNSecret = l.get("turn-secret")
	if c.TURNTTL, err = time.ParseDuration(l.get("turn-ttl")); err != nil || c.TURNTTL < time.Minute {
		return c, fmt.Errorf("%s: TURN credentials lifetime %q: want a duration of a minute or more", where("turn-ttl"), l.get("turn-ttl"))
	}
	if c.TURNMaxAllocs, err = strconv.Atoi(l.get("turn-max-allocations")); err != nil || c.TURNMaxAllocs < 0 {
		return c, fmt.Errorf("%s: %q: want a whole number, 0 or more", where("turn-max-allocations"), l.get("turn-max-allocations"))
	}
	if c.TURNTCPRelay, err = strconv.ParseBool(l.get("turn-tcp-relay")); err != nil {
		return c, fmt.Errorf("%s: %q: want true or false", where("turn-tcp-relay"), l.get("turn-tcp-relay"))
	}
	if c.Retention, err = time.ParseDuration(l.get("recordings-retention")); err != nil {
		return c, fmt.Errorf("%s: %w", where("recordings-retention"), err)
	}
	if c.IncRetention, err = time.ParseDuration(l.get("incidents-retention")); err != nil || c.IncRetention < 0 {
		return c, fmt.Errorf("%s: incidents retention %q: want a duration, 0 or more", where("incidents-retention"), l.get("incidents-retention"))
	}
	for _, b := range []struct {
		name string
		to   *int64
	}{{"recording-max-bytes", &c.RecMaxBytes}, {"min-free-disk", &c.MinFreeDisk}} {
		if *b.to, err = parseSize(l.get(b.name)); err != nil {
			return c, fmt.Errorf("%s: %w", where(b.name), err)
		}
	}
	if c.RecMaxBitrate, err = strconv.ParseInt(l.get("recording-max-bitrate"), 10, 64); err != nil || c.RecMaxBitrate < 0 {
		return c, fmt.Errorf("%s: %q: want bits a second, 0 or more", where("recording-max-bitrate"), l.get("recording-max-bitrate"))
	}
	if c.DrainTimeout, err = time.ParseDuration(l.get("drain-timeout")); err != nil {
		return c, fmt.Errorf("%s: %w", where("drain-timeout"), err)
	}
	if c.GracePeriod, err = time.ParseDuration(l.get("grace-period")); err != nil || c.GracePeriod <= 0 {
		return c, fmt.Errorf("%s: grace period %q: want a positive duration", where("grace-period"), l.get("grace-period"))
	}
	c.TLSCert, c.TLSKey = l.get("tls-cert"), l.get("tls-key")
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return c, errors.New("TLS needs both a certificate and a key (-tls-cert and -tls-key, VIGIL_TLS_CERT and VIGIL_TLS_KEY)")
	}
	c.CORSOrigins, c.Proxies = commaList(l.get("cors-origins")), commaList(l.get("trusted-proxies"))
	ints := []struct {
		name string
		to   *int
	}{{"max-rooms", &c.MaxRooms}, {"max-participants", &c.MaxPeople}, {"max-tracks", &c.MaxTracks}, {"max-incidents-per-room", &c.MaxIncidents},
		{"admin-auth-failures", &c.AuthFailures}, {"max-conns-per-addr", &c.MaxConns}}
	for _, n := range ints {
		v, err := strconv.Atoi(l.get(n.name))
		if err != nil || v < 0 {
			return c, fmt.Errorf("%s: %q: want a whole number, 0 or more", where(n.name), l.get(n.name))
		}
		*n.to = v
	}
	rates := []struct {
		name string
		to   *float64
	}{{"message-rate", &c.MessageRate}, {"join-rate", &c.JoinRate}, {"mint-rate", &c.MintRate}}
	for _, r := range rates {
		v, err := strconv.ParseFloat(l.get(r.name), 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return c, fmt.Errorf("%s: %q: want a rate, 0 or more", where(r.name), l.get(r.name))
		}
		*r.to = v
	}
	if c.MaxBodyBytes, err = strconv.ParseInt(l.get("max-body-bytes"), 10, 64); err != nil || c.MaxBodyBytes < 1024 {
		return c, fmt.Errorf("%s: %q: want at least 1024 bytes", where("max-body-bytes"), l.get("max-body-bytes"))
	}
	for _, d := range []struct {
		name string
		to   *time.Duration
	}{{"read-timeout", &c.ReadTimeout}, {"idle-timeout", &c.IdleTimeout}} {
		if *d.to, err = time.ParseDuration(l.get(d.name)); err != nil || *d.to < time.Second {
			return c, fmt.Errorf("%s: %q: want a duration of a second or more", where(d.name), l.get(d.name))
		}
	}
	if err := checkSecrets(&c, where); err != nil {
		return c, err
	}
	if c.PublicIP != "" && net.ParseIP(c.PublicIP) == nil {
		return c, fmt.Errorf("%s: public ip %q is not an IP address", where("public-ip"), c.PublicIP)
	}
	if err := clusterConfig(l, &c, where); err != nil {
		return c, err
	}
	if c.RedisURL != "" && c.TokenSecret == "" {
		return c, fmt.Errorf("%s is set: a cluster needs a token secret, the same on every node (-token-secret, VIGIL_TOKEN_SECRET or token_secret; %s)", where("redis-url"), generateHint)
	}
	if c.EdgeViewers, err = strconv.Atoi(l.get("cluster-edge-viewers")); err != nil || c.EdgeViewers < 0 {
		return c, fmt.Errorf("%s: %q: want a number of viewers, 0 or more", where("cluster-edge-viewers"), l.get("cluster-edge-viewers"))
	}
	c.WebhookURLs = commaList(l.get("webhook-urls"))
	if len(c.WebhookURLs) > 0 && c.WebhookSecret == "" {
		return c, errors.New("webhook urls need a webhook secret (-webhook-secret, VIGIL_WEBHOOK_SECRET or webhook_secret)")
	}
	return c, nil
}

// parseSize reads a size setting: bytes, or a number with KiB, MiB, GiB
// or TiB (also KB, MB, GB, TB, meaning the same powers of 1024).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for i, suf := range []string{"K", "M", "G", "T"} {
		for _, form := range []string{suf + "iB", suf + "B"} {
			if strings.HasSuffix(t, form) {
				t, mult = strings.TrimSpace(strings.TrimSuffix(t, form)), int64(1)<<(10*(i+1))
			}
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: want bytes or a whole number of KiB, MiB, GiB or TiB, 0 or more", s)
	}
	return n * mult, nil
}

// commaList splits a comma-separated setting, dropping empty items.
func commaList(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

const configHelp = `"vigil config print" prints the configuration "vigil serve" would run
with, given the same flags, environment and config file: one YAML line per
setting with where its value came from (flag, environment, config file or
default). Secrets (admin_key, token_secret, turn_secret, webhook_secret,
redis_url) are masked. A config file
with an unknown key is refused, naming the key.
`

func runConfig(args []string, stdout, stderr io.Writer) error {
	usage := helpFor("vigil config print [-config FILE] [serve flags]", configHelp)
	if len(args) > 0 && args[0] == "print" {
		args = args[1:]
	} else if !wantsHelp(args) {
		return usageError(`want "vigil config print"`)
	}
	l, err := resolve("vigil config print", nil, nil, args, os.LookupEnv, stdout, stderr, usage)
	if err != nil {
		return err
	}
	if _, err := configFrom(l); err != nil {
		return err
	}
	printConfig(stdout, l)
	return nil
}

const tokenHelp = `Mints a join token offline, signed with the token secret, exactly as
POST /v1/rooms/{room}/tokens does: the server accepts it if it runs with
the same token secret: -token-secret, or the one the server generated in
its data directory (data-dir/token_secret, readable by the server's user
only). The room must exist when the token is used. Prints the token, or
with -url the join link.

Without -instance the token joins whichever room of that name is live
when it is used, and reads no incidents or recordings. With -instance
(the "instance" of GET /v1/rooms/{room}) it is bound to that room: it is
refused by a room deleted and created again under the same name, and a
proctor's token reads that room's evidence only.
`

func runToken(args []string, stdout, stderr io.Writer) error {
	var room, instance, identity, role, base string
	var ttl time.Duration
	extra := func(fs *flag.FlagSet) {
		fs.StringVar(&room, "room", "", "the `room` the token joins (required)")
		fs.StringVar(&instance, "instance", "", "the room's `instance` (from GET /v1/rooms/{room}): bind the token to it")
		fs.StringVar(&identity, "identity", "", "the participant's `identity` (required)")
		fs.StringVar(&role, "role", "", "the `role`: participant, host, viewer, candidate or proctor (required)")
		fs.DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid, at most 24h")
		fs.StringVar(&base, "url", "", "the server's public base `URL`, e.g. https://vigil.example.org: print the join link instead of the token")
	}
	l, err := resolve("vigil token", []string{"token-secret", "data-dir"}, extra, args, os.LookupEnv, stdout, stderr,
		helpFor("vigil token -room ROOM [-instance ID] -identity ID -role ROLE [-ttl 1h] [-url URL] [-token-secret SECRET | -data-dir DIR | -config FILE]", tokenHelp))
	if err != nil {
		return err
	}
	secret := l.get("token-secret")
	if secret == "" {
		secret, err = readTokenSecret(l.get("data-dir"))
		if errors.Is(err, fs.ErrNotExist) {
			return usageError("no token secret: set -token-secret, VIGIL_TOKEN_SECRET or token_secret in the config file, or -data-dir to the server's data directory once it has started")
		}
		if err != nil {
			return err
		}
	}
	switch {
	case !sfu.ValidName(room):
		return usageError("-room %q: want 1 to 64 of A-Z a-z 0-9 . _ @ -", room)
	case instance != "" && !sfu.ValidInstance(instance):
		return usageError("-instance %q: want the 16 hex digits of a room's instance", instance)
	case !sfu.ValidName(identity):
		return usageError("-identity %q: want 1 to 64 of A-Z a-z 0-9 . _ @ -", identity)
	case !validRole(role):
		return usageError("-role %q: want participant, host, viewer, candidate or proctor", role)
	case ttl <= 0 || ttl > signaling.MaxTokenTTL:
		return usageError("-ttl %v: want more than 0 and at most %v", ttl, signaling.MaxTokenTTL)
	}
	tok, _, err := signaling.NewTokens(secret, nil).MintFor(room, instance, identity, role, ttl)
	if err != nil {
		return err
	}
	if base == "" {
		fmt.Fprintln(stdout, tok)
		return nil
	}
	fmt.Fprintln(stdout, strings.TrimRight(base, "/")+"/room/"+url.PathEscape(room)+"#token="+tok)
	return nil
}

func validRole(role string) bool {
	for _, k := range []sfu.Kind{sfu.KindConference, sfu.KindBroadcast, sfu.KindProctoring} {
		if sfu.ValidRole(k, sfu.Role(role)) {
			return true
		}
	}
	return false
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vigil version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if wantsHelp(args) {
		fs.SetOutput(stdout)
	}
	fs.Usage = func() {
		helpFor("vigil version", "Prints the version of this build, the Go version and, when known, the commit.\n")(fs)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	rev := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rev = " " + s.Value
			}
		}
	}
	fmt.Fprintf(stdout, "vigil %s (%s %s/%s%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH, rev)
	return nil
}
