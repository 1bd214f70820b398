// Package sfu is Vigil's media core. It knows nothing of HTTP; it talks to
// a session through a Sink, which only enqueues.
//
//   - sfu.go: the SFU (one per server: the media port, the pion API, its
//     rooms) and its Config; room.go: a Room, joining and publishing;
//     admin.go: what an admin does (list, role changes, mute, subscribe).
//   - participant.go: a Participant, one PeerConnection, the tracks it
//     receives, leaving; beside it, each with its own state and lock:
//     publish.go (what it publishes), negotiation.go (SDP offer/answer,
//     ICE), reconnect.go (a lost connection's grace period and ICE
//     restarts), whep.go (WHIP and WHEP participants, a player),
//     simulcast.go (layers and their allocation within the bandwidth
//     estimate), proctoring.go (waiting room, talk).
//   - uptrack.go: a published track and its single reader; downtrack.go:
//     its forwarded copy to one subscriber; packetcache.go: NACK replies;
//     keyframe.go: keyframe detection and codec matching; cow.go: the
//     copy-on-write subscriber lists of the packet path.
//   - policy.go: who may publish, receive and see what, per room kind.
//   - overload.go: shedding video when forwarding falls behind;
//     stats.go: counters; cascade.go: relayed participants standing for
//     publishers on other nodes; chat.go, events.go: what sinks receive.
package sfu

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/cc"
	"github.com/pion/interceptor/pkg/gcc"
	"github.com/pion/interceptor/pkg/nack"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// Config configures the media core.
type Config struct {
	// UDPAddr is the one UDP address all media goes through (ICE UDP mux),
	// e.g. ":7882" or "127.0.0.1:0".
	UDPAddr string
	// TCPAddr, if set, is the one TCP address of ICE over TCP (passive
	// candidates, ICE TCP mux) beside the UDP port, e.g. ":7881", for
	// clients whose networks block UDP.
	TCPAddr string
	// PublicIPs are advertised instead of the local addresses (NAT 1:1).
	PublicIPs []string
	// ICEServers are handed to clients in the joined event.
	ICEServers []webrtc.ICEServer
	// ICEServersFor, if set, adds ICE servers for one participant of a
	// room (say TURN with credentials minted for it) to ICEServers, in
	// its joined event and in WHIP/WHEP Link headers.
	ICEServersFor func(room, identity string) []webrtc.ICEServer
	// RevokeICEServers, if set, is told that what ICEServersFor handed an
	// identity in a room must stop working: the participant was kicked
	// or its tokens revoked (RevokeICEServers).
	RevokeICEServers func(room, identity string)
	// SocketBuffer is the receive and send buffer asked for on the media
	// UDP socket, in bytes: it absorbs the bursts that come while the
	// server is off the CPU (the kernel's default, about 200 KB, holds
	// some 90 full-size packets). 0 means DefaultSocketBuffer; negative
	// leaves the kernel's default. Linux caps it at net.core.rmem_max
	// and wmem_max unless the process has CAP_NET_ADMIN.
	SocketBuffer int
	// IncludeLoopback offers 127.0.0.1 candidates, so that a browser on the
	// same machine can connect.
	IncludeLoopback bool
	// MaxParticipants per room, 0 for no limit (a room may set a lower one).
	MaxParticipants int
	// MaxRooms caps the rooms open at once (ErrTooManyRooms); 0 for no
	// limit.
	MaxRooms int
	// MaxTracks caps the m-lines a participant's offer may send on
	// (ErrTooManyTracks); 0 means DefaultMaxTracks, negative no limit.
	MaxTracks int
	// KeyframeInterval is the least time between two keyframe requests to
	// one publisher; 0 means 500ms.
	KeyframeInterval time.Duration
	// DisconnectTimeout and FailedTimeout tune ICE; zero means 5s and
	// 25s (pion's defaults for a full agent).
	DisconnectTimeout, FailedTimeout time.Duration
	// ReconnectGrace is how long a participant whose media connection is
	// lost (ICE disconnected or failed) stays in its room, "reconnecting",
	// before it leaves with ReasonTimeout; 0 means 30s.
	ReconnectGrace time.Duration
	// ICERestartDelay is how long the server waits after its connection
	// to a signaled participant went disconnected before it offers an
	// ICE restart (at once when it goes failed); 0 means 5s, and a
	// negative delay leaves ICE restarts to the clients.
	ICERestartDelay time.Duration
	// MediaTimeout: while a participant's connection is lost, each of
	// its tracks that has carried no packet for this long is unpublished
	// (everyone is told, subscribers and recordings let go of it); when
	// its packets come back the track is published again, under a new
	// id. 0 means 5s.
	MediaTimeout time.Duration
	// Observer, if set, is told of every track published and unpublished.
	Observer TrackObserver
	Logger   *slog.Logger
}

