package recordings_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
	"github.com/pion/webrtc/v4/pkg/media/h264reader"
	"github.com/pion/webrtc/v4/pkg/media/ivfreader"
	"github.com/pion/webrtc/v4/pkg/media/oggreader"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
	"go.uber.org/goleak"
)

var mediaDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vigil-rec-media-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mediaDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func testLogger() *slog.Logger {
	if os.Getenv("VIGIL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// needFFmpeg skips nothing: the recordings tests are about files ffmpeg
// reads, so a machine without ffmpeg fails them (make deps installs it).
func needFFmpeg(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"ffmpeg", "ffprobe"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is required (apt-get install ffmpeg): %v", bin, err)
		}
	}
}

var genMu sync.Mutex

// encoded returns a file of real encoded media made by ffmpeg, generated
// once per test binary: kind is vp8, vp9, h264 or opus.
func encoded(t testing.TB, kind string, seconds int) string {
	t.Helper()
	needFFmpeg(t)
	genMu.Lock()
	defer genMu.Unlock()
	var args []string
	var name string
	d := strconv.Itoa(seconds)
	video := []string{"-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", d, "-pix_fmt", "yuv420p", "-g", "30", "-keyint_min", "30"}
	switch kind {
	case "vp8":
		name = "v-" + d + ".ivf"
		args = append(video, "-c:v", "libvpx", "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8")
	case "vp9":
		name = "v9-" + d + ".ivf"
		args = append(video, "-c:v", "libvpx-vp9", "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8")
	case "h264":
		name = "h-" + d + ".h264"
		args = append(video, "-c:v", "libx264", "-profile:v", "baseline", "-bf", "0", "-sc_threshold", "0",
			"-tune", "zerolatency", "-bsf:v", "h264_mp4toannexb", "-f", "h264")
	case "opus":
		name = "a-" + d + ".ogg"
		args = []string{"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", d,
			"-c:a", "libopus", "-b:a", "48k", "-ac", "2", "-frame_duration", "20", "-page_duration", "20000"}
	default:
		t.Fatalf("unknown media kind %q", kind)
	}
	out := filepath.Join(mediaDir, name)
	if _, err := os.Stat(out); err == nil {
		return out
	}
	cmd := exec.Command("ffmpeg", append(append([]string{"-v", "error", "-y"}, args...), out)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg %s: %v\n%s", kind, err, b)
	}
	return out
}

// sample is one frame to send.
type sample struct {
	data []byte
	dur  time.Duration
}

// readSamples loads the frames of an encoded file.
func readSamples(t testing.TB, kind, path string) []sample {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []sample
	switch kind {
	case "vp8", "vp9":
		r, _, err := ivfreader.NewWith(f)
		if err != nil {
			t.Fatal(err)
		}
		for {
			fr, _, err := r.ParseNextFrame()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, sample{data: fr, dur: time.Second / 30})
		}
	case "h264":
		r, err := h264reader.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		// Group NAL units into access units: a new picture begins with a
		// non-VCL unit after a slice, or a slice whose first_mb_in_slice
		// is 0 (x264's zerolatency tuning writes several slices a frame).
		var au []byte
		hasSlice := false
		for {
			nal, err := r.NextNAL()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			slice := nal.UnitType == h264reader.NalUnitTypeCodedSliceIdr || nal.UnitType == h264reader.NalUnitTypeCodedSliceNonIdr
			firstSlice := slice && len(nal.Data) > 1 && nal.Data[1]&0x80 != 0
			if hasSlice && (!slice || firstSlice) {
				out = append(out, sample{data: au, dur: time.Second / 30})
				au, hasSlice = nil, false
			}
			au = append(au, 0, 0, 0, 1)
			au = append(au, nal.Data...)
			hasSlice = hasSlice || slice
		}
		if hasSlice {
			out = append(out, sample{data: au, dur: time.Second / 30})
		}
	case "opus":
		r, _, err := oggreader.NewWith(f)
		if err != nil {
			t.Fatal(err)
		}
		for {
			page, _, err := r.ParseNextPage()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if bytes.HasPrefix(page, []byte("OpusTags")) || bytes.HasPrefix(page, []byte("OpusHead")) {
				continue
			}
			out = append(out, sample{data: page, dur: 20 * time.Millisecond})
		}
	}
	if len(out) == 0 {
		t.Fatalf("no frames in %s", path)
	}
	return out
}

