package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-media/vigil/signaling/vigiltest"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and a pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vigil test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLS runs the binary with a self-signed certificate: it prints an
// https URL, serves the API over TLS to a client that trusts the
// certificate, and refuses plain HTTP on that port. A certificate
// without its key is a configuration error.
func TestTLS(t *testing.T) {
	cert, key, pool := selfSigned(t)
	p := startVigil(t, "-tls-cert", cert, "-tls-key", key)
	if !strings.HasPrefix(p.url, "https://") {
		t.Fatalf("printed %s, want an https URL", p.url)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
	resp, err := client.Get(p.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("healthz over TLS: %d %v", resp.StatusCode, resp.TLS)
	}
	req, _ := http.NewRequest("GET", p.url+"/v1/rooms", nil)
	req.Header.Set("Authorization", "Bearer "+testAdminKey)
	if resp, err := client.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("admin API over TLS: %v %v", resp, err)
	}
	if resp, err := http.Get(strings.Replace(p.url, "https:", "http:", 1) + "/healthz"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP answered on the TLS port")
	}
	if code, _, errOut := runCLI(t, "config", "print", "-tls-cert", cert); code == 0 || !strings.Contains(errOut, "both a certificate and a key") {
		t.Fatalf("a certificate without a key: exit %d, %s", code, errOut)
	}
}

// TestClusterHTTPSNodes runs three `vigil serve` nodes: a serves HTTPS
// with a self-signed certificate (its node URL is https), b trusts that
// certificate (-peer-ca-file), c does not. A room created through b is
// placed on a and served through b over TLS; through c it is 503
// node_unavailable: nothing goes to a node whose certificate does not
// verify. A peer CA file that cannot be read, or holds no certificate,
// is a configuration error naming the setting.
func TestClusterHTTPSNodes(t *testing.T) {
	cert, key, _ := selfSigned(t)
	rd := vigiltest.StartRedis(t)
	cluster := []string{"-redis-url", rd.URL, "-token-secret", testTokenSecret, "-cluster-heartbeat", testHeartbeat.String(), "-cluster-lease", testLease.String()}
	a := startVigil(t, append(cluster, "-node-id", "a", "-tls-cert", cert, "-tls-key", key)...)
	b := startVigil(t, append(cluster, "-node-id", "b", "-peer-ca-file", cert)...)
	c := startVigil(t, append(cluster, "-node-id", "c")...)
	if !strings.HasPrefix(a.url, "https://") {
		t.Fatalf("a printed %s, want an https URL", a.url)
	}
	time.Sleep(3 * testHeartbeat) // every node has seen the others
	code, body := b.do(t, "POST", "/v1/rooms", testAdminKey, `{"name":"r","kind":"conference"}`)
	if code != 201 || !strings.Contains(body, `"node":"a"`) {
		t.Fatalf("create a room through b: %d %s, want it placed on a", code, body)
	}
	if code, body := b.do(t, "GET", "/v1/rooms/r", testAdminKey, ""); code != 200 || !strings.Contains(body, `"name":"r"`) {
		t.Errorf("the room through b: %d %s", code, body)
	}
	if code, body := c.do(t, "GET", "/v1/rooms/r", testAdminKey, ""); code != 503 || !strings.Contains(body, "node_unavailable") {
		t.Errorf("the room through c, which does not trust a's certificate: %d %s, want 503 node_unavailable", code, body)
	}

	empty := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(t.TempDir(), "missing.pem"), empty} {
		if code, _, errOut := runCLI(t, "config", "print", "-peer-ca-file", f); code == 0 || !strings.Contains(errOut, "-peer-ca-file") {
			t.Errorf("peer CA file %s: exit %d, %s; want an error naming -peer-ca-file", f, code, errOut)
		}
	}
}
