package server_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// SIGTERM (PROTOCOL §12, issue 8 item 4): stop accepting, answer the sends
// already read, close every WebSocket with 1001, flush, exit 0 within
// --shutdown-grace (past it: exit 1).

// fltBurst is a connection that wrote a burst of sends and has not read
// the replies yet.
type fltBurst struct {
	c      *fltConn
	uid    uint64
	to     uint64
	n      int
	sent   []*fltAttempt
	before int // frames received before SIGTERM (see mark)
}

// mark notes how many frames arrived before now.
func (b *fltBurst) mark() { b.before = len(b.c.In) }

// fltStartBurst connects uid and checks that sends work (10 sent); then
// fire writes n sends to `to` back to back without reading, all in the
// ledger.
func fltStartBurst(t *testing.T, srv *testserver.Server, led *fltLedger, uid, to uint64, n int) *fltBurst {
	t.Helper()
	c := fltMustDial(t, srv, fltToken(uid))
	b := &fltBurst{c: c, uid: uid, to: to, n: n}
	for i := range 10 {
		a := b.add(led, i)
		if err := c.write(map[string]any{"type": "send", "cmid": a.cmid, "to": a.to, "body": a.body}); err != nil {
			t.Fatal(err)
		}
	}
	for got := 0; got < 10; {
		f, err := c.next(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch f.str("type") {
		case "sent":
			led.sent(b.sent[f.num("seq")-1], f)
			got++
		case "msg":
		default:
			t.Fatalf("warm-up: %v", f)
		}
	}
	return b
}

func (b *fltBurst) add(led *fltLedger, i int) *fltAttempt {
	a := &fltAttempt{from: b.uid, to: b.to, conv: fltDirect(b.uid, b.to), cmid: fmt.Sprintf("drain-%d", i), body: fmt.Sprintf("drain %d from %d", i, b.uid)}
	led.add(a)
	b.sent = append(b.sent, a)
	return a
}

// fire writes the burst; safe to run beside other bursts' fire.
func (b *fltBurst) fire(t *testing.T, led *fltLedger) {
	for i := 10; i < 10+b.n; i++ {
		a := b.add(led, i)
		if err := b.c.write(map[string]any{"type": "send", "cmid": a.cmid, "to": a.to, "body": a.body}); err != nil {
			t.Error(err)
			return
		}
	}
}

// fireAll fires the bursts at once and returns when all are written.
func fltFireAll(t *testing.T, led *fltLedger, bursts ...*fltBurst) {
	var wg sync.WaitGroup
	for _, b := range bursts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.fire(t, led)
		}()
	}
	wg.Wait()
}

// finish reads every frame up to the close, records the replies in the
// ledger, and returns how many sends got sent and rate_limited, how many
// got no reply before the close, and the close code.
func (b *fltBurst) finish(t *testing.T, led *fltLedger) (sent, limited, unanswered, code, early int) {
	t.Helper()
	byCMID := make(map[string]*fltAttempt)
	for _, a := range b.sent[10:] {
		byCMID[a.cmid] = a
	}
	for i := 0; ; i++ {
		f, err := b.c.next(10 * time.Second)
		if errors.Is(err, fltErrClosed) {
			break
		}
		if i < b.before && f.str("type") != "msg" {
			early++
		}
		if err != nil {
			t.Fatal(err)
		}
		a := byCMID[f.str("cmid")]
		switch {
		case f.str("type") == "msg":
			continue
		case a == nil:
			t.Errorf("unexpected frame before the close: %v", f)
			continue
		case f.str("type") == "sent":
			led.sent(a, f)
			sent++
		case f.str("type") == "error" && f.str("code") == "rate_limited":
			led.setState(a, fltRejected)
			limited++
		default:
			t.Errorf("unexpected reply to %s: %v", a.cmid, f)
		}
		delete(byCMID, a.cmid)
	}
	code, err := b.c.closeCode(time.Second)
	if code == 0 {
		t.Logf("no close frame: %v", err)
	}
	return sent, limited, len(byCMID), code, early
}

