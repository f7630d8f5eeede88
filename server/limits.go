package server

import (
	"log/slog"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// minBacklog is the accept-queue length below which start-up warns. gnet
// listens with net.core.somaxconn; when more clients than that reconnect
// at once (a restart with tens of thousands online), the kernel drops the
// SYNs that do not fit and the clients retry them after TCP's 1 s timeout:
// measured with 19,000 clients reconnecting, dial → welcome took p50 0.95 s
// at 4,096 and 0.67 s at 65,535 (docs/bench/datascale.md).
const minBacklog = 16384

// logLimits logs what bounds the connections this process can hold: the
// open-files limit (one descriptor per connection) and the accept queue
// (net.core.somaxconn), with a warning when the queue is short for a
// reconnect storm. readFile reads /proc (tests replace it).
func logLimits(log *slog.Logger, readFile func(string) ([]byte, error)) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil {
		log.Info("open files limit bounds the connections", "nofile", rl.Cur, "connections_at_most", max(int64(rl.Cur)-100, 0))
	}
	b, err := readFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return // not Linux, or no /proc: nothing to say
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return
	}
	if n < minBacklog {
		log.Warn("the accept queue is short for a reconnect storm: SYNs beyond it are dropped and retried after 1 s; raise it with sysctl net.core.somaxconn=65535",
			"somaxconn", n, "recommended_at_least", minBacklog)
	}
}
