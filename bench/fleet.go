package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// fleet is the coordinator's view of its worker processes.
type fleet struct {
	workers []*workerProc
	start   time.Time
	phase   string
	mu      sync.Mutex
	stop    chan struct{}
	extra   func() string // more progress text (the in-process sender)
}

type workerProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan workerEvent
	mu     sync.Mutex
	last   counters
	exited chan struct{}
}

// startFleet starts one worker process per slice of specs.
func startFleet(exe string, ini workerInit, parts [][]clientSpec) (*fleet, error) {
	f := &fleet{start: time.Now(), stop: make(chan struct{})}
	for _, part := range parts {
		cmd := exec.Command(exe, "bench", "worker")
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			f.kill()
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			f.kill()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			f.kill()
			return nil, err
		}
		w := &workerProc{cmd: cmd, stdin: stdin, events: make(chan workerEvent, 16), exited: make(chan struct{})}
		f.workers = append(f.workers, w)
		go w.readEvents(stdout)
		in := ini
		in.Clients = part
		if err := json.NewEncoder(stdin).Encode(in); err != nil {
			f.kill()
			return nil, err
		}
	}
	go f.progress()
	return f, nil
}

func (w *workerProc) readEvents(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	for sc.Scan() {
		var e workerEvent
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		w.mu.Lock()
		w.last = e.C
		w.mu.Unlock()
		if e.Ev != "progress" {
			w.events <- e
		}
	}
	_ = w.cmd.Wait()
	close(w.exited)
	close(w.events)
}

// do sends cmd to every worker and waits for each one's answer.
func (f *fleet) do(cmd workerCmd, timeout time.Duration) ([]workerEvent, error) {
	f.mu.Lock()
	f.phase = cmd.Op
	f.mu.Unlock()
	for _, w := range f.workers {
		if err := json.NewEncoder(w.stdin).Encode(cmd); err != nil {
			return nil, fmt.Errorf("worker %d: %v", w.cmd.Process.Pid, err)
		}
	}
	deadline := time.After(timeout)
	out := make([]workerEvent, 0, len(f.workers))
	for _, w := range f.workers {
		select {
		case e, ok := <-w.events:
			if !ok {
				return nil, fmt.Errorf("worker %d exited during %s", w.cmd.Process.Pid, cmd.Op)
			}
			if e.Err != "" {
				return nil, fmt.Errorf("worker %d: %s", w.cmd.Process.Pid, e.Err)
			}
			out = append(out, e)
		case <-deadline:
			return nil, fmt.Errorf("workers did not finish %s within %v", cmd.Op, timeout)
		}
	}
	return out, nil
}

// totals sums the latest counters of every worker.
func (f *fleet) totals() counters {
	var c counters
	for _, w := range f.workers {
		w.mu.Lock()
		c.add(w.last)
		w.mu.Unlock()
	}
	return c
}

func (f *fleet) setPhase(p string) {
	f.mu.Lock()
	f.phase = p
	f.mu.Unlock()
}

// progress prints one status line a second to stderr.
func (f *fleet) progress() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		c := f.totals()
		f.mu.Lock()
		phase := f.phase
		f.mu.Unlock()
		extra := ""
		if f.extra != nil {
			extra = " " + f.extra()
		}
		fmt.Fprintf(os.Stderr, "[%6.1fs %-8s] online=%d welcomes=%d fail=%d lost=%d joined=%d sends=%d sent=%d pushes=%d dups=%d acks=%d err=%d caught=%d%s\n",
			time.Since(f.start).Seconds(), phase, c.Online, c.Welcomes, c.ConnFail, c.Disconnects, c.Joined,
			c.Sends, c.SentOK, c.Pushes, c.Dups, c.AckFrames, c.Errors, c.CaughtUp, extra)
	}
}

// results collects and merges every worker's histograms.
func (f *fleet) results(final uint64) (merged struct {
	conn, sent, e2e, catch *hdrhistogram.Histogram
	missing                int64
	maxWelcomeNs           int64
	maxCaughtNs            int64
}, c counters, err error) {
	evs, err := f.do(workerCmd{Op: "result", Final: final}, 60*time.Second)
	if err != nil {
		return merged, c, err
	}
	merged.conn, merged.sent, merged.e2e, merged.catch = newHist(), newHist(), newHist(), newHist()
	for _, e := range evs {
		c.add(e.C)
		if e.Result == nil {
			continue
		}
		merged.conn.Merge(hdrhistogram.Import(e.Result.Conn))
		merged.sent.Merge(hdrhistogram.Import(e.Result.Sent))
		merged.e2e.Merge(hdrhistogram.Import(e.Result.E2E))
		merged.catch.Merge(hdrhistogram.Import(e.Result.Catch))
		merged.missing += e.Result.Missing
		merged.maxWelcomeNs = max(merged.maxWelcomeNs, e.Result.MaxWelcomeNs)
		merged.maxCaughtNs = max(merged.maxCaughtNs, e.Result.MaxCaughtNs)
	}
	return merged, c, nil
}

// quit asks every worker to close its connections and exit, then kills
// (by PID) any that has not exited within 10 s.
func (f *fleet) quit() {
	select {
	case <-f.stop:
		return
	default:
		close(f.stop)
	}
	for _, w := range f.workers {
		_ = json.NewEncoder(w.stdin).Encode(workerCmd{Op: "quit"})
		_ = w.stdin.Close()
	}
	for _, w := range f.workers {
		select {
		case <-w.exited:
		case <-time.After(10 * time.Second):
			_ = w.cmd.Process.Kill()
			<-w.exited
		}
	}
}

func (f *fleet) kill() {
	for _, w := range f.workers {
		if w.cmd.Process != nil {
			_ = w.cmd.Process.Kill()
		}
	}
}
