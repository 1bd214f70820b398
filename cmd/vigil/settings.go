package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// setting is one configuration value: a flag, an environment variable
// and a key of the YAML config file. Precedence: flag > environment >
// config file > default.
type setting struct {
	flag, env, key, def, usage string
	secret                     bool // masked by `vigil config print`
}

// settings is every setting of `vigil serve`, in the order help and
// `vigil config print` show them. The config file may hold any of them,
// whatever the command.
func settings() []setting {
	return []setting{
		{flag: "http-addr", env: "VIGIL_HTTP_ADDR", key: "http_addr", def: ":8080", usage: "HTTP listen `address`: API, signaling, web client, /metrics, /healthz"},
		{flag: "admin-key", env: "VIGIL_ADMIN_KEY", key: "admin_key", usage: "admin API bearer `key`, at least 32 random bytes (openssl rand -hex 32); random and printed when empty", secret: true},
		{flag: "token-secret", env: "VIGIL_TOKEN_SECRET", key: "token_secret", usage: "`secret` that signs join tokens, at least 32 random bytes, independent of the admin key; generated and kept in data-dir/token_secret when empty; required, the same on every node, with redis-url", secret: true},
		{flag: "udp-port", env: "VIGIL_UDP_PORT", key: "udp_port", def: "7882", usage: "the one UDP `port` for all media (ICE UDP mux)"},
		{flag: "tcp-port", env: "VIGIL_TCP_PORT", key: "tcp_port", def: "0", usage: "the one TCP `port` of ICE over TCP, for clients whose networks block UDP, e.g. 7881; 0: off"},
		{flag: "turn-port", env: "VIGIL_TURN_PORT", key: "turn_port", def: "0", usage: "`port` of the embedded TURN server, UDP and TCP, e.g. 3478; 0: off"},
		{flag: "turn-secret", env: "VIGIL_TURN_SECRET", key: "turn_secret", usage: "shared `secret` of the TURN REST credentials minted per join; derived from the token secret when empty", secret: true},
		{flag: "turn-ttl", env: "VIGIL_TURN_TTL", key: "turn_ttl", def: "1h", usage: "how long minted TURN credentials last (`duration`)"},
		{flag: "turn-max-allocations", env: "VIGIL_TURN_MAX_ALLOCATIONS", key: "turn_max_allocations", def: "8", usage: "most TURN allocations one participant's credentials hold at once (`n`); 0: no limit"},
		{flag: "turn-tcp-relay", env: "VIGIL_TURN_TCP_RELAY", key: "turn_tcp_relay", def: "false", usage: "allow TCP allocations (RFC 6062), which then reach only the ICE over TCP port (`bool`); relaying over UDP to the media port needs none"},
		{flag: "public-ip", env: "VIGIL_PUBLIC_IP", key: "public_ip", usage: "`address` advertised to clients beside the local ones (behind NAT)"},
		{flag: "recordings-dir", env: "VIGIL_RECORDINGS_DIR", key: "recordings_dir", def: "recordings/data", usage: "`directory` recordings are written to"},
		{flag: "data-dir", env: "VIGIL_DATA_DIR", key: "data_dir", def: "data", usage: "`directory` of the server's database (incidents of proctored exams), created 0700"},
		{flag: "recordings-retention", env: "VIGIL_RECORDINGS_RETENTION", key: "recordings_retention", def: "0s", usage: "delete finished recordings older than this `duration`, e.g. 720h; 0 keeps them"},
		{flag: "recording-max-bytes", env: "VIGIL_RECORDING_MAX_BYTES", key: "recording_max_bytes", def: "16GiB", usage: "most one recording writes (`size`, e.g. 4GiB or bytes); past it the recording stops as failed, reason size_cap; 0: no cap"},
		{flag: "recording-max-bitrate", env: "VIGIL_RECORDING_MAX_BITRATE", key: "recording_max_bitrate", def: "20000000", usage: "most one recording writes in `bits` a second, averaged over 10s; over it the recording stops as failed, reason bitrate_cap; 0: no cap"},
		{flag: "min-free-disk", env: "VIGIL_MIN_FREE_DISK", key: "min_free_disk", def: "2GiB", usage: "free space the recordings' disk keeps (`size`): under it new recordings are refused and running ones stop as failed, reason disk_full; the server still starts; 0: no guard"},
		{flag: "incidents-retention", env: "VIGIL_INCIDENTS_RETENTION", key: "incidents_retention", def: "0s", usage: "delete incidents (and their snapshots) older than this `duration`, e.g. 720h; 0 keeps them"},
		{flag: "max-incidents-per-room", env: "VIGIL_MAX_INCIDENTS_PER_ROOM", key: "max_incidents_per_room", def: "10000", usage: "most incidents one room instance stores (`n`); past it one incidents_capped is stored and the rest refused; 0: no limit"},
		{flag: "ice-servers", env: "VIGIL_ICE_SERVERS", key: "ice_servers", usage: "ICE `servers` handed to clients: comma-separated stun:/turn: URLs, or a JSON array of RTCIceServer"},
		{flag: "log-level", env: "VIGIL_LOG_LEVEL", key: "log_level", def: "info", usage: "log `level`: debug, info, warn or error"},
		{flag: "log-format", env: "VIGIL_LOG_FORMAT", key: "log_format", def: "text", usage: "log `format`: text (a terminal) or json (production)"},
		{flag: "webhook-urls", env: "VIGIL_WEBHOOK_URLS", key: "webhook_urls", usage: "comma-separated `URLs` that receive every event as a signed POST"},
		{flag: "webhook-secret", env: "VIGIL_WEBHOOK_SECRET", key: "webhook_secret", usage: "HMAC-SHA256 `key` that signs webhooks (required with webhook-urls)", secret: true},
		{flag: "drain-timeout", env: "VIGIL_DRAIN_TIMEOUT", key: "drain_timeout", def: "0s", usage: "longest `duration` a drain waits for rooms to end before shutting down; 0 waits as long as they last"},
		{flag: "grace-period", env: "VIGIL_GRACE_PERIOD", key: "grace_period", def: "30s", usage: "how long a participant whose signaling or media connection is lost may come back (`duration`)"},
		{flag: "tls-cert", env: "VIGIL_TLS_CERT", key: "tls_cert", usage: "PEM certificate chain `file`: serve HTTPS (with tls-key)"},
		{flag: "tls-key", env: "VIGIL_TLS_KEY", key: "tls_key", usage: "PEM private key `file` of tls-cert"},
		{flag: "cors-origins", env: "VIGIL_CORS_ORIGINS", key: "cors_origins", usage: "comma-separated `origins` whose pages may call the API (\"*\": any); none by default (same origin only)"},
		{flag: "trusted-proxies", env: "VIGIL_TRUSTED_PROXIES", key: "trusted_proxies", usage: "comma-separated proxy `addresses` or CIDRs whose X-Forwarded-For names the client; none by default"},
		{flag: "max-rooms", env: "VIGIL_MAX_ROOMS", key: "max_rooms", def: "1000", usage: "most rooms open at once (`n`); 0: no limit"},
		{flag: "max-participants", env: "VIGIL_MAX_PARTICIPANTS", key: "max_participants", def: "1000", usage: "most participants in one room (`n`); a room may ask for fewer; 0: no limit"},
		{flag: "max-tracks", env: "VIGIL_MAX_TRACKS", key: "max_tracks", def: "6", usage: "most m-lines one participant's offer may send on (`n`); 0: no limit"},
		{flag: "message-rate", env: "VIGIL_MESSAGE_RATE", key: "message_rate", def: "50", usage: "client messages a second per session (`rate`), bursts of twice that; 0: no limit"},
		{flag: "join-rate", env: "VIGIL_JOIN_RATE", key: "join_rate", def: "10", usage: "session opens and WHIP/WHEP POSTs a second per client address (`rate`), bursts of twice that; 0: no limit"},
		{flag: "mint-rate", env: "VIGIL_MINT_RATE", key: "mint_rate", def: "50", usage: "token mints a second per client address (`rate`), bursts of twice that; 0: no limit"},
		{flag: "admin-auth-failures", env: "VIGIL_ADMIN_AUTH_FAILURES", key: "admin_auth_failures", def: "10", usage: "failed admin-key attempts a minute per client address (`n`), after which its admin-key attempts get 429 until the minute is over; 0: no limit"},
		{flag: "read-timeout", env: "VIGIL_READ_TIMEOUT", key: "read_timeout", def: "30s", usage: "longest `duration` to read a request, headers and body (headers: at most 10s), on every route but the streaming transports (WebSocket, SSE, long polls)"},
		{flag: "idle-timeout", env: "VIGIL_IDLE_TIMEOUT", key: "idle_timeout", def: "120s", usage: "how long an idle keep-alive connection stays open (`duration`)"},
		{flag: "max-conns-per-addr", env: "VIGIL_MAX_CONNS_PER_ADDR", key: "max_conns_per_addr", def: "256", usage: "most HTTP connections open at once from one client address (`n`; IPv6: one /64), trusted proxies excepted; 0: no limit"},
		{flag: "max-body-bytes", env: "VIGIL_MAX_BODY_BYTES", key: "max_body_bytes", def: "65536", usage: "largest JSON request body (`bytes`)"},
		{flag: "redis-url", env: "VIGIL_REDIS_URL", key: "redis_url", usage: "redis:// `URL` of the Redis that joins nodes into a cluster (docs/cluster.md); none: a single node", secret: true},
		{flag: "node-id", env: "VIGIL_NODE_ID", key: "node_id", usage: "this node's `id` in the cluster: letters, digits, '_' or '-'; random when empty"},
		{flag: "node-url", env: "VIGIL_NODE_URL", key: "node_url", usage: "`URL` other nodes reach this node's HTTP server at, http:// or https://; derived from the listen address when empty"},
		{flag: "peer-ca-file", env: "VIGIL_PEER_CA_FILE", key: "peer_ca_file", usage: "PEM `file` of the certificate authorities this node trusts when it calls an https node URL; the system's when empty"},
		{flag: "cluster-heartbeat", env: "VIGIL_CLUSTER_HEARTBEAT", key: "cluster_heartbeat", def: "1s", usage: "how often a node renews its lease in the cluster (`duration`)"},
		{flag: "cluster-lease", env: "VIGIL_CLUSTER_LEASE", key: "cluster_lease", def: "5s", usage: "how long a node that stops renewing stays live; its rooms move to another node after it (`duration`)"},
		{flag: "cluster-edge-viewers", env: "VIGIL_CLUSTER_EDGE_VIEWERS", key: "cluster_edge_viewers", def: "500", usage: "viewers of one broadcast room a node holds before further viewers are served by other nodes, which relay the room from it (`n`); 0: never"},
	}
}

