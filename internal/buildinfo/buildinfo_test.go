package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/magpie-im/magpie", Version: "v0.0.0-20261127093010-df74be6e0f3a+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "df74be6e0f3a1234567890abcdef1234567890ab"},
			{Key: "vcs.time", Value: "2026-11-27T09:30:10Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	i := read(bi, true)
	if i.Version != bi.Main.Version || i.Revision != bi.Settings[0].Value || i.Time != "2026-11-27T09:30:10Z" || !i.Modified || i.Go != "go1.26.8" {
		t.Fatalf("read: %+v", i)
	}
	if got := i.ShortRevision(); got != "df74be6e0f3a+dirty" {
		t.Fatalf("ShortRevision = %q", got)
	}
	want := "magpie v0.0.0-20261127093010-df74be6e0f3a+dirty (revision df74be6e0f3a+dirty, 2026-11-27T09:30:10Z, go1.26.8)"
	if got := i.String(); got != want {
		t.Fatalf("String = %q\nwant     %q", got, want)
	}
}

func TestReadWithoutVCS(t *testing.T) {
	i := read(&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}, true)
	if i.Revision != "" || i.ShortRevision() != "unknown" || !strings.Contains(i.String(), "(devel)") {
		t.Fatalf("%+v %q", i, i.String())
	}
	if i := read(nil, false); i.Version != "unknown" || i.Go == "" {
		t.Fatalf("no build info: %+v", i)
	}
}

// TestGet: a test binary has build information (no VCS stamp).
func TestGet(t *testing.T) {
	if i := Get(); i.Version == "" || i.Go == "" {
		t.Fatalf("Get: %+v", i)
	}
}
