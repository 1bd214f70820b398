//go:build linux

package main

const sysRecvmmsg = 243