// errConfigKey is the error of a key the config file may not hold.
var errConfigKey = errors.New("unknown key")

// value is a resolved setting and where it came from.
type value struct {
	setting
	value, source string // source: "default", "file", "env" or "flag"
}

// layered is a command's resolved configuration.
type layered struct {
	file   string // the config file read, "" if none
	values []value
	args   []string // what follows the flags
}

func (l *layered) get(flagName string) string {
	for _, v := range l.values {
		if v.flag == flagName {
			return v.value
		}
	}
	panic("no setting " + flagName) // a programming error
}

// flagValue records whether a flag was given.
type flagValue struct {
	v   string
	set bool
}

func (f *flagValue) String() string     { return f.v }
func (f *flagValue) Set(s string) error { f.v, f.set = s, true; return nil }

// resolve parses args for the settings named by flags (nil: all of them)
// plus -config, and layers flags over the environment (getenv) over the
// config file over the defaults. usage prints the command's help; it is
// called for -h/--help, and then flag.ErrHelp is returned.
func resolve(name string, flags []string, extra func(fs *flag.FlagSet), args []string, getenv func(string) (string, bool), stdout, stderr io.Writer, usage func(fs *flag.FlagSet)) (*layered, error) {
	all := settings()
	var chosen []setting
	for _, s := range all {
		if flags == nil || contains(flags, s.flag) {
			chosen = append(chosen, s)
		}
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if wantsHelp(args) {
		fs.SetOutput(stdout) // asked for: help is the output
	}
	given := map[string]*flagValue{}
	for _, s := range chosen {
		fv := &flagValue{}
		given[s.flag] = fv
		help := s.usage + " (" + s.env
		if s.def != "" {
			help += "; default " + s.def
		}
		fs.Var(fv, s.flag, help+")")
	}
	cfgFlag := &flagValue{}
	fs.Var(cfgFlag, "config", "YAML config `file` (VIGIL_CONFIG); flags and environment variables override it")
	if extra != nil {
		extra(fs)
	}
	fs.Usage = func() { usage(fs) }
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	l := &layered{args: fs.Args()}
	l.file = cfgFlag.v
	if !cfgFlag.set {
		l.file, _ = getenv("VIGIL_CONFIG")
	}
	fromFile := map[string]string{}
	if l.file != "" {
		b, err := os.ReadFile(l.file)
		if err != nil {
			return nil, fmt.Errorf("config file: %w", err)
		}
		if fromFile, err = parseConfigFile(b, all); err != nil {
			return nil, fmt.Errorf("config file %s: %w", l.file, err)
		}
	}
	for _, s := range chosen {
		v := value{setting: s, value: s.def, source: "default"}
		if fv, ok := fromFile[s.key]; ok {
			v.value, v.source = fv, "file"
		}
		if ev, ok := getenv(s.env); ok {
			v.value, v.source = ev, "env"
		}
		if g := given[s.flag]; g.set {
			v.value, v.source = g.v, "flag"
		}
		l.values = append(l.values, v)
	}
	return l, nil
}

// wantsHelp reports whether args ask for help before any "--".
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help", "--h":
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// parseConfigFile reads a YAML mapping of setting keys. An unknown or
// repeated key is an error that names it; a list is accepted where a
// comma-separated value is (webhook_urls, ice_servers), and a list of
// RTCIceServer objects for ice_servers.
func parseConfigFile(b []byte, known []setting) (map[string]string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	out := map[string]string{}
	if len(doc.Content) == 0 {
		return out, nil // empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of settings", root.Line)
	}
	keys := map[string]bool{}
	for _, s := range known {
		keys[s.key] = true
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if !keys[k.Value] {
			var names []string
			for n := range keys {
				names = append(names, n)
			}
			sort.Strings(names)
			return nil, fmt.Errorf("line %d: %w %q (known: %s)", k.Line, errConfigKey, k.Value, strings.Join(names, ", "))
		}
		if _, dup := out[k.Value]; dup {
			return nil, fmt.Errorf("line %d: key %q given twice", k.Line, k.Value)
		}
		s, err := scalarOrList(k.Value, v)
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", v.Line, k.Value, err)
		}
		out[k.Value] = s
	}
	return out, nil
}

