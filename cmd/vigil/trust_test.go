package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vigil-media/vigil/signaling"
)

// Attacks on the HTTP server and on the secrets (docs/operations.md,
// "HTTP limits" and "Secrets"), each against the built binary.

// hostPort is the HTTP address of p.
func (p *proc) hostPort() string { return strings.TrimPrefix(p.url, "http://") }

// dialFrom opens a TCP connection to p from the loopback address src
// (127.0.0.1, 127.0.0.2, ...: distinct client addresses on one host).
func dialFrom(t *testing.T, p *proc, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp4", p.hostPort())
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	return c
}

// clientFrom is an HTTP client whose connections come from src.
func clientFrom(src string) *http.Client {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// served asserts that a client at src gets 200 from /healthz.
func served(t *testing.T, p *proc, src, when string) {
	t.Helper()
	resp, err := clientFrom(src).Get(p.url + "/healthz")
	if err != nil {
		t.Fatalf("%s: a client at %s is not served: %v", when, src, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: a client at %s got %d", when, src, resp.StatusCode)
	}
}

// closedByServer waits (up to bound, for a hang) for the server to close
// c, reading and discarding what it sends; it returns how long that took
// or fails.
func closedByServer(t *testing.T, c net.Conn, start time.Time, bound time.Duration) time.Duration {
	t.Helper()
	_ = c.SetReadDeadline(start.Add(bound))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server kept a connection open for %v", bound)
	}
	return time.Since(start)
}

// noResponse asserts that the server closes c, having sent a complete
// request on it, without answering: the connection was over the cap.
func noResponse(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: vigil\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	// Closed with the request unread, the connection may be reset.
	if len(b) > 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("%s: the server answered (%q, %v), want the connection closed unanswered", what, b, err)
	}
}

// TestSlowlorisAndIdleFloods: a client that opens as many connections as
// it may (max_conns_per_addr) and trickles request headers on each
// (slowloris), then one that holds as many idle keep-alive connections,
// gets every connection over the cap closed unanswered, has its trickled
// ones closed by the read deadline and its idle ones by the idle
// timeout, while a client at another address is served throughout; the
// attacker's address is served again once its connections are gone.
func TestSlowlorisAndIdleFloods(t *testing.T) {
	const maxConns = 16
	p := startVigil(t, "-read-timeout", "3s", "-idle-timeout", "3s", "-max-conns-per-addr", strconv.Itoa(maxConns))
	const attacker, victim = "127.0.0.1", "127.0.0.2"
	served(t, p, victim, "before")

	// Slowloris: a header line every 200 ms, never the blank line.
	start := time.Now()
	var conns []net.Conn
	var trickling sync.WaitGroup
	stop := make(chan struct{})
	for range maxConns {
		c := dialFrom(t, p, attacker)
		conns = append(conns, c)
		trickling.Add(1)
		go func() {
			defer trickling.Done()
			if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: vigil\r\n"); err != nil {
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
				if _, err := fmt.Fprintf(c, "X-Slow-%d: a\r\n", i); err != nil {
					return // closed by the server
				}
			}
		}()
	}
	extra := dialFrom(t, p, attacker)
	noResponse(t, extra, "slowloris: a connection over the cap")
	served(t, p, victim, "during the slowloris")
	var slowest time.Duration
	for _, c := range conns {
		slowest = max(slowest, closedByServer(t, c, start, 60*time.Second))
		_ = c.Close()
	}
	close(stop)
	trickling.Wait()
	t.Logf("slowloris: %d trickling connections all closed by the server within %v (read_timeout 3s); the one over the cap closed unanswered", maxConns, slowest.Round(time.Millisecond))
	served(t, p, attacker, "the attacker's address after the slowloris")

	// Idle keep-alive flood: one request each, then nothing.
	start = time.Now()
	conns = conns[:0]
	for i := range maxConns {
		c := dialFrom(t, p, attacker)
		conns = append(conns, c)
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: vigil\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("keep-alive connection %d: %v %v", i, resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body) // the connection stays open for the next request
		_ = resp.Body.Close()
	}
	extra = dialFrom(t, p, attacker)
	noResponse(t, extra, "idle flood: a connection over the cap")
	served(t, p, victim, "during the idle flood")
	slowest = 0
	for _, c := range conns {
		slowest = max(slowest, closedByServer(t, c, start, 60*time.Second))
		_ = c.Close()
	}
	t.Logf("idle flood: %d idle keep-alive connections all closed by the server within %v (idle_timeout 3s)", maxConns, slowest.Round(time.Millisecond))
	served(t, p, attacker, "the attacker's address after the idle flood")
}

