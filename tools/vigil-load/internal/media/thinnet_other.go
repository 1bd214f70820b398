//go:build !linux || !(amd64 || arm64)

package media

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"time"
)

// thinNet needs recvmmsg and IP_PKTINFO: Linux on amd64 or arm64.
type thinNet struct {
	port           int
	calls, packets atomic.Uint64
}

func newThinNet(time.Duration) (*thinNet, error) {
	return nil, errors.New("thin subscribers need Linux on amd64 or arm64")
}

func (n *thinNet) add(*thin) error                            { return errors.New("unsupported") }
func (n *thinNet) activate(*thin)                             {}
func (n *thinNet) remove(*thin)                               {}
func (n *thinNet) send([4]byte, []byte, netip.AddrPort) error { return errors.New("unsupported") }
func (n *thinNet) close()                                     {}
