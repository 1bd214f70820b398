package media

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/ice/v4"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/stun/v4"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/report"
	"github.com/vigil-media/vigil/tools/vigil-load/internal/spawn"
)

// A thin subscriber is a WHEP client made to cost as little per
// received packet as we can: its datagrams come from the step's shared
// socket (thinNet, one reader for all), it answers STUN itself, hands
// DTLS records to a pion/dtls handshake, and decrypts SRTP with a
// pion/srtp context, reading nothing of the packet but its header and
// the probe. No interceptors, no packet
// buffers, no RTCP sent: the server asks for keyframes itself. A stock
// pion subscriber spends more CPU per received packet than the SFU spends
// forwarding it (measured on our 2-core machines), so the generator
// would measure itself.

// thinCert is one self-signed certificate used by every thin client:
// making one per client would cost more than its handshake.
type thinCert struct {
	cert        tls.Certificate
	fingerprint string // sha-256 XX:XX:...
}

func newThinCert() (*thinCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vigil-load"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(der)
	hexs := strings.ToUpper(hex.EncodeToString(sum[:]))
	var fp strings.Builder
	for i := 0; i < len(hexs); i += 2 {
		if i > 0 {
			fp.WriteByte(':')
		}
		fp.WriteString(hexs[i : i+2])
	}
	return &thinCert{cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, fingerprint: fp.String()}, nil
}

// subStats is what one subscription measured. Guarded by thin.mu.
type subStats struct {
	joinStart   time.Time
	answeredAt  time.Time // the POST's reply (the SDP answer) read
	connectedAt time.Time // DTLS done: SRTP keys in hand
	firstKeyAt  time.Time
	inWindow    uint64 // packets whose counter is inside their stream's window
	total       uint64
	bytes       uint64
	lat         report.Hist
	badStream   uint64
	decryptErrs uint64
}

// thin is one WHEP session.
type thin struct {
	g        *gen
	kinds    []string // "video", "audio": what the offer receives
	follow   string   // ?identity=
	token    string
	streams  []*stream // what the publisher sends: counted for loss
	net      *thinNet
	ip       [4]byte // 127.1.x.y, on net's port
	location string  // the resource, for DELETE
	base     string  // the server joined through, for DELETE

	localUfrag, localPwd   string
	remoteUfrag, remotePwd string
	remote                 netip.AddrPort
	dtlsIn                 chan []byte
	dtlsConn               *dtls.Conn
	srtp                   atomic.Pointer[srtp.Context]
	iceOK                  atomic.Bool
	closed                 chan struct{}
	closeOnce              sync.Once

	mu sync.Mutex
	st subStats
}

func newThin(g *gen, tn *thinNet, token, follow string, kinds []string, streams []*stream) (*thin, error) {
	t := &thin{
		g: g, kinds: kinds, follow: follow, token: token, streams: streams, net: tn,
		localUfrag: spawn.RandHex(4), localPwd: spawn.RandHex(12),
		dtlsIn: make(chan []byte, 16), closed: make(chan struct{}),
	}
	if err := tn.add(t); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *thin) addr() string { return netip.AddrFrom4(t.ip).String() }

func (t *thin) offer() string {
	var b strings.Builder
	b.WriteString("v=0\r\no=- " + strconv.FormatInt(time.Now().UnixNano(), 10) + " 2 IN IP4 " + t.addr() + "\r\ns=-\r\nt=0 0\r\n")
	b.WriteString("a=group:BUNDLE")
	for i := range t.kinds {
		b.WriteString(" " + strconv.Itoa(i))
	}
	b.WriteString("\r\na=msid-semantic: WMS\r\n")
	for i, k := range t.kinds {
		pt, rtpmap := "96", "VP8/90000"
		if k == "audio" {
			pt, rtpmap = "111", "opus/48000/2"
		}
		fmt.Fprintf(&b, "m=%s 9 UDP/TLS/RTP/SAVPF %s\r\nc=IN IP4 %s\r\n", k, pt, t.addr())
		fmt.Fprintf(&b, "a=mid:%d\r\na=ice-ufrag:%s\r\na=ice-pwd:%s\r\na=fingerprint:sha-256 %s\r\na=setup:actpass\r\na=recvonly\r\na=rtcp-mux\r\n",
			i, t.localUfrag, t.localPwd, t.g.cert.fingerprint)
		fmt.Fprintf(&b, "a=rtpmap:%s %s\r\n", pt, rtpmap)
		if k == "video" {
			fmt.Fprintf(&b, "a=rtcp-fb:%s nack pli\r\n", pt)
		} else {
			fmt.Fprintf(&b, "a=fmtp:%s minptime=10;useinbandfec=1\r\n", pt)
		}
		if i == 0 {
			fmt.Fprintf(&b, "a=candidate:1 1 udp 2130706431 %s %d typ host\r\na=end-of-candidates\r\n", t.addr(), t.net.port)
		}
	}
	return b.String()
}

// answer is what we read of the server's SDP answer.
type answer struct {
	ufrag, pwd string
	cand       netip.AddrPort
	setup      string
}

