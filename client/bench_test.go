package client

import (
	"encoding/json"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkReceivePath measures the SDK's per-message overhead on the
// receive side, without the network: decode a `msg` frame, dedup it by
// (conv, seq), queue it, hand it to OnMessage on the delivery goroutine,
// record the delivery, and encode the coalesced cumulative ack (flushed
// every 64 messages, as AckBatch does). The clock stops once the last
// message was delivered.
func BenchmarkReceivePath(b *testing.B) {
	for _, convs := range []int{1, 100} {
		b.Run("convs="+strconv.Itoa(convs), func(b *testing.B) {
			var delivered atomic.Int64
			c, err := New(Options{Token: "t", WSURL: "ws://127.0.0.1:1/ws", OnMessage: func(Message) { delivered.Add(1) }})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			s := &session{c: c, id: 1, wake: make(chan struct{}, 1), acks: newAcker(time.Hour, 64)}
			c.mu.Lock()
			c.synced = true
			c.sess = s
			c.mu.Unlock()
			names := make([]string, convs)
			seq := make([]int64, convs)
			for i := range names {
				names[i] = DirectConv(1, int64(i+2))
			}
			body := `,"from":2,"ts":1764213000000,"kind":"text","body":"hello there, a typical short chat message","cmid":"a1b2c3d4e5f6-17"}`
			var frame, ackBuf []byte
			var acks []ack
			f := new(inFrame)
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := i % convs
				seq[k]++
				frame = append(frame[:0], `{"type":"msg","conv":"`...)
				frame = append(frame, names[k]...)
				frame = append(frame, `","seq":`...)
				frame = strconv.AppendInt(frame, seq[k], 10)
				frame = append(frame, body...)
				s.process(frame, f)
				if i%64 == 63 {
					c.mu.Lock()
					acks = s.acks.flush(acks[:0])
					c.mu.Unlock()
					for _, a := range acks {
						ackBuf = appendAck(ackBuf[:0], a.conv, a.seq)
					}
				}
			}
			for delivered.Load() < int64(b.N) {
				time.Sleep(10 * time.Microsecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			c.mu.Lock()
			c.sess = nil // no connection behind it to close
			c.mu.Unlock()
		})
	}
}

// cpuTime is the process's user+system CPU time in ns: unlike wall time it
// is not inflated by other processes on a shared machine.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

var benchMsg = []byte(`{"type":"msg","conv":"d:1:2","seq":12345,"from":2,"ts":1764213000000,"kind":"text","body":"hello there, a typical short chat message","cmid":"a1b2c3d4e5f6-17"}`)

// BenchmarkDecodeMsg compares the `msg` fast path with encoding/json, the
// decoder of every other frame.
func BenchmarkDecodeMsg(b *testing.B) {
	b.Run("fast", func(b *testing.B) {
		f := new(inFrame)
		var in interner
		b.ReportAllocs()
		for b.Loop() {
			if !decodeMsg(benchMsg, f, &in) {
				b.Fatal("fast path refused")
			}
		}
	})
	b.Run("encoding_json", func(b *testing.B) {
		f := new(inFrame)
		b.ReportAllocs()
		for b.Loop() {
			*f = inFrame{}
			if err := json.Unmarshal(benchMsg, f); err != nil {
				b.Fatal(err)
			}
		}
	})
}
