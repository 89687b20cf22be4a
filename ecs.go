package flatten

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

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
	if f.cfg.ecs == nil {
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

// addECS adds the ECS option for sub, the network a resolution is made for, to q, an upstream
// question. SCOPE PREFIX-LENGTH is 0 and the address holds only SOURCE PREFIX-LENGTH bits (RFC
// 7871 6; miekg/dns packs only the octets those bits need).
func addECS(q *dns.Msg, sub netip.Prefix) {
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

// CacheBypassZones implements the cache.ZoneBypasser interface of CoreDNS's *cache* plugin: with
// `ecs`, a *cache* in the same server block passes queries for the names flattened here (and the
// names below them: *cache* matches zones) straight on. Its key ignores ECS, so it would answer
// every client with the addresses of whichever network asked first; flatten keeps its own cache
// per network.
func (f *Flatten) CacheBypassZones() []string {
	if f.cfg.ecs == nil {
		return nil
	}
	var zones []string
	f.aliases.each(func(name string, _ alias) { zones = append(zones, name) })
	if f.cfg.zoneAlias || (f.cfg.cnames != nil && f.cfg.cnames.all) {
		// Any name in ZONES may hold an ALIAS record, or answer with a CNAME.
		zones = append(zones, f.cfg.zones...)
	}
	if f.cfg.cnames != nil {
		for name := range f.cfg.cnames.exact {
			zones = append(zones, name)
		}
		for _, s := range f.cfg.cnames.suffixes {
			zones = append(zones, strings.TrimPrefix(s, "."))
		}
	}
	slices.Sort(zones)
	return slices.Compact(zones)
}
