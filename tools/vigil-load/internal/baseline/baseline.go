// Package baseline is the stock-pion forwarder the media benchmarks
// compare Vigil with: "vigil-load baseline-server".
package baseline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"
)

const (
	dtlsGCM128 = dtls.SRTP_AEAD_AES_128_GCM
	dtlsCM     = dtls.SRTP_AES128_CM_HMAC_SHA1_80
)

// The baseline: a minimal stock-pion forwarder. One TrackLocalStaticRTP
// per published track, written by one goroutine that reads the remote
// track; pion's default interceptors (NACK, RTCP reports, TWCC); the same
// transport settings as Vigil (one UDP port, loopback candidates, GCM
// preferred). It serves just enough of Vigil's HTTP surface for the
// generator to drive both the same way: WHIP and WHEP (with ?identity=),
// DELETE on the resources, and no-op admin calls. Tokens are not checked:
// a bearer token is taken as the identity.

type baseTrack struct {
	local *webrtc.TrackLocalStaticRTP
}

type basePublisher struct {
	identity string
	pc       *webrtc.PeerConnection
	joined   int64
	mu       sync.Mutex
	tracks   map[webrtc.RTPCodecType]*baseTrack
	lastPLI  time.Time
	queued   bool
	ssrc     map[webrtc.RTPCodecType]uint32
}

// requestKeyframe sends a PLI at most every 500 ms; a request inside
// the interval is sent when it ends (as Vigil does).
func (p *basePublisher) requestKeyframe() {
	p.mu.Lock()
	defer p.mu.Unlock()
	ssrc, ok := p.ssrc[webrtc.RTPCodecTypeVideo]
	if !ok || p.queued {
		return
	}
	if wait := 500*time.Millisecond - time.Since(p.lastPLI); wait > 0 {
		p.queued = true
		time.AfterFunc(wait, func() {
			p.mu.Lock()
			p.queued = false
			p.mu.Unlock()
			p.requestKeyframe()
		})
		return
	}
	p.lastPLI = time.Now()
	_ = p.pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: ssrc}})
}

type baseServer struct {
	api  *webrtc.API
	log  *slog.Logger
	mu   sync.Mutex
	seq  int64
	pubs map[string]*basePublisher // by identity
	res  map[string]*webrtc.PeerConnection
}

// Run is "vigil-load baseline-server": it serves until ctx ends.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vigil-load baseline-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	httpAddr := fs.String("http-addr", "127.0.0.1:8090", "HTTP address")
	udpPort := fs.Int("udp-port", 7890, "the one UDP port for all media, on 127.0.0.1")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: *udpPort})
	if err != nil {
		return err
	}
	se := webrtc.SettingEngine{}
	se.SetICEUDPMux(webrtc.NewICEUDPMux(nil, conn))
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetSRTPProtectionProfiles(dtlsGCM128, dtlsCM)
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		return err
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(me, ir); err != nil {
		return err
	}
	s := &baseServer{
		api:  webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir)),
		log:  slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		pubs: map[string]*basePublisher{}, res: map[string]*webrtc.PeerConnection{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/rooms", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, `{"rooms":[]}`) })
	mux.HandleFunc("POST /v1/rooms", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{}`)
	})
	mux.HandleFunc("POST /v1/rooms/{room}/tokens", s.token)
	mux.HandleFunc("POST /whip/{room}", s.whip)
	mux.HandleFunc("POST /whep/{room}", s.whep)
	mux.HandleFunc("DELETE /{kind}/{room}/{id}", s.delete)
	srv := &http.Server{Addr: *httpAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	fmt.Fprintf(stdout, "baseline forwarder on http://%s, media udp 127.0.0.1:%d\n", *httpAddr, *udpPort)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	s.mu.Lock()
	pcs := make([]*webrtc.PeerConnection, 0, len(s.res))
	for _, pc := range s.res {
		pcs = append(pcs, pc)
	}
	s.mu.Unlock()
	for _, pc := range pcs {
		_ = pc.Close()
	}
	return nil
}

func (s *baseServer) token(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Identity string `json:"identity"`
	}
	b, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
	// A tiny parse: {"identity":"x",...}
	if _, rest, ok := strings.Cut(string(b), `"identity":"`); ok {
		body.Identity, _, _ = strings.Cut(rest, `"`)
	}
	w.WriteHeader(http.StatusCreated)
	_, _ = fmt.Fprintf(w, `{"token":%q}`, body.Identity)
}

func bearer(r *http.Request) string {
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
}

// answer applies an offer to pc and returns the answer with candidates.
func answerOffer(pc *webrtc.PeerConnection, offer string) (string, error) {
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", err
	}
	ans, err := pc.CreateAnswer(nil)
	if err != nil {
		return "", err
	}
	g := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(ans); err != nil {
		return "", err
	}
	<-g
	return pc.LocalDescription().SDP, nil
}

