// Package flatten implements CNAME flattening for CoreDNS: configured names, typically a zone
// apex, answer A and AAAA queries with the final addresses of a target hostname's CNAME chain,
// as if they were the name's own records, while every other query goes to the next plugin.
package flatten

import (
	"context"
	"math"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	clog "github.com/coredns/coredns/plugin/pkg/log"

	"github.com/miekg/dns"
)

var log = clog.NewWithPlugin("flatten")

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

// Flatten is the plugin handler.
type Flatten struct {
	Next  plugin.Handler
	Zones []string

	aliases    aliasTable // the configured aliases, by name (aliases.go)
	upstreams  []string   // resolver addresses; empty: resolve through this server
	maxDepth   int
	timeout    time.Duration
	ttlMin     uint32
	ttlMax     uint32
	capacity   int
	prefetch   float64
	serveStale time.Duration
	// refreshRate is the most upstream queries per second made by background resolution: the
	// startup round and the scheduled refresh of configured aliases.
	refreshRate int

	zoneAliasOn bool         // `zone_alias`
	zoneAliases *zoneAliases // with zone_alias: the names known to hold ALIAS records
	cnames      *cnameNames  // `cname NAMES...`
	ecs         *ecsConfig   // `ecs`; nil when off (ecs.go)

	// explainNets are the clients that may ask for _flatten.NAME TXT; nil without `explain`.
	explainNets []netip.Prefix
	// `health_check tcp PORT INTERVAL`: healthPort 0 is off.
	healthPort     int
	healthInterval time.Duration
	healthLine     int
	health         *healthChecker
	// keepHealthy drops the addresses health checks found down; nil without `health_check`.
	keepHealthy func([]dns.RR) []dns.RR
	// metadataOn is set once the *metadata* plugin has asked for our values (metadata.go).
	metadataOn atomic.Bool

	cache   *cache
	self    *selfExchanger  // set when resolving through this server
	proxies *proxyExchanger // set when resolving through upstream addresses
}

// alias is one configured `alias NAME TARGET...`, as the table of aliases returns it (aliases.go).
// Its name is the table's key, its zone is found from the name (zoneOf), and a single target (the
// usual case) is its pair of pinned slots, A and AAAA side by side, which hold the target's name:
// nothing is held twice.
type alias struct {
	one  *pinnedTarget // the single target's slots, once initCache has pinned them
	more *targetList   // every target: with more than one, or until initCache pins the one
	cell *aliasCell    // a short name's cell, with its copy of one's entries; nil for a long name
}

// targetList holds the targets of an alias that has more than one, in order of preference,
// and per address type (qtypeIndex) the slot of each, in the same order.
type targetList struct {
	targets []string
	slots   [2][]*slot
}

// zoneOf returns the zone of f.Zones that holds an alias's name, in any case (setup checked
// there is one).
func (f *Flatten) zoneOf(name string) string {
	if len(f.Zones) == 1 {
		return f.Zones[0] // the usual server block, without a search
	}
	return plugin.Zones(f.Zones).Matches(strings.ToLower(name))
}

// targets returns a's targets (lowercased FQDNs), in order of preference. Not for the answer
// path: for a single target it allocates the slice.
func (a alias) targets() []string {
	if a.more != nil {
		return a.more.targets
	}
	return []string{a.one.slots[0].name}
}

// slots returns the slot of each target for an address type (qtypeIndex), in targets' order.
// A single target's slot is appended to buf (empty, with room for one), so that the answer path
// can pass the caller's array instead of allocating a slice.
func (a alias) slots(i int, buf []*slot) []*slot {
	if a.more != nil {
		return a.more.slots[i]
	}
	return append(buf, &a.one.slots[i])
}

// New returns a Flatten with the default settings and no aliases.
func New() *Flatten {
	return &Flatten{
		aliases:     newAliasTable(),
		maxDepth:    defaultMaxDepth,
		timeout:     defaultTimeout,
		ttlMin:      defaultTTLMin,
		ttlMax:      defaultTTLMax,
		capacity:    defaultCapacity,
		prefetch:    defaultPrefetch,
		serveStale:  defaultServeStale,
		refreshRate: defaultRefreshRate,
	}
}

