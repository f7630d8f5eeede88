package storage

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// TestCommitFailure injects WAL write errors: the batch's sends are
// answered with Internal (nothing reported as stored), the store refuses
// further writes, and what was committed before is intact.
func TestCommitFailure(t *testing.T) { forCaches(t, testCommitFailure) }

func testCommitFailure(t *testing.T) {
	for _, tc := range []struct {
		fsync, barrier bool
	}{{true, false}, {false, false}, {true, true}} {
		fsync, barrier := tc.fsync, tc.barrier
		t.Run(fmt.Sprintf("fsync=%v,barrier=%v", fsync, barrier), func(t *testing.T) {
			failing, fs := walFailFS()
			dir := t.TempDir()
			s := openT(t, dir, Options{Fsync: fsync, fs: fs})
			a, b := s.user("a"), s.user("b")
			ok := s.sendOK(a, "ok", b, 0, "stored")

			failing.Store(true)
			if barrier {
				// The first failing commit is a barrier write.
				_, err := s.CreateUser("lost", nil)
				wantCode(t, "CreateUser during failure", err, Internal)
			}
			m := s.send(&Send{From: a, CMID: "lost", To: b, Body: "not stored"})
			if codeOf(errOrNil(m.Err)) != Internal || m.Dup || m.Msg.Seq != 0 || m.Recipients != nil {
				t.Fatalf("send during failure: %+v", m)
			}
			if st := s.Stats(); st.CommitErrors != 1 || st.Rejected != 1 {
				t.Fatalf("stats %+v", st)
			}
			failing.Store(false)
			// Pebble's commit pipeline is unusable after a failed commit:
			// every write is refused, reads still work.
			m = s.send(&Send{From: a, CMID: "after", To: b, Body: "x"})
			wantCode(t, "send after failure", errOrNil(m.Err), Internal)
			_, err := s.CreateUser("c", nil)
			wantCode(t, "CreateUser after failure", err, Internal)
			_, err = s.JoinGroup(a, 1)
			wantCode(t, "JoinGroup after failure", err, Internal)
			_, _, _, err = s.MarkRead(b, "d:1:2", 1)
			wantCode(t, "MarkRead after failure", err, Internal)
			if got := s.all(b, "d:1:2"); len(got) != 1 || got[0] != ok {
				t.Fatalf("history after failure %+v", got)
			}
			if err := s.Close(); err != errBroken {
				t.Fatalf("Close: %v", err)
			}
			// The broken DB still holds its lock: open a copy.
			cp := t.TempDir()
			copyDir(t, dir, cp)
			s2 := openT(t, cp, Options{})
			if got := s2.all(b, "d:1:2"); len(got) != 1 || got[0] != ok {
				t.Fatalf("after reopen %+v", got)
			}
			if m := s2.sendOK(a, "lost", b, 0, "retried"); m.Seq != 2 {
				t.Fatalf("retry after reopen %+v", m)
			}
			if _, ok := s2.UserByName("lost"); ok {
				t.Fatal("the user of the failed commit exists")
			}
		})
	}
}

// walFailFS is the OS filesystem whose WAL writes and syncs fail while
// failing is set.
func walFailFS() (failing *atomic.Bool, fs vfs.FS) {
	failing = new(atomic.Bool)
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failing.Load() && strings.HasSuffix(op.Path, ".log") &&
			(op.Kind == errorfs.OpFileWrite || op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData) {
			return errorfs.ErrInjected
		}
		return nil
	})
	return failing, errorfs.Wrap(vfs.Default, inj)
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() || e.Name() == "LOCK" {
			continue
		}
		src, err := os.Open(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		dst, err := os.Create(filepath.Join(to, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		src.Close()
		if err := dst.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
