package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// Secrets (docs/operations.md, "Secrets"): the admin key, the token
// secret that signs join tokens, and the TURN secret derived from it.

// minSecretBits is the least entropy the admin key and the token secret
// must have: 32 random bytes.
const minSecretBits = 256

// generateHint is how to make a secret the server accepts.
const generateHint = "generate one with `openssl rand -hex 32`"

// tokenSecretFile is where the token secret is kept in data_dir when
// token_secret is not set: generated at the first start, 0600.
const tokenSecretFile = "token_secret"

// secretBits estimates the entropy of a secret, assuming its characters
// were drawn at random from the smallest of these alphabets it fits: hex
// (4 bits a character), base64 or base64url with its padding ignored
// (6 bits), printable ASCII (log2 95, about 6.6 bits), anything else
// (8 bits a byte). A secret in which one character makes up more than a
// quarter of it, or which has fewer than 8 distinct characters, is not
// random: its estimate is 0. This catches a short, made-up or repeated
// key, not a long one chosen to look random.
func secretBits(s string) float64 {
	counts := map[rune]int{}
	hexOnly, b64Only, printable := true, true, true
	n := 0
	for _, r := range strings.TrimRight(s, "=") {
		n++
		counts[r]++
		isHex := r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F'
		isB64 := r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || strings.ContainsRune("+/-_", r)
		hexOnly = hexOnly && isHex
		b64Only = b64Only && isB64
		printable = printable && r >= 0x20 && r < 0x7f
	}
	if n == 0 || len(counts) < 8 {
		return 0
	}
	for _, c := range counts {
		if 4*c > n {
			return 0
		}
	}
	switch {
	case hexOnly:
		return 4 * float64(n)
	case b64Only:
		return 6 * float64(n)
	case printable:
		return math.Log2(95) * float64(n)
	}
	return 8 * float64(len(s))
}

// checkSecret refuses a secret of under minSecretBits, naming where it
// was set.
func checkSecret(what, where, s string) error {
	if bits := secretBits(s); bits < minSecretBits {
		return fmt.Errorf("%s: the %s has about %.0f bits of entropy, fewer than the %d (32 random bytes) required; %s",
			where, what, bits, minSecretBits, generateHint)
	}
	return nil
}

// randomSecret is 32 random bytes, hex-encoded.
func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read does not fail
	return hex.EncodeToString(b)
}

// errTokenSecretFile marks a token secret file the server will not use.
var errTokenSecretFile = errors.New("token secret file")

// readTokenSecret reads the token secret kept in dir; fs.ErrNotExist
// when there is none. A file others may read, or a weak secret, is
// refused.
func readTokenSecret(dir string) (string, error) {
	path := filepath.Join(dir, tokenSecretFile)
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%w %s: mode %v, others may read it; chmod 600 it", errTokenSecretFile, path, st.Mode().Perm())
	}
	b := make([]byte, 1024)
	n, _ := f.Read(b)
	secret := strings.TrimSpace(string(b[:n]))
	if err := checkSecret("token secret", path, secret); err != nil {
		return "", fmt.Errorf("%w %s: %w", errTokenSecretFile, path, err)
	}
	return secret, nil
}

// loadTokenSecret is the token secret kept in dir, generated (32 random
// bytes, written 0600 in a 0700 directory) when there is none yet. It
// reports whether it generated it.
func loadTokenSecret(dir string) (string, bool, error) {
	secret, err := readTokenSecret(dir)
	if !errors.Is(err, fs.ErrNotExist) {
		return secret, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("data dir: %w", err)
	}
	path := filepath.Join(dir, tokenSecretFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) { // another process made it meanwhile
		secret, err := readTokenSecret(dir)
		return secret, false, err
	}
	if err != nil {
		return "", false, fmt.Errorf("%w: %w", errTokenSecretFile, err)
	}
	secret = randomSecret()
	_, err = f.WriteString(secret + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return "", false, fmt.Errorf("%w %s: %w", errTokenSecretFile, path, err)
	}
	return secret, true, nil
}

// turnSecret is the TURN REST secret derived from the token secret, for
// when turn_secret is not set: fixed as long as the token secret is, and
// the same on every node of a cluster.
func turnSecret(tokenSecret string) string {
	m := hmac.New(sha256.New, []byte(tokenSecret))
	m.Write([]byte("vigil turn secret"))
	return hex.EncodeToString(m.Sum(nil))
}

// checkSecrets refuses a weak admin key or token secret, or a token
// secret that is the admin key, naming the setting.
func checkSecrets(c *config, where func(string) string) error {
	if c.AdminKey != "" {
		if err := checkSecret("admin key", where("admin-key"), c.AdminKey); err != nil {
			return err
		}
	}
	if c.TokenSecret != "" {
		if err := checkSecret("token secret", where("token-secret"), c.TokenSecret); err != nil {
			return err
		}
		if c.TokenSecret == c.AdminKey {
			return fmt.Errorf("%s: the token secret must not be the admin key (a leaked join token would let its holder guess the admin key offline); %s", where("token-secret"), generateHint)
		}
	}
	return nil
}