// prepare builds the resolution path (upstream, walker, cache) from the settings. It opens no
// socket and starts no goroutine: that is OnStartup's job.
func (f *Flatten) prepare(server string) {
	var ex exchanger
	if len(f.upstreams) == 0 {
		f.self = newSelfExchanger()
		ex = f.self
	} else {
		f.proxies = newProxyExchanger(f.upstreams, f.timeout)
		ex = f.proxies
	}
	w := &walker{ex: ex, maxDepth: f.maxDepth}
	f.initCache(func(ctx context.Context, k cacheKey) (*chain, error) {
		return w.resolve(withPath(ctx, k.name), k.name, k.qtype)
	}, server)
	if f.zoneAliasOn {
		f.zoneAliases = newZoneAliases(f.capacity)
	}
	if f.healthPort != 0 {
		f.health = newHealthChecker(f.healthPort, f.healthInterval, f.aliasAddrs, server)
		f.keepHealthy = f.health.filter
	}
}

// aliasAddrs returns the addresses the configured aliases' targets resolve to, fresh or stale:
// what health checks probe. It reads the cache's entries without locks (they are atomic), so
// the prober may call it while queries are served.
func (f *Flatten) aliasAddrs() []netip.Addr {
	var out []netip.Addr
	var one [1]*slot // a single target's slot, without a slice allocated per alias and type
	f.aliases.eachAlias(func(a alias) {
		for i := range 2 {
			for _, s := range a.slots(i, one[:0]) {
				e := s.good.Load()
				if e == nil {
					continue
				}
				for _, rr := range e.addrs() {
					if ip, ok := rrAddr(rr); ok {
						out = append(out, ip)
					}
				}
			}
		}
	})
	return out
}

// rrAddr is the address of an A or AAAA record, unmapped (A records unpack as 16-byte
// IPv4-mapped slices); false for any other record.
func rrAddr(rr dns.RR) (netip.Addr, bool) {
	var ip netip.Addr
	var ok bool
	switch v := rr.(type) {
	case *dns.A:
		ip, ok = netip.AddrFromSlice(v.A)
	case *dns.AAAA:
		ip, ok = netip.AddrFromSlice(v.AAAA)
	}
	return ip.Unmap(), ok
}

// initCache makes the cache in front of resolve and pins a slot per alias and address type.
func (f *Flatten) initCache(resolve resolveFunc, server string) {
	c := newCache(resolve)
	c.ttlMin, c.ttlMax = f.ttlMin, f.ttlMax
	c.prefetch, c.stale = f.prefetch, f.serveStale
	c.timeout, c.capacity, c.server = f.timeout, f.capacity, server
	c.setRefreshRate(f.refreshRate)
	// A reloaded instance takes over the entries of the one it replaces: same listener, same
	// zones, same upstreams (answers resolved elsewhere are not kept).
	c.identity = server + " " + strings.Join(f.Zones, ",") + " " + strings.Join(f.upstreams, ",")
	c.base = withServerLabel(c.base, server)
	f.aliases.pin(c)
	f.cache = c
}

// OnStartup takes over the cache of the instance a reload replaces, and starts the upstream
// transports and the background resolution of every alias. Resolving through this server, the
// background work starts with the first query instead: only a query brings the server.
func (f *Flatten) OnStartup() error {
	f.cache.adopt()
	if f.proxies != nil {
		f.proxies.start()
	}
	if f.self == nil {
		f.cache.start()
	}
	if f.health != nil {
		f.health.adopt(f.cache.identity)
		f.health.start()
	}
	return nil
}

// OnShutdown stops all background work of this instance; it runs on shutdown and when the
// *reload* plugin replaces the instance.
func (f *Flatten) OnShutdown() error {
	if f.health != nil {
		f.health.stop()
	}
	f.cache.stop()
	if f.proxies != nil {
		f.proxies.stop()
	}
	return nil
}

