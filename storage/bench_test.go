package storage

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time so far: benchmarks report
// CPU per message next to wall-clock rates, which a shared machine skews.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchMemTable() uint64 {
	v, _ := strconv.ParseUint(os.Getenv("MAGPIE_BENCH_MEMTABLE_MB"), 10, 64)
	return v << 20
}

// openB opens a store without the test wrapper (which copies every
// OnSent batch).
func openB(b *testing.B, dir string, o Options) *Store {
	o.Logger = quietLogger()
	s, err := Open(dir, o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// benchUsers creates n users and returns their uids.
func benchUsers(b *testing.B, s *Store, n int) []uint64 {
	us := make([]User, n)
	for i := range us {
		us[i] = User{Name: "bench" + strconv.Itoa(i), Hash: []byte("$2a$10$abcdefghijklmnopqrstuvabcdefghijklmnopqrstuvwxyz01234")}
	}
	ids, err := s.ImportUsers(us)
	if err != nil {
		b.Fatal(err)
	}
	return ids
}

const benchBody = "a typical chat message of about sixty bytes, give or take!!"

// benchPairs returns n random distinct direct pairs of uids: the
// conversations a benchmark's messages go to (each user talks to a few
// peers, as in a chat system; every message opening a new conversation
// would be a different, rarer workload).
func benchPairs(uids []uint64, n int, seed uint64) [][2]uint64 {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	seen := make(map[[2]uint64]bool)
	var ps [][2]uint64
	for len(ps) < n {
		a, b := uids[rng.IntN(len(uids))], uids[rng.IntN(len(uids))]
		if a == b || seen[[2]uint64{a, b}] {
			continue
		}
		seen[[2]uint64{a, b}] = true
		ps = append(ps, [2]uint64{a, b})
	}
	return ps
}

// BenchmarkCommitBatch1000 measures one committer batch of 1,000 direct
// messages in 4,000 conversations among 1,000 users, fsync on: dedup lookups,
// seq assignment, encoding, one Pebble commit with one WAL fsync,
// publishing. One op = one batch of 1,000.
func BenchmarkCommitBatch1000(b *testing.B) {
	for _, fsync := range []bool{true, false} {
		b.Run(fmt.Sprintf("fsync=%v", fsync), func(b *testing.B) {
			dir := b.TempDir()
			s := openB(b, dir, Options{})
			uids := benchUsers(b, s, 1000)
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
			// The benchmark is the committer: it calls step itself.
			s = openB(b, dir, Options{Fsync: fsync, noCommit: true, MaxBatch: 1000, QueueSize: 1000, memTable: benchMemTable()})
			rng := rand.New(rand.NewPCG(1, 2))
			pairs := benchPairs(uids, 4000, 1)
			sends := make([]Send, 1000)
			var sizes []int
			s.o.OnCommit = func(n int, _, _ time.Duration) { sizes = append(sizes, n) }
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				for j := range sends {
					p := pairs[rng.IntN(len(pairs))]
					from, to := p[0], p[1]
					sends[j] = Send{From: from, To: to, CMID: "b" + strconv.Itoa(i) + "-" + strconv.Itoa(j), Kind: "text", Body: benchBody}
					s.q <- &sends[j]
				}
				b.StartTimer()
				s.step(<-s.q, nil)
			}
			b.StopTimer()
			for _, m := range sends {
				if m.Err != nil || m.Dup {
					b.Fatalf("send %+v", m)
				}
			}
			if len(sizes) != b.N || sizes[0] != 1000 {
				b.Fatalf("batches %v", sizes[:min(len(sizes), 5)])
			}
			b.ReportMetric(float64(1000*b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(1000*b.N), "cpu-µs/msg")
		})
	}
}

// BenchmarkSubmitThroughput measures Submit → OnSent with the committer
// running: 64 producers, each with up to 256 sends in flight, direct
// messages in 40,000 conversations among 10,000 users. One op = one
// message. The store is new: every conversation's first message, and
// every sender's first, are part of the measurement (cold). With warm=true
// one message per conversation is sent first, outside the timer, so the
// measurement is of conversations and senders already in the cache.
func BenchmarkSubmitThroughput(b *testing.B) {
	for _, tc := range []struct{ fsync, warm bool }{{true, false}, {false, false}, {true, true}} {
		fsync, warm := tc.fsync, tc.warm
		name := fmt.Sprintf("fsync=%v", fsync)
		if warm {
			name += ",warm=true"
		}
		b.Run(name, func(b *testing.B) {
			var batches, msgs, commitNs, syncNs atomic.Int64
			s := openB(b, b.TempDir(), Options{Fsync: fsync, memTable: benchMemTable(), OnSent: func(batch []*Send) {
				for _, m := range batch {
					m.Tag.(chan struct{}) <- struct{}{}
				}
			}, OnCommit: func(n int, commit, sync time.Duration) {
				batches.Add(1)
				msgs.Add(int64(n))
				commitNs.Add(int64(commit))
				syncNs.Add(int64(sync))
			}})
			uids := benchUsers(b, s, 10000)
			pairs := benchPairs(uids, 40000, 2)
			if warm {
				done := make(chan struct{}, len(pairs))
				for i, p := range pairs {
					m := &Send{From: p[0], To: p[1], CMID: "w" + strconv.Itoa(i), Kind: "text", Body: benchBody, Tag: done}
					for s.Submit(m) != nil {
						<-done
						done <- struct{}{}
					}
				}
				for range pairs {
					<-done
				}
			}
			const producers, window = 64, 256
			batches.Store(0)
			msgs.Store(0)
			commitNs.Store(0)
			syncNs.Store(0)
			var next atomic.Int64
			var failed atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			var wg sync.WaitGroup
			for p := range producers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(p), 7))
					tokens := make(chan struct{}, window)
					for range window {
						tokens <- struct{}{}
					}
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							break
						}
						<-tokens
						p := pairs[rng.IntN(len(pairs))]
						from, to := p[0], p[1]
						m := &Send{From: from, To: to, CMID: strconv.FormatInt(i, 10), Kind: "text", Body: benchBody, Tag: tokens}
						for s.Submit(m) != nil {
							failed.Add(1)
							<-tokens // wait for one of ours to finish, then retry
							tokens <- struct{}{}
						}
					}
					for range window {
						<-tokens
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/msg")
			if n := batches.Load(); n > 0 {
				b.ReportMetric(float64(msgs.Load())/float64(n), "msgs/batch")
				// The share of commit time spent waiting for the WAL write
				// and fsync: the most pipelining could win.
				b.ReportMetric(float64(syncNs.Load())/float64(commitNs.Load()), "sync-share")
			}
			if st := s.Stats(); st.Rejected != 0 || st.Dups != 0 {
				b.Fatalf("stats %+v", st)
			}
		})
	}
}

