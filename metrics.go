package flatten

import (
	"github.com/coredns/coredns/plugin"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Every metric has the label `server` (the listener, as in every CoreDNS metric) and no client or
// query name label, so their number is bounded by the configuration.
var (
	// requests counts A/AAAA queries for flattened names.
	requests = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "requests_total",
		Help:      "Counter of A and AAAA queries for flattened names.",
	}, []string{"server"})

	// cacheHits counts queries answered from a fresh cache entry.
	cacheHits = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "cache_hits_total",
		Help:      "Counter of flattened answers served from a fresh cache entry.",
	}, []string{"server"})

	// cacheMisses counts resolutions started because nothing fresh was cached (including
	// background refreshes).
	cacheMisses = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "cache_misses_total",
		Help:      "Counter of chain resolutions started because the cache had no fresh entry or the entry was due for refresh.",
	}, []string{"server"})

	// staleAnswers counts answers served from an expired entry (RFC 8767).
	staleAnswers = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "stale_answers_total",
		Help:      "Counter of flattened answers served stale because the target could not be resolved.",
	}, []string{"server"})

	// fallbackAnswers counts answers served from the zone's own A/AAAA records.
	fallbackAnswers = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "fallback_answers_total",
		Help:      "Counter of answers served from the zone's own address records because the target could not be resolved.",
	}, []string{"server"})

	// failoverAnswers counts answers from a target other than an alias's first.
	failoverAnswers = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "failover_answers_total",
		Help:      "Counter of answers from a target other than the first, because the ones before it failed, had no address of the type or no healthy address.",
	}, []string{"server"})

	// upstreamQueries counts questions sent upstream (every hop, every retry).
	upstreamQueries = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "upstream_queries_total",
		Help:      "Counter of questions sent upstream to resolve chains.",
	}, []string{"server"})

	// upstreamErrors counts failed upstream questions by reason.
	upstreamErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "upstream_errors_total",
		Help:      "Counter of upstream questions that failed, by reason.",
	}, []string{"server", "reason"})

	// lookupDuration is the time taken to resolve one chain.
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
	}, []string{"server"})

	// ecsEntries is the number of cache entries for client networks (`ecs`).
	ecsEntries = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "ecs_entries",
		Help:      "The number of cache entries for client networks (EDNS Client Subnet).",
	}, []string{"server"})

	// refreshes counts background refreshes (scheduled and prefetch).
	refreshes = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "refreshes_total",
		Help:      "Counter of background refreshes of cache entries.",
	}, []string{"server"})

	// healthProbes counts health check probes by result: "up" (connected) or "down" (failed).
	healthProbes = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "health_probes_total",
		Help:      "Counter of health check probes of target addresses, by result.",
	}, []string{"server", "result"})

	// healthDownAddrs is the number of addresses marked down, which answers leave out.
	healthDownAddrs = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "flatten",
		Name:      "health_down_addresses",
		Help:      "The number of target addresses marked down by health checks.",
	}, []string{"server"})
)
