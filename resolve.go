package flatten

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/miekg/dns"
)

// exchanger sends one question (name, q's type, class IN, for q's client network) to an upstream
// and returns its answer.
// Implementations check the answer's header and question against what was asked and discard
// anything that does not match; the walker only ever sees answers to its own questions.
// It is the seam where tests put a fake and where the two kinds of upstream live (upstream.go).
type exchanger interface {
	exchange(ctx context.Context, q question, name string) (*dns.Msg, error)
}

// hop is one link of a followed chain: to target, with the TTL of the record that made it. Its
// owner is the target of the hop before, or the chain's start for the first: a hop does not
// hold it, as cached chains are kept by the hundred thousand and a hop is 24 bytes without it.
type hop struct {
	target string
	rrtype uint16 // dns.TypeCNAME, or dns.TypeDNAME for a CNAME synthesized from a DNAME (RFC 6672)
	ttl    uint32
}

// chain is the outcome of walking one target for one address type.
type chain struct {
	start string // the name the walk started at
	// addrs is the final RRset (A or AAAA records owned by the last name of the chain, or its
	// HTTPS records with `https`), deduplicated. Empty for a negative answer.
	addrs []dns.RR
	hops  []hop
	// ttl is the smallest TTL of every record on the chain (RFC 2181 5.2); for a negative answer
	// it includes the negative TTL from the upstream's SOA (RFC 2308 5).
	ttl uint32
	// nxdomain is set when the last name of the chain does not exist. A negative chain without
	// it is NODATA: the name exists but has no address of the type.
	nxdomain bool
	// scope is the longest ECS SCOPE PREFIX-LENGTH of the answers on the chain: the whole chain
	// is cached for it (RFC 7871 7.2.1, for "message-focused resolvers").
	scope uint8
	// validated is set when every answer on the chain had AD set by a validating upstream
	// (`dnssec_targets secure`, which accepts no other chain).
	validated bool
}

func (c *chain) negative() bool { return len(c.addrs) == 0 }

// resolveError is why a chain could not be resolved. It carries the Extended DNS Error
// (RFC 8914) that a SERVFAIL reports to the client, and a short reason used as a metric label.
type resolveError struct {
	ede    uint16
	reason string
	text   string
}

func (e *resolveError) Error() string { return e.text }

// Reasons, also the values of the `reason` label of coredns_flatten_upstream_errors_total.
const (
	reasonTimeout   = "timeout"
	reasonNetwork   = "network"
	reasonRcode     = "rcode"
	reasonMalformed = "malformed"
	reasonLoop      = "loop"
	reasonDepth     = "depth"
	reasonNoServer  = "no_server"
)

func errTimeout(name string) *resolveError {
	return &resolveError{dns.ExtendedErrorCodeNoReachableAuthority, reasonTimeout, "timeout resolving " + name}
}

func errNetwork(name string, err error) *resolveError {
	return &resolveError{dns.ExtendedErrorCodeNetworkError, reasonNetwork, fmt.Sprintf("resolving %s: %v", name, err)}
}

// maxEDEText bounds the EXTRA-TEXT of the Extended DNS Errors we send, whatever an upstream said.
const maxEDEText = 160

// errRcode is an upstream's refusal or failure to answer (SERVFAIL, REFUSED, ...). When the
// upstream said why with an Extended DNS Error, that reason is passed on to our client.
func errRcode(name string, resp *dns.Msg) *resolveError {
	e := &resolveError{dns.ExtendedErrorCodeNoReachableAuthority, reasonRcode,
		fmt.Sprintf("upstream answered %s for %s", dns.RcodeToString[resp.Rcode], name)}
	if o := resp.IsEdns0(); o != nil {
		for _, opt := range o.Option {
			if up, ok := opt.(*dns.EDNS0_EDE); ok {
				e.ede = up.InfoCode
				if up.ExtraText != "" {
					e.text += ": " + up.ExtraText
				}
				// The text goes into our SERVFAIL, whose OPT record truncation never shortens:
				// an upstream's long text must not make a small query's answer large.
				if len(e.text) > maxEDEText {
					e.text = e.text[:maxEDEText]
				}
				break
			}
		}
	}
	return e
}

func errMalformed(name, why string) *resolveError {
	return &resolveError{dns.ExtendedErrorCodeNetworkError, reasonMalformed, "bad upstream answer for " + name + ": " + why}
}

func errLoop(name string) *resolveError {
	return &resolveError{dns.ExtendedErrorCodeOther, reasonLoop, "CNAME loop at " + name}
}

