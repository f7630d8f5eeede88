package server_test

// Load benchmarks of PROTOCOL §15 and §16 against the real binary (a
// child process: 10,000 clients and the server would not fit one
// process's 20,000 open files). Clients are raw sockets in this process
// with minimal parsing. Each benchmark runs its scenario once (use
// -benchtime 1x) and reports the server's CPU (utime + stime of the child,
// /proc/PID/stat) per event and the frames each client received. Results
// and the exact commands: docs/BENCHMARKS.md.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
	"github.com/magpie-im/magpie/internal/wstest"
	"github.com/magpie-im/magpie/storage"
)

var (
	benchClients  = flag.Int("presence.clients", 10000, "BenchmarkPresenceChurn: clients (one user each)")
	benchSubs     = flag.Int("presence.subs", 100, "BenchmarkPresenceChurn: users each client subscribes to")
	benchChurn    = flag.Float64("presence.churn", 0.10, "BenchmarkPresenceChurn: fraction of the clients that disconnect per second")
	benchDown     = flag.Duration("presence.down", 1500*time.Millisecond, "BenchmarkPresenceChurn: how long a disconnected client stays away (longer than the grace: each churn is two changes)")
	benchGrace    = flag.Duration("presence.grace", time.Second, "BenchmarkPresenceChurn: --presence-grace of the server")
	benchDuration = flag.Duration("presence.duration", 20*time.Second, "BenchmarkPresenceChurn, BenchmarkTypingGroup: measured time (after a warm-up of half as long)")
	benchMembers  = flag.Int("typing.members", 100, "BenchmarkTypingGroup: group members, all online")
	benchTypeGap  = flag.Duration("typing.every", 2*time.Second, "BenchmarkTypingGroup: each member sends a typing this often")
	benchProfile  = flag.String("presence.profile", "", "BenchmarkPresenceChurn, BenchmarkTypingGroup: write a CPU profile of the server over the measured period to this file")
)

