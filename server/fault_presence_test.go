package server_test

import (
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// fltMetric reads one unlabeled series from the server's /metrics.
func fltMetric(t testing.TB, srv *testserver.Server, name string) float64 {
	t.Helper()
	v, err := testserver.Metric(srv.HTTPURL(), name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// fltPresence returns uid's item of a presence frame.
func fltPresence(f fltFrame, uid uint64) (online bool, lastSeen int64, ok bool) {
	list, _ := f["items"].([]any)
	for _, x := range list {
		it := fltFrame(x.(map[string]any))
		if it.num("uid") == uid {
			o, _ := it["online"].(bool)
			return o, int64(it.num("last_seen")), true
		}
	}
	return false, 0, false
}

// The documented crash behaviour of last_seen (docs/PROTOCOL.md): after
// kill -9, a user online at the crash reads as last seen at the run's
// last checkpoint, and a last_seen checkpointed before the crash stays.
func TestPresenceLastSeenAfterCrash(t *testing.T) {
	dir := t.TempDir()
	srv := fltStart(t, dir, "--presence-checkpoint", "100ms", "--presence-grace", "50ms", "--fsync=false")
	a := fltRegister(t, srv, "ka")
	b := fltRegister(t, srv, "kb")
	c := fltRegister(t, srv, "kc")
	ca := fltMustDial(t, srv, fltToken(a))
	cc := fltMustDial(t, srv, fltToken(c))
	if _, err := ca.request(map[string]any{"type": "presence_sub", "rid": "s", "uids": []uint64{c}}); err != nil {
		t.Fatal(err)
	}
	cc.c.Close()
	var cSeen int64
	for cSeen == 0 {
		f, err := ca.next(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if o, ls, ok := fltPresence(f, c); ok && !o && f["rid"] == nil {
			cSeen = ls
		}
	}
	fltMustDial(t, srv, fltToken(b))
	connected := time.Now().UnixMilli()
	// Two checkpoints after b came online (and c went offline): one of
	// them started after both.
	ck := fltMetric(t, srv, "magpie_presence_checkpoints_total")
	for fltMetric(t, srv, "magpie_presence_checkpoints_total") < ck+2 {
		time.Sleep(20 * time.Millisecond) // polling a counter: no event to await
	}
	killed := time.Now().UnixMilli()
	srv.Kill()
	srv.Restart()
	ca = fltMustDial(t, srv, fltToken(a))
	f, err := ca.request(map[string]any{"type": "presence_sub", "rid": "s", "uids": []uint64{b, c}})
	if err != nil {
		t.Fatal(err)
	}
	if o, ls, _ := fltPresence(f, b); o || ls < connected || ls > killed {
		t.Errorf("b (online at the crash): online %v last_seen %d, want offline in [%d, %d] (a checkpoint of the crashed run)", o, ls, connected, killed)
	}
	if o, ls, _ := fltPresence(f, c); o || ls != cSeen {
		t.Errorf("c: online %v last_seen %d, want offline %d", o, ls, cSeen)
	}
}
