package flatten

import (
	"github.com/coredns/coredns/plugin"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Every counter and gauge has the labels `server` (the listener, as in every CoreDNS metric),
// `zones` and `view` (the server block's, as CoreDNS's *cache* labels its metrics), so that the
// blocks on one listener never overwrite each other; and no client or query name label, so their number is
// bounded by the configuration.
var (
	// requests counts A/AAAA queries for flattened names.
	requests = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "requests_total",
		Help:      "Counter of A and AAAA queries for flattened names.",
	}, []string{"server", "zones", "view"})

	// cacheHits counts queries answered from a fresh cache entry.
	cacheHits = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "cache_hits_total",
		Help:      "Counter of flattened answers served from a fresh cache entry.",
	}, []string{"server", "zones", "view"})

	// cacheMisses counts resolutions started because nothing fresh was cached (including
	// background refreshes).
	cacheMisses = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "cache_misses_total",
		Help:      "Counter of chain resolutions started because the cache had no fresh entry or the entry was due for refresh.",
	}, []string{"server", "zones", "view"})

	// staleAnswers counts answers served from an expired entry (RFC 8767).
	staleAnswers = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "stale_answers_total",
		Help:      "Counter of flattened answers served stale because the target could not be resolved.",
	}, []string{"server", "zones", "view"})

	// fallbackAnswers counts answers served from the zone's own A/AAAA records.
	fallbackAnswers = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "fallback_answers_total",
		Help:      "Counter of answers served from the zone's own address records because the target could not be resolved.",
	}, []string{"server", "zones", "view"})

	// failoverAnswers counts answers from a target other than an alias's first.
	failoverAnswers = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "failover_answers_total",
		Help:      "Counter of answers from a target other than the first, because the ones before it failed, had no address of the type or no healthy address.",
	}, []string{"server", "zones", "view"})

	// upstreamQueries counts questions sent upstream (every hop, every retry).
	upstreamQueries = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "upstream_queries_total",
		Help:      "Counter of questions sent upstream to resolve chains.",
	}, []string{"server", "zones", "view"})

	// upstreamErrors counts failed upstream questions by reason.
	upstreamErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "upstream_errors_total",
		Help:      "Counter of upstream questions that failed, by reason.",
	}, []string{"server", "zones", "view", "reason"})

	// lookupDuration is the time taken to resolve one chain. Per listener only: a histogram per
	// server block cost 2.4 KB of heap a block, as much as everything else of a block with two
	// aliases.
	lookupDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Namespace:                   plugin.Namespace,
		Subsystem:                   "flatten",
		Name:                        "lookup_duration_seconds",
		Buckets:                     plugin.TimeBuckets,
		NativeHistogramBucketFactor: plugin.NativeHistogramBucketFactor,
		Help:                        "Histogram of the time taken to resolve a chain upstream.",
	}, []string{"server"})

	// cacheEntries is the number of cache entries.
	cacheEntries = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "cache_entries",
		Help:      "The number of resolved chains in the cache.",
	}, []string{"server", "zones", "view"})

	// ecsEntries is the number of cache entries for client networks (`ecs`).
	ecsEntries = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "ecs_entries",
		Help:      "The number of cache entries for client networks (EDNS Client Subnet).",
	}, []string{"server", "zones", "view"})

	// refreshCount counts background refreshes (scheduled and prefetch).
	refreshCount = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "refreshes_total",
		Help:      "Counter of background refreshes of cache entries.",
	}, []string{"server", "zones", "view"})

	// healthProbes counts health check probes by result: "up" (connected) or "down" (failed).
	healthProbes = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "health_probes_total",
		Help:      "Counter of health check probes of target addresses, by result.",
	}, []string{"server", "zones", "view", "result"})

	// healthDownAddrs is the number of addresses marked down, which answers leave out.
	healthDownAddrs = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "health_down_addresses",
		Help:      "The number of target addresses marked down by health checks.",
	}, []string{"server", "zones", "view"})
)

// metricLabels are the labels every metric has.
type metricLabels struct{ server, zones, view string }

// aliasStates counts the configured aliases of every running block by the answer a query would
// get (aliasTable.states): coredns_flatten_aliases_fresh, coredns_flatten_aliases_stale and
// coredns_flatten_aliases_unresolved. It counts when scraped, from what the cache holds, so that
// nothing on the answer path keeps counts.
type aliasStates struct{ fresh, stale, unresolved *prometheus.Desc }

func init() {
	labels := []string{"server", "zones", "view"}
	prometheus.MustRegister(aliasStates{
		fresh: prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, "flatten", "aliases_fresh"),
			"The number of configured aliases whose every address type is answered from a fresh cache entry.", labels, nil),
		stale: prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, "flatten", "aliases_stale"),
			"The number of configured aliases with an address type answered stale: their targets fail to resolve.", labels, nil),
		unresolved: prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, "flatten", "aliases_unresolved"),
			"The number of configured aliases with an address type that has neither a fresh nor a stale entry: answered with the zone's own records or SERVFAIL, or waiting for a resolution.", labels, nil),
	})
}

// Describe implements prometheus.Collector.
func (a aliasStates) Describe(ch chan<- *prometheus.Desc) {
	ch <- a.fresh
	ch <- a.stale
	ch <- a.unresolved
}

// Collect implements prometheus.Collector.
func (a aliasStates) Collect(ch chan<- prometheus.Metric) {
	for _, f := range running() {
		fresh, stale, unresolved := f.aliases.states(f.cache)
		l := f.cfg.labels
		ch <- prometheus.MustNewConstMetric(a.fresh, prometheus.GaugeValue, float64(fresh), l.server, l.zones, l.view)
		ch <- prometheus.MustNewConstMetric(a.stale, prometheus.GaugeValue, float64(stale), l.server, l.zones, l.view)
		ch <- prometheus.MustNewConstMetric(a.unresolved, prometheus.GaugeValue, float64(unresolved), l.server, l.zones, l.view)
	}
}
