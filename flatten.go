// Package flatten implements CNAME flattening for CoreDNS: configured names, typically a zone
// apex, answer A and AAAA queries with the final addresses of a target hostname's CNAME chain,
// as if they were the name's own records, while every other query goes to the next plugin.
package flatten

import (
	"context"
	"math"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	clog "github.com/coredns/coredns/plugin/pkg/log"

	"github.com/miekg/dns"
)

var log = clog.NewWithPlugin("flatten")

// Flatten is the plugin handler of one server block.
type Flatten struct {
	Next plugin.Handler

	cfg     *config
	aliases aliasTable // the configured aliases, by name (aliases.go)
	// pool is the resolution state the block shares with the blocks of the same settings: the
	// cache its aliases' targets are in, the way upstream, the health checker (pool.go).
	pool        *pool
	zoneAliases *zoneAliases // with `zone_alias`: the names known to hold ALIAS records
	// server is the block's configuration, where OnStartup finds *transfer* (transfer.go).
	server *dnsserver.Config
	xfr    *xfr // with *transfer* in the block
	// metadataOn is set once the *metadata* plugin has asked for our values (metadata.go).
	metadataOn atomic.Bool
	// last holds the tally of the listener that asked last (tallyFor).
	last atomic.Pointer[tally]
}

// tallyFor returns the block's tally on the listener server. Found by its labels, it costs a
// lock and a map lookup per query; a block keeps the tally of the listener that asked last, and a
// block on one listener always finds it there.
func (f *Flatten) tallyFor(server string) *tally {
	if t := f.last.Load(); t != nil && t.labels.server == server {
		return t
	}
	l := f.cfg.labels
	l.server = server
	t := tallyOf(l)
	f.last.Store(t)
	return t
}

// zoneOf returns the zone that holds an alias's name, in any case (setup checked there is one).
func (f *Flatten) zoneOf(name string) string {
	if len(f.cfg.zones) == 1 {
		return f.cfg.zones[0] // the usual server block, without a search
	}
	return plugin.Zones(f.cfg.zones).Matches(strings.ToLower(name))
}

// OnStartup starts the pool's background work when the block is the first of its pool to start
// (pool.start).
func (f *Flatten) OnStartup() error {
	f.pool.start()
	f.startTransfers()
	log.Debugf("%s: %d aliases, %d targets in its pool, resolved through %s", f.cfg.labels.zones, f.aliases.len(), len(f.pool.cache.pins), f.via())
	starting.Lock()
	starting.fs = append(starting.fs, f)
	starting.Unlock()
	return nil
}

// via says where the block resolves its targets.
func (f *Flatten) via() string {
	if f.pool.self != nil {
		return "this server"
	}
	return strings.Join(f.cfg.upstreams, ", ")
}

// OnShutdown stops the pool's background work when the block is the last of its pool to shut
// down; it runs on shutdown and when the *reload* plugin replaces the instance.
func (f *Flatten) OnShutdown() error {
	// Shut down before its instance's startup event (a startup that failed): not told of there.
	starting.Lock()
	starting.fs = slices.DeleteFunc(starting.fs, func(g *Flatten) bool { return g == f })
	starting.Unlock()
	f.stopTransfers()
	f.pool.stop()
	return nil
}

// Ready implements the ready.Readiness interface: true once every alias has been resolved (or
// tried) once at startup. When resolving through this server, the round starts once the block
// has asked its own listener (findServer); if it could not, only a client's query brings the
// server, and Ready reports true rather than hold back the traffic that would warm the cache.
func (f *Flatten) Ready() bool {
	if f.pool.self != nil && f.pool.self.server.Load() == nil {
		return f.pool.self.probed.Load()
	}
	return f.pool.cache.ready()
}

// Name implements the plugin.Handler interface.
func (f *Flatten) Name() string { return "flatten" }

// ServeDNS implements the plugin.Handler interface.
func (f *Flatten) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if f.pool.self != nil && f.pool.self.server.Load() == nil && f.pool.self.observe(ctx) {
		// The server to resolve through is known at last: warm the aliases now.
		f.pool.cache.start()
	}

	if r.Opcode == dns.OpcodeNotify && f.cfg.notify != nil && len(r.Question) == 1 &&
		plugin.Zones(f.cfg.zones).Matches(r.Question[0].Name) != "" {
		return f.serveNotify(ctx, w, r)
	}
	https := f.cfg.https && isHTTPSQuery(r)
	if !https && !isAddressQuery(r) {
		if f.cfg.explainNets != nil && isExplainQuery(r) {
			return f.explain(ctx, w, r)
		}
		if f.xfr != nil && r.Opcode == dns.OpcodeQuery && len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeSOA {
			if zone := plugin.Zones(f.cfg.zones).Matches(r.Question[0].Name); zone != "" {
				// The serial that moves with the flattened addresses (transfer.go).
				w = serialWriter{w, f, zone}
			}
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
		if https {
			return f.flattenHTTPS(ctx, w, r, f.zoneOf(qname), math.MaxUint32, f.httpsTarget(ctx, a, false), f.cfg.policyFor(false))
		}
		var one [1]*slot
		return f.flatten(ctx, w, r, f.zoneOf(qname), math.MaxUint32, a.slots(qtypeIndex(qtype), one[:0]), f.cfg.policyFor(false))
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
			return f.flattenZoneTarget(ctx, w, r, zone, za.ttl, za.target)
		}
	}
	if !https && f.cfg.cnames.match(name) {
		return f.flattenCNAME(ctx, w, r, zone)
	}
	return plugin.NextOrFailure(f.Name(), f.Next, ctx, w, r)
}

