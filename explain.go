package flatten

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/coredns/coredns/plugin"

	"github.com/miekg/dns"
)

// explainPrefix is the label that asks for an explanation: a TXT query for _flatten.NAME.
const explainPrefix = "_flatten."

// defaultExplainNets is who may ask without a CIDR list: this host only. An explanation names
// targets and upstream errors, which are nobody else's business by default.
var defaultExplainNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// isExplainQuery reports a TXT question for _flatten.NAME.
func isExplainQuery(r *dns.Msg) bool {
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		return false
	}
	q := r.Question[0]
	return q.Qtype == dns.TypeTXT && q.Qclass == dns.ClassINET && len(q.Name) > len(explainPrefix) &&
		strings.EqualFold(q.Name[:len(explainPrefix)], explainPrefix)
}

// explain answers a TXT query for _flatten.NAME with what flatten does for NAME: what it follows,
// what a query gets now and why, from what the cache knows. It never asks upstream: an
// explanation must not change what it explains. Clients outside the explain CIDRs are REFUSED.
func (f *Flatten) explain(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	name := strings.ToLower(r.Question[0].Name[len(explainPrefix):])
	zone := plugin.Zones(f.cfg.zones).Matches(name)
	if zone == "" {
		return plugin.NextOrFailure(f.Name(), f.Next, ctx, w, r)
	}
	if !f.mayExplain(w.RemoteAddr()) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeRefused)
		if r.IsEdns0() != nil {
			addEDE(m, dns.ExtendedErrorCodeProhibited, "explain is not allowed from this address")
		}
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	}

	var lines []string
	fl := f.explainTargets(ctx, w, r, name)
	targets, kind := fl.targets, fl.kind
	if len(targets) == 0 {
		lines = append(lines, name+" is not flattened here")
	} else {
		head := fmt.Sprintf("name=%s by=%s targets=%s", name, kind, strings.Join(targets, ","))
		if fl.via != "" {
			head += " via=" + fl.via
		}
		lines = append(lines, head)
		lines = append(lines, f.explainPolicy(fl.fromZone, targets)...)
		now := f.pool.cache.now()
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			lines = append(lines, f.explainAnswer(ctx, w, r, name, qtype, fl.fromZone, targets, now))
			for i, t := range targets {
				lines = append(lines, f.explainTarget(i, t, qtype, now))
			}
		}
		if f.cfg.https && kind != "cname" {
			// The HTTPS records come from the target that answers the addresses (https.go).
			target := targets[0]
			if a, ok := f.aliases.get(name); ok {
				target = f.httpsTarget(ctx, a, true)
			}
			i := slices.Index(targets, target)
			lines = append(lines, f.explainAnswer(ctx, w, r, name, dns.TypeHTTPS, fl.fromZone, []string{target}, now), f.explainTarget(i, target, dns.TypeHTTPS, now))
		}
		lines = append(lines, f.explainHealth(targets)...)
	}

	m := authoritative(r)
	for _, l := range lines {
		// TTL 0: an explanation is about this moment and must not be cached (RFC 1035 3.2.1).
		m.Answer = append(m.Answer, &dns.TXT{
			Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET},
			Txt: txtStrings(l),
		})
	}
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// mayExplain reports whether the client at addr is inside the explain CIDRs.
func (f *Flatten) mayExplain(addr net.Addr) bool { return inPrefixes(addr, f.cfg.explainNets) }

// followed is what a flattened name follows, for explain: its targets, how it comes to follow
// them (kind: alias, zone_alias, cname) and, for cname, the chain inside the zone that leads to
// them (via). fromZone is whether zone data chose the targets, which selects the security policy
// (policy.go): a cname chain that ends at an `alias` name is answered as that alias.
type followed struct {
	targets   []string
	kind, via string
	fromZone  bool
}