// SFU owns the WebRTC API (one UDP port for all media) and the rooms.
type SFU struct {
	cfg  Config
	log  *slog.Logger
	api  *webrtc.API
	conn net.PacketConn
	mux  ice.UDPMux
	tcp  net.Listener // ICE over TCP, nil when off
	tmux ice.TCPMux

	// estimators hands each new connection's bandwidth estimator from the
	// interceptor to the participant, by connection id.
	estimators sync.Map

	// mu guards rooms and closed; no lock is taken while holding it.
	mu     sync.Mutex
	rooms  map[string]*Room
	closed bool

	stats statsRegistry // live tracks and totals, for Stats
}

// DefaultSocketBuffer is Config.SocketBuffer's default: 4 MiB, about
// 80 ms of 500 Mbit/s.
const DefaultSocketBuffer = 4 << 20

// DefaultMaxTracks is Config.MaxTracks's default: a camera, a microphone
// and a screen, with room for one being replaced.
const DefaultMaxTracks = 6

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

var instanceRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// ValidInstance reports whether s can name a room instance: 16 lowercase
// hex digits, as NewInstance draws.
func ValidInstance(s string) bool { return instanceRE.MatchString(s) }

// NewInstance draws a room instance id: 64 random bits in hex.
func NewInstance() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ValidName reports whether s can name a room or a participant: 1 to 64
// letters, digits, '.', '_', '@' or '-', starting with a letter or digit.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// New opens the media UDP port and returns a ready SFU.
func New(cfg Config) (*SFU, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.KeyframeInterval <= 0 {
		cfg.KeyframeInterval = 500 * time.Millisecond
	}
	if cfg.MaxTracks == 0 {
		cfg.MaxTracks = DefaultMaxTracks
	}
	if cfg.ReconnectGrace <= 0 {
		cfg.ReconnectGrace = 30 * time.Second
	}
	if cfg.ICERestartDelay == 0 {
		cfg.ICERestartDelay = 5 * time.Second
	}
	if cfg.MediaTimeout <= 0 {
		cfg.MediaTimeout = 5 * time.Second
	}
	if cfg.SocketBuffer == 0 {
		cfg.SocketBuffer = DefaultSocketBuffer
	}
	conn, err := net.ListenPacket("udp4", cfg.UDPAddr)
	if err != nil {
		return nil, fmt.Errorf("sfu: media UDP port: %w", err)
	}
	s := &SFU{cfg: cfg, log: cfg.Logger, conn: conn, rooms: map[string]*Room{}}
	if cfg.SocketBuffer > 0 {
		rcv, snd, err := setSocketBuffers(conn, cfg.SocketBuffer)
		switch {
		case err != nil:
			s.log.Warn("media socket buffers", "err", err)
		case rcv > 0 && rcv < cfg.SocketBuffer:
			s.log.Warn("media socket buffers smaller than asked (raise net.core.rmem_max and wmem_max)",
				"asked", cfg.SocketBuffer, "rcvbuf", rcv, "sndbuf", snd)
		default:
			// The kernel reports twice what it grants (its bookkeeping).
			s.log.Info("media socket buffers", "asked", cfg.SocketBuffer, "rcvbuf", rcv, "sndbuf", snd)
		}
	}
	logs := pionLogs{log: cfg.Logger}
	s.mux = webrtc.NewICEUDPMux(logs.NewLogger("udpmux"), conn)

	se := webrtc.SettingEngine{LoggerFactory: logs}
	se.SetICEUDPMux(s.mux)
	networks := []webrtc.NetworkType{webrtc.NetworkTypeUDP4}
	if cfg.TCPAddr != "" {
		ln, err := net.Listen("tcp4", cfg.TCPAddr)
		if err != nil {
			_ = s.mux.Close()
			_ = conn.Close()
			return nil, fmt.Errorf("sfu: ICE TCP port: %w", err)
		}
		s.tcp = ln
		s.tmux = webrtc.NewICETCPMux(logs.NewLogger("tcpmux"), ln, 32)
		se.SetICETCPMux(s.tmux)
		networks = append(networks, webrtc.NetworkTypeTCP4)
	}
	se.SetNetworkTypes(networks)
	// ICE-lite: the server only answers the clients' checks and takes
	// the pair a client nominates. Its candidates are all host ones (its
	// addresses, the public IP, ICE-TCP passive), which is what lite is
	// for, and a full agent here connects late: every host candidate of
	// one address family shares the UDP mux's connection, whichever
	// candidate's reader takes a datagram is charged with it, so the
	// answer to the triggered check a nomination starts is often read
	// as another pair's, and the pair waits for the next 200 ms round
	// of checks (docs/benchmarks.md, "Join time").
	se.SetLite(true)
	se.SetIncludeLoopbackCandidate(cfg.IncludeLoopback)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	// AEAD-AES-128-GCM costs a sixth of AES-CM+HMAC-SHA1-80 per packet:
	// about 0.3 µs against 1.9 µs to encrypt 1200 bytes on our 2-core
	// test machines.
	se.SetSRTPProtectionProfiles(dtls.SRTP_AEAD_AES_128_GCM, dtls.SRTP_AES128_CM_HMAC_SHA1_80)
	if len(cfg.PublicIPs) > 0 {
		// Append, not replace: the public address is offered beside the
		// local ones, so clients on this machine or network still connect.
		err := se.SetICEAddressRewriteRules(webrtc.ICEAddressRewriteRule{
			External: cfg.PublicIPs, AsCandidateType: webrtc.ICECandidateTypeHost, Mode: webrtc.ICEAddressRewriteAppend,
		})
		if err != nil {
			s.closePorts()
			return nil, fmt.Errorf("sfu: public IPs: %w", err)
		}
	}
	// Always explicit: an ICE-lite agent's own default disconnect timeout
	// is 10 s, not the 5 s that the reconnect rules (reconnect.go) and
	// the docs state.
	setICETimeouts(&se, cfg)

	me := &webrtc.MediaEngine{}
	if err := registerCodecs(me); err != nil {
		s.closePorts()
		return nil, err
	}
	ir, err := s.interceptors(me)
	if err != nil {
		s.closePorts()
		return nil, err
	}
	s.api = webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir))
	return s, nil
}

