package flatten

import (
	"context"
	"net"
	"net/netip"
	"slices"

	"github.com/miekg/dns"
)

// HTTPS records (RFC 9460) at flattened names, with `https`. A browser asks for a name's HTTPS
// record before it connects: it says that the server speaks HTTP/3 (alpn), gives its addresses
// (ipv4hint, ipv6hint) and the key to encrypt the ClientHello with (ech). A flattened name
// answers A/AAAA with a target's addresses; without its HTTPS record, its visitors lose HTTP/3 on
// the first connection and ECH altogether, while a name that is a plain CNAME keeps both.

// isHTTPSQuery reports whether r is an HTTPS query flatten may answer: opcode QUERY, class IN,
// one question of type HTTPS.
func isHTTPSQuery(r *dns.Msg) bool {
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		return false
	}
	q := r.Question[0]
	return q.Qclass == dns.ClassINET && q.Qtype == dns.TypeHTTPS
}

// flattenHTTPS answers r, an HTTPS query for a flattened name that follows target now, whose
// addresses policy filters (`deny_addresses`: it filters the hints too). The zone's
// own HTTPS RRset at the name wins, and nothing is asked upstream: an operator who publishes one
// means it. Otherwise the answer is the HTTPS RRset at the end of target's chain, resolved,
// cached, refreshed ahead and served stale like addresses; a target without HTTPS records gives
// NODATA.
func (f *Flatten) flattenHTTPS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string, ttlCap uint32, target string, policy *addrPolicy) (int, error) {
	qname := r.Question[0].Name
	if m, _, _ := f.askNext(ctx, w, r, qname, dns.TypeHTTPS); m != nil && m.Rcode == dns.RcodeSuccess && len(recordsOf(m, qname, dns.TypeHTTPS)) > 0 {
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	}
	s := f.pool.cache.slotFor(cacheKey{name: target, qtype: dns.TypeHTTPS})
	return f.flatten(ctx, w, r, zone, ttlCap, []*slot{s}, policy)
}

// httpsTarget returns the target of a whose HTTPS records a query for its name gets: the one
// answering its addresses. With peek, from what is known now, without asking upstream.
func (f *Flatten) httpsTarget(ctx context.Context, a alias, peek bool) string {
	if a.one != nil {
		return a.one.name()
	}
	return a.more[f.answering(ctx, [2][]*slot{a.slots(0, nil), a.slots(1, nil)}, peek)].name()
}

// answering returns the index of the target whose addresses a query for the name gets, so that
// the HTTPS answer's hints and ECH keys belong to the addresses served. addrSlots holds the
// targets' slots for A and for AAAA (by qtypeIndex, each in the targets' order). It is the target
// that answers A, else AAAA, as the failover ladder ranks them (failover.go), resolved as a query
// for them would be (a browser asks for both at the same time: the resolutions are shared); with
// peek, from what is known now, and the first target when nothing is.
func (f *Flatten) answering(ctx context.Context, addrSlots [2][]*slot, peek bool) int {
	if len(addrSlots[0]) <= 1 {
		return 0
	}
	for _, slots := range addrSlots {
		if c, _ := f.pick(ctx, &question{peek: peek}, slots); c.e != nil && !c.e.negative() {
			return c.i
		}
	}
	return 0
}

// trimHints removes from the ipv4hint and ipv6hint SvcParams of the HTTPS records in rrs, copies
// the caller owns, the addresses an A/AAAA answer would not carry: those health checks marked
// down, and those inside `deny_addresses` (policy). A client may connect to a hint before the
// A/AAAA answer arrives (RFC 9460 7.3), and must not be sent where that answer would not send
// it. A hint left with no address is dropped, as an empty one is malformed (RFC 9460 7.3).
func (f *Flatten) trimHints(rrs []dns.RR, policy *addrPolicy) {
	var down func(netip.Addr) bool
	if f.pool.health != nil {
		down = f.pool.health.downNow()
	}
	if down == nil && (policy == nil || len(policy.deny) == 0) {
		return
	}
	drop := func(ip net.IP) bool {
		a, ok := netip.AddrFromSlice(ip)
		a = a.Unmap()
		return ok && ((down != nil && down(a)) || policy.deniesAddr(a))
	}
	for _, rr := range rrs {
		v, ok := rr.(*dns.HTTPS)
		if !ok {
			continue
		}
		v.Value = slices.DeleteFunc(v.Value, func(kv dns.SVCBKeyValue) bool {
			switch hint := kv.(type) {
			case *dns.SVCBIPv4Hint:
				hint.Hint = slices.DeleteFunc(hint.Hint, drop)
				return len(hint.Hint) == 0
			case *dns.SVCBIPv6Hint:
				hint.Hint = slices.DeleteFunc(hint.Hint, drop)
				return len(hint.Hint) == 0
			}
			return false
		})
	}
}
