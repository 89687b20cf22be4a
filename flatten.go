// Package flatten implements CNAME flattening for CoreDNS: configured names, typically a zone
// apex, answer A and AAAA queries with the final addresses of a target hostname's CNAME chain,
// as if they were the name's own records, while every other query goes to the next plugin.
package flatten

import (
	"context"
	"math"
	"strings"
	"sync/atomic"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/miekg/dns"
)

var log = clog.NewWithPlugin("flatten")

// Flatten is the plugin handler of one server block.
type Flatten struct {
	Next plugin.Handler

	cfg      *config
	aliases  aliasTable // the configured aliases, by name (aliases.go)
	identity string     // what a reloaded instance takes over from (lifecycle.go)

	bg          *background    // the goroutines of the cache and the health checker
	cache       *cache         // answers, resolved through self or proxies
	self        *selfExchanger // set when resolving through this server
	proxies     *proxyExchanger
	zoneAliases *zoneAliases   // with `zone_alias`: the names known to hold ALIAS records
	health      *healthChecker // with `health_check`
	// metadataOn is set once the *metadata* plugin has asked for our values (metadata.go).
	metadataOn atomic.Bool
	// last holds the counters of the listener that asked last (counters).
	last atomic.Pointer[answerCounters]
}

// answerCounters are the two counters every answer counts (requests, and hits for a fresh one)
// for one listener. Found by their label values, they cost two hashes and map lookups per query
// (about 80 ns with three labels, as much as the rest of a warm answer's own work in
// BenchmarkFlattenHit); a block keeps the pair of the listener that asked last, and a block on one
// listener always finds it there.
type answerCounters struct {
	server         string
	requests, hits prometheus.Counter
}

// counters returns the answer counters of the listener server.
func (f *Flatten) counters(server string) *answerCounters {
	if c := f.last.Load(); c != nil && c.server == server {
		return c
	}
	l := f.cfg.labels
	c := &answerCounters{server: server,
		requests: requests.WithLabelValues(server, l.zones, l.view),
		hits:     cacheHits.WithLabelValues(server, l.zones, l.view),
	}
	f.last.Store(c)
	return c
}

// zoneOf returns the zone that holds an alias's name, in any case (setup checked there is one).
func (f *Flatten) zoneOf(name string) string {
	if len(f.cfg.zones) == 1 {
		return f.cfg.zones[0] // the usual server block, without a search
	}
	return plugin.Zones(f.cfg.zones).Matches(strings.ToLower(name))
}

// prepare builds the resolution path (upstream, walker, cache) from the configuration. It opens
// no socket and starts no goroutine: that is OnStartup's job.
func (f *Flatten) prepare() {
	var ex exchanger
	if len(f.cfg.upstreams) == 0 {
		f.self = newSelfExchanger()
		ex = f.self
	} else {
		f.proxies = newProxyExchanger(f.cfg.upstreams, f.cfg.timeout)
		ex = f.proxies
	}
	w := &walker{ex: ex, maxDepth: f.cfg.maxDepth}
	f.build(w.resolve)
}

// build makes the instance's state in front of resolve: the cache of the configured targets, and
// what zone_alias and health_check need.
func (f *Flatten) build(resolve resolveFunc) {
	f.bg = newBackground()
	f.identity = identity(f.cfg)
	f.cache = newCache(f.cfg, resolve, f.aliases.targets(), f.bg)
	if f.cfg.zoneAlias {
		f.zoneAliases = newZoneAliases(f.cfg.capacity)
	}
	if h := f.cfg.health; h != nil {
		f.health = newHealthChecker(h.port, h.interval, f.cache.pinnedAddrs, f.cfg.labels, f.bg)
	}
}

