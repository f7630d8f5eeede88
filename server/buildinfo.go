package server

import (
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/magpie-im/magpie/internal/buildinfo"
)

// buildInfoGauge is magpie_build_info{version,revision,go} 1: which build
// a scrape came from (the Prometheus convention for build information).
func buildInfoGauge(bi buildinfo.Info) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "magpie_build_info",
		Help: "Build of the running server (main module version, VCS revision, Go version); always 1.",
	}, []string{"version", "revision", "go"})
	g.WithLabelValues(bi.Version, bi.ShortRevision(), bi.Go).Set(1)
	return g
}

// logStart is the first line the server logs: which build is starting.
func logStart(log *slog.Logger, bi buildinfo.Info) {
	log.Info("magpie starting", "version", bi.Version, "revision", bi.ShortRevision(), "vcs_time", bi.Time, "go", bi.Go)
}

// warnDemoExposure logs a warning for each listener that --demo serves on
// more than loopback: the demo users have a published password.
func warnDemoExposure(log *slog.Logger, addrs map[string]string) {
	for _, flag := range []string{"--listen", "--http"} {
		addr := addrs[flag]
		if !isLoopback(addr) {
			log.Warn("--demo listens beyond this machine: the demo users alice, bob and carol have the password \"password\"; bind 127.0.0.1 or drop --demo",
				"flag", flag, "addr", addr)
		}
	}
}

// isLoopback reports whether addr (host:port, or a host) is reachable
// only from this machine: localhost or a loopback IP. An empty host or an
// unspecified address (0.0.0.0, ::) means every interface.
func isLoopback(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