// explainTargets returns what NAME follows; no targets when it is not flattened here.
func (f *Flatten) explainTargets(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, name string) followed {
	if a, ok := f.aliases.get(name); ok {
		return followed{targets: a.targets(), kind: "alias"}
	}
	if f.zoneAliases != nil {
		if za := f.zoneAliasFor(ctx, w, r, name); za.target != "" {
			return followed{targets: []string{za.target}, kind: "zone_alias", fromZone: true}
		}
	}
	if !f.cfg.cnames.match(name) {
		return followed{}
	}
	m, _, _ := f.askNext(ctx, w, r, name, dns.TypeA)
	if m == nil {
		return followed{}
	}
	c := &chain{start: name}
	end, err := follow(m, name, dns.TypeA, c, map[string]bool{name: true}, f.cfg.maxDepth)
	if err != nil || len(c.hops) == 0 || len(c.addrs) > 0 {
		return followed{} // not a chain, or one the zone answers itself
	}
	via := chainString(name, c.hops)
	if a, ok := f.aliases.get(end); ok {
		return followed{targets: a.targets(), kind: "cname", via: via}
	}
	if plugin.Zones(f.cfg.zones).Matches(end) != "" {
		return followed{}
	}
	return followed{targets: []string{end}, kind: "cname", via: via, fromZone: true}
}

// slotOf returns the slot of target for qtype if the cache has one, without making one.
func (f *Flatten) slotOf(target string, qtype uint16) *slot {
	return f.pool.cache.existing(cacheKey{name: target, qtype: qtype})
}

// explainAnswer says what a query for qtype gets now, ranked as flatten ranks it, but from the
// cache alone, under the policy of targets chosen by zone data (fromZone) or by an `alias` line.
func (f *Flatten) explainAnswer(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, name string, qtype uint16, fromZone bool, targets []string, now time.Time) string {
	var slots []*slot
	for _, t := range targets {
		if s := f.slotOf(t, qtype); s != nil && (!fromZone || f.cfg.targetAllowed(t)) {
			slots = append(slots, s)
		}
	}
	q := r.Copy()
	q.Question[0] = dns.Question{Name: name, Qtype: qtype, Qclass: dns.ClassINET}
	v := f.decide(ctx, w, q, &question{peek: true, policy: f.cfg.policyFor(fromZone)}, slots)
	typ := dns.TypeToString[qtype]
	switch c := v.candidate; {
	case c.e == nil && len(v.fallback) > 0:
		return fmt.Sprintf("type=%s answer=fallback addrs=%s", typ, addrList(v.fallback))
	case c.e == nil:
		errText := f.notYet()
		if v.err != nil {
			errText = v.err.text
		}
		return fmt.Sprintf("type=%s answer=servfail error='%s'", typ, errText)
	case c.e.negative():
		return fmt.Sprintf("type=%s answer=nodata source=%s target=%s ttl=%d", typ, c.src, slots[c.i].name, f.pool.cache.ttl(c.e, c.src, now))
	}
	c := v.candidate
	return fmt.Sprintf("type=%s answer=%s target=%s ttl=%d addrs=%s", typ, c.src, slots[c.i].name, f.pool.cache.ttl(c.e, c.src, now), addrList(c.addrs))
}

// notYet says why nothing is known of a target yet.
func (f *Flatten) notYet() string {
	switch {
	case f.pool.self != nil && f.pool.self.server.Load() == nil && f.pool.self.probed.Load():
		return "not resolved yet: this block could not ask its own listener for the server to resolve through; the first query brings it"
	case f.pool.self != nil && f.pool.self.server.Load() == nil:
		return "not resolved yet: the startup round waits for the server to resolve through"
	case !f.pool.cache.ready():
		return "not resolved yet: the startup round is running"
	}
	return "not resolved yet"
}

