package flatten

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/coredns/coredns/plugin"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Every counter and gauge has the labels `server` (the listener, as in every CoreDNS metric),
// `zones` and `view` (the server block's, as CoreDNS's *cache* labels its metrics), so that the
// blocks on one listener never overwrite each other; and no client or query name label, so their
// number is bounded by the configuration.
//
// The counters are atomics in a tally per label set, and one collector turns them into samples
// when scraped: a CounterVec child costs about 1 KB of heap (its label pairs, hashes and map
// entries), so a block's counters as children cost more than its two aliases (with 10,000 blocks,
// 11 MB of the 34 MB of heap flatten added; the blocks case of bench/run.sh). A tally costs a
// tenth of that. Like a CounterVec child, a counter appears once it is first counted, and a tally
// is kept for the life of the process, so its counters go on across reloads.

// metricLabels are the labels every metric has.
type metricLabels struct{ server, zones, view string }

// errorReasons are the values of upstream_errors_total's `reason` label (resolve.go).
var errorReasons = [...]string{reasonTimeout, reasonNetwork, reasonRcode, reasonMalformed, reasonLoop, reasonDepth, reasonNoServer}

// probeResults are the values of health_probes_total's `result` label.
var probeResults = [...]string{"down", "up"}

// tally holds the counters of one label set: a server block's on one listener.
type tally struct {
	labels metricLabels
	// lookup is the listener's lookup_duration_seconds histogram. Per listener only: a
	// histogram per server block cost 2.4 KB of heap a block.
	lookup prometheus.Observer

	requests  atomic.Uint64 // A/AAAA queries for flattened names
	hits      atomic.Uint64 // answers from a fresh entry
	misses    atomic.Uint64 // resolutions started because nothing fresh was cached
	stale     atomic.Uint64 // answers served stale (RFC 8767)
	fallback  atomic.Uint64 // answers from the zone's own address records
	failover  atomic.Uint64 // answers from a target other than an alias's first
	upstream  atomic.Uint64 // questions sent upstream, every hop and retry
	refreshes atomic.Uint64 // background resolutions (scheduled and prefetch)
	errors    [len(errorReasons)]atomic.Uint64
	probes    [len(probeResults)]atomic.Uint64
	// validations counts chains resolved with `dnssec_targets secure`, by outcome (validate.go).
	validations [len(validationOutcomes)]atomic.Uint64
}

// failed counts a failed upstream question.
func (t *tally) failed(reason string) {
	if i := slices.Index(errorReasons[:], reason); i >= 0 {
		t.errors[i].Add(1)
	}
}

// probed counts a health probe.
func (t *tally) probed(up bool) {
	if up {
		t.probes[1].Add(1)
	} else {
		t.probes[0].Add(1)
	}
}

// tallies holds every tally made, by label set.
var tallies = struct {
	sync.Mutex
	m map[metricLabels]*tally
}{m: map[metricLabels]*tally{}}

// tallyOf returns the tally of l, made on first use.
func tallyOf(l metricLabels) *tally {
	tallies.Lock()
	defer tallies.Unlock()
	t := tallies.m[l]
	if t == nil {
		t = &tally{labels: l, lookup: lookupDuration.WithLabelValues(l.server)}
		tallies.m[l] = t
	}
	return t
}

var lookupDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
	Namespace:                   plugin.Namespace,
	Subsystem:                   "flatten",
	Name:                        "lookup_duration_seconds",
	Buckets:                     plugin.TimeBuckets,
	NativeHistogramBucketFactor: plugin.NativeHistogramBucketFactor,
	Help:                        "Histogram of the time taken to resolve a chain upstream.",
}, []string{"server"})

// collector exports the tallies' counters, and the gauges of the running blocks, which it counts
// when scraped from what the blocks hold, so that nothing keeps them in sync by hand.
type collector struct {
	// counters, by the tally field they read.
	requests, hits, misses, stale, fallback, failover, upstream, refreshes, errors, probes, validations *prometheus.Desc
	// gauges
	entries, ecsEntries, down, fresh, staleAliases, unresolved *prometheus.Desc
}

func init() { prometheus.MustRegister(newCollector()) }