// TestStreamsOutliveReadTimeout: the streaming transports are exempt
// from read_timeout: an SSE stream stays open past it, and a long poll
// waits longer than it and is answered.
func TestStreamsOutliveReadTimeout(t *testing.T) {
	p := startVigil(t, "-read-timeout", "2s")
	if code, body := p.do(t, "POST", "/v1/rooms", testAdminKey, `{"name":"r","kind":"conference"}`); code != 201 {
		t.Fatalf("create room: %d %s", code, body)
	}
	session := func(identity string) string {
		_, tok := p.do(t, "POST", "/v1/rooms/r/tokens", testAdminKey, fmt.Sprintf(`{"identity":%q,"role":"participant"}`, identity))
		var minted struct{ Token string }
		_ = json.Unmarshal([]byte(tok), &minted)
		code, body := p.do(t, "POST", "/v1/rooms/r/sessions", minted.Token, "")
		if code != 201 {
			t.Fatalf("open session: %d %s", code, body)
		}
		var opened struct {
			SessionID string `json:"session_id"`
		}
		_ = json.Unmarshal([]byte(body), &opened)
		return opened.SessionID
	}
	sse, poll := session("alice"), session("bob")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.url+"/v1/sessions/"+sse+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("SSE: %v %v", resp, err)
	}
	defer resp.Body.Close()
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, resp.Body)
		ended <- err
	}()
	// A long poll from the first cursor after the join events waits
	// its 6 s, three read timeouts, while the SSE stream stays up.
	_, first := p.do(t, "GET", "/v1/sessions/"+poll+"/poll?cursor=0", "", "")
	var polled struct {
		Cursor int64 `json:"cursor"`
	}
	_ = json.Unmarshal([]byte(first), &polled)
	start := time.Now()
	code, body := p.do(t, "GET", fmt.Sprintf("/v1/sessions/%s/poll?cursor=%d&wait=6", poll, polled.Cursor), "", "")
	if code != 200 && code != 304 {
		t.Fatalf("long poll past read_timeout: %d %s", code, body)
	}
	waited := time.Since(start)
	select {
	case err := <-ended:
		t.Fatalf("the SSE stream ended after %v with read_timeout 2s: %v", time.Since(start), err)
	default:
	}
	t.Logf("long poll answered %d after %v, SSE stream still open (read_timeout 2s)", code, waited.Round(time.Millisecond))
	if waited < 2*time.Second {
		t.Logf("note: the long poll was answered before read_timeout; an event woke it")
	}
}

