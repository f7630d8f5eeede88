package storage

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkCachePinned: the committer's lookup of a cached head among
// 80,000 entries, random keys (the CommitBatch/SubmitThroughput pattern).
func BenchmarkCachePinned(b *testing.B) {
	c, keys, idx := benchCache()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e := c.pinned(keys[idx[i%len(idx)]], 5)
		_ = e.v.(*head).seq
	}
}

// BenchmarkMapLookup: the same with a plain map of *head (the old layout).
func BenchmarkMapLookup(b *testing.B) {
	_, keys, idx := benchCache()
	m := map[ckey]*head{}
	for _, k := range keys {
		m[k] = newHead(k2conv(k), 1, 1, [2]uint64{}, Message{})
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = m[keys[idx[i%len(idx)]]].seq
	}
}

// benchCache is a cache of 80,000 heads, their keys and 4,096 random
// indexes into them.
func benchCache() (*cache, []ckey, []int) {
	c := newCache(DefaultCacheSize)
	const n = 80000
	keys := make([]ckey, n)
	for i := range keys {
		ck := convKey{uint64(i + 1), uint64(i + 2)}
		keys[i] = headKey(ck)
		c.addPinned(keys[i], newHead(ck, 1, 1, [2]uint64{}, Message{}), 0, 300, 0)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	idx := make([]int, 4096)
	for i := range idx {
		idx[i] = rng.IntN(n)
	}
	return c, keys, idx
}

func BenchmarkCacheParts(b *testing.B) {
	c, keys, idx := benchCache()
	b.Run("hash+lock", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			k := keys[idx[i%len(idx)]]
			s := c.shard(c.hash(k))
			s.mu.Lock()
			s.mu.Unlock()
		}
	})
	b.Run("get", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			k := keys[idx[i%len(idx)]]
			s := c.shard(c.hash(k))
			_ = s.get(k)
		}
	})
	b.Run("get+v", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			k := keys[idx[i%len(idx)]]
			s := c.shard(c.hash(k))
			_ = s.get(k).v.(*head).seq
		}
	})
}
