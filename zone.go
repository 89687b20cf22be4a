package flatten

import (
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/nonwriter"

	"github.com/miekg/dns"
)

// askNext sends a question to the plugins below flatten and returns their answer without
// writing it to the client (nonwriter): nil, with their rcode and error, when they wrote nothing.
func (f *Flatten) askNext(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, name string, qtype uint16) (*dns.Msg, int, error) {
	if f.Next == nil {
		return nil, dns.RcodeServerFailure, nil
	}
	q := r
	if q.Question[0].Name != name || q.Question[0].Qtype != qtype {
		q = r.Copy()
		q.Question[0] = dns.Question{Name: name, Qtype: qtype, Qclass: dns.ClassINET}
	}
	nw := nonwriter.New(w)
	rcode, err := f.Next.ServeDNS(withoutServer(ctx), nw, q)
	return nw.Msg, rcode, err
}

// noServer hides the server from the plugins below when flatten asks them about the zone.
// *file* (and *auto*, *secondary*) resolve a CNAME that leaves the zone through the whole server
// (plugin/pkg/upstream), which needs the *dnsserver.Server in the context: without it they answer
// with the zone's part of the chain, and flatten resolves the rest itself, through its cache
// and failure ladder, instead of through the server again for every query.
type noServer struct{}

func withoutServer(ctx context.Context) context.Context {
	return context.WithValue(ctx, dnsserver.Key{}, noServer{})
}

// existingName writes the next plugin's answer for a configured alias's name, which the zone may
// not hold at all: NXDOMAIN there becomes NODATA, NOERROR with the zone's SOA (RFC 2308 2.2). A
// name that answers A or AAAA exists, and NXDOMAIN for it would let a resolver deny it and every
// name below it (RFC 8020), its addresses included; a mail server would bounce instead of falling
// back to the A record (RFC 5321 5.1). *dnssec* above signs the NODATA with a proof that the name
// exists. An answer that holds records (a CNAME chain whose end does not exist) is left as it is,
// and so is a signed zone's own denial (NSEC or NSEC3 records): it proves NXDOMAIN, and a
// validator would reject it under another rcode.
type existingName struct{ dns.ResponseWriter }

func (w existingName) WriteMsg(m *dns.Msg) error {
	if m.Rcode == dns.RcodeNameError && len(m.Answer) == 0 && !hasDenial(m) {
		m = m.Copy() // the message is the plugin's below; never change it (plugin.md)
		m.Rcode = dns.RcodeSuccess
	}
	return w.ResponseWriter.WriteMsg(m)
}

// hasDenial reports whether m's authority section holds NSEC or NSEC3 records.
func hasDenial(m *dns.Msg) bool {
	for _, rr := range m.Ns {
		if t := rr.Header().Rrtype; t == dns.TypeNSEC || t == dns.TypeNSEC3 {
			return true
		}
	}
	return false
}

// zoneAddrs returns the records of the query's type that the zone itself holds at the query's
// name: the fallback served when the target cannot be resolved.
func (f *Flatten) zoneAddrs(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) []dns.RR {
	q := r.Question[0]
	m, _, _ := f.askNext(ctx, w, r, q.Name, q.Qtype)
	if m == nil || m.Rcode != dns.RcodeSuccess {
		return nil
	}
	return recordsOf(m, q.Name, q.Qtype)
}

// recordsOf returns the records of qtype owned by name in m's answer section.
func recordsOf(m *dns.Msg, name string, qtype uint16) []dns.RR {
	var rrs []dns.RR
	for _, rr := range m.Answer {
		if h := rr.Header(); h.Rrtype == qtype && strings.EqualFold(h.Name, name) {
			rrs = append(rrs, rr)
		}
	}
	return rrs
}

// zoneSOA returns a copy of the SOA of zone from the plugins below, for the authority section
// of a NODATA answer (RFC 2308 3), or nil when they do not serve the zone.
func (f *Flatten) zoneSOA(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string) *dns.SOA {
	m, _, _ := f.askNext(ctx, w, r, zone, dns.TypeSOA)
	if m == nil || m.Rcode != dns.RcodeSuccess {
		return nil
	}
	for _, rr := range m.Answer {
		if soa, ok := rr.(*dns.SOA); ok && strings.EqualFold(soa.Hdr.Name, zone) {
			return dns.Copy(soa).(*dns.SOA)
		}
	}
	return nil
}

// typeALIAS is PowerDNS's ALIAS record type; its data is one domain name in wire format. Zones
// hold it in RFC 3597 generic form: `NAME TTL IN TYPE65401 \# LEN HEX`.
const typeALIAS = 65401

// zoneAlias is what the zone says about one name: the target of its ALIAS record, if any.
type zoneAlias struct {
	target  string // lowercased FQDN; empty: the name holds no (usable) ALIAS record
	ttl     uint32 // the ALIAS record's TTL: one more bound on the answer's TTL
	checked time.Time
}

// zoneAliases remembers which names hold ALIAS records, so that an A/AAAA query costs no extra
// lookup in the zone while the memory is fresh. It is refreshed per name after `refresh` (a zone
// reload or transfer is seen within that time), and bounded: past capacity, entries are dropped
// at random, so names made up by clients cannot grow it without end.
type zoneAliases struct {
	mu       sync.RWMutex
	names    map[string]*zoneAlias
	refresh  time.Duration
	capacity int
}

