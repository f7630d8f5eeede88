package server

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// Start-up warns about a short accept queue, and only then.
func TestLogLimits(t *testing.T) {
	for _, tc := range []struct {
		proc string
		err  error
		warn bool
	}{
		{"4096\n", nil, true},
		{"16383", nil, true},
		{"65535\n", nil, false},
		{"", errors.New("no /proc"), false},
		{"garbage", nil, false},
	} {
		var out syncBuffer
		logLimits(slog.New(slog.NewTextHandler(&out, nil)), func(string) ([]byte, error) { return []byte(tc.proc), tc.err })
		got := out.String()
		if warned := strings.Contains(got, "level=WARN") && strings.Contains(got, "somaxconn="+strings.TrimSpace(tc.proc)); warned != tc.warn {
			t.Errorf("somaxconn %q (err %v): warned %v, want %v:\n%s", tc.proc, tc.err, warned, tc.warn, got)
		}
		if !strings.Contains(got, "nofile=") {
			t.Errorf("no open-files line:\n%s", got)
		}
	}
}