// setICETimeouts gives se the ICE timeouts of cfg: DisconnectTimeout
// (zero: 5 s), FailedTimeout (zero: 25 s) and a keepalive every 2 s,
// pion's defaults for a full agent, set explicitly so that they hold for
// an ICE-lite one too.
func setICETimeouts(se *webrtc.SettingEngine, cfg Config) {
	d, f := cfg.DisconnectTimeout, cfg.FailedTimeout
	if d <= 0 {
		d = 5 * time.Second
	}
	if f <= 0 {
		f = 25 * time.Second
	}
	se.SetICETimeouts(d, f, 2*time.Second)
}

// registerCodecs registers the codecs Vigil forwards: Opus, VP8, VP9 and
// H.264 (constrained baseline and baseline, packetization mode 1).
func registerCodecs(me *webrtc.MediaEngine) error {
	videoFB := []webrtc.RTCPFeedback{{Type: "nack"}, {Type: "nack", Parameter: "pli"}, {Type: "ccm", Parameter: "fir"}}
	codecs := []struct {
		cap webrtc.RTPCodecCapability
		pt  webrtc.PayloadType
		typ webrtc.RTPCodecType
	}{
		{webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"}, 111, webrtc.RTPCodecTypeAudio},
		{webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000, RTCPFeedback: videoFB}, 96, webrtc.RTPCodecTypeVideo},
		{webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP9, ClockRate: 90000, SDPFmtpLine: "profile-id=0", RTCPFeedback: videoFB}, 98, webrtc.RTPCodecTypeVideo},
		{webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000, SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", RTCPFeedback: videoFB}, 102, webrtc.RTPCodecTypeVideo},
		{webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000, SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f", RTCPFeedback: videoFB}, 104, webrtc.RTPCodecTypeVideo},
	}
	for _, c := range codecs {
		if err := me.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: c.cap, PayloadType: c.pt}, c.typ); err != nil {
			return fmt.Errorf("sfu: register %s: %w", c.cap.MimeType, err)
		}
	}
	return registerHeaderExtensions(me)
}

