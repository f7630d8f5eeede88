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

	"github.com/panjf2000/gnet/v2"

	"github.com/magpie-im/magpie/storage"
	"github.com/magpie-im/magpie/wheel"
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

// nopConn is a gnet.Conn whose writes succeed and go nowhere.
type nopConn struct {
	gnet.Conn
	ctx any
}

func (f *nopConn) Context() any                    { return f.ctx }
func (f *nopConn) SetContext(v any)                { f.ctx = v }
func (f *nopConn) OutboundBuffered() int           { return 0 }
func (f *nopConn) Write(b []byte) (int, error)     { return len(b), nil }
func (f *nopConn) Writev(bs [][]byte) (int, error) { return 0, nil }

// BenchmarkRoutePush1000 is the server's own work per message for a group
// of 1,000 online connections on one loop, without the network: the
// router resolves the recipients and builds the loop's entry, the loop
// pushes to every connection, writes (to a no-op conn) and takes each
// connection's ack. It reports allocations per message: a message costs
// a few (its batch, frame, entry), not one per recipient.
func BenchmarkRoutePush1000(b *testing.B) {
	const n = 1000
	w := wheel.New(wheel.Options{})
	defer w.Stop()
	s := &Server{wheel: w, m: newMetrics(func() float64 { return 0 })}
	s.sess.init()
	s.cfg.MaxInflight, s.cfg.AckTimeout, s.cfg.Inbox = 1024, time.Hour, 1<<20
	lp := &loop{srv: s, turnConns: 1 << 20}
	s.loops.Store(&[]*loop{lp})
	var conns []*conn
	uids := make([]uint64, n)
	for i := range uids {
		uids[i] = uint64(i + 2)
		conns = append(conns, addFakeConn(lp, &nopConn{}, uids[i]))
	}
	defer func() {
		for _, c := range conns {
			c.retx.Stop()
		}
	}()
	rt := &router{limit: s.cfg.Inbox}
	m := storage.Message{Conv: "g:1", From: 1, Kind: "text", Body: "hello", CMID: "c"}
	ack := request{has: hasConv | hasSeq, conv: []byte("g:1")}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.Seq = uint64(i + 1)
		send := &storage.Send{From: 1, Recipients: uids, Msg: m}
		bt := &batch{sends: []*storage.Send{send}, msgs: []*pushMsg{{frame: encodeMsgFrame(&m), conv: m.Conv, seq: m.Seq}}}
		rt.routeBatch(s, bt)
		e := rt.open[0].entry()
		rt.recycle(0)
		for e.next < len(e.items) {
			lp.runPush(&e, 1<<30)
		}
		lp.flush()
		lp.release(&e)
		ack.seq = m.Seq
		for _, c := range conns {
			c.ack(&ack)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
}
