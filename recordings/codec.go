package recordings

import (
	"encoding/binary"
	"errors"

	"github.com/pion/rtp/codecs/vp9"
)

// Codec names as they appear in manifests (lower case, as in sfu.TrackInfo).
const (
	codecVP8  = "vp8"
	codecVP9  = "vp9"
	codecH264 = "h264"
	codecOpus = "opus"
)

// Matroska codec ids.
func matroskaCodecID(codec string) string {
	switch codec {
	case codecVP8:
		return "V_VP8"
	case codecVP9:
		return "V_VP9"
	case codecH264:
		return "V_MPEG4/ISO/AVC"
	case codecOpus:
		return "A_OPUS"
	}
	return ""
}

// opusHead is the CodecPrivate of an Opus track (RFC 7845 section 5.1):
// mapping family 0, no pre-skip (WebRTC Opus has none to announce).
func opusHead(channels int) []byte {
	b := []byte("OpusHead")
	b = append(b, 1, byte(channels))
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, 48000)
	b = binary.LittleEndian.AppendUint16(b, 0)
	return append(b, 0)
}

// vp8Frame reads a VP8 frame header (RFC 6386 section 9.1): whether it is a
// keyframe and, for a keyframe, its size.
func vp8Frame(f []byte) (key bool, w, h int) {
	if len(f) < 1 || f[0]&0x01 != 0 {
		return false, 0, 0
	}
	if len(f) < 10 || f[3] != 0x9d || f[4] != 0x01 || f[5] != 0x2a {
		return true, 0, 0
	}
	w = int(binary.LittleEndian.Uint16(f[6:8]) & 0x3fff)
	h = int(binary.LittleEndian.Uint16(f[8:10]) & 0x3fff)
	return true, w, h
}

// vp9Frame reads a VP9 uncompressed frame header.
func vp9Frame(f []byte) (key bool, w, h int) {
	var hd vp9.Header
	if err := hd.Unmarshal(f); err != nil || hd.ShowExistingFrame || hd.NonKeyFrame {
		return false, 0, 0
	}
	return true, int(hd.Width()), int(hd.Height())
}

// NAL unit types of H.264 we care about.
const (
	nalIDR = 5
	nalSPS = 7
	nalPPS = 8
	nalAUD = 9
)

// splitAVCC splits a frame of 4-byte length-prefixed NAL units. It
// returns nil if the framing is broken.
func splitAVCC(f []byte) [][]byte {
	var out [][]byte
	for len(f) > 0 {
		if len(f) < 4 {
			return nil
		}
		n := binary.BigEndian.Uint32(f)
		f = f[4:]
		if n == 0 || uint64(n) > uint64(len(f)) {
			return nil
		}
		out = append(out, f[:n])
		f = f[n:]
	}
	return out
}

// h264Frame inspects an AVCC frame: whether it holds an IDR slice, and the
// first SPS and PPS it carries.
func h264Frame(f []byte) (idr bool, sps, pps []byte) {
	for _, n := range splitAVCC(f) {
		switch n[0] & 0x1f {
		case nalIDR:
			idr = true
		case nalSPS:
			if sps == nil {
				sps = n
			}
		case nalPPS:
			if pps == nil {
				pps = n
			}
		}
	}
	return idr, sps, pps
}

// avcDecoderConfig builds an AVCDecoderConfigurationRecord (ISO 14496-15
// 5.2.4.1) with one SPS and one PPS and 4-byte NAL lengths.
func avcDecoderConfig(sps, pps []byte) []byte {
	if len(sps) < 4 || len(pps) < 1 || len(sps) > 0xffff || len(pps) > 0xffff {
		return nil
	}
	b := []byte{1, sps[1], sps[2], sps[3], 0xff, 0xe1}
	b = binary.BigEndian.AppendUint16(b, uint16(len(sps)))
	b = append(b, sps...)
	b = append(b, 1)
	b = binary.BigEndian.AppendUint16(b, uint16(len(pps)))
	return append(b, pps...)
}

var errBits = errors.New("bitstream ended early")

// bitReader reads an H.264 RBSP (emulation prevention bytes removed).
type bitReader struct {
	b   []byte
	pos int // in bits
}

func (r *bitReader) u(n int) (uint32, error) {
	if n > 32 || r.pos+n > len(r.b)*8 {
		return 0, errBits
	}
	var v uint32
	for i := 0; i < n; i++ {
		bit := (r.b[r.pos/8] >> (7 - uint(r.pos%8))) & 1
		v = v<<1 | uint32(bit)
		r.pos++
	}
	return v, nil
}

// ue reads an unsigned Exp-Golomb code.
func (r *bitReader) ue() (uint32, error) {
	zeros := 0
	for {
		b, err := r.u(1)
		if err != nil {
			return 0, err
		}
		if b == 1 {
			break
		}
		if zeros++; zeros > 31 {
			return 0, errBits
		}
	}
	v, err := r.u(zeros)
	if err != nil {
		return 0, err
	}
	return (1<<uint(zeros) - 1) + v, nil
}

