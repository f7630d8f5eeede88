//go:build race

package server

// raceEnabled widens the timing slack of in-package tests under the race
// detector.
const raceEnabled = true
