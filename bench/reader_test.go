package bench

import (
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/magpie-im/magpie/bench/baseline"
	"github.com/magpie-im/magpie/server"
)

// TestReconnectHandsOverReader: the storm sender connects again as soon as
// the server is back, possibly before its reader noticed the old
// connection died. connect must then close the old connection and wait for
// its reader to return, so that the reader state (acks) is never touched
// by two readers at once (a data race -race caught in TestStormSpawned).
// Pushes flow to both connections here, so without the hand-over both
// readers would append and flush acks concurrently.
func TestReconnectHandsOverReader(t *testing.T) {
	signer := server.NewSigner([]byte(strings.Repeat("k", 32)), time.Hour)
	hs := httptest.NewServer(baseline.New(signer, false, 30*time.Second).Handler())
	defer hs.Close()
	u, err := url.Parse("ws" + strings.TrimPrefix(hs.URL, "http") + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(u, 0, 5*time.Second, 32)
	p.ackNow = true // every push acked by its reader at once (no ticker here)
	for uid := uint64(1); uid <= 2; uid++ {
		tok, _ := signer.Mint(uid)
		p.clients = append(p.clients, p.newClient(clientSpec{Idx: int(uid - 1), UID: uid, Token: tok}))
	}
	defer p.close()
	p.reconnect.Store(true) // a reader that was replaced must not reconnect on its own
	a, sender := p.clients[0], p.clients[1]
	for _, c := range p.clients {
		if err := c.connect(); err != nil {
			t.Fatal(err)
		}
	}
	g, err := createGroup(sender, "handover")
	if err != nil {
		t.Fatal(err)
	}
	join := []byte(`{"type":"group_join","rid":"j","group":` + strconv.FormatUint(g, 10) + `}`)
	if _, err := a.request(join, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	sending := make(chan struct{})
	go func() {
		defer close(sending)
		target := `"group":` + strconv.FormatUint(g, 10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if sender.write(sender.appendSend(nil, "h", target)) != nil {
				return
			}
			time.Sleep(200 * time.Microsecond) // pacing only: the baseline drops slow consumers
		}
	}()
	const rounds = 20
	for i := 0; i < rounds; i++ {
		a.mu.Lock()
		prev := a.reader
		a.mu.Unlock()
		if err := a.connect(); err != nil {
			t.Fatal(err)
		}
		if !closed(prev) {
			t.Fatalf("round %d: connect returned while the previous reader still ran", i)
		}
		if _, err := a.request(join, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-sending
	if d := p.lc.disconnects.Load(); d != rounds {
		t.Errorf("disconnects = %d, want %d", d, rounds)
	}
	if on := p.lc.online.Load(); on != 2 {
		t.Errorf("online = %d, want 2", on)
	}
	if p.lc.pushes.Load() == 0 || p.lc.ackFrames.Load() == 0 {
		t.Errorf("no pushes or acks: pushes %d acks %d", p.lc.pushes.Load(), p.lc.ackFrames.Load())
	}
}