// zoneAliasRefresh is how long what a name holds is remembered.
const zoneAliasRefresh = 5 * time.Second

func newZoneAliases(capacity int) *zoneAliases {
	return &zoneAliases{names: map[string]*zoneAlias{}, refresh: zoneAliasRefresh, capacity: capacity}
}

// zoneAliasFor returns what name (lowercased) holds: its ALIAS target, if any. It asks the plugins
// below only when what it remembers is older than the refresh interval.
func (f *Flatten) zoneAliasFor(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, name string) *zoneAlias {
	za := f.zoneAliases
	now := f.pool.cache.now()
	za.mu.RLock()
	z, ok := za.names[name]
	za.mu.RUnlock()
	if ok && now.Sub(z.checked) < za.refresh {
		return z
	}

	z = &zoneAlias{checked: now}
	if m, _, _ := f.askNext(ctx, w, r, name, typeALIAS); m != nil && m.Rcode == dns.RcodeSuccess {
		for _, rr := range m.Answer {
			if rr.Header().Rrtype != typeALIAS || !strings.EqualFold(rr.Header().Name, name) {
				continue
			}
			target, err := aliasTarget(rr)
			if err != nil {
				log.Warningf("ignoring the ALIAS record at %s: %v", name, err)
				continue
			}
			z.target, z.ttl = target, rr.Header().Ttl
			break // PowerDNS uses the first ALIAS at a name too
		}
	}

	za.mu.Lock()
	if len(za.names) >= za.capacity {
		for k := range za.names {
			delete(za.names, k)
			break
		}
	}
	za.names[name] = z
	za.mu.Unlock()
	return z
}

// aliasTarget decodes the domain name in an ALIAS record's data, which miekg/dns keeps in RFC
// 3597 form (the type is unknown to it).
func aliasTarget(rr dns.RR) (string, error) {
	u, ok := rr.(*dns.RFC3597)
	if !ok {
		return "", fmt.Errorf("not in RFC 3597 form: %s", rr)
	}
	wire, err := hex.DecodeString(u.Rdata)
	if err != nil {
		return "", fmt.Errorf("rdata is not hex: %v", err)
	}
	name, off, err := dns.UnpackDomainName(wire, 0)
	if err != nil {
		return "", fmt.Errorf("rdata is not a domain name: %v", err)
	}
	if off != len(wire) {
		return "", fmt.Errorf("%d bytes after the domain name", len(wire)-off)
	}
	name = strings.ToLower(name)
	if !hostname(name) {
		return "", fmt.Errorf("target %q is not a host name", name)
	}
	return name, nil
}

// cnameNames is the `cname NAMES...` option: which names get the CNAME chains that the plugins
// below answer with flattened.
type cnameNames struct {
	all      bool            // `*`: every name in ZONES
	exact    map[string]bool // absolute names
	suffixes []string        // `*.zone.`: names strictly below zone, as ".zone."
}

func (c *cnameNames) empty() bool {
	return c == nil || (!c.all && len(c.exact) == 0 && len(c.suffixes) == 0)
}

func (c *cnameNames) match(name string) bool {
	if c.empty() {
		return false
	}
	if c.all || c.exact[name] {
		return true
	}
	for _, s := range c.suffixes {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
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
	end, ferr := follow(m, name, q.Qtype, c, map[string]bool{name: true}, f.cfg.maxDepth)
	// A zone whose chain leaves it answers SERVFAIL with its part of the chain when it cannot
	// follow it out (askNext hides the server it would follow it through): flatten follows it.
	inZone := plugin.Zones(f.cfg.zones).Matches(end) != "" // read below only when follow succeeded
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
		return writeAddrs(w, r, c.addrs, f.cfg.clampTTL(c.ttl))
	}
	// The chain ends at a name flattened here: answer with what that name answers with. Asking
	// upstream would ask the world for our own name (or ourselves, for a loop).
	if a, ok := f.aliases.get(end); ok {
		var one [1]*slot
		return f.flatten(ctx, w, r, zone, c.ttl, a.slots(qtypeIndex(q.Qtype), one[:0]), f.cfg.policyFor(false))
	}
	if f.zoneAliases != nil && inZone {
		if za := f.zoneAliasFor(ctx, w, r, end); za.target != "" {
			return f.flattenZoneTarget(ctx, w, r, zone, min(c.ttl, za.ttl), za.target)
		}
	}
	if inZone || hasNegativeSOA(m, end) {
		// The chain ends inside the zone, or the zone proved its end has no address of the type:
		// the plugins below already answered it, and it is nobody else's business. NODATA.
		reply := authoritative(r)
		if soa := f.zoneSOA(ctx, w, r, zone); soa != nil {
			soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl, max(c.ttl, f.cfg.ttlMin))
			reply.Ns = []dns.RR{soa}
		}
		w.WriteMsg(reply)
		return dns.RcodeSuccess, nil
	}
	return f.flattenZoneTarget(ctx, w, r, zone, c.ttl, end)
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
