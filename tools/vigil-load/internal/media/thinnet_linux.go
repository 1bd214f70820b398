//go:build linux && (amd64 || arm64)

package media

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// thinNet is the one UDP socket every thin subscriber of a step shares.
// Each subscriber has its own address, 127.1.x.y, on the socket's port
// (all of 127.0.0.0/8 is this host): the server sees as many peers as
// there are subscribers, and the generator reads all of them with one
// goroutine and one recvmmsg per batch of up to 64 datagrams, told apart
// by their destination address (IP_PKTINFO). A socket and a goroutine per
// subscriber cost more per packet in syscalls and netpoll than the SFU
// spends forwarding it (profiled: about 7 µs against 9).
type thinNet struct {
	fd      int
	port    int
	next    atomic.Uint32
	clients [1 << 16]atomic.Pointer[thin] // by the low 16 bits of the address
	stop    atomic.Bool
	done    chan struct{}
	poll    time.Duration
	// calls and packets count the reads, for the mean batch size.
	calls, packets atomic.Uint64
}

const thinBatch = 256

// newThinNet opens the socket. With poll 0 the reader blocks for each
// datagram: the most precise receive times, but on loopback every wakeup
// of the reader is paid by the sending server (in its send call) as well
// as here. With poll > 0 it reads whatever has arrived, then sleeps poll:
// batches, no wakeups, and up to poll more latency.
func newThinNet(poll time.Duration) (*thinNet, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*thinNet, error) {
		_ = syscall.Close(fd)
		return nil, err
	}
	// A deep receive buffer: a burst the reader has not caught up with
	// must not be the generator's loss (SO_RCVBUFFORCE needs root).
	if syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 64<<20) != nil {
		_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<20)
	}
	if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, syscall.IP_PKTINFO, 1); err != nil {
		return fail(err)
	}
	tv := syscall.NsecToTimeval(int64(200 * time.Millisecond))
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return fail(err)
	}
	// Bound to any address: it must receive on every 127.1.x.y. It only
	// ever sends to the server on 127.0.0.1.
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{}); err != nil {
		return fail(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return fail(err)
	}
	n := &thinNet{fd: fd, port: sa.(*syscall.SockaddrInet4).Port, done: make(chan struct{}), poll: poll}
	go n.run()
	return n, nil
}

// add gives t its address; its datagrams are dropped until activate.
func (n *thinNet) add(t *thin) error {
	i := n.next.Add(1)
	if i >= 1<<16 {
		return errors.New("more than 65535 thin subscribers in one step")
	}
	t.ip = [4]byte{127, 1, byte(i >> 8), byte(i)}
	return nil
}

// activate hands t's datagrams to it from now on: once what the reader
// reads of it (the server's address and ICE credentials) is set.
func (n *thinNet) activate(t *thin) {
	n.clients[uint32(t.ip[2])<<8|uint32(t.ip[3])].Store(t)
}

func (n *thinNet) remove(t *thin) {
	i := uint32(t.ip[2])<<8 | uint32(t.ip[3])
	n.clients[i].CompareAndSwap(t, nil)
}

// send writes b from t's address to the server.
func (n *thinNet) send(from [4]byte, b []byte, to netip.AddrPort) error {
	var oob [syscall.SizeofCmsghdr + syscall.SizeofInet4Pktinfo + 4]byte
	h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = syscall.IPPROTO_IP, syscall.IP_PKTINFO
	h.SetLen(syscall.CmsgLen(syscall.SizeofInet4Pktinfo))
	pi := (*syscall.Inet4Pktinfo)(unsafe.Pointer(&oob[syscall.SizeofCmsghdr]))
	pi.Spec_dst = from
	sa := &syscall.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	return syscall.Sendmsg(n.fd, b, oob[:syscall.CmsgSpace(syscall.SizeofInet4Pktinfo)], sa, 0)
}

// mmsghdr is struct mmsghdr on 64-bit Linux.
type mmsghdr struct {
	hdr syscall.Msghdr
	n   uint32
	_   [4]byte
}

const msgWaitForOne = 0x10000

// run reads every datagram of every subscriber until close.
func (n *thinNet) run() {
	defer close(n.done)
	var (
		bufs [thinBatch][1600]byte
		oobs [thinBatch][64]byte
		iovs [thinBatch]syscall.Iovec
		hdrs [thinBatch]mmsghdr
	)
	for i := range hdrs {
		iovs[i].Base = &bufs[i][0]
		iovs[i].SetLen(len(bufs[i]))
		hdrs[i].hdr.Iov = &iovs[i]
		hdrs[i].hdr.Iovlen = 1
		hdrs[i].hdr.Control = &oobs[i][0]
	}
	sc := &thinScratch{out: make([]byte, 1600)}
	for !n.stop.Load() {
		for i := range hdrs {
			hdrs[i].hdr.SetControllen(len(oobs[i]))
			hdrs[i].hdr.Flags = 0
		}
		flags := uintptr(msgWaitForOne)
		if n.poll > 0 {
			flags = syscall.MSG_DONTWAIT
		}
		r, _, errno := syscall.Syscall6(sysRecvmmsg, uintptr(n.fd), uintptr(unsafe.Pointer(&hdrs[0])), thinBatch, flags, 0, 0)
		if errno != 0 {
			if errno == syscall.EAGAIN || errno == syscall.EINTR {
				if n.poll > 0 {
					time.Sleep(n.poll)
				}
				continue
			}
			return
		}
		n.calls.Add(1)
		n.packets.Add(uint64(r))
		now := time.Now()
		for i := range int(r) {
			dst, ok := pktinfoDst(oobs[i][:hdrs[i].hdr.Controllen])
			if !ok || dst[0] != 127 || dst[1] != 1 {
				continue
			}
			t := n.clients[uint32(dst[2])<<8|uint32(dst[3])].Load()
			if t == nil {
				continue
			}
			t.handle(bufs[i][:hdrs[i].n], sc, now)
		}
		if n.poll > 0 && int(r) < thinBatch {
			time.Sleep(n.poll)
		}
	}
}

// pktinfoDst finds the destination address in an IP_PKTINFO control
// message.
func pktinfoDst(oob []byte) ([4]byte, bool) {
	for len(oob) >= syscall.SizeofCmsghdr {
		l := int(binary.NativeEndian.Uint64(oob[0:8]))
		level := int32(binary.NativeEndian.Uint32(oob[8:12]))
		typ := int32(binary.NativeEndian.Uint32(oob[12:16]))
		if l < syscall.SizeofCmsghdr || l > len(oob) {
			return [4]byte{}, false
		}
		if level == syscall.IPPROTO_IP && typ == syscall.IP_PKTINFO && l >= syscall.SizeofCmsghdr+syscall.SizeofInet4Pktinfo {
			var a [4]byte
			copy(a[:], oob[syscall.SizeofCmsghdr+8:syscall.SizeofCmsghdr+12]) // ipi_addr
			return a, true
		}
		oob = oob[min(len(oob), (l+7)&^7):]
	}
	return [4]byte{}, false
}

// close stops the reader and closes the socket.
func (n *thinNet) close() {
	n.stop.Store(true)
	<-n.done
	_ = syscall.Close(n.fd)
}