// Ready implements the ready.Readiness interface: true once every alias has been resolved (or
// tried) once at startup. When resolving through this server, that waits for the first query,
// because only a query brings the server to resolve through; until then Ready reports true,
// so that the readiness probe does not hold back the traffic that warms the cache.
func (f *Flatten) Ready() bool {
	if f.self != nil && f.self.server.Load() == nil {
		return true
	}
	return f.cache.ready()
}

// Name implements the plugin.Handler interface.
func (f *Flatten) Name() string { return "flatten" }

// ServeDNS implements the plugin.Handler interface.
func (f *Flatten) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if f.self != nil && f.self.server.Load() == nil && f.self.observe(ctx) {
		// The server to resolve through is known at last: warm the aliases now.
		f.cache.start()
	}

	if !isAddressQuery(r) {
		if f.explainNets != nil && isExplainQuery(r) {
			return f.explain(ctx, w, r)
		}
		return plugin.NextOrFailure(f.Name(), f.Next, ctx, w, r)
	}
	qname, qtype := r.Question[0].Name, r.Question[0].Qtype

	// A configured alias: answered from memory, without looking at the zone. The table takes the
	// name in any case. A fresh answer for a short name comes from its cell, one cache line
	// (aliases.go); anything else goes through the slots and the failure ladder.
	if a, ok := f.aliases.get(qname); ok {
		qi := qtypeIndex(qtype)
		if a.cell != nil && f.direct(ctx) {
			if set, exp, ok := a.cell.fresh(qi); ok {
				if now := f.cache.since(f.cache.now()); now < exp {
					return f.answerFresh(ctx, w, r, set, exp, now)
				}
			}
		}
		var one [1]*slot
		return f.flatten(ctx, w, r, f.zoneOf(qname), math.MaxUint32, a.slots(qi, one[:0]))
	}
	// strings.ToLower does not allocate when the name is already lower case.
	name := strings.ToLower(qname)
	zone := plugin.Zones(f.Zones).Matches(name)
	if zone == "" {
		return plugin.NextOrFailure(f.Name(), f.Next, ctx, w, r)
	}
	// An ALIAS record in the zone: flattened like a configured alias, its TTL one more bound.
	if f.zoneAliases != nil {
		if za := f.zoneAliasFor(ctx, w, r, name); za.target != "" {
			s := f.cache.slotFor(cacheKey{name: za.target, qtype: qtype})
			return f.flatten(ctx, w, r, zone, za.ttl, []*slot{s})
		}
	}
	if f.cnames.match(name) {
		return f.flattenCNAME(ctx, w, r, zone)
	}
	return plugin.NextOrFailure(f.Name(), f.Next, ctx, w, r)
}

// direct reports whether a fresh answer for an alias with a single target may come from its cell
// (aliasTable): when nothing but the entry decides the answer. Client networks (`ecs`) have
// entries of their own, health checks drop addresses, *metadata* wants the chain, and a lookup
// through this server checks the target against the path that led to it (pick).
func (f *Flatten) direct(ctx context.Context) bool {
	return f.ecs == nil && f.keepHealthy == nil && !f.metadataOn.Load() && pathFrom(ctx) == nil
}

// answerFresh answers from a cell's copy of a fresh entry, what flatten would have answered from
// the entry itself: the same counters, and the TTL that cache.ttl gives. exp is when the entry
// stops being fresh, now is before it, and whole seconds are counted as there: the seconds left,
// rounded up, are the entry's TTL less the whole seconds since it was fetched.
func (f *Flatten) answerFresh(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, set *addrSet, exp, now int64) (int, error) {
	server := metrics.WithServer(ctx)
	requests.WithLabelValues(server).Inc()
	cacheHits.WithLabelValues(server).Inc()
	left := uint32((exp - now + int64(time.Second) - 1) / int64(time.Second))
	return writeAddrs(w, r, set.rrs, f.cache.clampTTL(left))
}

