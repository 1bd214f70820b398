package media

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// stream is one synthetic RTP stream a publisher sends. Subscribers count
// the packets whose counter is in [lo, hi): the measured window.
type stream struct {
	id    uint32
	video bool
	sent  atomic.Uint64 // the next counter
	lo    atomic.Uint64
	hi    atomic.Uint64
}

// publisherAPI is a pion API with no interceptors and only VP8 and Opus:
// what a synthetic publisher needs and no more.
func publisherAPI() (*webrtc.API, error) {
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	// The SRTP profile both servers end up with: the publisher is the
	// DTLS server and would otherwise pick AES-256-GCM with the baseline.
	se.SetSRTPProtectionProfiles(dtls.SRTP_AEAD_AES_128_GCM, dtls.SRTP_AES128_CM_HMAC_SHA1_80)
	me := &webrtc.MediaEngine{}
	if err := me.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000,
			RTCPFeedback: []webrtc.RTCPFeedback{{Type: "nack", Parameter: "pli"}}},
		PayloadType: 96,
	}, webrtc.RTPCodecTypeVideo); err != nil {
		return nil, err
	}
	if err := me.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"},
		PayloadType:        111,
	}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	return webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(&interceptor.Registry{})), nil
}

// publisher is a synthetic WHIP publisher.
type publisher struct {
	g        *gen
	identity string
	token    string
	pc       *webrtc.PeerConnection
	video    *webrtc.TrackLocalStaticRTP
	audio    *webrtc.TrackLocalStaticRTP
	vs, as   *stream
	plan     videoPlan
	bitrate  int64
	location string
	pli      atomic.Bool
	plis     atomic.Int64
	keys     atomic.Int64
	wg       sync.WaitGroup
}

func newPublisher(g *gen, identity, token string, withVideo bool, bitrate int64, keyEvery time.Duration) (*publisher, error) {
	pc, err := g.pubAPI.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	p := &publisher{g: g, identity: identity, token: token, pc: pc, bitrate: bitrate}
	if withVideo {
		p.plan = planVideo(bitrate, 30, keyEvery)
		if p.video, err = webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", identity); err != nil {
			return nil, err
		}
		p.vs = g.newStream(true)
	}
	if p.audio, err = webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", identity); err != nil {
		return nil, err
	}
	p.as = g.newStream(false)
	return p, nil
}

// join publishes with WHIP and waits for the connection.
func (p *publisher) join(ctx context.Context, base, room string) error {
	// WHIP declares sources by position: first audio, first video.
	for _, tr := range []*webrtc.TrackLocalStaticRTP{p.audio, p.video} {
		if tr == nil {
			continue
		}
		tx, err := p.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			return err
		}
		video := tr == p.video
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				pkts, _, err := tx.Sender().ReadRTCP()
				if err != nil {
					return
				}
				for _, pk := range pkts {
					switch pk.(type) {
					case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
						if video {
							p.plis.Add(1)
							p.pli.Store(true)
						}
					}
				}
			}
		}()
	}
	connected := make(chan struct{})
	var once sync.Once
	p.pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(connected) })
		}
	})
	offer, err := p.pc.CreateOffer(nil)
	if err != nil {
		return err
	}
	gather := webrtc.GatheringCompletePromise(p.pc)
	if err := p.pc.SetLocalDescription(offer); err != nil {
		return err
	}
	<-gather
	answer, location, err := postSDP(ctx, p.g.HC, base+"/whip/"+room, p.token, p.pc.LocalDescription().SDP)
	if err != nil {
		return fmt.Errorf("POST /whip: %w", err)
	}
	p.location = location
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		return err
	}
	select {
	case <-connected:
		return nil
	case <-time.After(15 * time.Second):
		return errors.New("publisher: not connected within 15s")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run sends until ctx ends: Opus every 20 ms, and VP8 frames at 30 fps
// with a keyframe every GOP (and on PLI), each frame's packets paced at
// 2.5 times the bitrate as a browser's pacer does.
func (p *publisher) run(ctx context.Context) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.sendAudio(ctx)
	}()
	if p.video != nil {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.sendVideo(ctx)
		}()
	}
}

// sleepUntil waits for t, or returns false when ctx ends.
func sleepUntil(ctx context.Context, t time.Time, timer *time.Timer) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer.Reset(d)
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

func (p *publisher) sendAudio(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	buf := make([]byte, opusPayload)
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111}}
	start := time.Now()
	for i := 0; ; i++ {
		if !sleepUntil(ctx, start.Add(time.Duration(i)*20*time.Millisecond), timer) {
			return
		}
		buf[0] = 0x78
		c := p.as.sent.Load()
		putProbe(buf[opusProbeOffset:], probe{SentNS: int64(time.Since(p.g.epoch)), Counter: c, Stream: p.as.id})
		pkt.SequenceNumber = uint16(i)
		pkt.Timestamp = uint32(i) * 960
		pkt.Payload = buf
		if err := p.audio.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
			return
		}
		p.as.sent.Store(c + 1)
	}
}

func (p *publisher) sendVideo(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	buf := make([]byte, maxPayload)
	var sizes []int
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96}}
	// The pacer: at most 2.5x the bitrate, as browsers pace.
	bitsPerSec := 2.5 * float64(max(p.bitrate, 100_000))
	start := time.Now()
	next := start
	var seq uint16
	lastKey := time.Time{}
	for f := 0; ; f++ {
		frameAt := start.Add(time.Duration(f) * p.plan.FrameEvery)
		if !sleepUntil(ctx, frameAt, timer) {
			return
		}
		key := f%p.plan.GOP == 0
		if p.pli.Load() && time.Since(lastKey) > 100*time.Millisecond {
			p.pli.Store(false)
			key = true
		}
		size := p.plan.DeltaBytes
		if key {
			size = p.plan.KeyBytes
			lastKey = time.Now()
			p.keys.Add(1)
		}
		sizes = packetSizes(size, p.plan.PacketBytes, sizes)
		next = maxTime(next, frameAt)
		for i, s := range sizes {
			if !sleepUntil(ctx, next, timer) {
				return
			}
			c := p.vs.sent.Load()
			payload := fillVP8(buf[:s], i == 0, key, probe{SentNS: int64(time.Since(p.g.epoch)), Counter: c, Stream: p.vs.id})
			pkt.SequenceNumber = seq
			pkt.Timestamp = uint32(f) * uint32(90000/p.plan.FPS)
			pkt.Marker = i == len(sizes)-1
			pkt.Payload = payload
			seq++
			if err := p.video.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
				return
			}
			p.vs.sent.Store(c + 1)
			next = next.Add(time.Duration(math.Round(float64(s+12) * 8 / bitsPerSec * float64(time.Second))))
		}
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// close ends the WHIP session (DELETE) and the peer connection.
func (p *publisher) close(ctx context.Context, base string) {
	if p.location != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, base+p.location, nil)
		if err == nil {
			req.Header.Set("Authorization", "Bearer "+p.token)
			if resp, err := p.g.HC.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}
	_ = p.pc.Close()
	p.wg.Wait()
}

// postSDP POSTs an SDP offer with a bearer token (WHIP, WHEP) and
// returns the answer and the resource's Location; any status but 201 is
// an error carrying the reply.
func postSDP(ctx context.Context, hc *http.Client, url, token, offer string) (answer, location string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(offer))
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Content-Type", "application/sdp")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return "", "", err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return "", "", err
	}
	if resp.StatusCode != http.StatusCreated {
		return "", "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), resp.Header.Get("Location"), nil
}
