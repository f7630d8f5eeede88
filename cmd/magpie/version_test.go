package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/magpie-im/magpie/internal/testserver"
)

// TestVersion runs the built binary. In a git clone the revision is
// HEAD's; Go stamps VCS information only where .git is a directory, so a
// git worktree (or an export without git) gets "revision unknown".
func TestVersion(t *testing.T) {
	out, err := exec.Command(testserver.Binary(t), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("magpie version: %v\n%s", err, out)
	}
	s := strings.TrimSpace(string(out))
	if !strings.HasPrefix(s, "magpie ") || !strings.Contains(s, "go1.") || strings.Count(s, "\n") != 0 {
		t.Fatalf("magpie version printed %q", s)
	}
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Logf("no git checkout (%v): revision not checked", err)
		return
	}
	if fi, err := os.Stat(filepath.Join(strings.TrimSpace(string(top)), ".git")); err != nil || !fi.IsDir() {
		t.Logf("a git worktree: Go does not stamp it, revision not checked")
		return
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	if rev := strings.TrimSpace(string(head))[:12]; !strings.Contains(s, "revision "+rev) {
		t.Fatalf("magpie version %q does not name HEAD %s", s, rev)
	}
}