// benchUsers imports n users (no password hashing) and a group of the
// first members of them (0: none) into a new data dir, and returns it.
func benchUsers(b *testing.B, n, members int) (dir string, uids []uint64, gid uint64) {
	dir = b.TempDir()
	st, err := storage.Open(filepath.Join(dir, "db"), storage.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	us := make([]storage.User, n)
	for i := range us {
		us[i] = storage.User{Name: "b" + strconv.Itoa(i), Hash: []byte("x")}
	}
	if uids, err = st.ImportUsers(us); err != nil {
		b.Fatal(err)
	}
	if members > 0 {
		g, err := st.CreateGroup(uids[0], "bench", uids[1:members])
		if err != nil {
			b.Fatal(err)
		}
		gid = g.ID
	}
	return dir, uids, gid
}

// benchConn is one raw client connection.
type benchConn struct {
	c  net.Conn
	wm sync.Mutex
}

var benchSrc atomic.Uint32

// benchDial connects uid, reads the 101 and the welcome, and starts a
// reader that calls onFrame with every later text frame. Source addresses
// rotate over 127.0.0.2-9 so churn does not run out of ports.
func benchDial(addr, tok string, onFrame func(p []byte)) (*benchConn, error) {
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+benchSrc.Add(1)%8))}
	d := net.Dialer{Timeout: 20 * time.Second, LocalAddr: src}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c, "GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", tok)
	rd := bufio.NewReaderSize(c, 16<<10)
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		line, err := rd.ReadSlice('\n')
		if err != nil {
			c.Close()
			return nil, err
		}
		if len(line) <= 2 {
			break
		}
	}
	if _, p, err := wstest.ReadServerFrame(rd); err != nil || !bytes.Contains(p, []byte(`"welcome"`)) {
		c.Close()
		return nil, fmt.Errorf("welcome: %q %v", p, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	bc := &benchConn{c: c}
	go func() {
		for {
			op, p, err := wstest.ReadServerFrame(rd)
			if err != nil || op == 8 {
				return
			}
			onFrame(p)
		}
	}()
	return bc, nil
}

// send writes one masked text frame.
func (bc *benchConn) send(v any) error {
	p, _ := json.Marshal(v)
	bc.wm.Lock()
	defer bc.wm.Unlock()
	_, err := bc.c.Write(wstest.ClientFrame(true, 1, p, true, [4]byte{1, 2, 3, 4}))
	return err
}

// drop closes the connection with a reset (no TIME_WAIT on this side).
func (bc *benchConn) drop() {
	if tc, ok := bc.c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	bc.c.Close()
}

// serverCPU is utime + stime of pid in seconds.
func serverCPU(b *testing.B, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// loadAvg is the first field of /proc/loadavg.
func loadAvg() string {
	raw, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// BenchmarkPresenceChurn: -presence.clients clients, each subscribed to
// the next -presence.subs users (so every user has that many
// subscribers), while -presence.churn of them disconnect every second and
// come back after -presence.down (longer than the grace: each churn is
// an offline and an online change; a reconnect re-subscribes). Reports
// the server's CPU per change and per reconnect and the presence frames
// and items per client per second.
func BenchmarkPresenceChurn(b *testing.B) {
	n, subs := *benchClients, *benchSubs
	dir, uids, _ := benchUsers(b, n, 0)
	srv := fltStartB(b, dir, "--presence-grace", benchGrace.String(), "--heartbeat", "10m", "--fsync=false")
	var frames, items, replies atomic.Int64
	onFrame := func(p []byte) {
		if bytes.Contains(p, []byte(`"type":"presence"`)) {
			if bytes.Contains(p, []byte(`"rid"`)) {
				replies.Add(1)
				return
			}
			frames.Add(1)
			items.Add(int64(bytes.Count(p, []byte(`"uid"`))))
		}
	}
	subOf := func(i int) []uint64 {
		l := make([]uint64, subs)
		for k := range l {
			l[k] = uids[(i+1+k)%n]
		}
		return l
	}
	conns := make([]*benchConn, n)
	var cmu sync.Mutex
	var dialErrs atomic.Int64
	connect := func(i int) {
		c, err := benchDial(srv.WSAddr, fltToken(uids[i]), onFrame)
		if err != nil {
			dialErrs.Add(1)
			return
		}
		_ = c.send(map[string]any{"type": "presence_sub", "rid": "s", "uids": subOf(i)})
		cmu.Lock()
		conns[i] = c
		cmu.Unlock()
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) { defer func() { <-sem; wg.Done() }(); connect(i) }(i)
	}
	wg.Wait()
	if e := dialErrs.Load(); e > 0 {
		b.Fatalf("%d of %d clients did not connect", e, n)
	}
	for replies.Load() < int64(n) {
		time.Sleep(20 * time.Millisecond) // polling a counter of replies
	}
	idle := idleCPU(b, srv.PID())
	// Churn: every 100 ms, a tenth of the per-second fraction drops and
	// comes back after --presence.down.
	stop := make(chan struct{})
	var reconnects atomic.Int64
	var churnWG sync.WaitGroup
	churnWG.Add(1)
	go func() {
		defer churnWG.Done()
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		per := int(float64(n)**benchChurn/10 + 0.5)
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			for k := 0; k < per; k++ {
				i := rand.IntN(n)
				cmu.Lock()
				c := conns[i]
				conns[i] = nil
				cmu.Unlock()
				if c == nil {
					continue // away already
				}
				c.drop()
				churnWG.Add(1)
				time.AfterFunc(*benchDown, func() {
					defer churnWG.Done()
					connect(i)
					reconnects.Add(1)
				})
			}
		}
	}()
	warm := *benchDuration / 2
	time.Sleep(warm) // the scenario's warm-up: churn reaches its steady state
	m0 := fltMetricsB(b, srv)
	cpu0, f0, i0, r0, t0 := serverCPU(b, srv.PID()), frames.Load(), items.Load(), reconnects.Load(), time.Now()
	prof := profileDuring(b, srv)
	time.Sleep(*benchDuration) // the measured period
	prof()
	cpu1, f1, i1, r1, el := serverCPU(b, srv.PID()), frames.Load(), items.Load(), reconnects.Load(), time.Since(t0).Seconds()
	m1 := fltMetricsB(b, srv)
	load := loadAvg()
	close(stop)
	churnWG.Wait()
	cpu := cpu1 - cpu0
	changes := m1["magpie_presence_changes_total"] - m0["magpie_presence_changes_total"]
	marks := m1["magpie_presence_marks_total"] - m0["magpie_presence_marks_total"]
	pushes := m1["magpie_presence_frames_total"] - m0["magpie_presence_frames_total"]
	rc := float64(r1 - r0)
	b.ReportMetric(cpu/el, "server-cores")
	b.ReportMetric(changes/el, "changes/s")
	b.ReportMetric(rc/el, "reconnects/s")
	b.ReportMetric(cpu*1e6/(changes+rc), "server-µs/event")
	b.ReportMetric((cpu-idle*el)*1e6/(changes+rc), "net-µs/event")
	b.ReportMetric(marks/max(changes, 1), "marks/change")
	b.ReportMetric(pushes/el, "server-pushes/s")
	b.ReportMetric(float64(f1-f0)/el/float64(n), "frames/client/s")
	b.ReportMetric(float64(i1-i0)/max(float64(f1-f0), 1), "items/frame")
	b.Logf("clients %d × %d subscriptions, churn %.0f%%/s away %v, grace %v, %v measured: server CPU %.2f s (%.2f cores; %.3f idle before the churn), %.0f changes (%.0f/s), %.0f reconnects, %.0f marks, %.0f pushes (%.0f/s); clients got %d frames with %d items; load average %s",
		n, subs, *benchChurn*100, *benchDown, *benchGrace, *benchDuration, cpu, cpu/el, idle, changes, changes/el, rc, marks, pushes, pushes/el, f1-f0, i1-i0, load)
	for _, c := range conns {
		if c != nil {
			c.drop()
		}
	}
}

// BenchmarkTypingGroup: a group of -typing.members members, all online,
// each typing every -typing.every (spread evenly). Reports the server's
// CPU per typing event (each forwarded to every other member) and the
// typing frames each client receives per second.
func BenchmarkTypingGroup(b *testing.B) {
	n := *benchMembers
	dir, uids, gid := benchUsers(b, n, n)
	srv := fltStartB(b, dir, "--heartbeat", "10m", "--fsync=false", "--receipt-members", strconv.Itoa(max(n, 100)))
	var got atomic.Int64
	onFrame := func(p []byte) {
		if bytes.Contains(p, []byte(`"type":"typing"`)) {
			got.Add(1)
		}
	}
	conns := make([]*benchConn, n)
	for i := range conns {
		c, err := benchDial(srv.WSAddr, fltToken(uids[i]), onFrame)
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	idle := idleCPU(b, srv.PID())
	conv := fmt.Sprintf("g:%d", gid)
	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the members over the interval.
			select {
			case <-time.After(*benchTypeGap * time.Duration(i) / time.Duration(n)):
			case <-stop:
				return
			}
			tk := time.NewTicker(*benchTypeGap)
			defer tk.Stop()
			for {
				if c.send(map[string]any{"type": "typing", "conv": conv}) == nil {
					sent.Add(1)
				}
				select {
				case <-tk.C:
				case <-stop:
					return
				}
			}
		}()
	}
	time.Sleep(*benchDuration / 2) // warm-up
	m0 := fltMetricsB(b, srv)
	cpu0, s0, g0, t0 := serverCPU(b, srv.PID()), sent.Load(), got.Load(), time.Now()
	prof := profileDuring(b, srv)
	time.Sleep(*benchDuration)
	prof()
	cpu1, s1, g1, el := serverCPU(b, srv.PID()), sent.Load(), got.Load(), time.Since(t0).Seconds()
	m1 := fltMetricsB(b, srv)
	load := loadAvg()
	close(stop)
	wg.Wait()
	cpu := cpu1 - cpu0
	events := float64(s1 - s0)
	fwd := m1["magpie_typing_forwarded_total"] - m0["magpie_typing_forwarded_total"]
	b.ReportMetric(cpu/el, "server-cores")
	b.ReportMetric(events/el, "typings/s")
	b.ReportMetric(cpu*1e6/events, "server-µs/typing")
	b.ReportMetric(cpu*1e6/float64(g1-g0), "server-µs/frame")
	b.ReportMetric((cpu-idle*el)*1e6/events, "net-µs/typing")
	b.ReportMetric(float64(g1-g0)/el/float64(n), "frames/client/s")
	b.Logf("%d members, a typing each every %v, %v measured: %d typings (%.0f forwarded), %d frames received, server CPU %.2f s (%.3f cores; %.3f idle before); load average %s",
		n, *benchTypeGap, *benchDuration, s1-s0, fwd, g1-g0, cpu, cpu/el, idle, load)
	for _, c := range conns {
		c.drop()
	}
}

