package flatten

import (
	"fmt"
	"strings"
	"sync"
)

// pool is the resolution state shared by the server blocks of one Corefile whose resolution
// settings are the same (poolKey): one cache of their targets, each target resolved and refreshed
// once on one schedule, one upstream transport or way through this server, one health checker.
// A block keeps only its aliases, which point at the pool's targets. An agency's 10,000 client
// zones whose aliases name its 256 servers cost the process 256 targets, not 20,000, and their
// startup round asks 512 questions, not 40,000 (bench/run.sh, the blocks case).
type pool struct {
	key      string
	origin   string // poolOrigin: what a reload's pool takes over from
	corefile any    // the caddy instance context of the Corefile the pool is for
	resolve  resolveFunc
	self     *selfExchanger // set when resolving through this server
	proxies  *proxyExchanger

	// mu guards what the members change until the pool is built, at the first member's
	// OnStartup, when every block of the Corefile has joined; and the count of started members.
	mu sync.Mutex
	// pins holds the members' targets by name once a second member joins; a pool of one block
	// takes the block's targets as parse made them, without a map, so that a block of 100,000
	// aliases makes neither a second map of them nor each pinned target twice at startup.
	pins    map[string]*pinnedTarget
	members []*Flatten // fixed once built
	started int        // members started and not shut down

	// Made by build, then fixed.
	cfg    *config        // the first member's settings, with the pool's labels and capacity
	bg     *background    // the goroutines of the cache and the health checker
	cache  *cache         // the members' targets, and what they resolve on demand
	health *healthChecker // with `health_check`
}

// poolKey is what blocks must have in common to share a pool: where and how they resolve, and
// what the cache does with the answers. Zones, aliases, `zone_alias`, `cname` and `explain` are
// each block's own.
func poolKey(cfg *config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%s|%s|%v|%d|%d-%d|%d|%g|%v|%d", cfg.labels.server, cfg.labels.view,
		strings.Join(cfg.upstreams, ","), cfg.timeout, cfg.maxDepth, cfg.ttlMin, cfg.ttlMax,
		cfg.capacity, cfg.prefetch, cfg.serveStale, cfg.refreshRate)
	if cfg.ecs != nil {
		fmt.Fprintf(&b, "|ecs %+v", *cfg.ecs)
	}
	if h := cfg.health; h != nil {
		fmt.Fprintf(&b, "|health %d %v", h.port, h.interval)
	}
	if cfg.secureTargets() {
		// The upstream questions carry DO, and the cache holds only validated answers.
		b.WriteString("|dnssec_targets secure")
	}
	return b.String()
}

// poolOrigin is where a pool resolves, for a listener: what a pool that a reload starts takes
// over entries and health states from, whatever other settings changed.
func poolOrigin(cfg *config) string {
	return cfg.labels.server + "|" + cfg.labels.view + "|" + strings.Join(cfg.upstreams, ",")
}

// forming holds the pools of the Corefile being set up (caddy sets one up at a time), by key.
var forming = struct {
	sync.Mutex
	corefile any // the caddy instance context of the Corefile the pools are for
	m        map[string]*pool
}{}

// joinPool adds f, just parsed from a Corefile (corefile: its caddy instance context), to the pool
// of its settings, making it if f is the first, and points f's aliases at the pool's targets.
func joinPool(corefile any, f *Flatten) {
	key := poolKey(f.cfg)
	forming.Lock()
	if forming.corefile != corefile {
		forming.corefile, forming.m = corefile, map[string]*pool{}
	}
	p := forming.m[key]
	if p == nil {
		p = newPool(key, f.cfg)
		p.corefile = corefile
		forming.m[key] = p
	}
	forming.Unlock()
	p.join(f)
}

