package sfu

import (
	"net"
	"syscall"
)

// setSocketBuffers asks the kernel for size bytes of receive and send
// buffer on the media socket and returns what it granted (as the kernel
// reports it: twice the usable size, for its bookkeeping). The plain
// request is capped by net.core.rmem_max and wmem_max; when that leaves
// less than asked, the forcing option is tried, which only a process
// with CAP_NET_ADMIN may use.
func setSocketBuffers(conn net.PacketConn, size int) (rcv, snd int, err error) {
	uc, ok := conn.(*net.UDPConn)
	if !ok {
		return 0, 0, nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	cerr := raw.Control(func(fd uintptr) {
		set := func(opt, force int) int {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, size)
			got, _ := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt)
			if got < size && syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, force, size) == nil {
				got, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt)
			}
			return got
		}
		rcv = set(syscall.SO_RCVBUF, syscall.SO_RCVBUFFORCE)
		snd = set(syscall.SO_SNDBUF, syscall.SO_SNDBUFFORCE)
	})
	return rcv, snd, cerr
}