func (r *bitReader) se() (int32, error) {
	v, err := r.ue()
	if err != nil {
		return 0, err
	}
	if v%2 == 1 {
		return int32((v + 1) / 2), nil
	}
	return -int32(v / 2), nil
}

// unescapeRBSP removes emulation prevention bytes (00 00 03).
func unescapeRBSP(b []byte) []byte {
	out := make([]byte, 0, len(b))
	zeros := 0
	for _, c := range b {
		if zeros >= 2 && c == 3 {
			zeros = 0
			continue
		}
		if c == 0 {
			zeros++
		} else {
			zeros = 0
		}
		out = append(out, c)
	}
	return out
}

// spsSize reads the picture size from an H.264 SPS NAL unit (ITU-T H.264
// 7.3.2.1.1), cropping applied.
func spsSize(nal []byte) (w, h int, err error) {
	if len(nal) < 4 || nal[0]&0x1f != nalSPS {
		return 0, 0, errors.New("not an SPS")
	}
	r := &bitReader{b: unescapeRBSP(nal[1:])}
	profile, _ := r.u(8)
	r.pos += 16                      // constraint flags and level
	if _, err = r.ue(); err != nil { // seq_parameter_set_id
		return 0, 0, err
	}
	chroma := uint32(1)
	switch profile {
	case 100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135:
		if chroma, err = r.ue(); err != nil {
			return 0, 0, err
		}
		if chroma == 3 {
			if _, err = r.u(1); err != nil {
				return 0, 0, err
			}
		}
		for i := 0; i < 2; i++ { // bit depths
			if _, err = r.ue(); err != nil {
				return 0, 0, err
			}
		}
		if _, err = r.u(1); err != nil { // qpprime_y_zero_transform_bypass
			return 0, 0, err
		}
		present, err := r.u(1)
		if err != nil {
			return 0, 0, err
		}
		if present == 1 {
			lists := 8
			if chroma == 3 {
				lists = 12
			}
			for i := 0; i < lists; i++ {
				p, err := r.u(1)
				if err != nil {
					return 0, 0, err
				}
				if p == 1 {
					size := 16
					if i >= 6 {
						size = 64
					}
					if err := skipScalingList(r, size); err != nil {
						return 0, 0, err
					}
				}
			}
		}
	}
	if _, err = r.ue(); err != nil { // log2_max_frame_num_minus4
		return 0, 0, err
	}
	pocType, err := r.ue()
	if err != nil {
		return 0, 0, err
	}
	switch pocType {
	case 0:
		if _, err = r.ue(); err != nil {
			return 0, 0, err
		}
	case 1:
		if _, err = r.u(1); err != nil {
			return 0, 0, err
		}
		if _, err = r.se(); err != nil {
			return 0, 0, err
		}
		if _, err = r.se(); err != nil {
			return 0, 0, err
		}
		n, err := r.ue()
		if err != nil || n > 255 {
			return 0, 0, errBits
		}
		for i := uint32(0); i < n; i++ {
			if _, err = r.se(); err != nil {
				return 0, 0, err
			}
		}
	}
	if _, err = r.ue(); err != nil { // max_num_ref_frames
		return 0, 0, err
	}
	if _, err = r.u(1); err != nil { // gaps_in_frame_num_value_allowed_flag
		return 0, 0, err
	}
	wMbs, err := r.ue()
	if err != nil {
		return 0, 0, err
	}
	hMaps, err := r.ue()
	if err != nil {
		return 0, 0, err
	}
	frameMbsOnly, err := r.u(1)
	if err != nil {
		return 0, 0, err
	}
	if frameMbsOnly == 0 {
		if _, err = r.u(1); err != nil {
			return 0, 0, err
		}
	}
	if _, err = r.u(1); err != nil { // direct_8x8_inference_flag
		return 0, 0, err
	}
	w = int(wMbs+1) * 16
	h = int(2-frameMbsOnly) * int(hMaps+1) * 16
	crop, err := r.u(1)
	if err != nil {
		return 0, 0, err
	}
	if crop == 1 {
		var c [4]uint32
		for i := range c {
			if c[i], err = r.ue(); err != nil {
				return 0, 0, err
			}
		}
		unitX, unitY := 1, int(2-frameMbsOnly)
		switch chroma {
		case 1:
			unitX, unitY = 2, 2*int(2-frameMbsOnly)
		case 2:
			unitX = 2
		}
		w -= unitX * int(c[0]+c[1])
		h -= unitY * int(c[2]+c[3])
	}
	if w <= 0 || h <= 0 || w > 16384 || h > 16384 {
		return 0, 0, errors.New("implausible picture size")
	}
	return w, h, nil
}

func skipScalingList(r *bitReader, size int) error {
	last, next := int32(8), int32(8)
	for j := 0; j < size; j++ {
		if next != 0 {
			d, err := r.se()
			if err != nil {
				return err
			}
			next = (last + d + 256) % 256
		}
		if next != 0 {
			last = next
		}
	}
	return nil
}