// answerTTL is the TTL of an answer from e: the time it has left, bounded by ttlCap (an ALIAS
// record's TTL, or the zone's part of a CNAME chain) but not below `ttl MIN`; a stale answer's
// fixed TTL.
func (f *Flatten) answerTTL(e *entry, src source, ttlCap uint32) uint32 {
	ttl := f.pool.cache.ttl(e, src, f.pool.cache.now())
	if src != srcStale {
		ttl = min(ttl, max(ttlCap, f.cfg.ttlMin))
	}
	return ttl
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
// that is in the zone. policy filters the addresses: the `alias` lines' or zone data's
// (policy.go).
//
// No function stands between ServeDNS and this one on the warm path: on a server goroutine's
// small stack, one more frame above the reply's write made every warm answer grow the stack in
// sendmsg (runtime.copystack was 29% of a warm answer's CPU under dnsperf, and the warm row lost
// 40% of its QPS).
func (f *Flatten) flatten(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string, ttlCap uint32, slots []*slot, policy *addrPolicy) (int, error) {
	t := f.tallyFor(metrics.WithServer(ctx))
	t.requests.Add(1)
	q := question{tally: t, path: pathFrom(ctx), policy: policy}
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
			t.hits.Add(1)
		case srcStale:
			t.stale.Add(1)
		}
		if c.i > 0 {
			t.failover.Add(1)
		}
		f.noteAnswer(ctx, slots[c.i].name, c.src.String(), c.e)
		return f.answer(ctx, w, r, zone, c.entry(), c.src, ttlCap, q.policy)
	}

	if len(v.fallback) > 0 {
		t.fallback.Add(1)
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
	e, src, err := f.pool.cache.get(ctx, s, q)
	policy := q.policy
	if s.qi == httpsIndex {
		policy = nil // it filters addresses; an HTTPS RRset's hints are trimmed in answer
	}
	return pk.add(i, e, src, err, policy, f.pool.health)
}

// answer writes a flattened answer from e: the address RRset under the question name exactly
// as the client spelled it, AA set, no CNAME. A target without addresses of the type gets
// NODATA with the zone's SOA (RFC 2308 2.2), never NXDOMAIN: the name exists and owns the
// zone's other records.
func (f *Flatten) answer(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string, e *entry, src source, ttlCap uint32, policy *addrPolicy) (int, error) {
	ttl := f.answerTTL(e, src, ttlCap)
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
		if r.Question[0].Qtype == dns.TypeHTTPS {
			f.trimHints(m.Answer, policy)
		}
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

// renamed returns copies of the records rrs (addresses, or HTTPS records) owned by owner with
// the given TTL. The cached records are shared between queries and never modified. The address
// records of an answer (a cached set holds one type: follow keeps only the type asked) are made
// in one array: one allocation for the set instead of one per record, on the path of every warm
// answer (BenchmarkFlattenHit: 5 allocations instead of 6 for two addresses).
func renamed(rrs []dns.RR, owner string, ttl uint32) []dns.RR {
	out := make([]dns.RR, len(rrs))
	if len(rrs) == 0 {
		return out
	}
	hdr := dns.RR_Header{Name: owner, Rrtype: rrs[0].Header().Rrtype, Class: dns.ClassINET, Ttl: ttl}
	switch hdr.Rrtype {
	case dns.TypeA:
		recs := make([]dns.A, len(rrs))
		for i, rr := range rrs {
			recs[i] = dns.A{Hdr: hdr, A: rr.(*dns.A).A}
			out[i] = &recs[i]
		}
	case dns.TypeAAAA:
		recs := make([]dns.AAAA, len(rrs))
		for i, rr := range rrs {
			recs[i] = dns.AAAA{Hdr: hdr, AAAA: rr.(*dns.AAAA).AAAA}
			out[i] = &recs[i]
		}
	default:
		// HTTPS records: copied deeply, SvcParams included, as they came (RFC 9460 2.4.3: a
		// TargetName of "." then names the flattened name, whose addresses are the target's).
		for i, rr := range rrs {
			out[i] = dns.Copy(rr)
			*out[i].Header() = hdr
		}
	}
	return out
}
