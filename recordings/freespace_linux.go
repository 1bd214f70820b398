package recordings

import (
	"errors"
	"syscall"
)

// freeSpaceOf returns the bytes free to an unprivileged writer on the
// file system holding dir.
func freeSpaceOf(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

func isQuota(err error) bool { return errors.Is(err, syscall.EDQUOT) }
