package flatten

import (
	"context"
	"strings"

	"github.com/coredns/coredns/plugin/pkg/nonwriter"

	"github.com/miekg/dns"
)

// askNext sends a question to the plugins below flatten and returns their answer without
// writing it to the client (nonwriter), or nil when they wrote nothing.
func (f *Flatten) askNext(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, name string, qtype uint16) *dns.Msg {
	if f.Next == nil {
		return nil
	}
	q := r.Copy()
	q.Question[0] = dns.Question{Name: name, Qtype: qtype, Qclass: dns.ClassINET}
	nw := nonwriter.New(w)
	f.Next.ServeDNS(ctx, nw, q)
	return nw.Msg
}

// zoneAddrs returns the records of the query's type that the zone itself holds at the query's
// name: the fallback served when the target cannot be resolved.
func (f *Flatten) zoneAddrs(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) []dns.RR {
	q := r.Question[0]
	m := f.askNext(ctx, w, r, q.Name, q.Qtype)
	if m == nil || m.Rcode != dns.RcodeSuccess {
		return nil
	}
	var rrs []dns.RR
	for _, rr := range m.Answer {
		if h := rr.Header(); h.Rrtype == q.Qtype && strings.EqualFold(h.Name, q.Name) {
			rrs = append(rrs, rr)
		}
	}
	return rrs
}

// zoneSOA returns a copy of the SOA of zone from the plugins below, for the authority section
// of a NODATA answer (RFC 2308 3), or nil when they do not serve the zone.
func (f *Flatten) zoneSOA(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string) *dns.SOA {
	m := f.askNext(ctx, w, r, zone, dns.TypeSOA)
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