// TestWeakSecretsRefused: the server refuses to start with an admin key
// or token secret of under 32 random bytes (by the estimate of
// secretBits), naming the setting and how to make one; a token secret
// equal to the admin key; and a cluster without a token secret.
func TestWeakSecretsRefused(t *testing.T) {
	for _, env := range []string{"VIGIL_CONFIG", "VIGIL_ADMIN_KEY", "VIGIL_TOKEN_SECRET", "VIGIL_REDIS_URL"} {
		if v, ok := os.LookupEnv(env); ok {
			_ = os.Unsetenv(env) // set (even empty), it would win over a config file
			t.Cleanup(func() { _ = os.Setenv(env, v) })
		}
	}
	old48 := strings.Repeat("0123456789abcdef", 3) // the 24 bytes the server used to generate
	for _, c := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"the old README example", []string{"-admin-key", "change-me"}, nil, "-admin-key: the admin key has about"},
		{"from the environment", nil, map[string]string{"VIGIL_ADMIN_KEY": "hunter2hunter2"}, "VIGIL_ADMIN_KEY: the admin key"},
		{"from a config file", []string{"-config", writeFile(t, "admin_key: a-long-random-string\n")}, nil, "config file key admin_key: the admin key"},
		{"24 random bytes", []string{"-admin-key", old48}, nil, "fewer than the 256"},
		{"long but one character", []string{"-admin-key", strings.Repeat("a", 100)}, nil, "about 0 bits"},
		{"weak token secret", []string{"-admin-key", testAdminKey, "-token-secret", "secret"}, nil, "-token-secret: the token secret"},
		{"token secret is the admin key", []string{"-admin-key", testAdminKey, "-token-secret", testAdminKey}, nil, "must not be the admin key"},
		{"a cluster without a token secret", []string{"-admin-key", testAdminKey, "-redis-url", "redis://127.0.0.1:1"}, nil, "a cluster needs a token secret"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			// A bad log level fails just after the configuration is
			// checked: a case the checks let through fails, rather than
			// serving.
			args := append([]string{"serve", "-http-addr", "127.0.0.1:0", "-udp-port", "0", "-data-dir", t.TempDir(),
				"-recordings-dir", t.TempDir(), "-log-level", "not-a-level"}, c.args...)
			code, _, errOut := runCLI(t, args...)
			if code == 0 || !strings.Contains(errOut, c.want) {
				t.Fatalf("exit %d: %s; want an error containing %q", code, errOut, c.want)
			}
			if !strings.Contains(errOut, "openssl rand -hex 32") {
				t.Errorf("the error does not say how to make a secret: %s", errOut)
			}
		})
	}
}

func TestSecretBits(t *testing.T) {
	for _, c := range []struct {
		s    string
		bits float64 // at least
		ok   bool
	}{
		{testAdminKey, 256, true},
		{randomSecret(), 256, true},
		{base64.StdEncoding.EncodeToString([]byte(testAdminKey[:32])), 256, true}, // 32 bytes, base64
		{base64.RawURLEncoding.EncodeToString([]byte(testAdminKey[:32])), 256, true},
		{strings.Repeat("0123456789abcdef", 3), 0, false},
		{"change-me", 0, false},
		{strings.Repeat("ab", 64), 0, false},
		{"Correct-Horse-Battery-Staple-1!", 0, false},
	} {
		got := secretBits(c.s)
		if (got >= minSecretBits) != c.ok {
			t.Errorf("secretBits(%q) = %.0f; accepted %v, want %v", c.s, got, got >= minSecretBits, c.ok)
		}
	}
}