func parseAnswer(sdp string) (answer, error) {
	var a answer
	for _, line := range strings.Split(sdp, "\n") {
		line = strings.TrimRight(line, "\r")
		switch {
		case strings.HasPrefix(line, "a=ice-ufrag:") && a.ufrag == "":
			a.ufrag = line[len("a=ice-ufrag:"):]
		case strings.HasPrefix(line, "a=ice-pwd:") && a.pwd == "":
			a.pwd = line[len("a=ice-pwd:"):]
		case strings.HasPrefix(line, "a=setup:") && a.setup == "":
			a.setup = line[len("a=setup:"):]
		case strings.HasPrefix(line, "a=candidate:"):
			// foundation component transport priority address port typ type
			f := strings.Fields(line)
			if len(f) < 8 || !strings.EqualFold(f[2], "udp") {
				continue
			}
			ip, err := netip.ParseAddr(f[4])
			port, perr := strconv.Atoi(f[5])
			if err != nil || perr != nil || !ip.Is4() {
				continue
			}
			// Only loopback may be targeted: any other host candidate is
			// the same UDP port, reached at 127.0.0.1.
			if !a.cand.IsValid() || ip.IsLoopback() {
				a.cand = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port))
			}
		}
	}
	if a.ufrag == "" || a.pwd == "" || !a.cand.IsValid() {
		return a, errors.New("answer without ICE credentials or a UDP IPv4 candidate")
	}
	return a, nil
}

// join posts the offer and runs ICE and DTLS; it returns once SRTP keys
// are in hand (or fails).
func (t *thin) join(ctx context.Context, base, room string) error {
	t.mu.Lock()
	t.st.joinStart = time.Now()
	t.mu.Unlock()
	u := base + "/whep/" + room
	if t.follow != "" {
		u += "?identity=" + t.follow
	}
	answer, location, err := postSDP(ctx, t.g.HC, u, t.token, t.offer())
	if err != nil {
		return fmt.Errorf("POST /whep: %w", err)
	}
	t.location, t.base = location, base
	t.mu.Lock()
	t.st.answeredAt = time.Now()
	t.mu.Unlock()
	ans, err := parseAnswer(answer)
	if err != nil {
		return err
	}
	t.remoteUfrag, t.remotePwd, t.remote = ans.ufrag, ans.pwd, ans.cand
	t.net.activate(t)
	go t.keepalive()
	// The answerer picks the DTLS role; pion answers active (client).
	pc := &dtlsPacketConn{t: t}
	raddr := net.UDPAddrFromAddrPort(t.remote)
	profiles := dtls.WithSRTPProtectionProfiles(dtls.SRTP_AEAD_AES_128_GCM, dtls.SRTP_AES128_CM_HMAC_SHA1_80)
	var dc *dtls.Conn
	isClient := ans.setup == "passive"
	if isClient {
		dc, err = dtls.ClientWithOptions(pc, raddr, dtls.WithCertificates(t.g.cert.cert), profiles,
			dtls.WithInsecureSkipVerify(true), dtls.WithExtendedMasterSecret(dtls.RequestExtendedMasterSecret))
	} else {
		dc, err = dtls.ServerWithOptions(pc, raddr, dtls.WithCertificates(t.g.cert.cert), profiles,
			dtls.WithClientAuth(dtls.RequireAnyClientCert), dtls.WithInsecureSkipVerify(true),
			dtls.WithExtendedMasterSecret(dtls.RequestExtendedMasterSecret))
	}
	if err != nil {
		return err
	}
	t.dtlsConn = dc
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := dc.HandshakeContext(hctx); err != nil {
		return fmt.Errorf("DTLS: %w", err)
	}
	prof, ok := dc.SelectedSRTPProtectionProfile()
	if !ok {
		return errors.New("DTLS: no SRTP profile")
	}
	state, ok := dc.ConnectionState()
	if !ok {
		return errors.New("DTLS: no state")
	}
	cfg := srtp.Config{Profile: srtp.ProtectionProfile(prof)}
	if err := cfg.ExtractSessionKeysFromDTLS(&state, isClient); err != nil {
		return err
	}
	sc, err := srtp.CreateContext(cfg.Keys.RemoteMasterKey, cfg.Keys.RemoteMasterSalt, cfg.Profile)
	if err != nil {
		return err
	}
	t.srtp.Store(sc)
	t.mu.Lock()
	t.st.connectedAt = time.Now()
	t.mu.Unlock()
	return nil
}

// keepalive runs ICE as the controlling agent with aggressive
// nomination: checks every 50 ms until one succeeds, then every second.
func (t *thin) keepalive() {
	tie := ice.AttrControlling(uint64(time.Now().UnixNano()))
	prio := ice.PriorityAttr(2130706431)
	user := stun.NewUsername(t.remoteUfrag + ":" + t.localUfrag)
	integ := stun.NewShortTermIntegrity(t.remotePwd)
	for i := 0; ; i++ {
		msg, err := stun.Build(stun.TransactionID, stun.BindingRequest, user, ice.UseCandidate(), tie, prio, integ, stun.Fingerprint)
		if err == nil {
			_ = t.net.send(t.ip, msg.Raw, t.remote)
		}
		wait := 50 * time.Millisecond
		if t.iceOK.Load() {
			wait = time.Second
		}
		select {
		case <-t.closed:
			return
		case <-time.After(wait):
		}
	}
}