// registerHeaderExtensions registers the RTP header extensions in
// Chromium's order, so that the ids pion picks when it offers first are the
// ids Chromium uses: Chromium keeps the ids of an offer it rolled back
// (glare), and any other numbering would collide in its next offer.
func registerHeaderExtensions(me *webrtc.MediaEngine) error {
	audio, video := webrtc.RTPCodecTypeAudio, webrtc.RTPCodecTypeVideo
	exts := []struct {
		uri   string
		kinds []webrtc.RTPCodecType
	}{
		{"urn:ietf:params:rtp-hdrext:ssrc-audio-level", []webrtc.RTPCodecType{audio}},                            // 1
		{"http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time", []webrtc.RTPCodecType{audio, video}},      // 2
		{sdp.TransportCCURI, []webrtc.RTPCodecType{audio, video}},                                                // 3
		{sdp.SDESMidURI, []webrtc.RTPCodecType{audio, video}},                                                    // 4
		{"http://www.webrtc.org/experiments/rtp-hdrext/playout-delay", []webrtc.RTPCodecType{video}},             // 5
		{"http://www.webrtc.org/experiments/rtp-hdrext/video-content-type", []webrtc.RTPCodecType{video}},        // 6
		{"http://www.webrtc.org/experiments/rtp-hdrext/video-timing", []webrtc.RTPCodecType{video}},              // 7
		{"http://www.webrtc.org/experiments/rtp-hdrext/color-space", []webrtc.RTPCodecType{video}},               // 8
		{"http://www.webrtc.org/experiments/rtp-hdrext/video-layers-allocation00", []webrtc.RTPCodecType{video}}, // 9
		{sdp.SDESRTPStreamIDURI, []webrtc.RTPCodecType{video}},                                                   // 10
		{sdp.SDESRepairRTPStreamIDURI, []webrtc.RTPCodecType{video}},                                             // 11
	}
	for _, e := range exts {
		for _, k := range e.kinds {
			if err := me.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: e.uri}, k); err != nil {
				return fmt.Errorf("sfu: header extension %s: %w", e.uri, err)
			}
		}
	}
	return nil
}

// interceptors builds what runs on every packet of every connection: NACK
// generator (what we receive; NACKs of what we send are answered by the
// up-tracks' packet caches, packetcache.go, not by pion's responder,
// which copied every packet into a buffer per down-track), sender and
// receiver reports, transport-wide congestion control feedback for what
// publishers send us (so that their encoders ramp up and enable their
// simulcast layers), and, for what we send, transport-wide sequence
// numbers and a Google Congestion Control estimate per connection, which
// caps the simulcast layers a subscriber gets.
func (s *SFU) interceptors(me *webrtc.MediaEngine) (*interceptor.Registry, error) {
	ir := &interceptor.Registry{}
	generator, err := nack.NewGeneratorInterceptor()
	if err != nil {
		return nil, err
	}
	ir.Add(generator)
	if err := webrtc.ConfigureRTCPReports(ir); err != nil {
		return nil, err
	}
	if err := webrtc.ConfigureTWCCSender(me, ir); err != nil {
		return nil, err
	}
	congestion, err := cc.NewInterceptor(func() (cc.BandwidthEstimator, error) {
		return gcc.NewSendSideBWE(gcc.SendSideBWEInitialBitrate(1_000_000), gcc.SendSideBWEMaxBitrate(20_000_000),
			gcc.SendSideBWEPacer(gcc.NewNoOpPacer()))
	})
	if err != nil {
		return nil, err
	}
	congestion.OnNewPeerConnection(func(id string, e cc.BandwidthEstimator) { s.estimators.Store(id, e) })
	ir.Add(twccOnly{congestion})
	// Registered after the estimator, so that it runs before it on each
	// packet: the estimator reads the sequence number this one writes.
	if err := webrtc.ConfigureTWCCHeaderExtensionSender(me, ir); err != nil {
		return nil, err
	}
	return ir, nil
}

// twccOnly builds congestion control interceptors that leave alone the
// streams without transport-wide sequence numbers: pion's estimator
// refuses to send their packets at all.
type twccOnly struct{ f *cc.InterceptorFactory }

// NewInterceptor implements interceptor.Factory.
func (t twccOnly) NewInterceptor(id string) (interceptor.Interceptor, error) {
	i, err := t.f.NewInterceptor(id)
	if err != nil {
		return nil, err
	}
	return twccGate{i}, nil
}

type twccGate struct{ interceptor.Interceptor }

// BindLocalStream implements interceptor.Interceptor.
func (g twccGate) BindLocalStream(info *interceptor.StreamInfo, w interceptor.RTPWriter) interceptor.RTPWriter {
	for _, e := range info.RTPHeaderExtensions {
		if e.URI == sdp.TransportCCURI {
			return g.Interceptor.BindLocalStream(info, w)
		}
	}
	return w
}

// ICEServers are the ICE servers handed to clients.
func (s *SFU) ICEServers() []webrtc.ICEServer { return s.cfg.ICEServers }