func scalarOrList(key string, v *yaml.Node) (string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return "", nil
		}
		return v.Value, nil
	case yaml.SequenceNode:
		if key != "webhook_urls" && key != "ice_servers" && key != "cors_origins" && key != "trusted_proxies" {
			return "", errors.New("want a single value, not a list")
		}
		scalars := true
		var parts []string
		for _, e := range v.Content {
			if e.Kind != yaml.ScalarNode {
				scalars = false
				break
			}
			parts = append(parts, e.Value)
		}
		if scalars {
			return strings.Join(parts, ","), nil
		}
		if key != "ice_servers" {
			return "", errors.New("want a list of strings")
		}
		var anyv any
		if err := v.Decode(&anyv); err != nil {
			return "", err
		}
		j, err := json.Marshal(anyv)
		return string(j), err
	}
	return "", errors.New("want a value or a list")
}

// printConfig writes the effective configuration as YAML, each value
// with where it came from; secrets are masked.
func printConfig(w io.Writer, l *layered) {
	src := "defaults"
	if l.file != "" {
		src = "config file " + l.file + " > defaults"
	}
	fmt.Fprintf(w, "# effective configuration (flags > environment > %s)\n", src)
	for _, v := range l.values {
		shown := v.value
		if v.secret && shown != "" {
			shown = "********"
		}
		from := v.source
		switch v.source {
		case "env":
			from = "environment " + v.env
		case "flag":
			from = "flag -" + v.flag
		case "file":
			from = "config file"
		}
		fmt.Fprintf(w, "%s: %s # %s\n", v.key, strconv.Quote(shown), from)
	}
}