func errDepth(name string, max int) *resolveError {
	return &resolveError{dns.ExtendedErrorCodeOther, reasonDepth, fmt.Sprintf("chain from %s longer than %d hops", name, max)}
}

// asResolveError turns any error into a resolveError, keeping one that already is.
func asResolveError(name string, err error) *resolveError {
	var re *resolveError
	if errors.As(err, &re) {
		return re
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return errTimeout(name)
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return errTimeout(name)
	}
	return errNetwork(name, err)
}

// walker follows a target's CNAME chain to its addresses through an exchanger.
type walker struct {
	ex       exchanger
	maxDepth int
	// secure is `dnssec_targets secure`: every question asks the upstream to validate, and an
	// answer without AD fails the chain (policy.go).
	secure bool
}

// resolve walks the chain that starts at q's target (walk); with secure, it counts the
// validation outcome.
func (w *walker) resolve(ctx context.Context, q question) (*chain, error) {
	if !w.secure {
		return w.walk(ctx, q)
	}
	q.dnssec = true
	c, err := w.walk(ctx, q)
	if q.tally != nil {
		q.tally.validation(c, err)
	}
	return c, err
}

// walk walks the chain that starts at q's target (a lowercased FQDN) for its type (A or AAAA,
// or HTTPS: RFC 9460 2.4.2 has resolvers follow CNAMEs to it as to addresses).
//
// Only records whose owner is on the chain are used: an upstream answer's other records, in any
// section, are ignored, so extra records cannot poison what is served. When an answer stops at a
// CNAME whose target it does not include (an authoritative server answering for its own zone
// only), the next name is asked for. A name seen twice is a loop; more than maxDepth hops is a
// failure.
func (w *walker) walk(ctx context.Context, q question) (*chain, error) {
	target, qtype := q.key.name, q.key.qtype
	c := &chain{start: target, ttl: math.MaxUint32}
	visited := map[string]bool{target: true}
	name := target
	for hop := 0; ; hop++ {
		if err := ctx.Err(); err != nil {
			return nil, errTimeout(name)
		}
		// A background refresh waits its turn before each question but the first, which the
		// refresher waited for.
		if q.pace != nil && hop > 0 && q.pace.Wait(ctx) != nil {
			return nil, errTimeout(name)
		}
		resp, err := w.ex.exchange(ctx, q, name)
		if err != nil {
			return nil, asResolveError(name, err)
		}
		if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
			return nil, errRcode(name, resp)
		}
		if q.dnssec && !resp.AuthenticatedData {
			// RFC 4035 3.2.3: a validating resolver sets AD only when every RRset of the
			// answer (and the denial, for a negative one) is secure. Without it, the answer
			// may be insecure or forged, and must not be signed as the zone's own.
			return nil, errUnvalidated(target, name, resp)
		}
		c.scope = max(c.scope, answerScope(resp))

		cur, err := follow(resp, name, qtype, c, visited, w.maxDepth)
		if err != nil {
			return nil, err
		}
		if len(c.addrs) > 0 {
			c.validated = q.dnssec
			return c, nil
		}

		// No addresses for cur in this answer. RFC 6604: the rcode speaks of the last name of
		// the chain, so NXDOMAIN here means cur does not exist.
		if resp.Rcode == dns.RcodeNameError {
			c.nxdomain = true
			c.ttl = min(c.ttl, negativeTTL(resp, cur))
			c.validated = q.dnssec
			return c, nil
		}
		// NOERROR: NODATA for cur if the answer proves it (we asked for cur itself, or a
		// resolver that followed the chain added the SOA of cur's zone); otherwise the answer
		// stopped at a CNAME it could not follow, and cur must be asked for.
		if cur == name || hasNegativeSOA(resp, cur) {
			if cur == name && isReferral(resp) {
				return nil, errMalformed(name, "referral instead of an answer (upstream is not recursive)")
			}
			c.ttl = min(c.ttl, negativeTTL(resp, cur))
			c.validated = q.dnssec
			return c, nil
		}
		name = cur
	}
}

