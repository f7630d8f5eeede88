// Package buildinfo says which build of Magpie is running: the main
// module's version and the VCS revision that `go build` stamps into the
// binary (runtime/debug.ReadBuildInfo). `magpie version`, the server's
// start-up log and /metrics (magpie_build_info), and every bench report
// carry it.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// Info describes one build.
type Info struct {
	// Version is the main module's version: a tag or pseudo-version
	// ("v0.0.0-20261127093010-df74be6e0f3a+dirty") when built from a git
	// checkout, "(devel)" when the build had no VCS information, "unknown"
	// without build information at all.
	Version string `json:"version"`
	// Revision is the VCS commit (vcs.revision), "" when not stamped.
	Revision string `json:"revision,omitempty"`
	// Time is the commit time (vcs.time, RFC 3339), "" when not stamped.
	Time string `json:"time,omitempty"`
	// Modified reports uncommitted changes in the checkout (vcs.modified).
	Modified bool `json:"modified,omitempty"`
	// Go is the toolchain that built the binary.
	Go string `json:"go"`
}

var (
	once sync.Once
	info Info
)

// Get returns the running binary's build information.
func Get() Info {
	once.Do(func() { info = read(debug.ReadBuildInfo()) })
	return info
}

func read(bi *debug.BuildInfo, ok bool) Info {
	i := Info{Version: "unknown", Go: runtime.Version()}
	if !ok || bi == nil {
		return i
	}
	if bi.GoVersion != "" {
		i.Go = bi.GoVersion
	}
	if bi.Main.Version != "" {
		i.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.time":
			i.Time = s.Value
		case "vcs.modified":
			i.Modified = s.Value == "true"
		}
	}
	return i
}

// ShortRevision is the first 12 hex digits of Revision, with "+dirty" when
// the checkout had uncommitted changes; "unknown" when not stamped.
func (i Info) ShortRevision() string {
	r := i.Revision
	if r == "" {
		return "unknown"
	}
	if len(r) > 12 {
		r = r[:12]
	}
	if i.Modified {
		r += "+dirty"
	}
	return r
}

// String is the one-line form: "magpie VERSION (revision REV, TIME, GO)".
func (i Info) String() string {
	s := "magpie " + i.Version + " (revision " + i.ShortRevision()
	if i.Time != "" {
		s += ", " + i.Time
	}
	return s + ", " + i.Go + ")"
}