// TestSecretsAcrossRestart runs the server as `make run` does, with
// no admin key and no token secret: it generates a 32-byte admin key
// that works; a token secret kept 0600 in data_dir; TURN credentials
// signed with a secret derived from the token secret (not the admin
// key); failed admin-key guesses get 429 after admin_auth_failures; and
// after a restart on the same data directory a token minted before it
// still works while a revoked one stays refused.
func TestSecretsAcrossRestart(t *testing.T) {
	dataDir := t.TempDir()
	turnPort := freePort(t)
	p := startVigil(t, "-admin-key", "", "-data-dir", dataDir, "-turn-port", strconv.Itoa(turnPort), "-public-ip", "127.0.0.1")
	var key string
	select {
	case key = <-p.generatedKey:
	case <-time.After(10 * time.Second):
		t.Fatal("no generated admin key printed")
	}
	if bits := secretBits(key); bits < minSecretBits {
		t.Fatalf("generated admin key %d characters, about %.0f bits", len(key), bits)
	}
	st, err := os.Stat(filepath.Join(dataDir, tokenSecretFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token secret file: %v %v, want mode 0600", st, err)
	}
	secret, err := readTokenSecret(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := p.do(t, "POST", "/v1/rooms", key, `{"name":"exam","kind":"conference"}`); code != 201 {
		t.Fatalf("the generated admin key: %d %s", code, body)
	}
	mint := func(p *proc, identity string) string {
		_, body := p.do(t, "POST", "/v1/rooms/exam/tokens", key, fmt.Sprintf(`{"identity":%q,"role":"participant"}`, identity))
		var minted struct{ Token string }
		_ = json.Unmarshal([]byte(body), &minted)
		return minted.Token
	}
	kept, revoked := mint(p, "alice"), mint(p, "mallory")
	offline, _, err := signaling.NewTokens(secret, nil).Mint("exam", "bob", "participant", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	// TURN credentials handed at join: HMAC-SHA1 with the secret
	// derived from the token secret.
	code, body := p.do(t, "POST", "/v1/rooms/exam/sessions", kept, "")
	if code != 201 {
		t.Fatalf("open session: %d %s", code, body)
	}
	var opened struct {
		SessionID string `json:"session_id"`
	}
	_ = json.Unmarshal([]byte(body), &opened)
	_, polled := p.do(t, "GET", "/v1/sessions/"+opened.SessionID+"/poll?cursor=0", "", "")
	var reply struct {
		Events []struct {
			Data struct {
				ICEServers []webrtc.ICEServer `json:"ice_servers"`
			} `json:"data"`
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(polled), &reply); err != nil || len(reply.Events) == 0 || len(reply.Events[0].Data.ICEServers) == 0 {
		t.Fatalf("poll: %s", polled)
	}
	ice := reply.Events[0].Data.ICEServers[0]
	m := hmac.New(sha1.New, []byte(turnSecret(secret)))
	m.Write([]byte(ice.Username))
	if want := base64.StdEncoding.EncodeToString(m.Sum(nil)); ice.Credential != want {
		t.Fatalf("TURN credential %v is not signed with the secret derived from the token secret", ice.Credential)
	}

	// Online guessing of the admin key: 10 wrong keys, then 429, even
	// for the right one.
	for i := range 10 {
		if code, _ := p.do(t, "GET", "/v1/rooms", fmt.Sprintf("guess-%d", i), ""); code != 401 {
			t.Fatalf("guess %d: %d, want 401", i, code)
		}
	}
	code, body = p.do(t, "GET", "/v1/rooms", key, "")
	if code != 429 || !strings.Contains(body, `"rate_limited"`) {
		t.Fatalf("the right key after 10 failed guesses from this address: %d %s, want 429 rate_limited", code, body)
	}

	if code, body := p.do(t, "POST", "/v1/rooms/exam/tokens/revoke", "", `{"identity":"mallory"}`); code != 401 {
		t.Fatalf("revoke without a key: %d %s", code, body)
	}
	// The revocation is made through another client address.
	req, _ := http.NewRequest("POST", p.url+"/v1/rooms/exam/tokens/revoke", strings.NewReader(`{"identity":"mallory"}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := clientFrom("127.0.0.2").Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("revoke: %v %v", resp, err)
	}
	_ = resp.Body.Close()

	// Restart on the same data directory, with the same admin key.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatal("vigil did not stop")
	}
	p = startVigil(t, "-admin-key", key, "-data-dir", dataDir)
	if code, body := p.do(t, "POST", "/v1/rooms", key, `{"name":"exam","kind":"conference"}`); code != 201 {
		t.Fatalf("create room after the restart: %d %s", code, body)
	}
	if code, body := p.do(t, "POST", "/v1/rooms/exam/sessions", revoked, ""); code != 401 || !strings.Contains(body, `"token_revoked"`) {
		t.Fatalf("the revoked token after a restart: %d %s, want 401 token_revoked", code, body)
	}
	if code, body := p.do(t, "POST", "/v1/rooms/exam/sessions", mint(p, "alice-2"), ""); code != 201 {
		t.Fatalf("a token minted after the restart: %d %s", code, body)
	}
	// A token minted before the restart is for the room's instance of
	// then: refused by the room made again, but as token_room_instance,
	// not invalid_token: its signature still verifies (the kept token
	// secret). One bound to no instance, minted offline with the secret
	// read from the data directory before the restart, joins.
	code, body = p.do(t, "POST", "/v1/rooms/exam/sessions", kept, "")
	if code != 403 || !strings.Contains(body, `"token_room_instance"`) {
		t.Fatalf("a token minted before the restart (the kept token secret): %d %s, want 403 token_room_instance", code, body)
	}
	code, body = p.do(t, "POST", "/v1/rooms/exam/sessions", offline, "")
	if code != 201 {
		t.Fatalf("a token minted offline with the kept token secret: %d %s", code, body)
	}
	t.Logf("generated admin key: %d hex characters (%.0f bits by estimate); token secret kept in %s (mode %v)", len(key), secretBits(key), tokenSecretFile, st.Mode().Perm())
}