// newPool makes the pool of the settings of cfg: its way upstream, without sockets or goroutines.
func newPool(key string, cfg *config) *pool {
	p := &pool{key: key, origin: poolOrigin(cfg)}
	var ex exchanger
	if len(cfg.upstreams) == 0 {
		p.self = newSelfExchanger()
		ex = p.self
	} else {
		p.proxies = newProxyExchanger(cfg.upstreams, cfg.timeout)
		ex = p.proxies
	}
	p.resolve = (&walker{ex: ex, maxDepth: cfg.maxDepth, secure: cfg.secureTargets()}).resolve
	return p
}

// join adds f to p and points f's aliases at p's targets: the first member's as they are, a later
// member's at the target of the same name when one is already in p. A later member also takes
// the first member's settings and listener label, equal to its own (poolKey), and drops its copy.
func (p *pool) join(f *Flatten) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f.pool = p
	p.members = append(p.members, f)
	if len(p.members) == 1 {
		return
	}
	first := p.members[0].cfg
	f.cfg.settings, f.cfg.labels.server = first.settings, first.labels.server
	if p.pins == nil {
		p.pins = map[string]*pinnedTarget{}
		for _, t := range p.members[0].aliases.targets() {
			p.pins[t.name()] = t
		}
	}
	f.aliases.repin(func(t *pinnedTarget) *pinnedTarget {
		if have := p.pins[t.name()]; have != nil {
			return have
		}
		p.pins[t.name()] = t
		return t
	})
}

// build makes the cache and the health checker of p's members, once. A pool of one block reads
// the block's settings. Several blocks share the cache's capacity for names resolved on demand:
// it is the sum of theirs; and the cache's labels are those of their listener and view, with
// empty zones.
func (p *pool) build() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cache != nil {
		return
	}
	p.cfg = p.members[0].cfg
	if n := len(p.members); n > 1 {
		cfg, set := *p.cfg, *p.cfg.settings
		cfg.labels.zones = ""
		set.capacity *= n
		cfg.settings = &set
		p.cfg = &cfg
	}
	var pins []*pinnedTarget
	if p.pins == nil {
		pins = p.members[0].aliases.targets()
	} else {
		pins = make([]*pinnedTarget, 0, len(p.pins))
		for _, t := range p.pins {
			pins = append(pins, t)
		}
		pins = sortPins(pins)
		p.pins = nil
	}
	p.bg = newBackground()
	p.cache = newCache(p.cfg, p.resolve, pins, p.bg)
	if h := p.cfg.health; h != nil {
		p.health = newHealthChecker(h.port, h.interval, p.cache.pinnedAddrs, p.cache.tally, p.bg)
	}
}

// start builds p and starts its background work when its first member starts: the upstream
// transports, the startup round and refresh of every target, the health checker. It takes over
// what the pools of the same origin that a reload replaces know. Resolving through this server,
// the round starts once the server is known (findServer, or the first query).
func (p *pool) start() {
	p.build()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started++; p.started > 1 {
		return
	}
	p.cache.limiter = acquirePace(p.paceKey(), p.cfg.refreshRate)
	for _, old := range register(p) {
		p.cache.adopt(old.cache)
		if p.health != nil && old.health != nil {
			p.health.adopt(old.health)
		}
	}
	if p.proxies != nil {
		p.proxies.start()
	}
	if p.self == nil {
		p.cache.start()
	} else {
		local.acquire() // the zones served here that its chains pass through (notify.go)
	}
	if p.health != nil {
		p.health.start()
	}
}

// stop stops p's background work when its last member shuts down.
func (p *pool) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started--; p.started > 0 {
		return
	}
	unregister(p)
	if p.self != nil {
		local.release()
	}
	if p.health != nil {
		p.health.stop()
	}
	p.bg.stop()
	p.cache.close()
	releasePace(p.paceKey(), p.cfg.refreshRate)
	if p.proxies != nil {
		p.proxies.stop()
	}
}

// paceKey is where the pool's background resolution asks first, whose limiter paces it: its
// first upstream address, or this server.
func (p *pool) paceKey() string {
	if len(p.cfg.upstreams) == 0 {
		return "this server"
	}
	return p.cfg.upstreams[0]
}
