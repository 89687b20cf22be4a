package flatten

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin/metrics"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// The security options: what flatten may vouch for. With *dnssec* above it, a flattened answer is
// signed with the zone's key, so whatever an upstream said becomes the zone's own signed data; and
// with `zone_alias` or `cname`, whoever writes the zone chooses what flatten asks and serves.
//
//   - `dnssec_targets secure`: only answers the upstream validated (AD on every hop) count
//     (draft-ietf-dnsop-aname 4: a flattener SHOULD validate the target; it never turns bogus
//     data into signed data). The walker checks it (resolve.go); the entry remembers it.
//   - `allow_targets NAME...`: the names targets must be at or below.
//   - `deny_addresses CIDR...|none`, `max_addresses N`: addresses never answered, and at most N
//     of a type in an answer (addrPolicy).

// defaultZoneDeny is what names flattened from zone data (`zone_alias`, `cname`) never answer
// with unless `deny_addresses` says otherwise: "this network" (RFC 791, RFC 1122 3.2.1.3),
// loopback, link-local (where cloud metadata services live: 169.254.169.254), multicast, and
// their IPv6 counterparts (RFC 4291 2.5.2, 2.5.3, 2.5.6, 2.7). A zone written by someone else must
// not make this server answer, and sign, addresses of its own host or network.
var defaultZoneDeny = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// addrPolicy filters the addresses of an answer: none inside deny, at most max (0: no limit).
type addrPolicy struct {
	deny []netip.Prefix
	max  int
}

// apply returns the addresses of rrs that p lets through, in their order. It returns rrs itself,
// or a prefix of it, when nothing inside deny is dropped: a warm answer allocates nothing.
func (p *addrPolicy) apply(rrs []dns.RR) []dns.RR {
	if p == nil {
		return rrs
	}
	out, copied := rrs, false
	for i, rr := range rrs {
		switch denied := p.denied(rr); {
		case denied && !copied:
			// The first address dropped: copy the ones kept before it.
			out, copied = append(make([]dns.RR, 0, len(rrs)-1), rrs[:i]...), true
		case !denied && copied:
			out = append(out, rr)
		}
	}
	if p.max > 0 && len(out) > p.max {
		out = out[:p.max]
	}
	return out
}

// deniesAddr reports whether a is inside p's deny networks; false for a nil p.
func (p *addrPolicy) deniesAddr(a netip.Addr) bool {
	return p != nil && slices.ContainsFunc(p.deny, func(n netip.Prefix) bool { return n.Contains(a) })
}

// denied reports whether rr's address is inside p's deny networks.
func (p *addrPolicy) denied(rr dns.RR) bool {
	if len(p.deny) == 0 {
		return false
	}
	ip, ok := rrAddr(rr)
	return ok && slices.ContainsFunc(p.deny, func(n netip.Prefix) bool { return n.Contains(ip) })
}

// errProhibited is the failure of a target whose every address `deny_addresses` drops, or which
// `allow_targets` does not allow: EDE 18 (Prohibited, RFC 8914 4.19).
func errProhibited(text string) *resolveError {
	return &resolveError{dns.ExtendedErrorCodeProhibited, reasonProhibited, text}
}

const reasonProhibited = "prohibited"

// securityConfig is a block's security options, as parse made them (securityOptions.finish).
type securityConfig struct {
	// secure is `dnssec_targets secure`: upstream questions carry DO, and only answers the
	// upstream validated (AD on every hop) count.
	secure bool
	// allow is the names targets must be at or below (`allow_targets`); nil: any.
	allow []string
	// aliasPolicy and zonePolicy filter the addresses answered for names flattened by `alias`
	// lines and by zone data (`zone_alias`, `cname`): nil when nothing is filtered.
	aliasPolicy, zonePolicy *addrPolicy
}

// defaultZonePolicy is the address policy of names flattened from zone data in a block without
// security options.
var defaultZonePolicy = &addrPolicy{deny: defaultZoneDeny}

// secureTargets reports `dnssec_targets secure`.
func (cfg *config) secureTargets() bool { return cfg.sec != nil && cfg.sec.secure }