// localTrack makes a pion sample track for kind.
func localTrack(t testing.TB, kind, id, stream string) *webrtc.TrackLocalStaticSample {
	t.Helper()
	var c webrtc.RTPCodecCapability
	switch kind {
	case "vp8":
		c = webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}
	case "vp9":
		c = webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP9, ClockRate: 90000, SDPFmtpLine: "profile-id=0"}
	case "h264":
		c = webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
			SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"}
	case "opus":
		c = webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}
	}
	tr, err := webrtc.NewTrackLocalStaticSample(c, id, stream)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// pace writes samples in real time, from start, until they run out or
// stop closes; it returns when the last one was written.
func pace(tr *webrtc.TrackLocalStaticSample, samples []sample, start time.Time, stop <-chan struct{}) time.Time {
	next := start
	last := start
	for _, s := range samples {
		if d := time.Until(next); d > 0 {
			select {
			case <-stop:
				return last
			case <-time.After(d):
			}
		}
		_ = tr.WriteSample(media.Sample{Data: s.data, Duration: s.dur})
		last = time.Now()
		next = next.Add(s.dur)
	}
	return last
}

func pionAPI(t testing.TB) *webrtc.API {
	t.Helper()
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	return webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me))
}

// eventSink collects a participant's events.
type eventSink struct{ ch chan sfu.Event }

func (s eventSink) Deliver(ev sfu.Event) {
	select {
	case s.ch <- ev:
	default:
	}
}

// publisher is a pion client joined to a room through the sfu API, that
// publishes real encoded media.
type publisher struct {
	t      testing.TB
	pc     *webrtc.PeerConnection
	p      *sfu.Participant
	events eventSink
	tracks map[sfu.Source]*webrtc.TrackLocalStaticSample
	kinds  map[sfu.Source]string
	wg     sync.WaitGroup
}

// join joins room as identity and publishes one track per source, each
// of the given media kind ("vp8", "h264", "opus"...), and waits until the
// connection is up.
func join(t testing.TB, room *sfu.Room, identity string, role sfu.Role, sources map[sfu.Source]string) *publisher {
	t.Helper()
	pc, err := pionAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	pub := &publisher{t: t, pc: pc, events: eventSink{ch: make(chan sfu.Event, 256)},
		tracks: map[sfu.Source]*webrtc.TrackLocalStaticSample{}, kinds: sources}
	connected := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(connected) })
		}
	})
	p, err := room.Join(sfu.JoinConfig{Identity: identity, Role: role, Sink: pub.events})
	if err != nil {
		t.Fatal(err)
	}
	if room.Kind() == sfu.KindProctoring && role == sfu.RoleCandidate {
		// Candidates are recorded from their admission.
		if err := room.Admit(nil, identity); err != nil {
			t.Fatal(err)
		}
	}
	pub.p = p
	for src, kind := range sources {
		tr := localTrack(t, kind, string(src), identity+"-"+string(src))
		pub.tracks[src] = tr
		tx, err := pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			t.Fatal(err)
		}
		pub.wg.Add(1)
		go func() {
			defer pub.wg.Done()
			for {
				if _, _, err := tx.Sender().ReadRTCP(); err != nil {
					return
				}
			}
		}()
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-g
	mids := map[string]sfu.Source{}
	for _, tx := range pc.GetTransceivers() {
		for src, tr := range pub.tracks {
			if tx.Sender() != nil && tx.Sender().Track() == tr {
				mids[tx.Mid()] = src
			}
		}
	}
	if err := p.HandleOffer(pc.LocalDescription().SDP, mids); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-pub.events.ch:
			if a, ok := ev.(sfu.AnswerEvent); ok {
				if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: a.SDP}); err != nil {
					t.Fatal(err)
				}
			}
			continue
		case <-connected:
		case <-deadline:
			t.Fatal("publisher did not connect in 10s")
		}
		break
	}
	return pub
}

// add publishes one more track, renegotiating.
func (pub *publisher) add(src sfu.Source, kind string) {
	t := pub.t
	t.Helper()
	tr := localTrack(t, kind, string(src), pub.p.Identity()+"-"+string(src))
	pub.tracks[src] = tr
	pub.kinds[src] = kind
	tx, err := pub.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		t.Fatal(err)
	}
	pub.wg.Add(1)
	go func() {
		defer pub.wg.Done()
		for {
			if _, _, err := tx.Sender().ReadRTCP(); err != nil {
				return
			}
		}
	}()
	offer, err := pub.pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(pub.pc)
	if err := pub.pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-g
	mids := map[string]sfu.Source{}
	for _, tx := range pub.pc.GetTransceivers() {
		for src, tr := range pub.tracks {
			if tx.Sender() != nil && tx.Sender().Track() == tr {
				mids[tx.Mid()] = src
			}
		}
	}
	if err := pub.p.HandleOffer(pub.pc.LocalDescription().SDP, mids); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-pub.events.ch:
			if a, ok := ev.(sfu.AnswerEvent); ok {
				if err := pub.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: a.SDP}); err != nil {
					t.Fatal(err)
				}
				return
			}
		case <-deadline:
			t.Fatal("no answer to the renegotiation in 10s")
		}
	}
}

