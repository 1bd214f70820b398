package sfu

import "strings"

// isKeyframe reports whether an RTP payload of the given video codec starts
// a keyframe. It reads only the payload descriptor and the first bytes.
func isKeyframe(mime string, payload []byte) bool {
	switch {
	case strings.EqualFold(mime, "video/VP8"):
		return vp8Keyframe(payload)
	case strings.EqualFold(mime, "video/VP9"):
		return vp9Keyframe(payload)
	case strings.EqualFold(mime, "video/H264"):
		return h264Keyframe(payload)
	}
	return false
}

// vp8Keyframe parses the VP8 payload descriptor (RFC 7741 section 4.2) and
// the first byte of the VP8 payload header, whose P bit is 0 on a keyframe.
func vp8Keyframe(p []byte) bool {
	if len(p) < 1 {
		return false
	}
	s, pid := p[0]&0x10 != 0, p[0]&0x07
	if !s || pid != 0 {
		return false
	}
	i := 1
	if p[0]&0x80 != 0 { // X: extension byte
		if len(p) <= i {
			return false
		}
		x := p[i]
		i++
		if x&0x80 != 0 { // I: picture ID, 7 or 15 bits
			if len(p) <= i {
				return false
			}
			if p[i]&0x80 != 0 {
				i++
			}
			i++
		}
		if x&0x40 != 0 { // L: TL0PICIDX
			i++
		}
		if x&0x30 != 0 { // T or K: TID/Y/KEYIDX
			i++
		}
	}
	return len(p) > i && p[i]&0x01 == 0
}

// vp9Keyframe reads the VP9 payload descriptor (RFC 9628): a packet that
// begins a frame (B) which is not inter-picture predicted (P clear).
func vp9Keyframe(p []byte) bool {
	if len(p) < 1 {
		return false
	}
	return p[0]&0x40 == 0 && p[0]&0x08 != 0
}

// h264Keyframe finds an IDR slice or an SPS at the start of a packet:
// single NAL units, STAP-A aggregates and the first FU-A fragment.
func h264Keyframe(p []byte) bool {
	if len(p) < 1 {
		return false
	}
	key := func(t byte) bool { return t == 5 || t == 7 }
	switch t := p[0] & 0x1f; {
	case t >= 1 && t <= 23:
		return key(t)
	case t == 24: // STAP-A
		for i := 1; i+2 < len(p); {
			size := int(p[i])<<8 | int(p[i+1])
			i += 2
			if size == 0 || i+size > len(p) {
				return false
			}
			if key(p[i] & 0x1f) {
				return true
			}
			i += size
		}
	case t == 28: // FU-A
		return len(p) > 1 && p[1]&0x80 != 0 && key(p[1]&0x1f)
	}
	return false
}