// OnStartup takes over what the instance a reload replaces knows, and starts the upstream
// transports and the background resolution of every alias. Resolving through this server, the
// background work starts with the first query instead: only a query brings the server.
func (f *Flatten) OnStartup() error {
	log.Debugf("%s: %d aliases, %d targets, resolved through %s", f.cfg.labels.zones, f.aliases.len(), len(f.cache.pins), f.via())
	starting.Lock()
	starting.fs = append(starting.fs, f)
	starting.Unlock()
	f.cache.limiter = acquirePace(f.paceKey(), f.cfg.refreshRate)
	if old := register(f); old != nil {
		f.cache.adopt(old.cache)
		if f.health != nil && old.health != nil {
			f.health.adopt(old.health)
		}
	}
	if f.proxies != nil {
		f.proxies.start()
	}
	if f.self == nil {
		f.cache.start()
	}
	if f.health != nil {
		f.health.start()
	}
	return nil
}

// paceKey is where the block's background resolution asks first, whose limiter paces it: its
// first upstream address, or this server.
func (f *Flatten) paceKey() string {
	if len(f.cfg.upstreams) == 0 {
		return "this server"
	}
	return f.cfg.upstreams[0]
}

// via says where the block resolves its targets.
func (f *Flatten) via() string {
	if f.self != nil {
		return "this server"
	}
	return strings.Join(f.cfg.upstreams, ", ")
}

// OnShutdown stops all background work of this instance; it runs on shutdown and when the
// *reload* plugin replaces the instance.
func (f *Flatten) OnShutdown() error {
	unregister(f)
	if f.health != nil {
		f.health.stop()
	}
	f.bg.stop()
	f.cache.close()
	releasePace(f.paceKey(), f.cfg.refreshRate)
	if f.proxies != nil {
		f.proxies.stop()
	}
	return nil
}

// Ready implements the ready.Readiness interface: true once every alias has been resolved (or
// tried) once at startup. When resolving through this server, the round starts once the block
// has asked its own listener (findServer); if it could not, only a client's query brings the
// server, and Ready reports true rather than hold back the traffic that would warm the cache.
func (f *Flatten) Ready() bool {
	if f.self != nil && f.self.server.Load() == nil {
		return f.self.probed.Load()
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
		if f.cfg.explainNets != nil && isExplainQuery(r) {
			return f.explain(ctx, w, r)
		}
		if r.Opcode == dns.OpcodeQuery && len(r.Question) == 1 {
			if _, ok := f.aliases.get(r.Question[0].Name); ok {
				// Another type at a configured alias: the zone answers, but the name exists.
				w = existingName{w}
			}
		}
		return plugin.NextOrFailure(f.Name(), f.Next, ctx, w, r)
	}
	qname, qtype := r.Question[0].Name, r.Question[0].Qtype

	// A configured alias: answered from memory, without looking at the zone.
	if a, ok := f.aliases.get(qname); ok {
		var one [1]*slot
		return f.flatten(ctx, w, r, f.zoneOf(qname), math.MaxUint32, a.slots(qtypeIndex(qtype), one[:0]))
	}
	// strings.ToLower does not allocate when the name is already lower case.
	name := strings.ToLower(qname)
	zone := plugin.Zones(f.cfg.zones).Matches(name)
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
	if f.cfg.cnames.match(name) {
		return f.flattenCNAME(ctx, w, r, zone)
	}
	return plugin.NextOrFailure(f.Name(), f.Next, ctx, w, r)
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
	labels := f.cfg.labels
	labels.server = metrics.WithServer(ctx)
	counters := f.counters(labels.server)
	counters.requests.Inc()
	q := question{labels: labels, path: pathFrom(ctx)}
	if f.cfg.ecs != nil {
		// A malformed ECS option is rejected before anything is looked up (ecs.go).
		if _, err := clientECS(r); err != nil {
			return formerr(w, r, err)
		}
		q.sub, _ = f.cfg.ecs.subnet(w, r, q.nested())
	}

	v := f.decide(ctx, w, r, &q, slots)
	if c := v.candidate; c.e != nil {
		switch c.src {
		case srcFresh:
			counters.hits.Inc()
		case srcStale:
			staleAnswers.WithLabelValues(labels.server, labels.zones, labels.view).Inc()
		}
		if c.i > 0 {
			failoverAnswers.WithLabelValues(labels.server, labels.zones, labels.view).Inc()
		}
		f.noteAnswer(ctx, slots[c.i].name, c.src.String(), c.e)
		return f.answer(ctx, w, r, zone, c.entry(), c.src, ttlCap)
	}

	if len(v.fallback) > 0 {
		fallbackAnswers.WithLabelValues(labels.server, labels.zones, labels.view).Inc()
		f.noteAnswer(ctx, "", "fallback", nil)
		m := authoritative(r)
		m.Answer = v.fallback
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	}
	f.noteAnswer(ctx, "", "servfail", nil)
	return f.servfail(w, r, v.err)
}

