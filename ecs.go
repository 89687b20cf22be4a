package flatten

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// EDNS Client Subnet (RFC 7871), the `ecs` option.
//
// A CDN answers with the edge nearest to the network it believes is asking. Without ECS, that
// network is flatten's own, so every client would be sent to the edge nearest this server. With
// `ecs`, each resolution carries the client's network, truncated for privacy, and what comes
// back is cached per network, keyed by the scope the upstream says the answer is valid for.

// Defaults of `ecs`: the prefix lengths RFC 7871 11.1 recommends as the most to send.
const (
	defaultECSv4 = 24
	defaultECSv6 = 56
)

// ecsConfig is `ecs [V4BITS [V6BITS]]`: the most bits of a client's address sent upstream.
type ecsConfig struct {
	v4, v6 int
}

// clientECS returns the ECS option of a query, nil when it has none, or why it is malformed.
//
// miekg/dns already refuses to unpack an option with an unknown FAMILY, or with a SOURCE or
// SCOPE PREFIX-LENGTH longer than the family's addresses: the server answers those with FORMERR
// before any plugin runs. What is left to check: the address bits beyond SOURCE PREFIX-LENGTH
// must be zero (RFC 7871 6), SCOPE PREFIX-LENGTH must be 0 in a query (RFC 7871 6), and one
// option per message, or which network asks is ambiguous.
func clientECS(r *dns.Msg) (*dns.EDNS0_SUBNET, error) {
	o := r.IsEdns0()
	if o == nil {
		return nil, nil
	}
	var ecs *dns.EDNS0_SUBNET
	for _, opt := range o.Option {
		e, ok := opt.(*dns.EDNS0_SUBNET)
		if !ok {
			continue
		}
		if ecs != nil {
			return nil, errors.New("more than one ECS option")
		}
		ecs = e
	}
	if ecs == nil {
		return nil, nil
	}
	if ecs.SourceScope != 0 {
		return nil, fmt.Errorf("SCOPE PREFIX-LENGTH is %d in a query, must be 0", ecs.SourceScope)
	}
	if _, err := ecsPrefix(ecs); err != nil {
		return nil, err
	}
	return ecs, nil
}

// ecsPrefix returns the network an ECS option names. FAMILY 0 (no address, which dig sends with
// SOURCE PREFIX-LENGTH 0 and miekg/dns accepts only so) gives the zero Prefix: no network.
func ecsPrefix(e *dns.EDNS0_SUBNET) (netip.Prefix, error) {
	var a netip.Addr
	switch e.Family {
	case 0:
		if e.SourceNetmask != 0 {
			return netip.Prefix{}, errors.New("FAMILY 0 with an address")
		}
		return netip.Prefix{}, nil
	case 1:
		ip := e.Address.To4()
		if ip == nil {
			return netip.Prefix{}, errors.New("FAMILY 1 with an address that is not IPv4")
		}
		a = netip.AddrFrom4([4]byte(ip))
	case 2:
		ip := e.Address.To16()
		if ip == nil {
			return netip.Prefix{}, errors.New("FAMILY 2 with an address that is not IPv6")
		}
		a = netip.AddrFrom16([16]byte(ip)) // FAMILY says IPv6: an IPv4-mapped address stays one
	default:
		return netip.Prefix{}, fmt.Errorf("unknown FAMILY %d", e.Family)
	}
	p := netip.PrefixFrom(a, int(e.SourceNetmask))
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("SOURCE PREFIX-LENGTH %d is longer than the address", e.SourceNetmask)
	}
	if p.Masked().Addr() != a {
		return netip.Prefix{}, fmt.Errorf("address bits set beyond SOURCE PREFIX-LENGTH %d", e.SourceNetmask)
	}
	return p, nil
}

