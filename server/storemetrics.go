package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/magpie-im/magpie/storage"
)

// registerStoreMetrics publishes the store's cache and cmid-index figures
// (storage.Stats) as gauges and counters read at scrape time.
func (s *Server) registerStoreMetrics(st *storage.Store) {
	gauge := func(name, help string, f func(storage.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(st.Stats()) })
	}
	counter := func(name, help string, f func(storage.Stats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(st.Stats()) })
	}
	s.m.reg.MustRegister(
		gauge("magpie_store_cache_bytes", "Bytes held by the store's metadata cache (--cache-size).", func(x storage.Stats) float64 { return float64(x.CacheBytes) }),
		gauge("magpie_store_cache_capacity_bytes", "The metadata cache's budget (--cache-size).", func(x storage.Stats) float64 { return float64(x.CacheCap) }),
		gauge("magpie_store_cache_entries", "Entries in the metadata cache.", func(x storage.Stats) float64 { return float64(x.CacheEntries) }),
		counter("magpie_store_cache_hits_total", "Metadata lookups answered from the cache.", func(x storage.Stats) float64 { return float64(x.CacheHits) }),
		counter("magpie_store_cache_misses_total", "Metadata lookups that read Pebble.", func(x storage.Stats) float64 { return float64(x.CacheMisses) }),
		counter("magpie_store_cache_evictions_total", "Cache entries evicted to stay within --cache-size.", func(x storage.Stats) float64 { return float64(x.CacheEvictions) }),
		counter("magpie_store_cache_refusals_total", "Values a reader loaded that a concurrent write had made stale (not cached).", func(x storage.Stats) float64 { return float64(x.CacheRefusals) }),
		gauge("magpie_store_unflushed_cmids", "Committed cmids not yet flushed to sstables (the recent-cmid set).", func(x storage.Stats) float64 { return float64(x.UnflushedCMIDs) }),
		counter("magpie_store_cmid_lookups_total", "cmid index lookups in Pebble (one per send that is not a duplicate within its batch).", func(x storage.Stats) float64 { return float64(x.CMIDLookups) }),
	)
}
