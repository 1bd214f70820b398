package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-media/vigil/signaling"
	"github.com/vigil-media/vigil/webhooks"
)

// testAdminKey and testTokenSecret are secrets the server accepts: 32
// random bytes each, hex-encoded, as `openssl rand -hex 32` makes them.
const (
	testAdminKey    = "9f2c4e7a1b3d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
	testTokenSecret = "3e8d1c6b9a0f4e2d7c5b8a1f0e3d6c9b2a5f8e1d4c7b0a3f6e9d2c5b8a1f4e7d"
)

func TestParseConfigFile(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       map[string]string
		err        string // a substring of the error; "" for none
	}{
		{name: "empty", yaml: "", want: map[string]string{}},
		{name: "every kind of value", yaml: "http_addr: \":9090\"\nudp_port: 7000\nrecordings_retention: 720h\nadmin_key: k\nlog_format: json\n",
			want: map[string]string{"http_addr": ":9090", "udp_port": "7000", "recordings_retention": "720h", "admin_key": "k", "log_format": "json"}},
		{name: "lists", yaml: "webhook_urls:\n  - https://a.example/hook\n  - https://b.example/hook\nice_servers: [\"stun:stun.example:3478\"]\n",
			want: map[string]string{"webhook_urls": "https://a.example/hook,https://b.example/hook", "ice_servers": "stun:stun.example:3478"}},
		{name: "ice server objects", yaml: "ice_servers:\n  - urls: [\"turn:t.example\"]\n    username: u\n    credential: c\n",
			want: map[string]string{"ice_servers": `[{"credential":"c","urls":["turn:t.example"],"username":"u"}]`}},
		{name: "null", yaml: "public_ip:\n", want: map[string]string{"public_ip": ""}},
		{name: "unknown key named", yaml: "http_addr: \":1\"\nudp_prot: 7000\n", err: `line 2: unknown key "udp_prot"`},
		{name: "flag spelling is not a key", yaml: "http-addr: \":1\"\n", err: `unknown key "http-addr"`},
		{name: "twice", yaml: "log_level: info\nlog_level: debug\n", err: `key "log_level" given twice`},
		{name: "list where one value", yaml: "udp_port: [1, 2]\n", err: "udp_port: want a single value"},
		{name: "not a mapping", yaml: "- a\n- b\n", err: "want a mapping"},
		{name: "bad YAML", yaml: "a: [\n", err: "yaml"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseConfigFile([]byte(c.yaml), settings())
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
			for k, v := range c.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vigil.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPrecedence: flag > environment > config file > default, for every
// setting; and a config file named by VIGIL_CONFIG.
func TestPrecedence(t *testing.T) {
	file := writeFile(t, "http_addr: \":1111\"\nudp_port: 2222\nlog_level: warn\nlog_format: json\n")
	env := map[string]string{"VIGIL_CONFIG": file, "VIGIL_UDP_PORT": "3333", "VIGIL_LOG_LEVEL": "debug"}
	getenv := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	l, err := resolve("vigil serve", nil, nil, []string{"-log-level", "error"}, getenv, io.Discard, io.Discard, helpFor("", ""))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		"http-addr": {":1111", "file"}, "udp-port": {"3333", "env"}, "log-level": {"error", "flag"},
		"log-format": {"json", "file"}, "recordings-dir": {"recordings/data", "default"},
	}
	for _, v := range l.values {
		if w, ok := want[v.flag]; ok && (v.value != w[0] || v.source != w[1]) {
			t.Errorf("%s = %q from %s, want %q from %s", v.flag, v.value, v.source, w[0], w[1])
		}
	}
	if l.file != file {
		t.Errorf("config file %q, want %q from VIGIL_CONFIG", l.file, file)
	}
	// -config wins over VIGIL_CONFIG.
	other := writeFile(t, "http_addr: \":4444\"\n")
	l, err = resolve("vigil serve", nil, nil, []string{"-config", other}, getenv, io.Discard, io.Discard, helpFor("", ""))
	if err != nil || l.get("http-addr") != ":4444" {
		t.Fatalf("-config: %v %v", err, l)
	}
	// Values are checked, naming where they came from.
	bad := writeFile(t, "drain_timeout: soon\n")
	l, err = resolve("vigil serve", nil, nil, []string{"-config", bad}, func(string) (string, bool) { return "", false }, io.Discard, io.Discard, helpFor("", ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := configFrom(l); err == nil || !strings.Contains(err.Error(), "config file key drain_timeout") {
		t.Errorf("bad duration: %v", err)
	}
}

// TestNoConfigFileDefaults: with no file and no environment, the
// defaults are those README documents (make run relies on it).
func TestNoConfigFileDefaults(t *testing.T) {
	l, err := resolve("vigil serve", nil, nil, nil, func(string) (string, bool) { return "", false }, io.Discard, io.Discard, helpFor("", ""))
	if err != nil {
		t.Fatal(err)
	}
	c, err := configFrom(l)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != ":8080" || c.UDPPort != 7882 || c.RecordingsDir != "recordings/data" || c.LogLevel != "info" || c.LogFormat != "text" || c.AdminKey != "" || c.File != "" {
		t.Errorf("defaults: %+v", c)
	}
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := cli(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestConfigPrintMasksSecrets(t *testing.T) {
	file := writeFile(t, "admin_key: "+testAdminKey+"\nwebhook_urls: [\"https://hooks.example/v\"]\nudp_port: 9000\n")
	t.Setenv("VIGIL_WEBHOOK_SECRET", "env-hook-secret")
	t.Setenv("VIGIL_CONFIG", "")
	code, out, errOut := runCLI(t, "config", "print", "-config", file, "-http-addr", "127.0.0.1:1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.Contains(out, testAdminKey) || strings.Contains(out, "env-hook-secret") {
		t.Fatalf("a secret is printed:\n%s", out)
	}
	for _, line := range []string{
		`admin_key: "********" # config file`,
		`webhook_secret: "********" # environment VIGIL_WEBHOOK_SECRET`,
		`http_addr: "127.0.0.1:1" # flag -http-addr`,
		`udp_port: "9000" # config file`,
		`webhook_urls: "https://hooks.example/v" # config file`,
		`log_level: "info" # default`,
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("no line %q in:\n%s", line, out)
		}
	}
	// What it prints, secrets aside, is itself a valid config file.
	if _, err := parseConfigFile([]byte(out), settings()); err != nil {
		t.Errorf("config print output does not parse back: %v", err)
	}
	// An unknown key is refused with its name.
	code, _, errOut = runCLI(t, "config", "print", "-config", writeFile(t, "admin_kee: x\n"))
	if code != 1 || !strings.Contains(errOut, `unknown key "admin_kee"`) {
		t.Errorf("unknown key: exit %d, %s", code, errOut)
	}
}

func TestTokenOffline(t *testing.T) {
	t.Setenv("VIGIL_CONFIG", "")
	t.Setenv("VIGIL_ADMIN_KEY", "")
	t.Setenv("VIGIL_TOKEN_SECRET", testTokenSecret)
	code, out, errOut := runCLI(t, "token", "-room", "exam-1", "-identity", "cand-7", "-role", "candidate", "-ttl", "30m")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	claims, err := signaling.NewTokens(testTokenSecret, nil).Verify(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("the server would refuse the token: %v", err)
	}
	if claims.Room != "exam-1" || claims.Subject != "cand-7" || claims.Role != "candidate" {
		t.Errorf("claims %+v", claims)
	}
	// -instance binds the token to one instance of the room.
	code, out, errOut = runCLI(t, "token", "-room", "exam-1", "-instance", "0123456789abcdef", "-identity", "proc", "-role", "proctor")
	if code != 0 {
		t.Fatalf("-instance: exit %d: %s", code, errOut)
	}
	if claims, err := signaling.NewTokens(testTokenSecret, nil).Verify(strings.TrimSpace(out)); err != nil || claims.Instance != "0123456789abcdef" {
		t.Errorf("-instance: claims %+v, %v", claims, err)
	}
	code, out, _ = runCLI(t, "token", "-room", "r", "-identity", "a", "-role", "participant", "-url", "https://v.example/")
	if code != 0 || !strings.HasPrefix(out, "https://v.example/room/r#token=") {
		t.Errorf("-url: exit %d, %q", code, out)
	}
	for _, args := range [][]string{
		{"token", "-room", "r", "-identity", "a", "-role", "king"},
		{"token", "-room", "r", "-instance", "not-hex", "-identity", "a", "-role", "participant"},
		{"token", "-room", "r", "-identity", "a b", "-role", "participant"},
		{"token", "-room", "r", "-identity", "a", "-role", "participant", "-ttl", "48h"},
	} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	// Without token_secret, the one the server keeps in its data
	// directory; none there yet is a usage error.
	t.Setenv("VIGIL_TOKEN_SECRET", "")
	dir := t.TempDir()
	if code, _, errOut := runCLI(t, "token", "-room", "r", "-identity", "a", "-role", "participant", "-data-dir", dir); code != 2 || !strings.Contains(errOut, "no token secret") {
		t.Errorf("no secret: exit %d %s", code, errOut)
	}
	kept, made, err := loadTokenSecret(dir)
	if err != nil || !made {
		t.Fatalf("generate the data directory's secret: %v %v", made, err)
	}
	code, out, errOut = runCLI(t, "token", "-room", "r", "-identity", "a", "-role", "participant", "-data-dir", dir)
	if code != 0 {
		t.Fatalf("with the data directory's secret: exit %d %s", code, errOut)
	}
	if _, err := signaling.NewTokens(kept, nil).Verify(strings.TrimSpace(out)); err != nil {
		t.Fatalf("a token signed with the data directory's secret: %v", err)
	}
}

var flagInHelp = regexp.MustCompile(`(?m)^  -([a-z-]+)`)

// TestHelpMatchesDocs: vigil --help lists every command; each command's
// --help exits 0 on stdout; every flag of serve is in README's
// configuration table with its variable; every flag and command
// docs/deploy.md uses exists.
func TestHelpMatchesDocs(t *testing.T) {
	code, top, _ := runCLI(t, "--help")
	if code != 0 {
		t.Fatalf("vigil --help: exit %d", code)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	deploy, err := os.ReadFile("../../docs/deploy.md")
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string][]string{}
	for _, c := range commands {
		if !strings.Contains(top, "  "+c.name+" ") {
			t.Errorf("vigil --help does not list %s", c.name)
		}
		args := []string{c.name, "--help"}
		code, out, errOut := runCLI(t, args...)
		if code != 0 || !strings.HasPrefix(out, "Usage:") {
			t.Errorf("vigil %s --help: exit %d, stdout %q, stderr %q", c.name, code, out, errOut)
		}
		for _, m := range flagInHelp.FindAllStringSubmatch(out, -1) {
			flags[c.name] = append(flags[c.name], m[1])
		}
		if c.name != "version" && !strings.Contains(string(deploy)+string(readme), "vigil "+c.name) {
			t.Errorf("neither README nor docs/deploy.md shows vigil %s", c.name)
		}
	}
	for _, s := range settings() {
		row := "| `" + s.env + "` | `-" + s.flag + "` |"
		if !strings.Contains(string(readme), row) {
			t.Errorf("README's configuration table has no row starting %q", row)
		}
		if !strings.Contains(string(readme), "`"+s.key+"`") {
			t.Errorf("README does not name the config file key %s", s.key)
		}
		if !slices.Contains(flags["serve"], s.flag) {
			t.Errorf("vigil serve --help does not show -%s", s.flag)
		}
	}
	// Every "vigil <command> ... -flag" in the deploy guide exists.
	use := regexp.MustCompile(`vigil (serve|token|verify|config print)((?: +-[a-z-]+(?: +[^ \n-][^ \n]*)?)*)`)
	for _, m := range use.FindAllStringSubmatch(string(deploy), -1) {
		cmd := strings.Fields(m[1])[0]
		for _, f := range regexp.MustCompile(`-([a-z-]+)`).FindAllStringSubmatch(m[2], -1) {
			if !slices.Contains(flags[cmd], f[1]) {
				t.Errorf("docs/deploy.md uses vigil %s -%s, which does not exist", cmd, f[1])
			}
		}
	}
	for _, env := range regexp.MustCompile(`VIGIL_[A-Z_]+`).FindAllString(string(deploy), -1) {
		found := env == "VIGIL_CONFIG"
		for _, s := range settings() {
			found = found || s.env == env
		}
		if !found {
			t.Errorf("docs/deploy.md names %s, which no setting reads", env)
		}
	}
}

// binDir holds the binary vigilBinary builds; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// vigilBinary builds cmd/vigil once per test run.
var vigilBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "vigil-bin")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "vigil")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", errors.New(string(out))
	}
	return bin, nil
})

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu sync.Mutex // guards b; nothing is locked while holding it
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type proc struct {
	cmd  *exec.Cmd
	url  string
	done chan error
	// generatedKey gets the admin key the server printed, if it
	// generated one.
	generatedKey chan string
}

