package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/magpie-im/magpie/storage"
)

// storeMetric is one series read from storage.Stats.
type storeMetric struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	f    func(storage.Stats) float64
}

// storeCollector publishes the store's cache and cmid-index figures
// (storage.Stats) at scrape time, reading Stats once per scrape (it takes
// every cache shard's lock).
type storeCollector struct {
	st      *storage.Store
	metrics []storeMetric
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	x := c.st.Stats()
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.f(x))
	}
}

// registerStoreMetrics registers the store's collector.
func (s *Server) registerStoreMetrics(st *storage.Store) {
	c := &storeCollector{st: st}
	add := func(typ prometheus.ValueType, name, help string, f func(storage.Stats) float64) {
		c.metrics = append(c.metrics, storeMetric{prometheus.NewDesc(name, help, nil, nil), typ, f})
	}
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	add(gauge, "magpie_store_cache_bytes", "Bytes held by the store's metadata cache (--cache-size).", func(x storage.Stats) float64 { return float64(x.CacheBytes) })
	add(gauge, "magpie_store_cache_capacity_bytes", "The metadata cache's budget (--cache-size).", func(x storage.Stats) float64 { return float64(x.CacheCap) })
	add(gauge, "magpie_store_cache_entries", "Entries in the metadata cache.", func(x storage.Stats) float64 { return float64(x.CacheEntries) })
	add(counter, "magpie_store_cache_hits_total", "Metadata lookups answered from the cache.", func(x storage.Stats) float64 { return float64(x.CacheHits) })
	add(counter, "magpie_store_cache_misses_total", "Metadata lookups that read Pebble.", func(x storage.Stats) float64 { return float64(x.CacheMisses) })
	add(counter, "magpie_store_cache_evictions_total", "Cache entries evicted to stay within --cache-size.", func(x storage.Stats) float64 { return float64(x.CacheEvictions) })
	add(counter, "magpie_store_cache_refusals_total", "Values a reader loaded that a concurrent write had made stale (not cached).", func(x storage.Stats) float64 { return float64(x.CacheRefusals) })
	add(gauge, "magpie_store_unflushed_cmids", "Committed cmids not yet flushed to sstables (the recent-cmid set).", func(x storage.Stats) float64 { return float64(x.UnflushedCMIDs) })
	add(counter, "magpie_store_cmid_lookups_total", "cmid index lookups in Pebble (one per send that is not a duplicate within its batch).", func(x storage.Stats) float64 { return float64(x.CMIDLookups) })
	s.m.reg.MustRegister(c)
}