// explainTarget describes what the cache knows of one target and type: its state, when it was
// last resolved, the chain with each hop's TTL, the addresses and the last error.
func (f *Flatten) explainTarget(i int, target string, qtype uint16, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "target=%d:%s type=%s", i+1, target, dns.TypeToString[qtype])
	s := f.slotOf(target, qtype)
	if s == nil {
		b.WriteString(" state=unknown")
		return b.String()
	}
	e, src, _ := f.pool.cache.get(context.Background(), s, &question{key: s.key(), peek: true})
	switch {
	case src == srcFresh:
		b.WriteString(" state=fresh")
	case src == srcStale:
		b.WriteString(" state=stale")
	case e == nil && s.good.Load() == nil:
		b.WriteString(" state=unresolved")
	default:
		b.WriteString(" state=expired")
	}
	if e = s.good.Load(); e != nil {
		fmt.Fprintf(&b, " refreshed=%s age=%s expires_in=%s chain=%s",
			e.fetchedAt().UTC().Format(time.RFC3339), now.Sub(e.fetchedAt()).Truncate(time.Second),
			e.expires().Sub(now).Truncate(time.Second), hopList(target, qtype, e.hops(), e.addrs()))
		if e.negative() {
			if e.nxdomain {
				b.WriteString(" result=nxdomain")
			} else {
				b.WriteString(" result=nodata")
			}
		} else {
			fmt.Fprintf(&b, " addrs=%s", addrList(e.addrs()))
		}
	}
	if f.cfg.secureTargets() {
		b.WriteString(" dnssec=" + validationState(s))
	}
	if fl := s.fail.Load(); fl != nil {
		fmt.Fprintf(&b, " last_error='%s' error_at=%s", fl.err.text, fl.at.UTC().Format(time.RFC3339))
	}
	// The watched or notified zones the chain passes through, and when each last made it
	// re-resolve (notify.go).
	for _, z := range chainZones(s) {
		at, why := lastPoke(z)
		if at.IsZero() {
			fmt.Fprintf(&b, " zone=%s", z)
			continue
		}
		fmt.Fprintf(&b, " zone=%s changed=%s by='%s'", z, at.UTC().Format(time.RFC3339), why)
	}
	return b.String()
}

// hopList spells a chain with each record's TTL: a.example.(CNAME 300)>b.example.(A 60).
func hopList(target string, qtype uint16, hops []hop, addrs []dns.RR) string {
	var b strings.Builder
	owner := target // each hop's owner is the target of the hop before
	for _, h := range hops {
		fmt.Fprintf(&b, "%s(%s %d)>", owner, dns.TypeToString[h.rrtype], h.ttl)
		owner = h.target
	}
	if len(addrs) > 0 {
		fmt.Fprintf(&b, "%s(%s %d)", owner, dns.TypeToString[qtype], ttlOf(addrs[0]))
	} else {
		b.WriteString(owner)
	}
	return b.String()
}

// addrList is the addresses of rrs, comma-separated.
func addrList(rrs []dns.RR) string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		default: // an HTTPS record
			out = append(out, strings.TrimPrefix(rr.String(), rr.Header().String()))
		}
	}
	return strings.Join(out, ",")
}

// txtStrings splits s into the 255-octet character-strings a TXT record holds (RFC 1035 3.3.14).
func txtStrings(s string) []string {
	var out []string
	for len(s) > 255 {
		out = append(out, s[:255])
		s = s[255:]
	}
	return append(out, s)
}

// explainHealth describes, with health checks on, the health of every address the targets
// resolve to: up, down or not probed yet, and the last failure.
func (f *Flatten) explainHealth(targets []string) []string {
	if f.pool.health == nil {
		return nil
	}
	var lines []string
	seen := map[netip.Addr]bool{}
	for _, t := range targets {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			s := f.slotOf(t, qtype)
			if s == nil {
				continue
			}
			e := s.good.Load()
			if e == nil {
				continue
			}
			for _, rr := range e.addrs() {
				ip, ok := rrAddr(rr)
				if !ok || seen[ip] {
					continue
				}
				seen[ip] = true
				h := f.pool.health.status(ip)
				l := fmt.Sprintf("health=%s state=%s failures=%d", netip.AddrPortFrom(ip, f.pool.health.port), h.state, h.fails)
				if !h.lastProbe.IsZero() {
					l += " checked=" + h.lastProbe.UTC().Format(time.RFC3339)
				}
				if h.lastErr != "" {
					l += fmt.Sprintf(" last_error='%s' error_at=%s", h.lastErr, h.lastFail.UTC().Format(time.RFC3339))
				}
				lines = append(lines, l)
			}
		}
	}
	return lines
}