// writeAddrs writes an authoritative answer of addrs under the question name, exactly as the
// client spelled it, with ttl.
func writeAddrs(w dns.ResponseWriter, r *dns.Msg, addrs []dns.RR, ttl uint32) (int, error) {
	m := authoritative(r)
	m.Answer = renamed(addrs, r.Question[0].Name, ttl)
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// authoritative returns an empty reply to r with the AA bit set: flatten answers for the zones
// it serves as their authority, its flattened addresses as the apex's own (RFC 1035 4.1.1).
func authoritative(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	return m
}

// isAddressQuery reports whether r is a query flatten may answer: opcode QUERY, class IN, one
// question, type A or AAAA. Everything else goes to the next plugin untouched.
func isAddressQuery(r *dns.Msg) bool {
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		return false
	}
	q := r.Question[0]
	return q.Qclass == dns.ClassINET && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA)
}

// flatten answers r with the addresses of the first target, in order, that has usable ones:
// slots holds each target's slot for the query's type (the slot's key names the target). A
// target is passed over when it fails, has no address of the type, or (with health checks) no
// healthy address; each target's answer comes from its own slot, so passing over one costs no
// upstream wait once its failure is known.
// Then the failure ladder: a stale answer, the zone's own records, SERVFAIL that says why.
// ttlCap bounds the answer's TTL: an ALIAS record's TTL, or the TTLs of the part of a CNAME chain
// that is in the zone.
func (f *Flatten) flatten(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string, ttlCap uint32, slots []*slot) (int, error) {
	server := metrics.WithServer(ctx)
	requests.WithLabelValues(server).Inc()
	if f.ecs != nil {
		// A malformed ECS option is rejected before anything is looked up (ecs.go).
		if _, err := clientECS(r); err != nil {
			return formerr(w, r, err)
		}
	}

	c, rerr := f.pick(ctx, w, r, slots)
	if c.e != nil {
		switch c.src {
		case srcFresh:
			cacheHits.WithLabelValues(server).Inc()
		case srcStale:
			staleAnswers.WithLabelValues(server).Inc()
		}
		if c.i > 0 {
			failoverAnswers.WithLabelValues(server).Inc()
		}
		f.noteAnswer(ctx, slots[c.i].name, c.src.String(), c.e)
		return f.answer(ctx, w, r, zone, c.entry(), c.src, ttlCap)
	}

	// Nothing to serve from the cache: the zone's own records at the name (the ANAME draft's
	// sibling addresses), else SERVFAIL that says why.
	if rrs := f.zoneAddrs(ctx, w, r); len(rrs) > 0 {
		fallbackAnswers.WithLabelValues(server).Inc()
		f.noteAnswer(ctx, "", "fallback", nil)
		m := authoritative(r)
		m.Answer = rrs
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	}
	f.noteAnswer(ctx, "", "servfail", nil)
	return f.servfail(w, r, rerr)
}

// pick asks each target's slot in turn and returns the best answer (the picker's ranking) and
// the first failure. It is a function of its own, never inlined, so that its frame (the picker
// holds four candidates) is gone before flatten packs the reply: on a server goroutine's small
// stack, the bigger frame made every warm answer copy the stack to grow it while packing (about
// a sixth of a warm hit's CPU in a *pprof* profile under dnsperf).
//
//go:noinline
func (f *Flatten) pick(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, slots []*slot) (candidate, *resolveError) {
	p := pathFrom(ctx)
	var pk picker
	for i, s := range slots {
		target := s.name
		// A lookup through this server that comes back to a target that is already being
		// resolved further up is a loop (a flattened name whose chain leads back to itself).
		if p.contains(target) || p.len() > f.maxDepth {
			pk.fail(errLoop(target))
			continue
		}
		if i == 1 {
			// The first target had no usable answer: the rest share one timeout, so that a
			// client waits at most twice the timeout however many targets there are.
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, f.timeout)
			defer cancel()
		}
		e, src, rerr := f.lookup(ctx, w, r, s, p != nil)
		if pk.add(i, e, src, rerr, f.keepHealthy) {
			break
		}
	}

	return pk.best(), pk.err
}

