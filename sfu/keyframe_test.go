package sfu

import (
	"testing"

	"github.com/pion/webrtc/v4"
)

func TestIsKeyframe(t *testing.T) {
	tests := []struct {
		name    string
		mime    string
		payload []byte
		want    bool
	}{
		{"vp8 key, no extension", "video/VP8", []byte{0x10, 0x00}, true},
		{"vp8 delta", "video/VP8", []byte{0x10, 0x01}, false},
		{"vp8 not start of partition", "video/VP8", []byte{0x00, 0x00}, false},
		{"vp8 start but partition 1", "video/VP8", []byte{0x11, 0x00}, false},
		{"vp8 key with 15-bit picture id", "video/VP8", []byte{0x90, 0x80, 0x81, 0x23, 0x00}, true},
		{"vp8 delta with picture id, tl0, tid", "video/VP8", []byte{0x90, 0xe0, 0x05, 0x01, 0x20, 0x01}, false},
		{"vp8 key with picture id, tl0, tid", "video/VP8", []byte{0x90, 0xe0, 0x05, 0x01, 0x20, 0x00}, true},
		{"vp8 truncated after X", "video/VP8", []byte{0x90}, false},
		{"vp8 truncated before payload", "video/VP8", []byte{0x90, 0x80, 0x05}, false},
		{"vp8 empty", "video/vp8", nil, false},
		{"vp9 key", "video/VP9", []byte{0x08}, true},
		{"vp9 inter", "video/VP9", []byte{0x48}, false},
		{"vp9 key continuation", "video/VP9", []byte{0x00}, false},
		{"h264 idr", "video/H264", []byte{0x65}, true},
		{"h264 sps", "video/H264", []byte{0x67}, true},
		{"h264 non-idr slice", "video/H264", []byte{0x41}, false},
		{"h264 stap-a sps+pps", "video/H264", []byte{0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce}, true},
		{"h264 stap-a truncated", "video/H264", []byte{0x18, 0x00, 0x09, 0x67}, false},
		{"h264 fu-a idr start", "video/H264", []byte{0x7c, 0x85}, true},
		{"h264 fu-a idr middle", "video/H264", []byte{0x7c, 0x05}, false},
		{"h264 fu-a non-idr start", "video/H264", []byte{0x7c, 0x81}, false},
		{"opus never", "audio/opus", []byte{0x10, 0x00}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isKeyframe(tt.mime, tt.payload); got != tt.want {
				t.Fatalf("isKeyframe(%s, % x) = %v, want %v", tt.mime, tt.payload, got, tt.want)
			}
		})
	}
}

func FuzzIsKeyframe(f *testing.F) {
	for _, s := range [][]byte{{0x90, 0x80, 0x81, 0x23, 0x00}, {0x18, 0x00, 0x02, 0x67, 0x42}, {0x7c, 0x85}} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		for _, m := range []string{"video/VP8", "video/VP9", "video/H264"} {
			_ = isKeyframe(m, p)
		}
	})
}

func TestCodecMatch(t *testing.T) {
	cap := func(mime, f string) webrtc.RTPCodecCapability {
		return webrtc.RTPCodecCapability{MimeType: mime, SDPFmtpLine: f}
	}
	tests := []struct {
		name     string
		pub, sub webrtc.RTPCodecCapability
		want     bool
	}{
		{"vp8 case-insensitive", cap("video/VP8", ""), cap("video/vp8", ""), true},
		{"vp8 vs vp9", cap("video/VP8", ""), cap("video/VP9", ""), false},
		{"vp9 default profile", cap("video/VP9", ""), cap("video/VP9", "profile-id=0"), true},
		{"vp9 profile 2 vs 0", cap("video/VP9", "profile-id=2"), cap("video/VP9", "profile-id=0"), false},
		{"h264 cb vs baseline", cap("video/H264", "packetization-mode=1;profile-level-id=42e01f"), cap("video/H264", "packetization-mode=1;profile-level-id=42001f"), true},
		{"h264 high vs baseline", cap("video/H264", "packetization-mode=1;profile-level-id=640032"), cap("video/H264", "packetization-mode=1;profile-level-id=42001f"), false},
		{"h264 packetization differs", cap("video/H264", "profile-level-id=42e01f"), cap("video/H264", "packetization-mode=1;profile-level-id=42e01f"), false},
		{"opus", cap("audio/opus", "minptime=10"), cap("audio/OPUS", "useinbandfec=1"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := codecMatch(tt.pub, tt.sub); got != tt.want {
				t.Fatalf("codecMatch = %v, want %v", got, tt.want)
			}
		})
	}
}