// ICEServersFor are the ICE servers handed to the participant identity
// of room: Config.ICEServers, then those of Config.ICEServersFor.
func (s *SFU) ICEServersFor(room, identity string) []webrtc.ICEServer {
	out := append([]webrtc.ICEServer{}, s.cfg.ICEServers...) // never null on the wire
	if s.cfg.ICEServersFor != nil {
		out = append(out, s.cfg.ICEServersFor(room, identity)...)
	}
	return out
}

// RevokeICEServers makes the ICE servers credentials handed to identity
// in room so far stop working (Config.RevokeICEServers). A participant
// kicked or revoked calls it as it leaves; a revocation of an identity
// that is not in the room must call it too.
func (s *SFU) RevokeICEServers(room, identity string) {
	if s.cfg.RevokeICEServers != nil {
		s.cfg.RevokeICEServers(room, identity)
	}
}

// LocalAddr is the media UDP address.
func (s *SFU) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// TCPAddr is the ICE over TCP address, nil when off.
func (s *SFU) TCPAddr() net.Addr {
	if s.tcp == nil {
		return nil
	}
	return s.tcp.Addr()
}

// closePorts releases the media ports.
func (s *SFU) closePorts() error {
	err := s.mux.Close()
	if cerr := s.conn.Close(); err == nil {
		err = cerr
	}
	if s.tmux != nil {
		if cerr := s.tmux.Close(); err == nil {
			err = cerr
		}
		_ = s.tcp.Close() // closed by the mux already
	}
	return err
}

// RoomOptions are a room's settings.
type RoomOptions struct {
	// MaxParticipants caps the room; 0 takes the server's limit.
	MaxParticipants int
	// AutoRecord records every participant from the moment they publish.
	AutoRecord bool
	// Instance names this instance of the room (ValidInstance): a room
	// deleted and created again under the same name is another instance,
	// and the evidence and join tokens of one never reach the other.
	// Empty: CreateRoom draws a new one (NewInstance); a room re-homed
	// or replicated in a cluster passes the one it had.
	Instance string
}

// CreateRoom creates an empty room.
func (s *SFU) CreateRoom(name string, kind Kind, opts RoomOptions) (*Room, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("%w: room name %q", ErrInvalidName, name)
	}
	if !ValidKind(kind) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidKind, kind)
	}
	if opts.MaxParticipants <= 0 || (s.cfg.MaxParticipants > 0 && opts.MaxParticipants > s.cfg.MaxParticipants) {
		opts.MaxParticipants = s.cfg.MaxParticipants
	}
	switch {
	case opts.Instance == "":
		opts.Instance = NewInstance()
	case !ValidInstance(opts.Instance):
		return nil, fmt.Errorf("%w: room instance %q", ErrInvalidName, opts.Instance)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrServerClosed
	}
	if _, ok := s.rooms[name]; ok {
		return nil, fmt.Errorf("%w: %q", ErrRoomExists, name)
	}
	if s.cfg.MaxRooms > 0 && len(s.rooms) >= s.cfg.MaxRooms {
		return nil, fmt.Errorf("%w: at most %d rooms at once", ErrTooManyRooms, s.cfg.MaxRooms)
	}
	r := newRoom(s, name, kind, opts)
	s.rooms[name] = r
	s.log.Info("room created", "room", name, "kind", kind, "instance", opts.Instance)
	return r, nil
}

// Room returns the room called name.
func (s *SFU) Room(name string) (*Room, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrRoomNotFound, name)
	}
	return r, nil
}

// Rooms lists the rooms.
func (s *SFU) Rooms() []*Room {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Room, 0, len(s.rooms))
	for _, r := range s.rooms {
		out = append(out, r)
	}
	return out
}

func (s *SFU) removeRoom(r *Room) {
	s.mu.Lock()
	if s.rooms[r.name] == r {
		delete(s.rooms, r.name)
	}
	s.mu.Unlock()
}

// Close ends every room (participants leave with ReasonShutdown, their
// peer connections closed) and releases the media port.
func (s *SFU) Close() error { return s.CloseWith(ReasonShutdown) }

// CloseWith is Close with another reason for the participants: a node of
// a cluster that stops tells them that their room moves on.
func (s *SFU) CloseWith(reason string) error {
	s.mu.Lock()
	s.closed = true
	rooms := make([]*Room, 0, len(s.rooms))
	for _, r := range s.rooms {
		rooms = append(rooms, r)
	}
	s.mu.Unlock()
	for _, r := range rooms {
		r.Close(reason)
	}
	return s.closePorts()
}
