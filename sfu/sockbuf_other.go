//go:build !linux

package sfu

import "net"

// setSocketBuffers asks for size bytes of receive and send buffer on the
// media socket; what was granted is not known here (0).
func setSocketBuffers(conn net.PacketConn, size int) (rcv, snd int, err error) {
	uc, ok := conn.(*net.UDPConn)
	if !ok {
		return 0, 0, nil
	}
	if err := uc.SetReadBuffer(size); err != nil {
		return 0, 0, err
	}
	return 0, 0, uc.SetWriteBuffer(size)
}
