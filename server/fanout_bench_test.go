package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/magpie-im/magpie/storage"
)

// BenchmarkFanout5000 measures one group message pushed to 5,000 online
// connections that ack every push (cumulative acks, as real clients do).
// b.N messages are sent; the clock stops when every client has received
// every message. Clients live in this process (raw sockets, minimal
// parsing), so ns/delivery is an upper bound on the server's cost.
func BenchmarkFanout5000(b *testing.B) { benchFanout(b, 5000) }

func benchFanout(b *testing.B, members int) {
	dir := b.TempDir()
	st, err := storage.Open(filepath.Join(dir, "db"), storage.Options{})
	if err != nil {
		b.Fatal(err)
	}
	us := make([]storage.User, members+1)
	for i := range us {
		us[i] = storage.User{Name: "u" + strconv.Itoa(i), Hash: []byte("x")}
	}
	uids, err := st.ImportUsers(us)
	if err != nil {
		b.Fatal(err)
	}
	st.Close()
	ts := startServer(b, func(c *Config) {
		c.Data = dir
		c.MaxInflight = 1 << 16
		c.WorkQueue = 1 << 16
	})
	sender := login(b, ts, mustMint(ts, uids[0]))
	sender.send(map[string]any{"type": "group_create", "rid": "g", "name": "bench", "members": uids[1:]})
	g := sender.nextType("group")
	gid := num(g["group"])
	conv := []byte(fmt.Sprintf(`"conv":"g:%d"`, gid))

	var received atomic.Int64
	var wg sync.WaitGroup
	conns := make([]net.Conn, 0, members)
	for _, uid := range uids[1:] {
		c, err := net.Dial("tcp", ts.ws)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", mustMint(ts, uid))
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			rd := bufio.NewReaderSize(c, 16<<10)
			for { // skip the 101 response
				line, err := rd.ReadSlice('\n')
				if err != nil {
					return
				}
				if len(line) <= 2 {
					break
				}
			}
			var ack []byte
			hdr := make([]byte, 10)
			for {
				if _, err := io.ReadFull(rd, hdr[:2]); err != nil {
					return
				}
				n := int(hdr[1] & 0x7F)
				if n == 126 {
					if _, err := io.ReadFull(rd, hdr[2:4]); err != nil {
						return
					}
					n = int(binary.BigEndian.Uint16(hdr[2:4]))
				}
				p, err := rd.Peek(n)
				if err != nil {
					return
				}
				if bytes.HasPrefix(p, []byte(`{"type":"msg"`)) && bytes.Contains(p, conv) {
					received.Add(1)
					i := bytes.Index(p, []byte(`"seq":`)) + 6
					j := i
					for p[j] >= '0' && p[j] <= '9' {
						j++
					}
					// Masked ack frame (zero mask key).
					body := fmt.Appendf(nil, `{"type":"ack","conv":"g:%d","seq":%s}`, gid, p[i:j])
					ack = append(ack[:0], 0x81, 0x80|byte(len(body)), 0, 0, 0, 0)
					ack = append(ack, body...)
					if _, err := c.Write(ack); err != nil {
						return
					}
				}
				rd.Discard(n)
			}
		}(c)
	}
	// Wait until everyone is online: a warm-up message reaches them all
	// (clients still connecting miss it; then try again).
	for i := 0; ; i++ {
		received.Store(0)
		sender.send(map[string]any{"type": "send", "cmid": "warm" + strconv.Itoa(i), "group": gid, "body": "w"})
		deadline := time.Now().Add(2 * time.Second)
		for received.Load() < int64(members) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // the clients signal by counter
		}
		if received.Load() >= int64(members) {
			break
		}
		if i > 30 {
			b.Fatalf("clients not online: %d of %d", received.Load(), members)
		}
	}
	received.Store(0)
	b.ResetTimer()
	body := "fan-out benchmark message body of a typical chat length!"
	for i := 0; i < b.N; i++ {
		sender.send(map[string]any{"type": "send", "cmid": "m" + strconv.Itoa(i), "group": gid, "body": body})
	}
	deadline := time.Now().Add(5 * time.Minute)
	want := int64(b.N) * int64(members)
	for received.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d deliveries", received.Load(), want)
		}
		time.Sleep(100 * time.Microsecond) // the clients signal by counter; polling it is the wait
	}
	b.StopTimer()
	el := b.Elapsed()
	b.ReportMetric(float64(want)/el.Seconds(), "deliveries/s")
	b.ReportMetric(float64(el.Nanoseconds())/float64(want), "ns/delivery")
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
}

func mustMint(ts *testServer, uid uint64) string {
	tok, _ := ts.signer.Mint(uid)
	return tok
}
