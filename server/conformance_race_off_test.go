//go:build !race

package server_test

// cfRace widens timing slack under the race detector.
const cfRace = false