// subnet returns the client network to send upstream for r, truncated to V4BITS / V6BITS, and
// false when none is sent (the answer then comes from the shared entry, as without `ecs`):
//   - the client sent ECS with SOURCE PREFIX-LENGTH 0: it opted out (RFC 7871 7.1.2: no address
//     is added on its behalf, and "queries for /0 can then be answered from this cached
//     response");
//   - V4BITS or V6BITS is 0 for the client's family;
//   - the query is one of flatten's own lookups through this server that carries no ECS: the
//     warm resolution of a configured alias, whose address is flatten's own.
//
// A query without ECS gets a network made from its source address (RFC 7871 7.1.1): the client is
// usually a recursive resolver, so the CDN sees what it would see without flattening.
func (e *ecsConfig) subnet(w dns.ResponseWriter, r *dns.Msg, nested bool) (netip.Prefix, bool) {
	var p netip.Prefix
	if o, err := clientECS(r); err == nil && o != nil {
		p, _ = ecsPrefix(o)
		if !p.IsValid() {
			return netip.Prefix{}, false // FAMILY 0: opted out
		}
	} else {
		if nested {
			return netip.Prefix{}, false
		}
		a, ok := remoteAddr(w)
		if !ok {
			return netip.Prefix{}, false
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	limit := e.v6
	if p.Addr().Is4() {
		limit = e.v4
	}
	bits := min(p.Bits(), limit)
	if bits == 0 {
		return netip.Prefix{}, false
	}
	sub, _ := p.Addr().Prefix(bits)
	return sub, true
}

// remoteAddr is the client's address; an IPv4 client on a dual-stack socket is IPv4.
func remoteAddr(w dns.ResponseWriter) (netip.Addr, bool) {
	var ip net.IP
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.TCPAddr:
		ip = a.IP
	case nil:
		return netip.Addr{}, false
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}, false
		}
		return ap.Addr().Unmap().WithZone(""), true
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap().WithZone(""), ok
}

// formerr answers a query whose ECS option is malformed with FORMERR (RFC 7871 6: "SHOULD return
// FORMERR to reject the packet, as a signal to the software developer making the request to fix
// their implementation"; 7.2.1: a wrongly formatted option "MUST be rejected and a FORMERR
// response MUST be returned"), with an Extended DNS Error that says what is wrong. A resolver
// that gets FORMERR retries without EDNS (RFC 6891 7), and is then answered for its address.
func formerr(w dns.ResponseWriter, r *dns.Msg, err error) (int, error) {
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeFormatError)
	addEDE(m, dns.ExtendedErrorCodeOther, "malformed ECS option: "+err.Error())
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// echoECS adds to m, the answer to r, the client's ECS option with the SCOPE PREFIX-LENGTH the
// answer is valid for (RFC 7871 7.2.1: FAMILY, SOURCE PREFIX-LENGTH and ADDRESS as in the query).
// A client that sent none gets none (RFC 7871 7.2.2): it might not understand it.
func (f *Flatten) echoECS(m, r *dns.Msg, e *entry) {
	if f.ecs == nil {
		return
	}
	o, err := clientECS(r)
	if err != nil || o == nil {
		return
	}
	opt := m.IsEdns0()
	if opt == nil {
		m.SetEdns0(udpSize, false)
		opt = m.IsEdns0()
	}
	opt.Option = append(opt.Option, &dns.EDNS0_SUBNET{
		Code:          dns.EDNS0SUBNET,
		Family:        o.Family,
		SourceNetmask: o.SourceNetmask,
		SourceScope:   e.ecsScope,
		Address:       o.Address,
	})
}

// subnetKey carries, in the context of a resolution, the client network it is made for: the
// exchangers send it upstream.
type subnetKey struct{}

func withSubnet(ctx context.Context, p netip.Prefix) context.Context {
	return context.WithValue(ctx, subnetKey{}, p)
}

// subnetFrom returns the network a resolution is made for; the zero Prefix for none.
func subnetFrom(ctx context.Context) netip.Prefix {
	p, _ := ctx.Value(subnetKey{}).(netip.Prefix)
	return p
}

// subnetFor returns the context a resolution of s runs in: with the client network to send for a
// client-subnet slot, without any for a shared one (a lookup through this server carries the
// network of the resolution that made it, which a shared slot must not inherit). A slot of a
// broader network (refreshed ahead of expiry by a client inside it) is asked for with that
// client's network, not its own: RFC 7871 7.1.1 says refreshes use the longest SOURCE
// PREFIX-LENGTH we are willing to cache, even when an answer said a shorter one was enough.
func subnetFor(ctx context.Context, s *slot) context.Context {
	p, sub := s.subnet().prefix(), subnetFrom(ctx)
	if !p.IsValid() {
		if sub.IsValid() {
			return withSubnet(ctx, netip.Prefix{})
		}
		return ctx
	}
	if sub.IsValid() && sub.Bits() >= p.Bits() && p.Contains(sub.Addr()) {
		return ctx
	}
	return withSubnet(ctx, p)
}

