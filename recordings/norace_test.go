//go:build !race

package recordings_test

const raceEnabled = false