// flattenCNAME answers r from what the plugins below answer: unchanged unless it is a CNAME
// chain, which is replaced with the addresses at its end under the question name. A chain that
// leaves the zone is resolved upstream, through the cache, like an alias's target.
func (f *Flatten) flattenCNAME(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string) (int, error) {
	m, rcode, err := f.askNext(ctx, w, r, r.Question[0].Name, r.Question[0].Qtype)
	if m == nil {
		return rcode, err
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	c := &chain{start: name, ttl: math.MaxUint32}
	end, ferr := follow(m, name, q.Qtype, c, map[string]bool{name: true}, f.maxDepth)
	// A zone whose chain leaves it answers SERVFAIL with its part of the chain when it cannot
	// follow it out (askNext hides the server it would follow it through): flatten follows it.
	inZone := plugin.Zones(f.Zones).Matches(end) != "" // read below only when follow succeeded
	leaves := ferr == nil && !inZone
	failed := m.Rcode != dns.RcodeSuccess && !(m.Rcode == dns.RcodeServerFailure && leaves)
	if ferr != nil || len(c.hops) == 0 || (failed && len(c.addrs) == 0) || c.hops[0].rrtype == dns.TypeDNAME || synthesizedFromDNAME(m, name) {
		// Not a chain (or a broken one, or one that ends in NXDOMAIN in the zone), or one that
		// starts with a CNAME the zone made from a DNAME: the zone's answer stands as it is. A
		// DNAME maps any name a client makes up to a new target; flattening it would let clients
		// choose what the upstream is asked, one new question (and cache entry) per made-up name.
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	}
	if len(c.addrs) > 0 {
		// The plugins below followed the whole chain inside the zone.
		return writeAddrs(w, r, c.addrs, min(max(c.ttl, f.ttlMin), f.ttlMax))
	}
	// The chain ends at a name flattened here: answer with what that name answers with. Asking
	// upstream would ask the world for our own name (or ourselves, for a loop).
	if a, ok := f.aliases.get(end); ok {
		var one [1]*slot
		return f.flatten(ctx, w, r, zone, c.ttl, a.slots(qtypeIndex(q.Qtype), one[:0]))
	}
	if f.zoneAliases != nil && inZone {
		if za := f.zoneAliasFor(ctx, w, r, end); za.target != "" {
			s := f.cache.slotFor(cacheKey{name: za.target, qtype: q.Qtype})
			return f.flatten(ctx, w, r, zone, min(c.ttl, za.ttl), []*slot{s})
		}
	}
	if inZone || hasNegativeSOA(m, end) {
		// The chain ends inside the zone, or the zone proved its end has no address of the type:
		// the plugins below already answered it, and it is nobody else's business. NODATA.
		reply := authoritative(r)
		if soa := f.zoneSOA(ctx, w, r, zone); soa != nil {
			soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl, max(c.ttl, f.ttlMin))
			reply.Ns = []dns.RR{soa}
		}
		w.WriteMsg(reply)
		return dns.RcodeSuccess, nil
	}
	s := f.cache.slotFor(cacheKey{name: end, qtype: q.Qtype})
	return f.flatten(ctx, w, r, zone, c.ttl, []*slot{s})
}

// lookup returns what to answer r with from s, the slot of one target and address type, and
// where it comes from (cache.get's ladder).
func (f *Flatten) lookup(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, s *slot, nested bool) (*entry, source, *resolveError) {
	if f.ecs != nil {
		// The answer for the client's network, with its own ladder (ecs.go).
		if sub, ok := f.ecs.subnet(w, r, nested); ok {
			return f.cache.getECS(ctx, s, sub, nested)
		}
	}
	return f.cache.get(ctx, s, nested)
}