// verdict is what a query for a flattened name gets: a target's answer (candidate), else the
// zone's own records at the name, else SERVFAIL that says why (err).
type verdict struct {
	candidate
	fallback []dns.RR
	err      *resolveError
}

// decide climbs the failure ladder for r over slots, each target's slot for the query's type:
// the best of the targets' answers (pick), then the zone's own records at the name (the ANAME
// draft's sibling addresses), then SERVFAIL. With q.peek it says what a query would get now
// (explain).
func (f *Flatten) decide(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, q *question, slots []*slot) verdict {
	c, err := f.pick(ctx, q, slots)
	if c.e != nil {
		return verdict{candidate: c}
	}
	return verdict{fallback: f.zoneAddrs(ctx, w, r), err: err}
}

// pick asks each target's slot in turn and returns the best answer (the picker's ranking) and
// the first failure. It is a function of its own, never inlined, so that its frame (the picker
// holds four candidates) is gone before flatten packs the reply: on a server goroutine's small
// stack, the bigger frame made every warm answer copy the stack to grow it while packing (about
// a sixth of a warm hit's CPU in a *pprof* profile under dnsperf).
//
//go:noinline
func (f *Flatten) pick(ctx context.Context, q *question, slots []*slot) (candidate, *resolveError) {
	var pk picker
	if len(slots) == 0 { // explain, for a target no query has asked about yet
		return candidate{}, nil
	}
	if f.offer(ctx, q, &pk, 0, slots[0]) {
		return pk.fresh, nil
	}
	if len(slots) > 1 {
		// The first target had no usable answer: the rest share one timeout, so that a client
		// waits at most twice the timeout however many targets there are.
		ctx, cancel := context.WithTimeout(ctx, f.cfg.timeout)
		defer cancel()
		for i := 1; i < len(slots) && !f.offer(ctx, q, &pk, i, slots[i]); i++ {
		}
	}
	return pk.best(), pk.err
}

// offer asks s, the slot of target i, what to answer q with, and offers it to pk; it reports
// whether that is the best answer possible.
func (f *Flatten) offer(ctx context.Context, q *question, pk *picker, i int, s *slot) bool {
	// A lookup through this server that comes back to a target that is already being resolved
	// further up is a loop (a flattened name whose chain leads back to itself).
	if q.path != nil && (q.path.contains(s.name) || q.path.len() > f.cfg.maxDepth) {
		pk.fail(errLoop(s.name))
		return false
	}
	// The key of this target and type, for the client's network when it has one.
	q.key = cacheKey{name: s.name, qtype: s.qtype()}
	if q.sub.IsValid() {
		q.key.scope = subnetOf(q.sub)
	}
	e, src, err := f.cache.get(ctx, s, q)
	return pk.add(i, e, src, err, f.health)
}

// answer writes a flattened answer from e: the address RRset under the question name exactly
// as the client spelled it, AA set, no CNAME. A target without addresses of the type gets
// NODATA with the zone's SOA (RFC 2308 2.2), never NXDOMAIN: the name exists and owns the
// zone's other records.
func (f *Flatten) answer(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string, e *entry, src source, ttlCap uint32) (int, error) {
	ttl := f.cache.ttl(e, src, f.cache.now())
	if src != srcStale {
		ttl = min(ttl, max(ttlCap, f.cfg.ttlMin))
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
