//go:build !linux

package recordings

import "errors"

// freeSpaceOf is not implemented here: the min_free_disk guard is off
// (New says so), and only write errors stop a recording on a full disk.
func freeSpaceOf(string) (uint64, error) {
	return 0, errors.New("free disk space is not known on this platform")
}

func isQuota(error) bool { return false }