// synthesizedFromDNAME reports whether the answer holds a DNAME above name: its CNAME for name was
// synthesized (RFC 6672), not held by the zone.
func synthesizedFromDNAME(m *dns.Msg, name string) bool {
	for _, rr := range m.Answer {
		if rr.Header().Rrtype == dns.TypeDNAME && dns.IsSubDomain(rr.Header().Name, name) {
			return true
		}
	}
	return false
}

// answer writes a flattened answer from e: the address RRset under the question name exactly
// as the client spelled it, AA set, no CNAME. A target without addresses of the type gets
// NODATA with the zone's SOA (RFC 2308 2.2), never NXDOMAIN: the name exists and owns the
// zone's other records.
func (f *Flatten) answer(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string, e *entry, src source, ttlCap uint32) (int, error) {
	ttl := f.cache.ttl(e, src, f.cache.now())
	if src != srcStale {
		ttl = min(ttl, max(ttlCap, f.ttlMin))
	}
	m := authoritative(r)
	if e.negative() {
		if soa := f.zoneSOA(ctx, w, r, zone); soa != nil {
			// The SOA's TTL is how long resolvers cache the NODATA (RFC 2308 5): no longer than
			// we will keep the target's negative answer.
			soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl, ttl)
			m.Ns = []dns.RR{soa}
		}
	} else {
		m.Answer = renamed(e.addrs(), r.Question[0].Name, ttl)
	}
	if src == srcStale && r.IsEdns0() != nil {
		addEDE(m, dns.ExtendedErrorCodeStaleAnswer, "")
	}
	f.echoECS(m, r, e)
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// servfail writes a SERVFAIL that carries, to EDNS clients, an Extended DNS Error (RFC 8914)
// saying why. It is written here rather than left to the server so that the EDE reaches the
// client; the error is returned for the *errors* plugin to log.
func (f *Flatten) servfail(w dns.ResponseWriter, r *dns.Msg, err *resolveError) (int, error) {
	if err == nil {
		err = errTimeout(r.Question[0].Name)
	}
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeServerFailure)
	if r.IsEdns0() != nil {
		addEDE(m, err.ede, err.text)
	}
	w.WriteMsg(m)
	return dns.RcodeSuccess, plugin.Error(f.Name(), err)
}

// addEDE adds an Extended DNS Error option to m. The server's scrub writer sets the OPT record's
// buffer size and DO bit from the client's query (request.SizeAndDo).
func addEDE(m *dns.Msg, code uint16, text string) {
	o := m.IsEdns0()
	if o == nil {
		m.SetEdns0(udpSize, false)
		o = m.IsEdns0()
	}
	o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: code, ExtraText: text})
}

// renamed returns copies of the address records addrs owned by owner with the given TTL. The
// cached records are shared between queries and never modified.
func renamed(addrs []dns.RR, owner string, ttl uint32) []dns.RR {
	out := make([]dns.RR, len(addrs))
	for i, rr := range addrs {
		hdr := dns.RR_Header{Name: owner, Rrtype: rr.Header().Rrtype, Class: dns.ClassINET, Ttl: ttl}
		switch v := rr.(type) {
		case *dns.A:
			out[i] = &dns.A{Hdr: hdr, A: v.A}
		case *dns.AAAA:
			out[i] = &dns.AAAA{Hdr: hdr, AAAA: v.AAAA}
		}
	}
	return out
}

// resolvePath is the list of targets being resolved by the lookups that led to the current one,
// carried in the context of lookups made through this server, to find loops between them.
type resolvePath struct {
	target string
	parent *resolvePath
}

type pathKey struct{}

func withPath(ctx context.Context, target string) context.Context {
	return context.WithValue(ctx, pathKey{}, &resolvePath{target: target, parent: pathFrom(ctx)})
}

func pathFrom(ctx context.Context) *resolvePath {
	p, _ := ctx.Value(pathKey{}).(*resolvePath)
	return p
}

func (p *resolvePath) contains(target string) bool {
	for ; p != nil; p = p.parent {
		if p.target == target {
			return true
		}
	}
	return false
}

func (p *resolvePath) len() int {
	n := 0
	for ; p != nil; p = p.parent {
		n++
	}
	return n
}