func TestFaultSIGTERMDrain(t *testing.T) {
	const grace = 10 * time.Second
	srv := fltStart(t, "", "--send-rate", "0", "--shutdown-grace", grace.String(), "--fsync=true")
	u := make([]uint64, 4)
	for i := range u {
		u[i] = fltRegister(t, srv, fmt.Sprintf("drain%d", i))
	}
	led := newFltLedger(t)
	// Three senders in a ring write a burst each right before SIGTERM
	// (below --max-inflight 1024 of pushes to their peers).
	const burst = 800
	var bursts []*fltBurst
	for i := range 3 {
		bursts = append(bursts, fltStartBurst(t, srv, led, u[i], u[(i+1)%3], burst))
	}
	idle := fltMustDial(t, srv, fltToken(u[3]))
	unauth := fltMustDial(t, srv, "")
	// A handshake in progress: half a request.
	half, err := net.Dial("tcp", srv.WSAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	if _, err := io.WriteString(half, "GET /ws HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	halfDone := make(chan error, 1)
	go func() {
		b, err := io.ReadAll(half) // returns at FIN (nil) or RST
		if len(b) > 0 {
			err = fmt.Errorf("mid-handshake connection got %q", b)
		} else if err != nil && !strings.Contains(err.Error(), "reset") {
			err = fmt.Errorf("mid-handshake connection: %w", err)
		} else {
			err = nil
		}
		halfDone <- err
	}()

	fltFireAll(t, led, bursts...)
	for _, b := range bursts {
		b.mark()
	}
	start := time.Now()
	err = srv.Stop(grace + 10*time.Second)
	took := time.Since(start)
	if err != nil {
		t.Errorf("SIGTERM: want exit 0, got %v after %v\n%s", err, took, srv.Logs())
	} else if took > grace {
		t.Errorf("SIGTERM: exit 0 after %v, over --shutdown-grace %v", took, grace)
	}
	var sent, limited, early int
	for i, b := range bursts {
		s, l, un, code, e := b.finish(t, led)
		sent, limited, early = sent+s, limited+l, early+e
		if un > 0 {
			t.Errorf("sender %d: %d of %d sends in flight at SIGTERM got no reply before the close", i, un, burst)
		}
		if code != 1001 {
			t.Errorf("sender %d: close code %d, want 1001", i, code)
		}
	}
	for name, c := range map[string]*fltConn{"authenticated idle": idle, "unauthenticated": unauth} {
		if code, err := c.closeCode(5 * time.Second); code != 1001 {
			t.Errorf("%s connection: close code %d (%v), want 1001", name, code, err)
		}
	}
	select {
	case err := <-halfDone:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the mid-handshake connection is still open after the exit")
	}
	t.Logf("SIGTERM with %d of %d sends unanswered: exit 0 after %v; %d got sent, %d rate_limited before 1001", 3*burst-early, 3*burst, took.Round(time.Millisecond), sent, limited)
	if early == 3*burst {
		t.Log("every send was answered before SIGTERM: this run did not test the drain of sends in flight")
	}

	// Whatever got sent is stored; nothing answered rate_limited is.
	srv.Restart()
	fltVerify(t, srv, led, map[string]uint64{
		fltDirect(u[0], u[1]): u[0], fltDirect(u[1], u[2]): u[1], fltDirect(u[2], u[0]): u[2],
	})
}

// TestFaultSIGTERMGraceExceeded: a server that cannot drain within
// --shutdown-grace exits 1. A grace of 1ns is over before the drain starts,
// so the outcome does not depend on timing. Exiting mid-drain is then like
// a crash: whatever got sent is still in history after a restart.
func TestFaultSIGTERMGraceExceeded(t *testing.T) {
	srv := fltStart(t, "", "--send-rate", "0", "--shutdown-grace", "1ns")
	a, b := fltRegister(t, srv, "grace0"), fltRegister(t, srv, "grace1")
	led := newFltLedger(t)
	burst := fltStartBurst(t, srv, led, a, b, 300)
	fltFireAll(t, led, burst)
	burst.mark()
	start := time.Now()
	err := srv.Stop(10 * time.Second)
	took := time.Since(start)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("SIGTERM with --shutdown-grace 1ns: want exit 1, got %v after %v\n%s", err, took, srv.Logs())
	}
	if !strings.Contains(srv.Logs(), "grace") {
		t.Errorf("exit 1 without saying the grace was exceeded:\n%s", srv.Logs())
	}
	sent, limited, unanswered, code, early := burst.finish(t, led)
	t.Logf("exit 1 after %v; of 300 sends (%d unanswered at SIGTERM): %d sent, %d rate_limited, %d unanswered; close code %d", took.Round(time.Millisecond), 300-early, sent, limited, unanswered, code)
	srv.Restart()
	fltVerify(t, srv, led, map[string]uint64{fltDirect(a, b): a})
}
