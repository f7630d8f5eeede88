package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// probe reads the server's resources: RSS and CPU time from /proc/PID
// (when the server is local and its PID known) and Go heap and counters
// from its /metrics.
type probe struct {
	pid     int
	httpURL string // http://host:port, for /metrics and /healthz
}

// clkTck is USER_HZ, 100 on every Linux the harness targets.
const clkTck = 100

// cpuSeconds is utime + stime of the server from /proc/PID/stat.
func (p *probe) cpuSeconds() (float64, bool) {
	if p.pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return 0, false
	}
	// Fields after the ")" that ends the command name: state is field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14
	st, _ := strconv.ParseFloat(f[12], 64) // field 15
	return (ut + st) / clkTck, true
}

// rssBytes is VmRSS from /proc/PID/status.
func (p *probe) rssBytes() (int64, bool) {
	if p.pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024, true
			}
		}
	}
	return 0, false
}

// scrape fetches /metrics and calls each for every sample line.
func (p *probe) scrape(each func(line string)) {
	if p.httpURL == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.httpURL+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); line != "" && line[0] != '#' {
			each(line)
		}
	}
}

// metrics fetches /metrics and returns the unlabelled samples.
func (p *probe) metrics() map[string]float64 {
	out := map[string]float64{}
	p.scrape(func(line string) {
		f := strings.Fields(line)
		if len(f) != 2 {
			return
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	})
	return out
}

// buildInfo returns the labels of the server's magpie_build_info gauge,
// nil when /metrics has none.
func (p *probe) buildInfo() map[string]string {
	var out map[string]string
	p.scrape(func(line string) {
		rest, ok := strings.CutPrefix(line, "magpie_build_info{")
		if !ok {
			return
		}
		labels, _, _ := strings.Cut(rest, "}")
		out = map[string]string{}
		for _, kv := range strings.Split(labels, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				if uq, err := strconv.Unquote(v); err == nil {
					out[k] = uq
				}
			}
		}
	})
	return out
}

// snapshot is the server's state at one moment.
type snapshot struct {
	at      time.Time
	cpu     float64
	cpuOK   bool
	rss     int64
	rssOK   bool
	heap    float64 // go_memstats_heap_inuse_bytes; -1 unknown
	acks    float64 // magpie_acks_total; -1 unknown
	pushes  float64 // magpie_pushes_total; -1 unknown
	resends float64
	stored  float64
	nextGC  float64 // go_memstats_next_gc_bytes; -1 unknown
	// Over minSnap's window: how far the samples spread (max − min) and
	// the largest GC goal seen (-1 unknown).
	rssSpread  int64
	heapSpread float64
	nextGCMax  float64
	// Sums and counts of Magpie's commit and fsync latency histograms.
	commitSum, commitN, fsyncSum, fsyncN float64
}

// minSnap samples the server every 200 ms for d and returns the last
// sample with rss and heap replaced by their minimum: memory between two
// GC cycles includes garbage, the minimum is closest to what is live.
func (p *probe) minSnap(d time.Duration) snapshot {
	end := time.Now().Add(d)
	best := p.snap()
	rssMax, heapMax, gcMax := best.rss, best.heap, best.nextGC
	for time.Now().Before(end) {
		time.Sleep(200 * time.Millisecond)
		s := p.snap()
		rssMax, heapMax, gcMax = max(rssMax, s.rss), max(heapMax, s.heap), max(gcMax, s.nextGC)
		if best.rssOK && s.rssOK {
			s.rss = min(s.rss, best.rss)
		}
		if best.heap >= 0 && s.heap >= 0 {
			s.heap = min(s.heap, best.heap)
		}
		best = s
	}
	best.rssSpread, best.heapSpread, best.nextGCMax = rssMax-best.rss, heapMax-best.heap, gcMax
	return best
}

// forceGC makes the server collect garbage through net/http/pprof
// (/debug/pprof/heap?gc=1, served with --pprof); false without it.
func (p *probe) forceGC() bool {
	resp, err := httpClient.Get(p.httpURL + "/debug/pprof/heap?gc=1")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

func (p *probe) snap() snapshot {
	s := snapshot{at: time.Now(), heap: -1, acks: -1, pushes: -1, resends: -1, stored: -1, nextGC: -1}
	s.cpu, s.cpuOK = p.cpuSeconds()
	s.rss, s.rssOK = p.rssBytes()
	m := p.metrics()
	get := func(k string) float64 {
		if v, ok := m[k]; ok {
			return v
		}
		return -1
	}
	s.heap = get("go_memstats_heap_inuse_bytes")
	s.acks = get("magpie_acks_total")
	s.pushes = get("magpie_pushes_total")
	s.resends = get("magpie_resends_total")
	s.stored = get("magpie_messages_stored_total")
	s.nextGC = get("go_memstats_next_gc_bytes")
	s.commitSum, s.commitN = get("magpie_commit_seconds_sum"), get("magpie_commit_seconds_count")
	s.fsyncSum, s.fsyncN = get("magpie_fsync_seconds_sum"), get("magpie_fsync_seconds_count")
	if !s.cpuOK {
		if v, ok := m["process_cpu_seconds_total"]; ok {
			s.cpu, s.cpuOK = v, true
		}
	}
	if !s.rssOK {
		if v, ok := m["process_resident_memory_bytes"]; ok {
			s.rss, s.rssOK = int64(v), true
		}
	}
	return s
}

// findListenerPID returns the PID of the local process listening on TCP
// port, by matching the socket inode of /proc/net/tcp{,6} against the
// file descriptors of every process this user may inspect.
func findListenerPID(port int) int {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" { // LISTEN
				continue
			}
			i := strings.LastIndexByte(fs[1], ':')
			if pp, err := strconv.ParseInt(fs[1][i+1:], 16, 32); err == nil && int(pp) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, d := range procs {
		fds, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(d, fd.Name())); err == nil && inodes[l] {
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
				return pid
			}
		}
	}
	return 0
}

// spawned is a `magpie serve` the harness started and owns.
type spawned struct {
	exe, data, listen, http string
	args                    []string
	held                    *os.File // --hold-listener: the WebSocket socket, descriptor 3 of every server
	cmd                     *exec.Cmd
	done                    chan struct{}
	log                     *os.File
}

// start runs the server and waits until /healthz answers 200.
func (s *spawned) start() error {
	// Something else answering on the address would pass for our server.
	if c, err := net.DialTimeout("tcp", s.http, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("something already listens on %s; stop it or choose another --http", s.http)
	}
	argv := []string{"serve", "--data", s.data, "--listen", s.listen, "--http", s.http}
	if s.held != nil {
		argv = []string{"serve", "--data", s.data, "--listen-fd", "3", "--http", s.http}
	}
	cmd := exec.Command(s.exe, append(argv, s.args...)...)
	if s.held != nil {
		cmd.ExtraFiles = []*os.File{s.held}
	}
	if s.log == nil {
		f, err := os.OpenFile(filepath.Join(s.data, "serve.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		s.log = f
	}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("magpie serve exited at start; see %s", s.log.Name())
		default:
		}
		resp, err := http.Get("http://" + s.http + "/healthz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond) // polling another process: no event to wait on
	}
	return fmt.Errorf("magpie serve not healthy within 60s; see %s", s.log.Name())
}

func (s *spawned) pid() int { return s.cmd.Process.Pid }

// stop signals the server (SIGKILL or SIGTERM) and waits for it to exit.
func (s *spawned) stop(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}