// addECS adds the ECS option for the resolution's client network to q, an upstream question.
// SCOPE PREFIX-LENGTH is 0 and the address holds only SOURCE PREFIX-LENGTH bits (RFC 7871 6;
// miekg/dns packs only the octets those bits need).
func addECS(ctx context.Context, q *dns.Msg) {
	sub := subnetFrom(ctx)
	if !sub.IsValid() {
		return
	}
	family := uint16(2)
	if sub.Addr().Is4() {
		family = 1
	}
	o := q.IsEdns0()
	o.Option = append(o.Option, &dns.EDNS0_SUBNET{
		Code:          dns.EDNS0SUBNET,
		Family:        family,
		SourceNetmask: uint8(sub.Bits()),
		Address:       net.IP(sub.Addr().AsSlice()),
	})
}

// checkECS discards an answer whose ECS option does not echo the FAMILY, SOURCE PREFIX-LENGTH and
// ADDRESS of the question's (RFC 7871 7.3: "the full response MUST be dropped"; 11.2: it makes a
// forged answer with scope 0, cached for everyone, harder to slip in). An answer without ECS is
// valid for every network (RFC 7871 7.3), as is any answer to a question without it.
func checkECS(q, resp *dns.Msg) error {
	sent, _ := clientECS(q)
	if sent == nil {
		return nil
	}
	var got *dns.EDNS0_SUBNET
	if o := resp.IsEdns0(); o != nil {
		for _, opt := range o.Option {
			if e, ok := opt.(*dns.EDNS0_SUBNET); ok {
				got = e
				break
			}
		}
	}
	if got == nil {
		return nil
	}
	want, _ := ecsPrefix(sent)
	p, err := ecsPrefix(&dns.EDNS0_SUBNET{Family: got.Family, SourceNetmask: got.SourceNetmask, Address: got.Address})
	if err != nil || got.Family != sent.Family || p != want {
		return errMalformed(q.Question[0].Name, fmt.Sprintf("ECS option in the answer (%d %s/%d) does not echo the question's (%s)",
			got.Family, got.Address, got.SourceNetmask, want))
	}
	return nil
}

// answerScope is the SCOPE PREFIX-LENGTH of an answer: 0 without an ECS option (RFC 7871 7.3).
func answerScope(resp *dns.Msg) uint8 {
	if o := resp.IsEdns0(); o != nil {
		for _, opt := range o.Option {
			if e, ok := opt.(*dns.EDNS0_SUBNET); ok {
				return e.SourceScope
			}
		}
	}
	return 0
}

// The cache for client networks.
//
// A slot whose key has a scope holds the answer for one client network (RFC 7871 7.3.1): the
// network of the client that asked, cut to the scope the upstream returned. Scope 0 answers are
// kept at the family's /0 and serve every client of the family; a /24 scope answer serves only
// that /24. These slots are made on demand and count against `cache CAPACITY` with the others, so
// however many networks ask (or are made up), the cache stays bounded. They are refreshed ahead
// of expiry only when a client of the network asks within the prefetch window: upstream load
// follows demand, not the number of networks ever seen.
//
// The answer of a configured alias resolved at startup (the warm answer) carries no network: it
// was tailored to flatten's own address, so it is never served in place of an answer for the
// client's network, only as the last stand-in before the zone's fallback records.

// subnet is a client network as a cache key holds it. A netip.Prefix is 32 bytes (its Addr has
// room for an IPv6 zone, which a network never has); this is 18, which keeps a cacheKey at 40
// bytes (a slot holds its subnet by pointer, and only when it has one). Equal networks give
// equal subnets, so it compares as the Prefix would. The zero subnet is no network.
type subnet struct {
	addr [16]byte // the network's address, IPv4 as IPv4-mapped IPv6
	bits uint8    // the prefix length plus one; 0: no network
	is4  bool
}

func subnetOf(p netip.Prefix) subnet {
	if !p.IsValid() {
		return subnet{}
	}
	return subnet{addr: p.Addr().As16(), bits: uint8(p.Bits() + 1), is4: p.Addr().Is4()}
}