// thinScratch is the reader's reusable state.
type thinScratch struct {
	out []byte
	hdr rtp.Header
	msg stun.Message
}

// handle takes one datagram for t; called by the net's one reader.
func (t *thin) handle(b []byte, sc *thinScratch, now time.Time) {
	if len(b) == 0 {
		return
	}
	switch {
	case b[0] >= 128 && b[0] <= 191:
		if len(b) < 12 || (b[1] >= 192 && b[1] <= 223) {
			return // RTCP: the server's sender reports
		}
		ctx := t.srtp.Load()
		if ctx == nil {
			return
		}
		pl, err := ctx.DecryptRTP(sc.out, b, &sc.hdr)
		if err != nil {
			t.mu.Lock()
			t.st.decryptErrs++
			t.mu.Unlock()
			return
		}
		t.packet(pl[sc.hdr.MarshalSize():], sc.hdr.PayloadType, now)
	case b[0] < 2:
		t.stun(&sc.msg, b)
	case b[0] >= 20 && b[0] <= 63:
		c := append([]byte(nil), b...)
		select {
		case t.dtlsIn <- c:
		default: // the handshake is not reading: drop, DTLS retransmits
		}
	}
}

// packet accounts for one decrypted RTP payload.
func (t *thin) packet(payload []byte, pt uint8, now time.Time) {
	video := pt == 96
	off := opusProbeOffset
	if video {
		off = vp8ProbeOffset
	}
	if len(payload) < off+probeLen {
		return
	}
	p, _ := getProbe(payload[off:])
	key := video && vp8Key(payload)
	var s *stream
	if int(p.Stream) < len(t.g.streams) {
		s = t.g.streams[p.Stream]
	}
	t.mu.Lock()
	t.st.total++
	t.st.bytes += uint64(len(payload))
	if key && t.st.firstKeyAt.IsZero() {
		t.st.firstKeyAt = now
	}
	if s == nil {
		t.st.badStream++
	} else if p.Counter >= s.lo.Load() && p.Counter < s.hi.Load() {
		t.st.inWindow++
		t.st.lat.Add(now.Sub(t.g.epoch) - time.Duration(p.SentNS))
	}
	t.mu.Unlock()
}

// stun answers the server's connectivity checks and notes the success
// of ours.
func (t *thin) stun(msg *stun.Message, b []byte) {
	from := t.remote
	msg.Raw = append(msg.Raw[:0], b...)
	if err := msg.Decode(); err != nil {
		return
	}
	switch msg.Type {
	case stun.BindingSuccess:
		t.iceOK.Store(true)
	case stun.BindingRequest:
		resp, err := stun.Build(stun.NewTransactionIDSetter(msg.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())},
			stun.NewShortTermIntegrity(t.localPwd), stun.Fingerprint)
		if err == nil {
			_ = t.net.send(t.ip, resp.Raw, from)
		}
	}
}

// close ends the session: DELETE on the resource (through the server
// it joined through, else base), then the socket.
func (t *thin) close(ctx context.Context, base string) {
	base = cmp.Or(t.base, base)
	if t.location != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, base+t.location, nil)
		if err == nil {
			req.Header.Set("Authorization", "Bearer "+t.token)
			if resp, err := t.g.HC.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}
	t.shut()
}

func (t *thin) shut() {
	t.closeOnce.Do(func() {
		close(t.closed)
		t.net.remove(t)
		if t.dtlsConn != nil {
			go func() { _ = t.dtlsConn.Close() }()
		}
	})
}

func (t *thin) stats() subStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.st
}

// dtlsPacketConn is what pion/dtls reads and writes: records the reader
// goroutine passes on, written straight to the socket.
type dtlsPacketConn struct{ t *thin }

func (c *dtlsPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case b := <-c.t.dtlsIn:
		return copy(p, b), net.UDPAddrFromAddrPort(c.t.remote), nil
	case <-c.t.closed:
		return 0, nil, net.ErrClosed
	}
}

func (c *dtlsPacketConn) WriteTo(p []byte, _ net.Addr) (int, error) {
	if err := c.t.net.send(c.t.ip, p, c.t.remote); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *dtlsPacketConn) Close() error { return nil }
func (c *dtlsPacketConn) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IP(c.t.ip[:]), Port: c.t.net.port}
}
func (c *dtlsPacketConn) SetDeadline(time.Time) error      { return nil }
func (c *dtlsPacketConn) SetReadDeadline(time.Time) error  { return nil }
func (c *dtlsPacketConn) SetWriteDeadline(time.Time) error { return nil }
