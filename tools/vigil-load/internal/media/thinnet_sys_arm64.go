//go:build linux

package media

const sysRecvmmsg = 243