// prefix is the network as a netip.Prefix; the zero Prefix for no network.
func (s subnet) prefix() netip.Prefix {
	if s.bits == 0 {
		return netip.Prefix{}
	}
	a := netip.AddrFrom16(s.addr)
	if s.is4 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(s.bits)-1)
}

// IsValid, Bits, Addr and String are netip.Prefix's, for the code that reads a key's network.
func (s subnet) IsValid() bool    { return s.bits != 0 }
func (s subnet) Bits() int        { return int(s.bits) - 1 }
func (s subnet) Addr() netip.Addr { return s.prefix().Addr() }
func (s subnet) String() string   { return s.prefix().String() }

// scopeIndex counts, per target, address type and family, the client-network slots at each prefix
// length, so that finding the most specific network that holds a client (RFC 7871 7.3.2: longest
// prefix match) probes only the lengths in use. Guarded by cache.mu.
type scopeIndex struct {
	lens  map[cacheKey]*lenCounts // key: name, qtype and the family's /0
	slots int                     // client-network slots in the cache
}

type lenCounts struct {
	n     [129]int32 // slots at /0 ... /128
	total int32
}

// familyKey is the index key of k: its name and type, and the /0 of its network's family.
func familyKey(k cacheKey) cacheKey {
	zero := netip.IPv6Unspecified()
	if k.scope.Addr().Is4() {
		zero = netip.IPv4Unspecified()
	}
	return cacheKey{name: k.name, qtype: k.qtype, scope: subnetOf(netip.PrefixFrom(zero, 0))}
}

// countScoped records that a slot for k was made (d = 1) or dropped (d = -1). Called with c.mu held.
func (c *cache) countScoped(k cacheKey, d int32) {
	if !k.scope.IsValid() {
		return
	}
	fk := familyKey(k)
	lc := c.ecs.lens[fk]
	if lc == nil {
		if c.ecs.lens == nil {
			c.ecs.lens = map[cacheKey]*lenCounts{}
		}
		lc = &lenCounts{}
		c.ecs.lens[fk] = lc
	}
	lc.n[k.scope.Bits()] += d
	if lc.total += d; lc.total <= 0 {
		delete(c.ecs.lens, fk)
	}
	c.ecs.slots += int(d)
	ecsEntries.WithLabelValues(c.server).Set(float64(c.ecs.slots))
}

// covering returns the entry of the most specific network that holds the client network k.scope,
// and its slot (RFC 7871 7.3.2), or with usable set, the most specific one that may still be
// served (fresh or within the stale window). An entry whose upstream asked for a longer prefix
// than it was sent (narrow) serves only queries for exactly that network.
func (c *cache) covering(k cacheKey, now time.Time, usable bool) (*entry, *slot) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	lc := c.ecs.lens[familyKey(k)]
	if lc == nil {
		return nil, nil
	}
	bits := k.scope.Bits()
	for l := bits; l >= 0; l-- {
		if lc.n[l] == 0 {
			continue
		}
		p, _ := k.scope.Addr().Prefix(l)
		s := c.slots[cacheKey{name: k.name, qtype: k.qtype, scope: subnetOf(p)}]
		if s == nil {
			continue
		}
		e := s.good.Load()
		if e == nil || (e.narrow && l < bits) || (usable && !c.usable(e, now)) {
			continue
		}
		return e, s
	}
	return nil, nil
}

// getECS is get for a client whose network is sub: what to answer from the slots of target and
// type of shared (the slot without a network), and where it comes from. The ladder: the most
// specific network holding the client while it is fresh; otherwise a resolution for the client's
// network (shared by every client of that network: one flight per network); if that fails, the
// most specific entry still within the stale window (the client's network, then broader ones down
// to the shared scope 0), then the warm answer; else nothing, and the caller's fallback.
func (c *cache) getECS(ctx context.Context, shared *slot, sub netip.Prefix, nested bool) (*entry, source, *resolveError) {
	k := cacheKey{name: shared.name, qtype: shared.qtype(), scope: subnetOf(sub)}
	now := c.now()
	if e, holder := c.covering(k, now, false); e != nil && now.Before(e.expires()) {
		// Refresh ahead through the slot that holds the entry, so that the clients of all the
		// networks it serves start one refresh between them, made for this client's network.
		if c.nearExpiry(e, now) {
			c.refreshAsync(withSubnet(ctx, sub), holder)
		}
		return e, srcFresh, nil
	}
	ctx = withSubnet(ctx, sub) // what the resolutions started below are made for

	s := c.slotFor(k)
	if f := s.fail.Load(); f != nil {
		if now.Before(f.until) {
			return c.ladderECS(shared, k, now, f.err)
		}
		if e, src, err := c.ladderECS(shared, k, now, f.err); src != srcNone {
			// As get does: answer at once from the ladder, retry in the background.
			c.refreshAsync(ctx, s)
			return e, src, err
		}
	}

	e, err := c.await(ctx, s, nested)
	if err == nil {
		return e, srcResolved, nil
	}
	return c.ladderECS(shared, k, c.now(), err)
}