// allowTargets is `allow_targets`; nil without it.
func (cfg *config) allowTargets() []string {
	if cfg.sec == nil {
		return nil
	}
	return cfg.sec.allow
}

// targetAllowed reports whether target (a lowercased FQDN) is at or below one of
// `allow_targets`; any target is without it.
func (cfg *config) targetAllowed(target string) bool {
	allow := cfg.allowTargets()
	return allow == nil || slices.ContainsFunc(allow, func(n string) bool { return dns.IsSubDomain(n, target) })
}

// policyFor is the address policy of a name flattened by an `alias` line (fromZone false) or by
// zone data.
func (cfg *config) policyFor(fromZone bool) *addrPolicy {
	switch {
	case cfg.sec == nil && fromZone:
		return defaultZonePolicy
	case cfg.sec == nil:
		return nil
	case fromZone:
		return cfg.sec.zonePolicy
	}
	return cfg.sec.aliasPolicy
}

// securityOptions holds what parse reads of the security options until the block is read: the
// policies depend on several options, in any order.
type securityOptions struct {
	given     bool // any of the options
	secure    bool
	allow     []string
	deny      []netip.Prefix
	denyGiven bool // `deny_addresses`, even `none`
	max       int
	aliases   []aliasLine // the `alias` lines, checked against `allow_targets`
}

// aliasLine is an `alias` line's targets, and where it is.
type aliasLine struct {
	line    int
	targets []string
}

// parseDNSSECTargets reads `dnssec_targets secure|any`.
func (so *securityOptions) parseDNSSECTargets(c *caddy.Controller) error {
	a, err := args(c, 1)
	if err != nil {
		return err
	}
	so.given = true
	switch a[0] {
	case "secure":
		so.secure = true
	case "any":
		so.secure = false
	default:
		return c.Errf("dnssec_targets '%s' must be 'secure' (only answers the upstream validated) or 'any'", a[0])
	}
	return nil
}

// parseAllowTargets reads `allow_targets NAME...`: absolute names (with or without the trailing
// dot, as alias targets are read), the root for every name.
func (so *securityOptions) parseAllowTargets(c *caddy.Controller) error {
	a := c.RemainingArgs()
	if len(a) == 0 {
		return c.Errf("'allow_targets' takes at least 1 NAME: the names targets must be at or below")
	}
	so.given = true
	so.allow = []string{}
	for _, s := range a {
		name := strings.ToLower(dns.Fqdn(s))
		if name != "." && !hostname(name) {
			return c.Errf("allow_targets '%s' is not a valid domain name", s)
		}
		so.allow = append(so.allow, name)
	}
	return nil
}

// parseDenyAddresses reads `deny_addresses CIDR...|none`.
func (so *securityOptions) parseDenyAddresses(c *caddy.Controller) error {
	a := c.RemainingArgs()
	if len(a) == 0 {
		return c.Errf("'deny_addresses' takes CIDRs (like 10.0.0.0/8) or addresses, or 'none'")
	}
	so.given, so.denyGiven = true, true
	if len(a) == 1 && a[0] == "none" {
		return nil
	}
	if slices.Contains(a, "none") {
		return c.Errf("deny_addresses 'none' cannot be given with CIDRs: %v", a)
	}
	var err error
	so.deny, err = prefixes(c, "deny_addresses", a)
	return err
}

// parseMaxAddresses reads `max_addresses N`.
func (so *securityOptions) parseMaxAddresses(c *caddy.Controller) error {
	a, err := args(c, 1)
	if err != nil {
		return err
	}
	so.given = true
	// An answer of 65,535 bytes holds at most about 4,000 A records; a bigger limit is none.
	so.max, err = wholeNumber(c, "max_addresses", a[0], "addresses", 1, 65535)
	return err
}

