//go:build linux && (amd64 || arm64)

package media

import (
	"encoding/binary"
	"syscall"
	"testing"
)

func TestPktinfoDst(t *testing.T) {
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofInet4Pktinfo))
	binary.NativeEndian.PutUint64(oob[0:], uint64(syscall.CmsgLen(syscall.SizeofInet4Pktinfo)))
	binary.NativeEndian.PutUint32(oob[8:], syscall.IPPROTO_IP)
	binary.NativeEndian.PutUint32(oob[12:], syscall.IP_PKTINFO)
	copy(oob[syscall.SizeofCmsghdr+4:], []byte{127, 0, 0, 1}) // spec_dst
	copy(oob[syscall.SizeofCmsghdr+8:], []byte{127, 1, 2, 3}) // addr
	dst, ok := pktinfoDst(oob)
	if !ok || dst != [4]byte{127, 1, 2, 3} {
		t.Fatalf("pktinfoDst = %v, %v", dst, ok)
	}
	if _, ok := pktinfoDst(oob[:10]); ok {
		t.Fatal("truncated control message accepted")
	}
}