// ladderECS is what a client network gets when its own answer cannot be had fresh.
func (c *cache) ladderECS(shared *slot, k cacheKey, now time.Time, err *resolveError) (*entry, source, *resolveError) {
	if e, _ := c.covering(k, now, true); e != nil {
		if now.Before(e.expires()) {
			return e, srcFresh, nil // a broader network's answer, fresh: valid for this client
		}
		return e, srcStale, err
	}
	if w := shared.good.Load(); c.usable(w, now) {
		// The warm answer stands in, served like a stale one (short TTL, EDE 3) and echoed
		// with the client's whole network as scope: it is nobody's tailored answer.
		stand := *w
		stand.ecsScope = uint8(k.scope.Bits())
		return &stand, srcStale, err
	}
	return nil, srcNone, err
}

// store publishes a resolved entry: in s, or, for a resolution made for a client network, in the
// slot of the network the upstream said the answer is for (RFC 7871 7.3.1), the network asked
// for cut to the returned scope. A scope longer than what was sent is cut to what was sent, the
// most we are willing to cache (RFC 7871 7.3.1), and the entry then serves only that network.
func (c *cache) store(ctx context.Context, s *slot, e *entry, ch *chain) {
	if s.scope == nil {
		c.setGood(s, e)
		return
	}
	sent := subnetFrom(ctx) // subnetFor set it
	if !sent.IsValid() {
		sent = s.scope.prefix()
	}
	e.ecsScope = uint8(min(int(ch.scope), sent.Bits()))
	e.narrow = int(ch.scope) > sent.Bits()
	p, _ := sent.Addr().Prefix(int(e.ecsScope))
	if subnetOf(p) == *s.scope {
		c.setGood(s, e)
		return
	}
	c.setGood(c.slotFor(cacheKey{name: s.name, qtype: s.qtype(), scope: subnetOf(p)}), e)
	if *s.scope == subnetOf(sent) {
		// The answer for this network now lives in a broader slot (or the upstream narrowed it);
		// an older answer left here would shadow it. The slot only held the flight: drop it.
		c.drop(s)
	}
}

// drop removes an on-demand slot that holds nothing worth keeping.
func (c *cache) drop(s *slot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setGood(s, nil)
	if k := s.key(); c.slots[k] == s && !s.pinned {
		delete(c.slots, k)
		c.demand--
		c.countScoped(k, -1)
		cacheEntries.WithLabelValues(c.server).Set(float64(c.countLocked()))
	}
}

// CacheBypassZones implements the cache.ZoneBypasser interface of CoreDNS's *cache* plugin: with
// `ecs`, a *cache* in the same server block passes queries for the names flattened here (and the
// names below them: *cache* matches zones) straight on. Its key ignores ECS, so it would answer
// every client with the addresses of whichever network asked first; flatten keeps its own cache
// per network.
func (f *Flatten) CacheBypassZones() []string {
	if f.ecs == nil {
		return nil
	}
	var zones []string
	f.aliases.each(func(name string, _ alias) { zones = append(zones, name) })
	if f.zoneAliasOn || (f.cnames != nil && f.cnames.all) {
		// Any name in ZONES may hold an ALIAS record, or answer with a CNAME.
		zones = append(zones, f.Zones...)
	}
	if f.cnames != nil {
		for name := range f.cnames.exact {
			zones = append(zones, name)
		}
		for _, s := range f.cnames.suffixes {
			zones = append(zones, strings.TrimPrefix(s, "."))
		}
	}
	slices.Sort(zones)
	return slices.Compact(zones)
}