// finish checks the `alias` lines against `allow_targets` and makes the address policies, once
// the whole block is read.
func (so *securityOptions) finish(c *caddy.Controller, cfg *config) error {
	if !so.given {
		return nil
	}
	sec := &securityConfig{secure: so.secure, allow: so.allow}
	cfg.sec = sec
	for _, l := range so.aliases {
		for _, t := range l.targets {
			if !cfg.targetAllowed(t) {
				return fmt.Errorf("%s:%d - Error during parsing: alias target '%s' is not at or below any of allow_targets %v",
					c.File(), l.line, t, so.allow)
			}
		}
	}
	zoneDeny := defaultZoneDeny
	if so.denyGiven {
		zoneDeny = so.deny
	}
	if len(so.deny) > 0 || so.max > 0 {
		sec.aliasPolicy = &addrPolicy{deny: so.deny, max: so.max}
	}
	if len(zoneDeny) > 0 || so.max > 0 {
		sec.zonePolicy = &addrPolicy{deny: zoneDeny, max: so.max}
	}
	return nil
}

// flattenZoneTarget answers r with the addresses of target, which zone data chose (a `zone_alias`
// record, or the end of a `cname` chain): under the zone data's address policy, and only when
// `allow_targets` allows it. ttlCap is the zone's bound on the TTL.
func (f *Flatten) flattenZoneTarget(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone string, ttlCap uint32, target string) (int, error) {
	if !f.cfg.targetAllowed(target) {
		return f.prohibited(ctx, w, r, zone, target)
	}
	if r.Question[0].Qtype == dns.TypeHTTPS {
		return f.flattenHTTPS(ctx, w, r, zone, ttlCap, target, f.cfg.policyFor(true))
	}
	s := f.pool.cache.slotFor(cacheKey{name: target, qtype: r.Question[0].Qtype})
	return f.flatten(ctx, w, r, zone, ttlCap, []*slot{s}, f.cfg.policyFor(true))
}

// prohibitedLog bounds the log lines of prohibited targets: one per query would let a zone's
// writer, or its clients, flood the log.
var prohibitedLog = rate.Sometimes{First: 10, Interval: 10 * time.Second}

// prohibited answers r, whose name zone data points at target outside `allow_targets`: the target
// is not resolved; the name gets the zone's own records of the type, else SERVFAIL with EDE 18.
func (f *Flatten) prohibited(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, zone, target string) (int, error) {
	name := r.Question[0].Name
	prohibitedLog.Do(func() {
		log.Warningf("zone %s: %s points at %s, which is not at or below any of allow_targets %v: not resolved", zone, name, target, f.cfg.allowTargets())
	})
	t := f.tallyFor(metrics.WithServer(ctx))
	t.requests.Add(1)
	if rrs := f.zoneAddrs(ctx, w, r); len(rrs) > 0 {
		t.fallback.Add(1)
		f.noteAnswer(ctx, "", "fallback", nil)
		m := authoritative(r)
		m.Answer = rrs
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	}
	f.noteAnswer(ctx, "", "servfail", nil)
	return f.servfail(w, r, errProhibited(fmt.Sprintf("target %s of %s is not allowed by allow_targets", target, strings.ToLower(name))))
}

// explainPolicy describes, for explain, the security options that apply to a name flattened to
// targets, chosen by zone data (fromZone) or by an `alias` line.
func (f *Flatten) explainPolicy(fromZone bool, targets []string) []string {
	var lines []string
	if f.cfg.allowTargets() != nil && fromZone {
		for _, t := range targets {
			if !f.cfg.targetAllowed(t) {
				lines = append(lines, fmt.Sprintf("policy=prohibited target=%s allow_targets=%s", t, strings.Join(f.cfg.allowTargets(), ",")))
			}
		}
	}
	if p := f.cfg.policyFor(fromZone); p != nil {
		l := "policy=addresses deny=" + prefixList(p.deny)
		if p.max > 0 {
			l += fmt.Sprintf(" max=%d", p.max)
		}
		lines = append(lines, l)
	}
	if f.cfg.secureTargets() {
		lines = append(lines, "policy=dnssec_targets secure")
	}
	return lines
}

// prefixList is nets, comma-separated; "none" when empty.
func prefixList(nets []netip.Prefix) string {
	if len(nets) == 0 {
		return "none"
	}
	out := make([]string, len(nets))
	for i, n := range nets {
		out[i] = n.String()
	}
	return strings.Join(out, ",")
}
