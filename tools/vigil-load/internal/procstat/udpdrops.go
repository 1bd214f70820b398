package procstat

import (
	"bytes"
	"os"
	"strconv"
)

// UDPDrops sums the drops column of /proc/net/udp (IPv4 sockets) for
// the sockets bound to the given local ports: datagrams the kernel
// discarded, mostly because the socket's receive buffer was full.
func UDPDrops(ports map[int]bool) int64 {
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return -1
	}
	return parseUDPDrops(b, ports)
}

func parseUDPDrops(b []byte, ports map[int]bool) int64 {
	var sum int64
	for i, line := range bytes.Split(b, []byte("\n")) {
		f := bytes.Fields(line)
		if i == 0 || len(f) < 13 {
			continue
		}
		_, port, ok := bytes.Cut(f[1], []byte(":"))
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(string(port), 16, 16)
		if err != nil || !ports[int(p)] {
			continue
		}
		d, err := strconv.ParseInt(string(f[len(f)-1]), 10, 64)
		if err == nil {
			sum += d
		}
	}
	return sum
}
