package server

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestShutdownDuringHistory shuts down while clients keep asking for
// history. Workers read Pebble directly, and Pebble panics ("pebble:
// closed") on a read after Close: shutdown must let the offloaded reads
// finish and refuse new ones before closing the store, then exit cleanly.
func TestShutdownDuringHistory(t *testing.T) {
	ts := startServer(t, nil)
	_, tokA := ts.user("alice")
	uidB, _ := ts.user("bob")
	a := login(t, ts, tokA)
	a.send(map[string]any{"type": "send", "cmid": "c1", "to": uidB, "body": "hi"})
	a.nextType("sent")
	req := []byte(fmt.Sprintf(`{"type":"history","conv":"d:1:%d"}`, uidB))

	var wg sync.WaitGroup
	answered := make(chan struct{}, 1)
	for i := 0; i < 4; i++ {
		c, _, err := websocket.DefaultDialer.Dial(ts.url("token="+tokA), nil)
		if err != nil {
			t.Fatal(err)
		}
		// Requests in flight on this connection. Unbounded, the writers
		// queue more replies than the loops work off within the grace on
		// a loaded machine, and the 1001 waits behind them.
		window := make(chan struct{}, 16)
		gone := make(chan struct{})
		wg.Add(2)
		go func() { // reader: until the 1001 (or any error)
			defer wg.Done()
			defer close(gone)
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
				select {
				case <-window:
				default:
				}
				select {
				case answered <- struct{}{}:
				default:
				}
			}
		}()
		go func() { // writer: history requests, 16 in flight, until the close
			defer wg.Done()
			for {
				select {
				case window <- struct{}{}:
				case <-gone:
					return
				}
				if c.WriteMessage(websocket.TextMessage, req) != nil {
					return
				}
			}
		}()
	}
	select {
	case <-answered: // requests are flowing
	case <-time.After(10 * time.Second):
		t.Fatal("no reply to history")
	}
	ts.cancel()
	ts.cancel = nil
	if err := <-ts.done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	wg.Wait()
}