// play sends d of each source's media in real time and returns the wall
// time from the first sample to the last.
func (pub *publisher) play(d time.Duration) (first, last time.Time) {
	seconds := int(math.Ceil(d.Seconds()))
	var wg sync.WaitGroup
	var mu sync.Mutex
	start := time.Now().Add(20 * time.Millisecond)
	stop := make(chan struct{})
	timer := time.AfterFunc(d, func() { close(stop) })
	defer timer.Stop()
	for src, kind := range pub.kinds {
		samples := readSamples(pub.t, kind, encoded(pub.t, kind, seconds))
		tr := pub.tracks[src]
		wg.Add(1)
		go func() {
			defer wg.Done()
			end := pace(tr, samples, start, stop)
			mu.Lock()
			if end.After(last) {
				last = end
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return start, last
}

// leave leaves the room and closes the peer connection.
func (pub *publisher) leave() {
	pub.p.Leave(sfu.ReasonLeft)
	_ = pub.pc.Close()
	pub.wg.Wait()
}

// newSFU starts a media core with m as its observer.
func newSFU(t testing.TB, m *recordings.Manager) *sfu.SFU {
	t.Helper()
	s, err := sfu.New(sfu.Config{UDPAddr: "127.0.0.1:0", IncludeLoopback: true, KeyframeInterval: 100 * time.Millisecond,
		Observer: m, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// newManager starts a Manager on a fresh directory with a short settle
// time, closed when the test ends.
func newManager(t testing.TB, cfg recordings.Config) *recordings.Manager {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	m, err := recordings.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// probe is what ffprobe says of a file.
type probe struct {
	Format struct {
		FormatName string `json:"format_name"`
		Duration   string `json:"duration"`
	} `json:"format"`
	Streams []struct {
		Index     int    `json:"index"`
		CodecType string `json:"codec_type"`
		CodecName string `json:"codec_name"`
		Width     int    `json:"width"`
		Height    int    `json:"height"`
	} `json:"streams"`
}

func ffprobe(t testing.TB, path string) probe {
	t.Helper()
	out, err := exec.Command("ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", path).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", path, err)
	}
	var p probe
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatalf("ffprobe output: %v\n%s", err, out)
	}
	return p
}

// duration is the format duration ffprobe reports; ok is false for N/A.
func (p probe) duration() (time.Duration, bool) {
	f, err := strconv.ParseFloat(p.Format.Duration, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(f * float64(time.Second)), true
}

func (p probe) codecs() []string {
	var out []string
	for _, s := range p.Streams {
		out = append(out, s.CodecType+":"+s.CodecName)
	}
	return out
}

// decodes runs a full decode of the file and fails on any error output.
func decodes(t testing.TB, path string) {
	t.Helper()
	cmd := exec.Command("ffmpeg", "-v", "error", "-i", path, "-f", "null", "-")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Fatalf("ffmpeg decode of %s: %v\n%s", filepath.Base(path), err, stderr.String())
	}
}

// streamEnds decodes the file and returns, per stream type, the time of
// the end of the last decoded frame, and the number of frames decoded.
func streamEnds(t testing.TB, path string) (map[string]time.Duration, map[string]int) {
	t.Helper()
	out, err := exec.Command("ffprobe", "-v", "error", "-show_entries", "frame=media_type,pts_time,duration_time",
		"-of", "csv=p=0", path).Output()
	if err != nil {
		t.Fatalf("ffprobe frames %s: %v", path, err)
	}
	ends, counts := map[string]time.Duration{}, map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 2 {
			continue
		}
		pts, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		dur := 0.0
		if len(f) > 2 {
			dur, _ = strconv.ParseFloat(f[2], 64)
		}
		end := time.Duration((pts + dur) * float64(time.Second))
		if end > ends[f[0]] {
			ends[f[0]] = end
		}
		counts[f[0]]++
	}
	return ends, counts
}

// within reports whether got is within frac of want.
func within(got, want time.Duration, frac float64) bool {
	return math.Abs(float64(got-want)) <= frac*float64(want)
}
