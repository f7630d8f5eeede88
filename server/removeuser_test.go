package server

import (
	"errors"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/magpie-im/magpie/storage"
	"github.com/magpie-im/magpie/wheel"
)

// resetConn is a gnet.Conn whose writes fail once reset is set, closing
// the connection inside the write as gnet does (OnClose runs before Write
// returns). Methods the test does not need are left to the nil embedded
// interface.
type resetConn struct {
	gnet.Conn
	h      *handler
	ctx    any
	reset  bool
	frames int
}

var errReset = errors.New("connection reset by peer")

func (f *resetConn) Context() any          { return f.ctx }
func (f *resetConn) SetContext(v any)      { f.ctx = v }
func (f *resetConn) OutboundBuffered() int { return 0 }
func (f *resetConn) Close() error          { return nil }
func (f *resetConn) Write(b []byte) (int, error) {
	if f.reset {
		f.h.OnClose(f, errReset)
		return 0, errReset
	}
	f.frames++
	return len(b), nil
}
func (f *resetConn) Writev(bs [][]byte) (int, error) {
	if f.reset {
		f.h.OnClose(f, errReset)
		return 0, errReset
	}
	f.frames += len(bs)
	return 0, nil
}

// addFakeConn puts an open connection of uid over gc on lp and registers
// it in the sessions index, as authentication does.
func addFakeConn(lp *loop, gc gnet.Conn, uid uint64) *conn {
	w := lp.srv.wheel
	c := &conn{gc: gc, lp: lp, state: stOpen, uid: uid, idx: int32(len(lp.conns))}
	c.idle.Init(w, func() {})
	c.retx.Init(w, func() {})
	gc.SetContext(c)
	lp.conns = append(lp.conns, c)
	lp.srv.online(c)
	return c
}

// TestCloseDuringRecipientLoop: a write that fails while a loop runs a
// fan-out entry (here the 4008 close frame of a full window) runs OnClose,
// hence the removal from the sessions index, in the middle of the run. The
// run must go on over the other recipients, not skip one or touch the
// closed one again.
func TestCloseDuringRecipientLoop(t *testing.T) {
	w := wheel.New(wheel.Options{})
	defer w.Stop()
	s := &Server{wheel: w, m: newMetrics(func() float64 { return 0 })}
	s.sess.init()
	s.cfg.MaxInflight, s.cfg.AckTimeout = 1, 5*time.Second
	h := &handler{srv: s}
	lp := &loop{srv: s}
	const uid = 7
	var fakes []*resetConn
	for i := 0; i < 3; i++ {
		f := &resetConn{h: h}
		addFakeConn(lp, f, uid)
		fakes = append(fakes, f)
	}
	conns := s.sess.lookup(uid)
	first := conns[0]
	first.push(&pushMsg{frame: []byte("m0"), conv: "d:1:7", seq: 1})
	lp.flush()
	fakes[0].reset = true // its window is full: the next push closes 4008

	b := &batch{
		sends: []*storage.Send{{From: 1, Recipients: []uint64{uid}, Msg: storage.Message{Conv: "d:1:7", Seq: 2}}},
		msgs:  []*pushMsg{{frame: []byte("m1"), conv: "d:1:7", seq: 2}}}
	e := entry{kind: entPush, b: b}
	for _, c := range conns {
		e.items = append(e.items, item{c: c, arg: 0})
	}
	lp.turnConns = drainConns
	lp.runPush(&e, drainItems)
	lp.flush()

	if first.state != stClosed {
		t.Fatalf("first connection: state %d, want closed", first.state)
	}
	for i, f := range fakes[1:] {
		if f.frames != 1 {
			t.Errorf("connection %d got %d frames, want the push", i+1, f.frames)
		}
	}
	if n := len(s.sess.lookup(uid)); n != 2 {
		t.Errorf("%d connections left for the uid, want 2", n)
	}
}