// follow walks the chain inside one answer, starting at name. It appends hops and the final
// addresses to c and returns the name the walk stopped at.
func follow(resp *dns.Msg, name string, qtype uint16, c *chain, visited map[string]bool, maxDepth int) (string, error) {
	cur := name
	for {
		var addrs []dns.RR
		var cname *dns.CNAME
		var dname *dns.DNAME
		for _, rr := range resp.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET {
				continue
			}
			switch {
			case h.Rrtype == qtype && strings.EqualFold(h.Name, cur):
				addrs = append(addrs, rr)
			case h.Rrtype == dns.TypeCNAME && strings.EqualFold(h.Name, cur):
				if cname != nil && !strings.EqualFold(cname.Target, rr.(*dns.CNAME).Target) {
					// RFC 2181 10.1: one CNAME per name. Two different ones cannot both be right.
					return "", errMalformed(name, "two CNAMEs at "+cur)
				}
				cname = rr.(*dns.CNAME)
			case h.Rrtype == dns.TypeDNAME && dns.IsSubDomain(h.Name, cur) && !strings.EqualFold(h.Name, cur):
				dname = rr.(*dns.DNAME)
			}
		}

		if len(addrs) > 0 {
			c.addrs = dedup(addrs)
			for _, rr := range c.addrs {
				c.ttl = min(c.ttl, ttlOf(rr))
			}
			return cur, nil
		}

		var next string
		switch {
		case cname != nil:
			next = strings.ToLower(dns.Fqdn(cname.Target))
			c.hops = append(c.hops, hop{target: next, rrtype: dns.TypeCNAME, ttl: ttlOf(cname)})
			c.ttl = min(c.ttl, ttlOf(cname))
		case dname != nil:
			// RFC 6672 2.2: replace the DNAME owner suffix of cur with the DNAME target.
			owner := strings.ToLower(dname.Hdr.Name)
			next = strings.ToLower(cur[:len(cur)-len(owner)] + dns.Fqdn(dname.Target))
			if _, ok := dns.IsDomainName(next); !ok || len(next) > 255 {
				return "", errMalformed(name, "DNAME substitution overflows at "+cur)
			}
			c.hops = append(c.hops, hop{target: next, rrtype: dns.TypeDNAME, ttl: ttlOf(dname)})
			c.ttl = min(c.ttl, ttlOf(dname))
		default:
			return cur, nil
		}

		if visited[next] {
			return "", errLoop(next)
		}
		if len(c.hops) > maxDepth {
			return "", errDepth(c.start, maxDepth)
		}
		visited[next] = true
		cur = next
	}
}

// ttlOf is rr's TTL read as RFC 2181 8 says: a value with the top bit set counts as zero.
func ttlOf(rr dns.RR) uint32 {
	if ttl := rr.Header().Ttl; ttl <= math.MaxInt32 {
		return ttl
	}
	return 0
}

// negativeTTL is how long a negative answer for name may be cached: the smaller of the SOA's
// TTL and its MINIMUM field (RFC 2308 5). Without a SOA, RFC 2308 says not to cache; we return
// 0 and the ttl floor applies.
func negativeTTL(resp *dns.Msg, name string) uint32 {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok && dns.IsSubDomain(soa.Hdr.Name, name) {
			return min(ttlOf(soa), soa.Minttl)
		}
	}
	return 0
}

// hasNegativeSOA reports whether the authority section holds the SOA of a zone that contains
// name: how a resolver that followed a chain says that its last name has no data.
func hasNegativeSOA(resp *dns.Msg, name string) bool {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok && dns.IsSubDomain(soa.Hdr.Name, name) {
			return true
		}
	}
	return false
}

// isReferral reports an answer that delegates instead of answering: no SOA, NS in authority,
// AA clear. A recursive upstream never sends one; taking it for NODATA would blank the name.
func isReferral(resp *dns.Msg) bool {
	if resp.Authoritative || len(resp.Answer) > 0 {
		return false
	}
	ns := false
	for _, rr := range resp.Ns {
		switch rr.Header().Rrtype {
		case dns.TypeSOA:
			return false
		case dns.TypeNS:
			ns = true
		}
	}
	return ns
}

// dedup removes records with the same data, keeping the first of each (an RRset has no
// duplicates, RFC 2181 5). Records arrive owned by one name and of one type, so the address (or
// an HTTPS record's presentation data) alone tells them apart. A map keeps this linear: an
// upstream may send thousands of records over TCP.
func dedup(rrs []dns.RR) []dns.RR {
	out := make([]dns.RR, 0, len(rrs))
	seen := make(map[string]bool, len(rrs))
	for _, rr := range rrs {
		var k string
		switch v := rr.(type) {
		case *dns.A:
			k = string(v.A.To16())
		case *dns.AAAA:
			k = string(v.AAAA.To16())
		case *dns.HTTPS:
			k = v.SVCB.String()[len(v.Hdr.String()):]
		default:
			continue
		}
		if !seen[k] {
			seen[k] = true
			out = append(out, rr)
		}
	}
	return out
}
