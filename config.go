package flatten

import (
	"net/netip"
	"time"
)

// Defaults of the Corefile options.
const (
	defaultMaxDepth   = 8 // the bound *file* uses when it chases CNAMEs (plugin/file/lookup.go)
	maxMaxDepth       = 16
	defaultTimeout    = 2 * time.Second
	defaultTTLMin     = 5
	defaultTTLMax     = 3600
	defaultCapacity   = 10000
	defaultPrefetch   = 0.10
	defaultServeStale = time.Hour
	// defaultRefreshRate bounds the upstream queries of background resolution: well under the
	// per-client limits of public resolvers (Google Public DNS allows 1500 QPS per address), and
	// far above what a few hundred aliases ever need.
	defaultRefreshRate = 1000
	maxRefreshRate     = 1_000_000
)

// config is a server block's flatten settings: built once by parse (and setup, which adds the
// metrics label), then only read, by the handler, the cache and the health checker alike.
type config struct {
	zones []string
	// settings are how the block resolves and caches, which the blocks of a pool have in common
	// (poolKey): the members of a pool share its first member's (pool.join), so that a block of
	// the 10,000 of a DNS host keeps only what is its own (TestMemoryPerBlock).
	*settings

	zoneAlias bool // `zone_alias`
	// https is `https`: HTTPS queries at flattened names get the target's HTTPS records.
	https bool
	// transferAlias is `transfer_alias`: zone transfers carry ALIAS records, not addresses.
	transferAlias bool
	cnames        *cnameNames // `cname NAMES...`; nil without
	// explainNets are the clients that may ask for _flatten.NAME TXT; nil without `explain`.
	explainNets []netip.Prefix
	notify      *notifyConfig // `notify_from`; nil without

	// sec is the security options (policy.go); nil when the block gives none. One pointer: a
	// block's config is kept per block (TestMemoryPerBlock).
	sec *securityConfig

	// labels are the block's metric labels; their server, the listener's, is for work no query
	// carries (a query carries its own).
	labels metricLabels
}

// settings are the options that say how names are resolved and cached.
type settings struct {
	upstreams  []string // resolver addresses; empty: resolve through this server
	maxDepth   int
	timeout    time.Duration // the most a client waits for a resolution
	ttlMin     uint32
	ttlMax     uint32
	capacity   int           // most slots the cache makes on demand
	prefetch   float64       // refresh when less than this fraction of the lifetime is left
	serveStale time.Duration // how long past expiry an entry may be served (RFC 8767)
	// refreshRate is the most upstream queries per second made by background resolution: the
	// startup round and the scheduled refresh of configured aliases.
	refreshRate int
	ecs         *ecsConfig    // `ecs`; nil when off (ecs.go)
	health      *healthConfig // `health_check`; nil when off
}

// healthConfig is `health_check tcp PORT [INTERVAL]`.
type healthConfig struct {
	port     int
	interval time.Duration
	line     int // where it is written, for the check made once every alias is read
}

func newConfig() *config {
	return &config{settings: &settings{
		maxDepth:    defaultMaxDepth,
		timeout:     defaultTimeout,
		ttlMin:      defaultTTLMin,
		ttlMax:      defaultTTLMax,
		capacity:    defaultCapacity,
		prefetch:    defaultPrefetch,
		serveStale:  defaultServeStale,
		refreshRate: defaultRefreshRate,
	}}
}

// clampTTL bounds a TTL by `ttl MIN MAX`.
func (c *config) clampTTL(ttl uint32) uint32 { return min(max(ttl, c.ttlMin), c.ttlMax) }