func newCollector() *collector {
	labels := []string{"server", "zones", "view"}
	desc := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, "flatten", name), help, append(slices.Clone(labels), extra...), nil)
	}
	return &collector{
		requests:     desc("requests_total", "Counter of A and AAAA queries for flattened names."),
		hits:         desc("cache_hits_total", "Counter of flattened answers served from a fresh cache entry."),
		misses:       desc("cache_misses_total", "Counter of chain resolutions started because the cache had no fresh entry or the entry was due for refresh."),
		stale:        desc("stale_answers_total", "Counter of flattened answers served stale because the target could not be resolved."),
		fallback:     desc("fallback_answers_total", "Counter of answers served from the zone's own address records because the target could not be resolved."),
		failover:     desc("failover_answers_total", "Counter of answers from a target other than the first, because the ones before it failed, had no address of the type or no healthy address."),
		upstream:     desc("upstream_queries_total", "Counter of questions sent upstream to resolve chains."),
		refreshes:    desc("refreshes_total", "Counter of background refreshes of cache entries."),
		errors:       desc("upstream_errors_total", "Counter of upstream questions that failed, by reason.", "reason"),
		probes:       desc("health_probes_total", "Counter of health check probes of target addresses, by result.", "result"),
		validations:  desc("dnssec_validations_total", "Counter of chains resolved with dnssec_targets secure, by outcome: secure, unvalidated (no AD), bogus.", "outcome"),
		entries:      desc("cache_entries", "The number of resolved chains in the cache."),
		ecsEntries:   desc("ecs_entries", "The number of cache entries for client networks (EDNS Client Subnet)."),
		down:         desc("health_down_addresses", "The number of target addresses marked down by health checks."),
		fresh:        desc("aliases_fresh", "The number of configured aliases whose every address type is answered from a fresh cache entry."),
		staleAliases: desc("aliases_stale", "The number of configured aliases with an address type answered stale: their targets fail to resolve."),
		unresolved:   desc("aliases_unresolved", "The number of configured aliases with an address type that has neither a fresh nor a stale entry: answered with the zone's own records or SERVFAIL, or waiting for a resolution."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.hits, c.misses, c.stale, c.fallback, c.failover,
		c.upstream, c.refreshes, c.errors, c.probes, c.validations, c.entries, c.ecsEntries, c.down, c.fresh, c.staleAliases, c.unresolved} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	tallies.Lock()
	ts := slices.Collect(func(yield func(*tally) bool) {
		for _, t := range tallies.m {
			if !yield(t) {
				return
			}
		}
	})
	tallies.Unlock()
	for _, t := range ts {
		l := t.labels
		count := func(d *prometheus.Desc, v *atomic.Uint64, extra ...string) {
			if n := v.Load(); n > 0 {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), append([]string{l.server, l.zones, l.view}, extra...)...)
			}
		}
		count(c.requests, &t.requests)
		count(c.hits, &t.hits)
		count(c.misses, &t.misses)
		count(c.stale, &t.stale)
		count(c.fallback, &t.fallback)
		count(c.failover, &t.failover)
		count(c.upstream, &t.upstream)
		count(c.refreshes, &t.refreshes)
		for i, r := range errorReasons {
			count(c.errors, &t.errors[i], r)
		}
		for i, r := range probeResults {
			count(c.probes, &t.probes[i], r)
		}
		for i, o := range validationOutcomes {
			count(c.validations, &t.validations[i], o)
		}
	}

	// The pools' gauges under their labels, the blocks' under theirs. During a reload the old
	// pool of a listener may still run beside the new one (their keys differ when the settings
	// changed): the gauges of a label set are one pool's.
	seen := map[metricLabels]bool{}
	for _, p := range running() {
		gauge := func(l metricLabels, d *prometheus.Desc, v int) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), l.server, l.zones, l.view)
		}
		if l := p.cfg.labels; !seen[l] {
			entries, ecs := p.cache.entries()
			gauge(l, c.entries, entries)
			if p.cfg.ecs != nil {
				gauge(l, c.ecsEntries, ecs)
			}
			if p.health != nil {
				gauge(l, c.down, p.health.downAddrs())
			}
		}
		for _, f := range p.members {
			l := f.cfg.labels
			if seen[l] {
				continue
			}
			seen[l] = true
			fresh, stale, unresolved := f.aliases.states(p.cache)
			gauge(l, c.fresh, fresh)
			gauge(l, c.staleAliases, stale)
			gauge(l, c.unresolved, unresolved)
		}
		seen[p.cfg.labels] = true
	}
}