// BenchmarkSentLatency20k paces direct messages at 20,000/s (20 every
// millisecond) and reports Submit → OnSent latency percentiles, fsync on.
// Run it with a fixed count, e.g. -benchtime=100000x (5 s).
func BenchmarkSentLatency20k(b *testing.B) {
	const perTick = 20
	lat := make([]time.Duration, b.N)
	starts := make([]time.Time, b.N)
	var done sync.WaitGroup
	done.Add(b.N)
	var batches, msgs, commitNs, syncNs, maxCommitNs, maxSyncNs atomic.Int64
	s := openB(b, b.TempDir(), Options{Fsync: true, OnSent: func(batch []*Send) {
		now := time.Now()
		for _, m := range batch {
			i := m.Tag.(int)
			lat[i] = now.Sub(starts[i])
			done.Done()
		}
	}, OnCommit: func(n int, commit, sync time.Duration) {
		batches.Add(1)
		msgs.Add(int64(n))
		commitNs.Add(int64(commit))
		syncNs.Add(int64(sync))
		maxCommitNs.Store(max(maxCommitNs.Load(), int64(commit))) // one writer
		maxSyncNs.Store(max(maxSyncNs.Load(), int64(sync)))
	}})
	uids := benchUsers(b, s, 10000)
	pairs := benchPairs(uids, 40000, 3)
	batches.Store(0)
	msgs.Store(0)
	commitNs.Store(0)
	syncNs.Store(0)
	maxCommitNs.Store(0)
	maxSyncNs.Store(0)
	rng := rand.New(rand.NewPCG(3, 4))
	sends := make([]Send, b.N)
	tags := make([]any, b.N)
	for i := range sends {
		p := pairs[rng.IntN(len(pairs))]
		from, to := p[0], p[1]
		tags[i] = i
		sends[i] = Send{From: from, To: to, CMID: strconv.Itoa(i), Kind: "text", Body: benchBody, Tag: tags[i]}
	}
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	for i := 0; i < b.N; {
		// Pace against the wall clock: tick k is due at t0 + k ms.
		due := t0.Add(time.Duration(i/perTick) * time.Millisecond)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		for j := 0; j < perTick && i < b.N; j++ {
			starts[i] = time.Now()
			if err := s.Submit(&sends[i]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	}
	done.Wait()
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(pct(0.999), "p99.9-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	if n := batches.Load(); n > 0 {
		b.ReportMetric(float64(msgs.Load())/float64(n), "msgs/batch")
		b.ReportMetric(float64(commitNs.Load())/float64(n)/1e6, "commit-ms")
		b.ReportMetric(float64(syncNs.Load())/float64(n)/1e6, "sync-ms")
		b.ReportMetric(float64(maxCommitNs.Load())/1e6, "max-commit-ms")
		b.ReportMetric(float64(maxSyncNs.Load())/1e6, "max-sync-ms")
	}
}

// BenchmarkImportUsers19k imports 19,000 users into an empty store, fsync
// on (the bench set-up of `magpie user import`). One op = 19,000 users.
func BenchmarkImportUsers19k(b *testing.B) {
	us := make([]User, 19000)
	for i := range us {
		us[i] = User{Name: "user" + strconv.Itoa(i), Hash: []byte("$2a$10$abcdefghijklmnopqrstuvabcdefghijklmnopqrstuvwxyz01234")}
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := openB(b, b.TempDir(), Options{Fsync: true})
		b.StartTimer()
		if _, err := s.ImportUsers(us); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s.Close()
		b.StartTimer()
	}
}

// BenchmarkOpen1M measures Open of a store holding 1,000,000 direct
// messages (so 1,000,000 cmids) in 4,000 conversations among 1,000 users.
// One op = one Open (and Close). The store is built once, outside the
// timer. Before the on-demand cache (format v1) Open loaded every user,
// conversation and cmid; now it reads the format and the last uid and gid.
func BenchmarkOpen1M(b *testing.B) {
	const total = 1000000
	dir := b.TempDir()
	s := openB(b, dir, Options{})
	uids := benchUsers(b, s, 1000)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	s = openB(b, dir, Options{noCommit: true, MaxBatch: 1000, QueueSize: 1000})
	rng := rand.New(rand.NewPCG(5, 6))
	pairs := benchPairs(uids, 4000, 5)
	sends := make([]Send, 1000)
	for i := 0; i < total/1000; i++ {
		for j := range sends {
			p := pairs[rng.IntN(len(pairs))]
			sends[j] = Send{From: p[0], To: p[1], CMID: "b" + strconv.Itoa(i) + "-" + strconv.Itoa(j), Kind: "text", Body: benchBody}
			s.q <- &sends[j]
		}
		s.step(<-s.q, nil)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	var cpu time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cpu0 := cpuTime()
		s := openB(b, dir, Options{noCommit: true})
		cpu += cpuTime() - cpu0
		b.StopTimer()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/open")
}