func startVigil(t *testing.T, extra ...string) *proc {
	t.Helper()
	bin, err := vigilBinary()
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	args := append([]string{"serve", "-http-addr", "127.0.0.1:0", "-udp-port", "0", "-admin-key", testAdminKey,
		"-recordings-dir", t.TempDir(), "-data-dir", t.TempDir(), "-log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &lockedBuffer{} // written by exec's copier, read by the cleanup
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1), generatedKey: make(chan string, 1)}
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := regexp.MustCompile(`Open (https?://\S+)/ in a browser`).FindStringSubmatch(sc.Text()); m != nil {
				urls <- strings.Replace(m[1], "localhost", "127.0.0.1", 1)
			}
			if m := regexp.MustCompile(`^Admin key \(generated.*\): (\S+)$`).FindStringSubmatch(sc.Text()); m != nil {
				p.generatedKey <- m[1]
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("vigil stderr:\n%s", stderr.String())
		}
	})
	select {
	case p.url = <-urls:
	case err := <-p.done:
		t.Fatalf("vigil exited: %v\n%s", err, stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("vigil did not start")
	}
	return p
}

func (p *proc) do(t *testing.T, method, path, bearer string, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, p.url+path, strings.NewReader(body))
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDrainExitsZero runs the built binary: a drain started by SIGUSR1 or
// by POST /v1/drain refuses new rooms, keeps the room in use, ends when
// its last participant leaves, and the process exits 0 having sent its
// webhooks (signed) on the way out.
func TestDrainExitsZero(t *testing.T) {
	for _, how := range []string{"signal", "api"} {
		t.Run(how, func(t *testing.T) {
			var mu sync.Mutex
			var got []string
			hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				if webhooks.Verify("hs", r.Header.Get(webhooks.SignatureHeader), b, time.Now(), time.Minute) != nil {
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				var ev webhooks.Event
				_ = json.Unmarshal(b, &ev)
				mu.Lock()
				got = append(got, ev.Type)
				mu.Unlock()
			}))
			defer hook.Close()
			p := startVigil(t, "-webhook-urls", hook.URL, "-webhook-secret", "hs")
			if code, body := p.do(t, "POST", "/v1/rooms", testAdminKey, `{"name":"exam","kind":"conference"}`); code != 201 {
				t.Fatalf("create room: %d %s", code, body)
			}
			_, tok := p.do(t, "POST", "/v1/rooms/exam/tokens", testAdminKey, `{"identity":"alice","role":"participant"}`)
			var minted struct{ Token string }
			_ = json.Unmarshal([]byte(tok), &minted)
			code, sess := p.do(t, "POST", "/v1/rooms/exam/sessions", minted.Token, "")
			if code != 201 {
				t.Fatalf("open session: %d %s", code, sess)
			}
			var opened struct {
				SessionID string `json:"session_id"`
			}
			_ = json.Unmarshal([]byte(sess), &opened)

			if how == "signal" {
				if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
					t.Fatal(err)
				}
			} else if code, body := p.do(t, "POST", "/v1/drain", testAdminKey, ""); code != 202 {
				t.Fatalf("drain: %d %s", code, body)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				code, _ := p.do(t, "GET", "/readyz", "", "")
				if code == 503 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("readyz still %d after drain", code)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if code, body := p.do(t, "POST", "/v1/rooms", testAdminKey, `{"name":"late","kind":"conference"}`); code != 503 || !strings.Contains(body, `"draining"`) {
				t.Errorf("new room while draining: %d %s", code, body)
			}
			time.Sleep(600 * time.Millisecond) // more than two drain polls
			if code, _ := p.do(t, "GET", "/v1/rooms/exam", testAdminKey, ""); code != 200 {
				t.Errorf("the room in use is gone while draining: %d", code)
			}
			select {
			case err := <-p.done:
				t.Fatalf("exited while a room was in use: %v", err)
			default:
			}
			if code, body := p.do(t, "DELETE", "/v1/sessions/"+opened.SessionID, "", ""); code != 204 {
				t.Fatalf("leave: %d %s", code, body)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			select {
			case err := <-p.done:
				if err != nil {
					t.Fatalf("exit: %v, want 0", err)
				}
			case <-ctx.Done():
				t.Fatal("still running 15s after the last room emptied")
			}
			mu.Lock()
			defer mu.Unlock()
			for _, typ := range []string{webhooks.RoomCreated, webhooks.ParticipantJoined, webhooks.ServerDraining, webhooks.ParticipantLeft, webhooks.RoomClosed} {
				if !slices.Contains(got, typ) {
					t.Errorf("no %s webhook before exit; got %v", typ, got)
				}
			}
		})
	}
}