func (s *baseServer) addResource(pc *webrtc.PeerConnection) string {
	id := randHex(8)
	s.mu.Lock()
	s.res[id] = pc
	s.mu.Unlock()
	return id
}

func (s *baseServer) whip(w http.ResponseWriter, r *http.Request) {
	offer, err := io.ReadAll(io.LimitReader(r.Body, 128<<10))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pc, err := s.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.mu.Lock()
	s.seq++
	p := &basePublisher{identity: bearer(r), pc: pc, joined: s.seq, tracks: map[webrtc.RTPCodecType]*baseTrack{}, ssrc: map[webrtc.RTPCodecType]uint32{}}
	s.pubs[p.identity] = p
	s.mu.Unlock()
	pc.OnTrack(func(remote *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
		local, err := webrtc.NewTrackLocalStaticRTP(remote.Codec().RTPCodecCapability, remote.Kind().String(), p.identity)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.tracks[remote.Kind()] = &baseTrack{local: local}
		p.ssrc[remote.Kind()] = uint32(remote.SSRC())
		p.mu.Unlock()
		go func() { // the receiver's RTCP, for the interceptors
			for {
				if _, _, err := recv.ReadRTCP(); err != nil {
					return
				}
			}
		}()
		buf := make([]byte, 1500)
		for {
			n, _, err := remote.Read(buf)
			if err != nil {
				return
			}
			if _, err := local.Write(buf[:n]); err != nil && !errors.Is(err, io.ErrClosedPipe) {
				return
			}
		}
	})
	ans, err := answerOffer(pc, string(offer))
	if err != nil {
		_ = pc.Close()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id := s.addResource(pc)
	w.Header().Set("Content-Type", "application/sdp")
	w.Header().Set("Location", "/whip/"+r.PathValue("room")+"/"+id)
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, ans)
}

// publisherFor finds the publisher to play: the named one, or the
// earliest; it waits up to 5 s for its tracks to arrive.
func (s *baseServer) publisherFor(identity string, kinds []webrtc.RTPCodecType) *basePublisher {
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		var best *basePublisher
		for id, p := range s.pubs {
			if (identity == "" || id == identity) && (best == nil || p.joined < best.joined) {
				best = p
			}
		}
		s.mu.Unlock()
		if best != nil {
			best.mu.Lock()
			ok := true
			for _, k := range kinds {
				ok = ok && best.tracks[k] != nil
			}
			best.mu.Unlock()
			if ok {
				return best
			}
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *baseServer) whep(w http.ResponseWriter, r *http.Request) {
	offer, err := io.ReadAll(io.LimitReader(r.Body, 128<<10))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var kinds []webrtc.RTPCodecType
	for _, line := range strings.Split(string(offer), "\n") {
		switch {
		case strings.HasPrefix(line, "m=video"):
			kinds = append(kinds, webrtc.RTPCodecTypeVideo)
		case strings.HasPrefix(line, "m=audio"):
			kinds = append(kinds, webrtc.RTPCodecTypeAudio)
		}
	}
	pub := s.publisherFor(r.URL.Query().Get("identity"), kinds)
	if pub == nil {
		http.Error(w, "no such publisher", http.StatusNotFound)
		return
	}
	pc, err := s.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	for _, k := range kinds {
		pub.mu.Lock()
		t := pub.tracks[k]
		pub.mu.Unlock()
		sender, err := pc.AddTrack(t.local)
		if err != nil {
			_ = pc.Close()
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		go func() { // PLI and FIR go to the publisher; interceptors need the read
			for {
				pkts, _, err := sender.ReadRTCP()
				if err != nil {
					return
				}
				for _, p := range pkts {
					switch p.(type) {
					case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
						pub.requestKeyframe()
					}
				}
			}
		}()
	}
	// A subscriber that connects needs a keyframe; Vigil asks for one
	// itself, and so does this forwarder (throttled the same way).
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		if st == webrtc.PeerConnectionStateConnected {
			pub.requestKeyframe()
		}
	})
	ans, err := answerOffer(pc, string(offer))
	if err != nil {
		_ = pc.Close()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id := s.addResource(pc)
	w.Header().Set("Content-Type", "application/sdp")
	w.Header().Set("Location", "/whep/"+r.PathValue("room")+"/"+id)
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, ans)
}

func (s *baseServer) delete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	pc := s.res[id]
	delete(s.res, id)
	if pc != nil && r.PathValue("kind") == "whip" {
		for k, p := range s.pubs {
			if p.pc == pc {
				delete(s.pubs, k)
			}
		}
	}
	s.mu.Unlock()
	if pc == nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	_ = pc.Close()
	w.WriteHeader(http.StatusOK)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
