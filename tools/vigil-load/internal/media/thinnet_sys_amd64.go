//go:build linux

package media

const sysRecvmmsg = 299
