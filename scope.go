package flatten

import (
	"net/netip"
	"time"
)

// Cache keys for client networks (`ecs`, RFC 7871).
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
// client's network, only as the last stand-in before the zone's fallback records (cache.stale).

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
	lens  map[cacheKey]*[129]int32 // key: name, qtype and the family's /0; slots at /0 ... /128
	slots int                      // client-network slots in the cache
}

// familyKey is the index key of k: its name and type, and the /0 of its network's family.
func familyKey(k cacheKey) cacheKey {
	zero := netip.IPv6Unspecified()
	if k.scope.Addr().Is4() {
		zero = netip.IPv4Unspecified()
	}
	return cacheKey{name: k.name, qtype: k.qtype, scope: subnetOf(netip.PrefixFrom(zero, 0))}
}

// count records that a slot for k was made (d = 1) or dropped (d = -1); keys without a scope are
// not counted. cache.mu is held.
func (x *scopeIndex) count(k cacheKey, d int32) {
	if !k.scope.IsValid() {
		return
	}
	fk := familyKey(k)
	n := x.lens[fk]
	if n == nil {
		if x.lens == nil {
			x.lens = map[cacheKey]*[129]int32{}
		}
		n = new([129]int32)
		x.lens[fk] = n
	}
	n[k.scope.Bits()] += d
	x.slots += int(d)
	if *n == ([129]int32{}) {
		delete(x.lens, fk)
	}
}

// covering returns the entry of the most specific network that holds the client network k.scope,
// and its slot (RFC 7871 7.3.2), or with usable set, the most specific one that may still be
// served (fresh or within the stale window). An entry whose upstream asked for a longer prefix
// than it was sent (narrow) serves only queries for exactly that network.
func (c *cache) covering(k cacheKey, now time.Time, usable bool) (*entry, *slot) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n := c.scopes.lens[familyKey(k)]
	if n == nil {
		return nil, nil
	}
	bits := k.scope.Bits()
	for l := bits; l >= 0; l-- {
		if n[l] == 0 {
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

// networkFor returns the client network to send upstream when s is resolved for a client in sub:
// none for a shared slot (a lookup through this server carries the network of the resolution
// that made it, which a shared slot must not inherit). A slot of a broader network (refreshed
// ahead of expiry by a client inside it) is asked for with that client's network, not its own:
// RFC 7871 7.1.1 says refreshes use the longest SOURCE PREFIX-LENGTH we are willing to cache,
// even when an answer said a shorter one was enough.
func networkFor(s *slot, sub netip.Prefix) netip.Prefix {
	p := s.subnet().prefix()
	if !p.IsValid() {
		return netip.Prefix{}
	}
	if sub.IsValid() && sub.Bits() >= p.Bits() && p.Contains(sub.Addr()) {
		return sub
	}
	return p
}

// store publishes a resolved entry: in s, or, for a resolution made for the client network sent,
// in the slot of the network the upstream said the answer is for (RFC 7871 7.3.1), the network
// asked for cut to the returned scope. A scope longer than what was sent is cut to what was sent,
// the most we are willing to cache (RFC 7871 7.3.1), and the entry then serves only that network.
func (c *cache) store(s *slot, e *entry, ch *chain, sent netip.Prefix) {
	if s.scope == nil {
		s.good.Store(e)
		return
	}
	e.ecsScope = uint8(min(int(ch.scope), sent.Bits()))
	e.narrow = int(ch.scope) > sent.Bits()
	p, _ := sent.Addr().Prefix(int(e.ecsScope))
	if subnetOf(p) == *s.scope {
		s.good.Store(e)
		return
	}
	c.slotFor(cacheKey{name: s.name, qtype: s.qtype(), scope: subnetOf(p)}).good.Store(e)
	if *s.scope == subnetOf(sent) {
		// The answer for this network now lives in a broader slot (or the upstream narrowed it);
		// an older answer left here would shadow it. The slot only held the flight: drop it.
		c.drop(s)
	}
}
