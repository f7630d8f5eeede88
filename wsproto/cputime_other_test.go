//go:build !linux

package wsproto

import "time"

func threadCPU() (time.Duration, bool) { return 0, false }
