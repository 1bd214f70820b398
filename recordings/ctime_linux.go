package recordings

import (
	"io/fs"
	"syscall"
	"time"
)

// changeTime is a file's inode change time, which no one can set back:
// a file rewritten with its modification time restored still shows.
func changeTime(fi fs.FileInfo) time.Time {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	}
	return time.Time{}
}