// idleCPU measures the server's CPU (cores) while the clients are
// connected and quiet, for a quarter of the measured time: the part of
// the scenario's CPU that is not its events (timers, the runtime).
func idleCPU(b *testing.B, pid int) float64 {
	d := *benchDuration / 4
	c0, t0 := serverCPU(b, pid), time.Now()
	time.Sleep(d) // the idle period measured
	return (serverCPU(b, pid) - c0) / time.Since(t0).Seconds()
}

// fltStartB starts the server for a benchmark (no race detector in
// benchmark builds), with --pprof when a profile is asked for.
func fltStartB(b *testing.B, dir string, args ...string) *testserver.Server {
	b.Helper()
	if *benchProfile != "" {
		args = append(args, "--pprof")
	}
	return fltStart(b, dir, args...)
}

// profileDuring fetches a CPU profile of the server over the measured
// period into -presence.profile, when set; wait for the returned func.
func profileDuring(b *testing.B, srv *testserver.Server) func() {
	if *benchProfile == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", srv.HTTPURL(), int(benchDuration.Seconds())))
		if err != nil {
			b.Error(err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(*benchProfile)
		if err != nil {
			b.Error(err)
			return
		}
		defer f.Close()
		_, _ = io.Copy(f, resp.Body)
	}()
	return func() { <-done }
}

// fltMetricsB reads every unlabeled series of /metrics.
func fltMetricsB(b *testing.B, srv *testserver.Server) map[string]float64 {
	b.Helper()
	out := map[string]float64{}
	for _, name := range []string{"magpie_presence_changes_total", "magpie_presence_marks_total", "magpie_presence_frames_total", "magpie_typing_forwarded_total"} {
		out[name] = fltMetric(b, srv, name)
	}
	return out
}
