package flatten

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/coredns/coredns/plugin/forward" // the self-resolution test's target block
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
)

// ecsTarget is the CDN hostname the ECS tests flatten to.
const ecsTarget = "cdn.agency.test."

// geoUpstream is a CDN's name server on loopback. It answers ecsTarget with the edge for the
// client network in the query's ECS option, cut to the scope it returns (by default the
// network's own length; a test may choose another per network), echoes the option with that
// scope, and records the network of every query ("none" without ECS). A query without ECS gets
// the edge for the server's own address, noECSEdge.
type geoUpstream struct {
	*fakeUpstream
	ttl  uint32
	down atomic.Bool // answer SERVFAIL

	mu    sync.Mutex
	scope func(sub netip.Prefix) uint8
	asked []geoAsk
	gate  chan struct{} // when set, answers wait for it to close
}

type geoAsk struct {
	qtype uint16
	net   string
}

func newGeoUpstream(t *testing.T, ttl uint32) *geoUpstream {
	g := &geoUpstream{fakeUpstream: newFakeUpstream(t), ttl: ttl}
	g.handle(ecsTarget, g.serve)
	return g
}

func (g *geoUpstream) setScope(f func(sub netip.Prefix) uint8) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.scope = f
}

// edge is the address the CDN answers for the network cut, different for every network and
// family: 10.x.y.BITS (IPv4 networks) or 11.x.y.BITS (IPv6), x.y the network's last two octets
// that a /16 to /24 (IPv4) or /48 to /56 (IPv6) can set.
func edge(cut netip.Prefix, qtype uint16) string {
	b := cut.Addr().As16()
	x, y, fam := b[13], b[14], 4
	if !cut.Addr().Is4() {
		x, y, fam = b[6], b[7], 6
	}
	if qtype == dns.TypeAAAA {
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:%d::%x:%x:%x", fam, x, y, cut.Bits())).String()
	}
	return fmt.Sprintf("%d.%d.%d.%d", 6+fam, x, y, cut.Bits())
}

// noECSEdge is the CDN's answer to a question without ECS: the edge nearest flatten itself.
func noECSEdge(qtype uint16) string {
	if qtype == dns.TypeAAAA {
		return "2001:db8:ff::1"
	}
	return "10.255.255.255"
}

// edgeOf is the edge for the network of prefix s ("192.0.2.0/24") cut to scope bits.
func edgeOf(s string, scope int, qtype uint16) string {
	p, _ := netip.MustParsePrefix(s).Addr().Prefix(scope)
	return edge(p, qtype)
}

func (g *geoUpstream) serve(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	var opt *dns.EDNS0_SUBNET
	if o := r.IsEdns0(); o != nil {
		for _, x := range o.Option {
			if e, ok := x.(*dns.EDNS0_SUBNET); ok {
				opt = e
			}
		}
	}
	asked, sub := "none", netip.Prefix{}
	if opt != nil {
		p, err := ecsPrefix(opt)
		switch {
		case err != nil:
			asked = "malformed"
		case !p.IsValid():
			asked = "family 0"
		default:
			asked, sub = p.String(), p
		}
	}
	g.mu.Lock()
	g.asked = append(g.asked, geoAsk{q.Qtype, asked})
	scopeOf, gate := g.scope, g.gate
	g.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if g.down.Load() {
		w.WriteMsg(rcodeReply(r, dns.RcodeServerFailure))
		return
	}

	addr := noECSEdge(q.Qtype)
	var scope uint8
	if sub.IsValid() {
		scope = uint8(sub.Bits())
		if scopeOf != nil {
			scope = scopeOf(sub)
		}
		cut, _ := sub.Addr().Prefix(min(int(scope), sub.Bits()))
		addr = edge(cut, q.Qtype)
	}
	m := reply(r, aRR(q.Name, g.ttl, addr))
	if opt != nil {
		// RFC 7871 7.2.1: FAMILY, SOURCE PREFIX-LENGTH and ADDRESS as asked, and the scope.
		m.SetEdns0(1232, false)
		echo := *opt
		echo.SourceScope = scope
		m.IsEdns0().Option = []dns.EDNS0{&echo}
	}
	w.WriteMsg(m)
}

// count returns how many questions of qtype for the network net ("192.0.2.0/24", "none") arrived.
func (g *geoUpstream) count(qtype uint16, net string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, a := range g.asked {
		if a.qtype == qtype && a.net == net {
			n++
		}
	}
	return n
}

// nets returns the networks of the questions of qtype that carried ECS, in order.
func (g *geoUpstream) nets(qtype uint16) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, a := range g.asked {
		if a.qtype == qtype && a.net != "none" {
			out = append(out, a.net)
		}
	}
	return out
}

// ecsMsg is a query with EDNS0 and, unless sub is empty, an ECS option for the network sub
// ("192.0.2.77/32"; miekg/dns packs only the octets the length needs, with the bits beyond it
// cleared).
func ecsMsg(name string, qtype uint16, sub string) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	if sub != "" {
		p := netip.MustParsePrefix(sub)
		family := uint16(2)
		if p.Addr().Is4() {
			family = 1
		}
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{
			Code: dns.EDNS0SUBNET, Family: family, SourceNetmask: uint8(p.Bits()), Address: net.IP(p.Addr().AsSlice()),
		})
	}
	return m
}

func ecsQuery(t *testing.T, addr server, name string, qtype uint16, sub string) *dns.Msg {
	t.Helper()
	return exchange(t, addr, "udp", ecsMsg(name, qtype, sub))
}

// rawECSQuery sends a query whose option 8 (ECS) holds exactly data, as a broken client may.
func rawECSQuery(t *testing.T, addr server, data ...[]byte) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion("example.org.", dns.TypeA)
	m.SetEdns0(1232, false)
	for _, d := range data {
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_LOCAL{Code: dns.EDNS0SUBNET, Data: d})
	}
	return exchange(t, addr, "udp", m)
}

// queryFrom asks from the source address local (any of 127.0.0.0/8), with EDNS0 and no ECS.
func queryFrom(t *testing.T, addr server, local, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := ecsMsg(name, qtype, "")
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(local)}}}
	r, _, err := c.Exchange(m, addr.udp)
	if err != nil {
		t.Fatalf("query %s from %s: %v", name, local, err)
	}
	return r
}

// replyECS returns the ECS option of a reply, or nil.
func replyECS(m *dns.Msg) *dns.EDNS0_SUBNET {
	if o := m.IsEdns0(); o != nil {
		for _, opt := range o.Option {
			if e, ok := opt.(*dns.EDNS0_SUBNET); ok {
				return e
			}
		}
	}
	return nil
}

// checkEcho checks the ECS option of a reply: the client's FAMILY, SOURCE PREFIX-LENGTH and
// ADDRESS, and the scope (RFC 7871 7.2.1).
func checkEcho(t *testing.T, m *dns.Msg, family uint16, source uint8, addr string, scope uint8) {
	t.Helper()
	e := replyECS(m)
	if e == nil {
		t.Fatalf("no ECS option in the reply\n%s", m)
	}
	if e.Family != family || e.SourceNetmask != source || !e.Address.Equal(net.ParseIP(addr)) || e.SourceScope != scope {
		t.Errorf("ECS in the reply: family %d %s/%d scope %d, want family %d %s/%d scope %d",
			e.Family, e.Address, e.SourceNetmask, e.SourceScope, family, addr, source, scope)
	}
}

// startECS starts CoreDNS flattening example.org's apex to ecsTarget at g, with the given flatten
// lines (the `ecs` line among them), once the startup round has resolved the warm answers.
func startECS(t *testing.T, g *geoUpstream, lines ...string) server {
	t.Helper()
	lines = append([]string{"alias @ " + ecsTarget, "upstream " + g.Addr}, lines...)
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), lines...))
	waitFor(t, "the warm answers", func() bool {
		return g.count(dns.TypeA, "none") == 1 && g.count(dns.TypeAAAA, "none") == 1
	})
	return addr
}

// coreServerLabel is the metrics `server` label of the CoreDNS instances tests start.
const coreServerLabel = "dns://127.0.0.1:0"

func TestECSNetworksGetTheirOwnAnswers(t *testing.T) {
	g := newGeoUpstream(t, 300)
	addr := startECS(t, g, "ecs")
	// The warm answer (resolved without ECS at startup) is fresh, and the first query of each
	// network still goes upstream for its own answer: the warm one is tailored to flatten.
	for range 2 {
		for _, c := range []struct{ client, net string }{
			{"192.0.2.77/32", "192.0.2.0/24"},
			{"198.51.100.9/32", "198.51.100.0/24"},
		} {
			m := ecsQuery(t, addr, "example.org.", dns.TypeA, c.client)
			checkAddrs(t, m, "example.org.", edgeOf(c.net, 24, dns.TypeA))
			p := netip.MustParsePrefix(c.client)
			checkEcho(t, m, 1, 32, p.Addr().String(), 24)
			if n := g.count(dns.TypeA, c.net); n != 1 {
				t.Errorf("%s asked upstream %d times, want once (then from the cache)", c.net, n)
			}
		}
	}
	if n := g.count(dns.TypeA, "none"); n != 1 {
		t.Errorf("%d questions without ECS, want only the warm one", n)
	}
}

func TestECSFromSourceAddress(t *testing.T) {
	// A client that sends no ECS (a recursive resolver, typically) is asked for by its source
	// address, cut to /24; and gets no ECS back (RFC 7871 7.2.2).
	g := newGeoUpstream(t, 300)
	addr := startECS(t, g, "ecs")
	for _, c := range []struct{ src, net string }{
		{"127.0.0.1", "127.0.0.0/24"},
		{"127.0.1.1", "127.0.1.0/24"},
		{"127.0.1.2", "127.0.1.0/24"},
	} {
		m := queryFrom(t, addr, c.src, "example.org.", dns.TypeA)
		checkAddrs(t, m, "example.org.", edgeOf(c.net, 24, dns.TypeA))
		if e := replyECS(m); e != nil {
			t.Errorf("client %s sent no ECS and got one back: %v", c.src, e)
		}
	}
	if got, want := g.nets(dns.TypeA), []string{"127.0.0.0/24", "127.0.1.0/24"}; !slices.Equal(got, want) {
		t.Errorf("networks asked upstream %v, want %v", got, want)
	}
}

func TestECSOneQuestionPerNetwork(t *testing.T) {
	g := newGeoUpstream(t, 300)
	addr := startECS(t, g, "ecs")
	gate := make(chan struct{})
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()

	// Eight clients of one /24 at once: the first question is held upstream while the others
	// arrive; they join its resolution (or, arriving later, find its answer in the cache).
	var wg sync.WaitGroup
	answers := make([]*dns.Msg, 8)
	for i := range answers {
		wg.Go(func() {
			m, err := exchangeRetry(addr, "udp", ecsMsg("example.org.", dns.TypeA, fmt.Sprintf("192.0.2.%d/32", 10+i)))
			if err != nil {
				t.Error(err)
			}
			answers[i] = m
		})
	}
	waitFor(t, "the first question upstream", func() bool { return g.count(dns.TypeA, "192.0.2.0/24") == 1 })
	close(gate)
	wg.Wait()
	for _, m := range answers {
		if m != nil {
			checkAddrs(t, m, "example.org.", edgeOf("192.0.2.0/24", 24, dns.TypeA))
		}
	}
	if n := g.count(dns.TypeA, "192.0.2.0/24"); n != 1 {
		t.Errorf("192.0.2.0/24 asked %d times, want once for all eight clients", n)
	}
}

func TestECSScopeZeroShared(t *testing.T) {
	// A target that is not tailored: the upstream answers every network with scope 0, which
	// is valid for every client of the family (RFC 7871 7.2.1, 7.3.1).
	g := newGeoUpstream(t, 300)
	g.setScope(func(netip.Prefix) uint8 { return 0 })
	addr := startECS(t, g, "ecs")
	shared := edgeOf("0.0.0.0/0", 0, dns.TypeA)
	for _, client := range []string{"192.0.2.1/32", "198.51.100.1/32", "203.0.113.0/24"} {
		m := ecsQuery(t, addr, "example.org.", dns.TypeA, client)
		checkAddrs(t, m, "example.org.", shared)
		p := netip.MustParsePrefix(client)
		checkEcho(t, m, 1, uint8(p.Bits()), p.Addr().String(), 0)
	}
	checkAddrs(t, queryFrom(t, addr, "127.0.0.1", "example.org.", dns.TypeA), "example.org.", shared)
	if got := g.nets(dns.TypeA); len(got) != 1 {
		t.Errorf("networks asked upstream %v, want only the first client's", got)
	}
	// Kept once, at the family's /0: the first client's network slot held only the question.
	if n := metric(t, "ecs_entries", coreServerLabel, "example.org.", ""); n != 1 {
		t.Errorf("coredns_flatten_ecs_entries %v, want 1", n)
	}
	// Scope 0 covers a family: an IPv6 client is asked for.
	m := ecsQuery(t, addr, "example.org.", dns.TypeA, "2001:db8:1::/48")
	checkAddrs(t, m, "example.org.", edgeOf("::/0", 0, dns.TypeA))
	if got := g.nets(dns.TypeA); len(got) != 2 || got[1] != "2001:db8:1::/48" {
		t.Errorf("networks asked upstream %v, want the IPv6 client's too", got)
	}
}

func TestECSTruncation(t *testing.T) {
	g := newGeoUpstream(t, 300)
	addr := startECS(t, g, "ecs")
	for _, c := range []struct {
		client string
		qtype  uint16
		sent   string
	}{
		{"192.0.2.77/32", dns.TypeA, "192.0.2.0/24"},
		{"2001:db8:1:2ff::1/128", dns.TypeAAAA, "2001:db8:1:200::/56"},
		// Shorter than the limit: sent as it is (RFC 7871 7.1.1: the shorter of the two).
		{"198.51.0.0/16", dns.TypeA, "198.51.0.0/16"},
		{"2001:db8:2::/40", dns.TypeA, "2001:db8::/40"},
	} {
		m := ecsQuery(t, addr, "example.org.", c.qtype, c.client)
		p := netip.MustParsePrefix(c.client)
		sent := netip.MustParsePrefix(c.sent)
		checkAddrs(t, m, "example.org.", edge(sent, c.qtype))
		// The echo is the client's own option, with the scope the upstream returned.
		checkEcho(t, m, map[bool]uint16{true: 1, false: 2}[p.Addr().Is4()], uint8(p.Bits()), p.Masked().Addr().String(), uint8(sent.Bits()))
		if n := g.count(c.qtype, c.sent); n != 1 {
			t.Errorf("client %s: %s asked %d times, want once; asked: %v", c.client, c.sent, n, g.nets(c.qtype))
		}
	}

	// ecs V4BITS V6BITS
	g2 := newGeoUpstream(t, 300)
	addr2 := startECS(t, g2, "ecs 20 48")
	ecsQuery(t, addr2, "example.org.", dns.TypeA, "192.0.2.77/32")
	ecsQuery(t, addr2, "example.org.", dns.TypeAAAA, "2001:db8:1:2ff::1/128")
	queryFrom(t, addr2, "127.0.1.1", "example.org.", dns.TypeA)
	if got, want := append(g2.nets(dns.TypeA), g2.nets(dns.TypeAAAA)...), []string{"192.0.0.0/20", "127.0.0.0/20", "2001:db8:1::/48"}; !slices.Equal(got, want) {
		t.Errorf("with `ecs 20 48`: sent %v, want %v", got, want)
	}
}

func TestECSOptOut(t *testing.T) {
	// With a `cname` name the target's entry without a network is made on demand, so that the
	// question an opted-out client causes can be seen upstream: without ECS (RFC 7871 7.1.2).
	g := newGeoUpstream(t, 300)
	zone := exampleZone(t, "www 300 IN CNAME "+ecsTarget)
	addr, _ := startCoreDNS(t, flattenCorefile(zone, "cname www.example.org.", "upstream "+g.Addr, "ecs"))

	m := ecsQuery(t, addr, "www.example.org.", dns.TypeA, "0.0.0.0/0")
	checkAddrs(t, m, "www.example.org.", noECSEdge(dns.TypeA))
	checkEcho(t, m, 1, 0, "0.0.0.0", 0)
	if n, nets := g.count(dns.TypeA, "none"), g.nets(dns.TypeA); n != 1 || len(nets) != 0 {
		t.Errorf("asked %d times without ECS and for %v, want once without", n, nets)
	}
	// dig's form of the opt-out, FAMILY 0: answered from the same entry.
	m = exchange(t, addr, "udp", func() *dns.Msg {
		q := ecsMsg("www.example.org.", dns.TypeA, "")
		q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET}}
		return q
	}())
	checkAddrs(t, m, "www.example.org.", noECSEdge(dns.TypeA))
	checkEcho(t, m, 0, 0, "0.0.0.0", 0)
	// A client that sends its network gets its own answer through `cname` too.
	checkAddrs(t, ecsQuery(t, addr, "www.example.org.", dns.TypeA, "192.0.2.1/32"), "www.example.org.", edgeOf("192.0.2.0/24", 24, dns.TypeA))
	if n, nets := g.count(dns.TypeA, "none"), g.nets(dns.TypeA); n != 1 || !slices.Equal(nets, []string{"192.0.2.0/24"}) {
		t.Errorf("asked %d times without ECS and for %v, want once without and once for 192.0.2.0/24", n, nets)
	}

	// V4BITS 0: IPv4 clients are never sent; IPv6 ones still are.
	g2 := newGeoUpstream(t, 300)
	addr2 := startECS(t, g2, "ecs 0 56")
	checkAddrs(t, ecsQuery(t, addr2, "example.org.", dns.TypeA, "192.0.2.1/32"), "example.org.", noECSEdge(dns.TypeA))
	checkAddrs(t, queryFrom(t, addr2, "127.0.0.1", "example.org.", dns.TypeA), "example.org.", noECSEdge(dns.TypeA))
	ecsQuery(t, addr2, "example.org.", dns.TypeA, "2001:db8::1/128")
	if got := g2.nets(dns.TypeA); !slices.Equal(got, []string{"2001:db8::/56"}) {
		t.Errorf("with `ecs 0 56`: sent %v, want only the IPv6 client's network", got)
	}
}

func TestECSScopes(t *testing.T) {
	g := newGeoUpstream(t, 300)
	g.setScope(func(sub netip.Prefix) uint8 {
		if sub.Addr().Is4() && sub.Addr().As4()[0] == 192 {
			return 20 // a /20 shares one edge
		}
		return 28 // more specific than what was sent
	})
	addr := startECS(t, g, "ecs")

	// Scope 20: echoed, and the whole /20 is answered from that entry.
	m := ecsQuery(t, addr, "example.org.", dns.TypeA, "192.0.2.5/32")
	checkAddrs(t, m, "example.org.", edgeOf("192.0.0.0/20", 20, dns.TypeA))
	checkEcho(t, m, 1, 32, "192.0.2.5", 20)
	m = ecsQuery(t, addr, "example.org.", dns.TypeA, "192.0.15.200/32")
	checkAddrs(t, m, "example.org.", edgeOf("192.0.0.0/20", 20, dns.TypeA))
	checkEcho(t, m, 1, 32, "192.0.15.200", 20)
	checkAddrs(t, ecsQuery(t, addr, "example.org.", dns.TypeA, "192.0.16.1/32"), "example.org.", edgeOf("192.0.16.0/20", 20, dns.TypeA))
	if got, want := g.nets(dns.TypeA), []string{"192.0.2.0/24", "192.0.16.0/24"}; !slices.Equal(got, want) {
		t.Errorf("asked for %v, want %v: one question per /20", got, want)
	}
	// Only the /20 entries are kept (the /24 that asked held only the question).
	if n := metric(t, "ecs_entries", coreServerLabel, "example.org.", ""); n != 2 {
		t.Errorf("coredns_flatten_ecs_entries %v, want 2", n)
	}
	// Every entry counts in cache_entries: the alias's two pinned ones and the two /20s.
	if n := metric(t, "cache_entries", coreServerLabel, "example.org.", ""); n != 4 {
		t.Errorf("coredns_flatten_cache_entries %v, want 4 (2 pinned, 2 for client networks)", n)
	}

	// Scope 28 for a /24 question: cached for the /24 (the most we send and keep), echoed as 24.
	m = ecsQuery(t, addr, "example.org.", dns.TypeA, "198.51.100.7/32")
	checkAddrs(t, m, "example.org.", edgeOf("198.51.100.0/24", 24, dns.TypeA))
	checkEcho(t, m, 1, 32, "198.51.100.7", 24)
	// Scope 28 for a /16 question: that answer serves only clients that send that /16, not the
	// /24s inside it, whose answer the upstream said depends on more bits.
	m = ecsQuery(t, addr, "example.org.", dns.TypeA, "203.0.0.0/16")
	checkAddrs(t, m, "example.org.", edgeOf("203.0.0.0/16", 16, dns.TypeA))
	checkEcho(t, m, 1, 16, "203.0.0.0", 16)
	checkAddrs(t, ecsQuery(t, addr, "example.org.", dns.TypeA, "203.0.0.0/16"), "example.org.", edgeOf("203.0.0.0/16", 16, dns.TypeA))
	checkAddrs(t, ecsQuery(t, addr, "example.org.", dns.TypeA, "203.0.113.9/32"), "example.org.", edgeOf("203.0.113.0/24", 24, dns.TypeA))
	if got, want := g.nets(dns.TypeA)[2:], []string{"198.51.100.0/24", "203.0.0.0/16", "203.0.113.0/24"}; !slices.Equal(got, want) {
		t.Errorf("asked for %v, want %v", got, want)
	}
}

func TestECSCapacity(t *testing.T) {
	g := newGeoUpstream(t, 300)
	addr := startECS(t, g, "ecs", "cache 4")
	for i := range 12 {
		client := fmt.Sprintf("192.0.%d.1/32", 10+i)
		checkAddrs(t, ecsQuery(t, addr, "example.org.", dns.TypeA, client), "example.org.", edgeOf(client, 24, dns.TypeA))
		n := metric(t, "ecs_entries", coreServerLabel, "example.org.", "")
		if want := float64(min(i+1, 4)); n != want {
			t.Errorf("after %d networks: coredns_flatten_ecs_entries %v, want %v (cache 4)", i+1, n, want)
		}
	}
	// The configured alias's own entries are not evicted: its warm answer is still there.
	checkAddrs(t, ecsQuery(t, addr, "example.org.", dns.TypeA, "0.0.0.0/0"), "example.org.", noECSEdge(dns.TypeA))
	if n := g.count(dns.TypeA, "none"); n != 1 {
		t.Errorf("the warm answer was resolved %d times, want once", n)
	}
}

func TestECSOutageServesEachNetworkItsStaleAnswer(t *testing.T) {
	g := newGeoUpstream(t, 300)
	addr := startECS(t, g, "ecs", "ttl 1 1")
	nets := []string{"192.0.2.0/24", "198.51.100.0/24"}
	for _, n := range nets {
		checkAddrs(t, ecsQuery(t, addr, "example.org.", dns.TypeA, n), "example.org.", edgeOf(n, 24, dns.TypeA))
	}

	g.down.Store(true)
	isStale := func(m *dns.Msg) bool {
		e := ede(m)
		return m.Rcode == dns.RcodeSuccess && e != nil && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer
	}
	for _, n := range nets {
		var m *dns.Msg
		waitFor(t, "a stale answer for "+n, func() bool {
			m = ecsQuery(t, addr, "example.org.", dns.TypeA, n)
			return isStale(m)
		})
		checkAddrs(t, m, "example.org.", edgeOf(n, 24, dns.TypeA))
		checkTTL(t, m, staleTTL, staleTTL)
		checkEcho(t, m, 1, 24, netip.MustParsePrefix(n).Addr().String(), 24)
	}
	// A network never seen before: the warm answer stands in, served as stale, with the
	// client's whole network as scope (it is nobody's tailored answer).
	m := ecsQuery(t, addr, "example.org.", dns.TypeA, "203.0.113.0/24")
	if !isStale(m) {
		t.Fatalf("new network during the outage: want the warm answer as a stale one\n%s", m)
	}
	checkAddrs(t, m, "example.org.", noECSEdge(dns.TypeA))
	checkEcho(t, m, 1, 24, "203.0.113.0", 24)
}

// TestECSLadder walks one network down the failure ladder with an injected clock: its own stale
// answer, then the shared scope 0 one, then the warm answer, then the zone's fallback records,
// then SERVFAIL.
func TestECSLadder(t *testing.T) {
	g := newGeoUpstream(t, 60)
	g.setScope(func(sub netip.Prefix) uint8 {
		if sub.Addr().Is4() && sub.Addr().As4()[0] == 198 {
			return 0
		}
		return 24
	})
	// mail.example.org has its own A record in the zone (192.0.2.25): the fallback. The apex
	// has none. Both follow ecsTarget, so they share its entries.
	rig := newFaultRig(t, "alias mail "+ecsTarget, "alias @ "+ecsTarget, "upstream "+g.Addr, "ecs", "serve_stale 30s", "timeout 300ms")
	ask := func(name, client string) *dns.Msg { return ecsQuery(t, rig.addr, name, dns.TypeA, client) }
	stale := func(m *dns.Msg, want string) {
		t.Helper()
		checkAddrs(t, m, "mail.example.org.", want)
		if e := ede(m); e == nil || e.InfoCode != dns.ExtendedErrorCodeStaleAnswer {
			t.Errorf("want EDE 3 (Stale Answer)\n%s", m)
		}
		checkTTL(t, m, staleTTL, staleTTL)
	}

	// t=0: the client's /24 (scope 24) and another network whose answer is for everyone.
	own, shared := edgeOf("192.0.2.0/24", 24, dns.TypeA), edgeOf("0.0.0.0/0", 0, dns.TypeA)
	checkAddrs(t, ask("mail.example.org.", "192.0.2.1/32"), "mail.example.org.", own)
	checkAddrs(t, ask("mail.example.org.", "198.51.100.1/32"), "mail.example.org.", shared)
	// t=40: the warm answer (an opted-out client resolves it here; the rig has no refresher).
	rig.clk.advance(40 * time.Second)
	checkAddrs(t, ask("mail.example.org.", "0.0.0.0/0"), "mail.example.org.", noECSEdge(dns.TypeA))
	// A new network meanwhile gets the scope 0 answer, fresh.
	checkAddrs(t, ask("mail.example.org.", "203.0.113.1/32"), "mail.example.org.", shared)
	g.down.Store(true)

	// t=70: both expired (60), within their stale window (90).
	rig.clk.advance(30 * time.Second)
	stale(ask("mail.example.org.", "192.0.2.1/32"), own)
	stale(ask("mail.example.org.", "203.0.113.1/32"), shared)
	// The failure is remembered per network for a while (RFC 9520): asked again, the network
	// gets its stale answer without a question upstream.
	asked := len(g.nets(dns.TypeA))
	stale(ask("mail.example.org.", "192.0.2.1/32"), own)
	if n := len(g.nets(dns.TypeA)); n != asked {
		t.Errorf("%d more questions upstream while the failure is remembered", n-asked)
	}
	// t=95: past it; the warm answer (expires at 100) stands in.
	rig.clk.advance(25 * time.Second)
	m := ask("mail.example.org.", "192.0.2.1/32")
	stale(m, noECSEdge(dns.TypeA))
	checkEcho(t, m, 1, 32, "192.0.2.1", 24)
	// t=135: the warm answer is past its window too (130): the zone's own record, then SERVFAIL.
	rig.clk.advance(40 * time.Second)
	m = ask("mail.example.org.", "192.0.2.1/32")
	checkAddrs(t, m, "mail.example.org.", "192.0.2.25")
	checkServfail(t, ask("example.org.", "192.0.2.1/32"), dns.ExtendedErrorCodeNoReachableAuthority, "SERVFAIL")
}

// TestECSRefreshFollowsDemand checks that entries of client networks are refreshed ahead of
// expiry only when a client of the network asks within the prefetch window, and that one refresh
// serves every network that shares the entry.
func TestECSRefreshFollowsDemand(t *testing.T) {
	g := newGeoUpstream(t, 100)
	g.setScope(func(sub netip.Prefix) uint8 {
		if sub.Addr().Is4() && sub.Addr().As4()[0] == 198 {
			return 0
		}
		return 24
	})
	rig := newFaultRig(t, "alias @ "+ecsTarget, "upstream "+g.Addr, "ecs", "prefetch 10%")
	ask := func(client string) *dns.Msg { return ecsQuery(t, rig.addr, "example.org.", dns.TypeA, client) }
	for _, c := range []string{"192.0.2.1/32", "192.0.3.1/32", "198.51.100.1/32"} {
		ask(c)
	}

	// t=95, inside the last 10%: one /24 asks, and clients of five networks hit the scope 0 entry
	// while the upstream holds the first refresh.
	rig.clk.advance(95 * time.Second)
	gate := make(chan struct{})
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()
	ask("192.0.2.1/32")
	for i := range 5 {
		ask(fmt.Sprintf("198.51.%d.1/32", 100+i))
	}
	close(gate)
	rig.f.pool.cache.bg.settle() // the refreshes have ended
	for net, want := range map[string]int{"192.0.2.0/24": 2, "192.0.3.0/24": 1, "198.51.100.0/24": 2, "198.51.101.0/24": 0} {
		if n := g.count(dns.TypeA, net); n != want {
			t.Errorf("%s asked %d times, want %d", net, n, want)
		}
	}
	if n := len(g.nets(dns.TypeA)); n != 5 {
		t.Errorf("%d questions with ECS, want 5: one refresh for all the scope 0 clients", n)
	}

	// t=105: the refreshed entries are fresh; the /24 that did not ask has expired.
	rig.clk.advance(10 * time.Second)
	for _, c := range []string{"192.0.2.1/32", "198.51.104.1/32", "192.0.3.1/32"} {
		if m := ask(c); ede(m) != nil || len(m.Answer) != 1 {
			t.Errorf("%s: %v", c, m)
		}
	}
	if n := len(g.nets(dns.TypeA)); n != 6 || g.count(dns.TypeA, "192.0.3.0/24") != 2 {
		t.Errorf("asked %v, want one more question, for 192.0.3.0/24", g.nets(dns.TypeA))
	}
}

func TestECSMalformedClientOption(t *testing.T) {
	g := newGeoUpstream(t, 300)
	addr := startECS(t, g, "ecs")
	for _, c := range []struct {
		name  string
		data  [][]byte
		ede   bool // answered by flatten, with an EDE; else by the server (miekg/dns cannot unpack it)
		what  string
		check func(m *dns.Msg)
	}{
		{name: "unknown family", data: [][]byte{{0, 3, 24, 0, 192, 0, 2}}},
		{name: "IPv4 prefix 33", data: [][]byte{{0, 1, 33, 0, 192, 0, 2, 1, 0}}},
		{name: "IPv6 prefix 129", data: [][]byte{append([]byte{0, 2, 129, 0}, make([]byte, 17)...)}},
		{name: "too short", data: [][]byte{{0, 1}}},
		{name: "address bits beyond the prefix", data: [][]byte{{0, 1, 24, 0, 192, 0, 2, 77}}, ede: true, what: "beyond"},
		{name: "scope in a query", data: [][]byte{{0, 1, 24, 16, 192, 0, 2}}, ede: true, what: "SCOPE"},
		{name: "two options", data: [][]byte{{0, 1, 24, 0, 192, 0, 2}, {0, 1, 24, 0, 198, 51, 100}}, ede: true, what: "more than one"},
	} {
		m := rawECSQuery(t, addr, c.data...)
		if m.Rcode != dns.RcodeFormatError {
			t.Errorf("%s: rcode %s, want FORMERR\n%s", c.name, dns.RcodeToString[m.Rcode], m)
			continue
		}
		if e := ede(m); c.ede && (e == nil || !strings.Contains(e.ExtraText, c.what)) {
			t.Errorf("%s: EDE %v, want one that says %q", c.name, e, c.what)
		}
		if len(m.Answer) != 0 {
			t.Errorf("%s: answer %v", c.name, m.Answer)
		}
	}
	// Nothing malformed went upstream, and the server still answers.
	if got := g.nets(dns.TypeA); len(got) != 0 {
		t.Errorf("asked upstream for %v", got)
	}
	checkAddrs(t, ecsQuery(t, addr, "example.org.", dns.TypeA, "192.0.2.1/32"), "example.org.", edgeOf("192.0.2.0/24", 24, dns.TypeA))

	// Without `ecs` the option means nothing to us and is ignored (RFC 7871 7.2.1), however it
	// is written, as long as it unpacks.
	g2 := newGeoUpstream(t, 300)
	addr2 := startECS(t, g2)
	m := rawECSQuery(t, addr2, []byte{0, 1, 24, 16, 192, 0, 2, 77})
	checkAddrs(t, m, "example.org.", noECSEdge(dns.TypeA))
	if e := replyECS(m); e != nil {
		t.Errorf("ECS echoed without `ecs`: %v", e)
	}
}

func TestECSUpstreamEchoChecked(t *testing.T) {
	// An answer whose ECS option is not the question's is dropped (RFC 7871 7.3, 11.2): it
	// may be a forged answer for everyone.
	u := newFakeUpstream(t)
	u.handle(ecsTarget, func(w dns.ResponseWriter, r *dns.Msg) {
		m := reply(r, aRR(ecsTarget, 300, "203.0.113.66"))
		if o := r.IsEdns0(); o != nil {
			m.SetEdns0(1232, false)
			for _, x := range o.Option {
				if e, ok := x.(*dns.EDNS0_SUBNET); ok {
					forged := *e
					forged.Address = net.IPv4(198, 51, 100, 0).To4()
					m.IsEdns0().Option = []dns.EDNS0{&forged}
				}
			}
		}
		w.WriteMsg(m)
	})
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ "+ecsTarget, "upstream "+u.Addr, "ecs", "timeout 500ms"))
	waitFor(t, "the warm answers", func() bool { return u.count(ecsTarget, dns.TypeA) == 1 && u.count(ecsTarget, dns.TypeAAAA) == 1 })
	// Asked, the answer dropped, and the warm answer standing in as for any failure: never the
	// answer served as the network's own, fresh.
	m := ecsQuery(t, addr, "example.org.", dns.TypeA, "192.0.2.1/32")
	if e := ede(m); e == nil || e.InfoCode != dns.ExtendedErrorCodeStaleAnswer {
		t.Errorf("the answer with a mismatched ECS option was served as fresh\n%s", m)
	}
	if n := u.count(ecsTarget, dns.TypeA); n != 2 {
		t.Errorf("asked %d times, want twice (the warm answer, then the client's network)", n)
	}
}

func TestECSEveryKindOfName(t *testing.T) {
	// Configured aliases, ALIAS records in the zone and `cname` names all answer per network.
	g := newGeoUpstream(t, 300)
	zone := exampleZone(t, "www 300 IN CNAME "+ecsTarget, aliasRecord(t, "za", 300, ecsTarget))
	addr, _ := startCoreDNS(t, flattenCorefile(zone, "alias @ "+ecsTarget, "zone_alias", "cname www.example.org.", "upstream "+g.Addr, "ecs"))
	for i, name := range []string{"example.org.", "za.example.org.", "www.example.org."} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			client := fmt.Sprintf("192.0.%d.1/32", 10+i)
			m := ecsQuery(t, addr, name, qtype, client)
			checkAddrs(t, m, name, edgeOf(client, 24, qtype))
			checkEcho(t, m, 1, 32, netip.MustParsePrefix(client).Addr().String(), 24)
		}
	}
}

func TestECSSelfResolution(t *testing.T) {
	// Resolving through this server: the ECS option goes with the question through the plugin
	// chain, and *forward* passes it on, and the scope back.
	g := newGeoUpstream(t, 300)
	addr, _ := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		alias @ %s
		ecs
	}
	file %s example.org
}
agency.test:0 {
	bind 127.0.0.1
	forward . %s
}
`, ecsTarget, exampleZone(t), g.Addr))
	for _, client := range []string{"192.0.2.77/32", "198.51.100.1/32"} {
		m := ecsQuery(t, addr, "example.org.", dns.TypeA, client)
		checkAddrs(t, m, "example.org.", edgeOf(client, 24, dns.TypeA))
		checkEcho(t, m, 1, 32, netip.MustParsePrefix(client).Addr().String(), 24)
	}
	if got, want := g.nets(dns.TypeA), []string{"192.0.2.0/24", "198.51.100.0/24"}; !slices.Equal(got, want) {
		t.Errorf("asked for %v, want %v", got, want)
	}
}

func TestECSNestedLookups(t *testing.T) {
	// A flattened name whose target is another flattened name, resolved through this server:
	// the ECS option goes with the inner question, and a lookup without one (the warm answer)
	// stays without one; it does not become a lookup for flatten's own address.
	g := newGeoUpstream(t, 300)
	addr, _ := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		alias @ www.example.org.
		alias www %s
		ecs
	}
	file %s example.org
}
agency.test:0 {
	bind 127.0.0.1
	forward . %s
}
`, ecsTarget, exampleZone(t), g.Addr))
	// An opted-out client's query brings the server to resolve through: the warm round runs.
	checkAddrs(t, ecsQuery(t, addr, "example.org.", dns.TypeA, "0.0.0.0/0"), "example.org.", noECSEdge(dns.TypeA))
	waitFor(t, "the warm answers", func() bool { return g.count(dns.TypeAAAA, "none") >= 1 })
	if got := g.nets(dns.TypeA); len(got) != 0 {
		t.Errorf("warm lookups asked for %v, want no network", got)
	}
	m := ecsQuery(t, addr, "example.org.", dns.TypeA, "192.0.2.1/32")
	checkAddrs(t, m, "example.org.", edgeOf("192.0.2.0/24", 24, dns.TypeA))
	checkEcho(t, m, 1, 32, "192.0.2.1", 24)

	// The inner name in a block without `ecs` (a `cname` name, resolved on demand within the
	// outer resolution): its flatten does not send the client's network, which the question
	// through the server carries, and its answer, without ECS, is shared by all.
	g2 := newGeoUpstream(t, 300)
	addr2, _ := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		alias @ www.example.net.
		ecs
	}
	file %s example.org
}
example.net:0 {
	bind 127.0.0.1
	flatten {
		cname www.example.net.
		upstream %s
	}
	file %s example.net
}
`, exampleZone(t), g2.Addr, writeZone(t, "example.net.", "@ 3600 IN SOA ns1.example.net. h.example.net. 1 7200 3600 1209600 300",
		"@ 3600 IN NS ns1.example.net.", "www 300 IN CNAME "+ecsTarget)))
	for _, client := range []string{"192.0.2.1/32", "198.51.100.1/32"} {
		m := ecsQuery(t, addr2, "example.org.", dns.TypeA, client)
		checkAddrs(t, m, "example.org.", noECSEdge(dns.TypeA))
		checkEcho(t, m, 1, 32, netip.MustParsePrefix(client).Addr().String(), 0)
	}
	if got := g2.nets(dns.TypeA); len(got) != 0 {
		t.Errorf("the block without `ecs` asked for %v, want no network", got)
	}
}

func TestECSCachePluginBypassed(t *testing.T) {
	// *cache* above flatten keys answers without ECS: it would give the first network's answer
	// to everyone. With `ecs`, flatten tells it to pass the flattened names on.
	g := newGeoUpstream(t, 300)
	addr, _ := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	cache
	flatten {
		alias @ %s
		upstream %s
		ecs
	}
	file %s example.org
}
`, ecsTarget, g.Addr, exampleZone(t)))
	for range 2 {
		for _, client := range []string{"192.0.2.77/32", "198.51.100.1/32"} {
			m := ecsQuery(t, addr, "example.org.", dns.TypeA, client)
			checkAddrs(t, m, "example.org.", edgeOf(client, 24, dns.TypeA))
			checkEcho(t, m, 1, 32, netip.MustParsePrefix(client).Addr().String(), 24)
		}
	}
	if m := query(t, addr, "udp", "example.org.", dns.TypeMX, 0); len(m.Answer) != 1 {
		t.Errorf("MX at the apex: %v", m)
	}
}

func TestCacheBypassZones(t *testing.T) {
	for i, tc := range []struct {
		lines string
		want  []string
	}{
		{"alias @ a.example.net.", nil},
		{"alias @ a.example.net.\nalias www b.example.net.\necs", []string{"example.org.", "www.example.org."}},
		{"cname www.example.org. *.shop.example.org.\necs", []string{"shop.example.org.", "www.example.org."}},
		{"alias www a.example.net.\nzone_alias\necs", []string{"example.org.", "www.example.org."}},
		{"cname *\necs", []string{"example.org."}},
	} {
		f, err := parse(newSetupController("flatten {\n"+tc.lines+"\n}", nil))
		if err != nil {
			t.Fatalf("Test %d: %v", i, err)
		}
		if got := f.CacheBypassZones(); !slices.Equal(got, tc.want) {
			t.Errorf("Test %d: %v, want %v", i, got, tc.want)
		}
	}
}

func TestParseECS(t *testing.T) {
	for i, tc := range []struct {
		lines       string
		shouldErr   bool
		expectedErr string
		line        int
		v4, v6      int
	}{
		{lines: "ecs", v4: 24, v6: 56},
		{lines: "ecs 16", v4: 16, v6: 56},
		{lines: "ecs 20 48", v4: 20, v6: 48},
		{lines: "ecs 0 0", v4: 0, v6: 0},
		{lines: "ecs 32 128", v4: 32, v6: 128},
		{lines: "ecs 33", shouldErr: true, expectedErr: "V4BITS '33' must be a whole number of bits from 0 to 32", line: 3},
		{lines: "ecs 24 129", shouldErr: true, expectedErr: "V6BITS '129' must be a whole number of bits from 0 to 128", line: 3},
		{lines: "ecs -1", shouldErr: true, expectedErr: "V4BITS '-1'", line: 3},
		{lines: "ecs /24", shouldErr: true, expectedErr: "V4BITS '/24'", line: 3},
		{lines: "ecs 24 56 1", shouldErr: true, expectedErr: "at most 2 arguments", line: 3},
		{lines: "ecs\n\t\tecs 16", shouldErr: true, expectedErr: "'ecs' given more than once", line: 4},
	} {
		input := "flatten {\n\t\talias @ a.example.net.\n\t\t" + tc.lines + "\n\t}"
		f, err := parse(newSetupController(input, nil))
		if !checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line) {
			continue
		}
		if f.cfg.ecs == nil || f.cfg.ecs.v4 != tc.v4 || f.cfg.ecs.v6 != tc.v6 {
			t.Errorf("Test %d: ecs %+v, want %d %d", i, f.cfg.ecs, tc.v4, tc.v6)
		}
	}
	f, err := parse(newSetupController("flatten {\n\talias @ a.example.net.\n}", nil))
	if err != nil || f.cfg.ecs != nil {
		t.Errorf("without the line: ecs %+v (%v), want off", f.cfg.ecs, err)
	}
}

// FuzzECS feeds an ECS-enabled flatten arbitrary ECS option data from arbitrary client addresses,
// with an upstream that returns an arbitrary scope. The handler contract holds, every reply
// echoes the client's option or carries none, and the client networks stay within capacity.
func FuzzECS(f *testing.F) {
	f.Add([]byte{0, 1, 24, 0, 192, 0, 2}, []byte{127, 0, 0, 1}, uint8(24))
	f.Add([]byte{0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 1, 2}, []byte{127, 0, 0, 1}, uint8(0))
	f.Add([]byte{0, 1, 0, 0}, []byte{192, 0, 2, 1}, uint8(32))
	f.Add([]byte{0, 0, 0, 0}, make([]byte, 16), uint8(200))
	f.Add([]byte{0, 1, 24, 0, 192, 0, 2, 77}, []byte{127, 0, 0, 1}, uint8(24))
	f.Add([]byte{}, []byte{10, 0, 0, 1}, uint8(8))

	fl, err := parse(newSetupController(`flatten {
		alias @ client1.agency.test.
		ecs
		cache 8
		timeout 100ms
	}`, nil))
	if err != nil {
		f.Fatal(err)
	}
	var upstreamScope atomic.Uint32
	w := &walker{ex: questionFunc(func(ctx context.Context, fq question, name string) (*dns.Msg, error) {
		qtype := fq.key.qtype
		q := newQuery(name, qtype, false)
		addECS(q, fq.sub)
		m := reply(q, aRR(name, 60, "192.0.2.10"))
		if qtype == dns.TypeAAAA {
			m.Answer = []dns.RR{aRR(name, 60, "2001:db8::10")}
		}
		if o := replyECS(q); o != nil {
			echo := *o
			echo.SourceScope = uint8(upstreamScope.Load())
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = []dns.EDNS0{&echo}
		}
		return m, checkAnswer(q, m)
	}), maxDepth: fl.cfg.maxDepth}
	fl.build(w.resolve)
	fl.Next = test.NextHandler(dns.RcodeRefused, nil)
	f.Cleanup(func() { fl.pool.cache.stop() })

	f.Fuzz(func(t *testing.T, data, src []byte, scope uint8) {
		upstreamScope.Store(uint32(scope))
		q := new(dns.Msg)
		q.SetQuestion("example.org.", dns.TypeA)
		if len(data)%2 == 1 {
			q.Question[0].Qtype = dns.TypeAAAA
		}
		q.SetEdns0(1232, false)
		if len(data) > 0 {
			q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_LOCAL{Code: dns.EDNS0SUBNET, Data: data}}
		}
		wire, err := q.Pack()
		if err != nil {
			return
		}
		r := new(dns.Msg)
		if r.Unpack(wire) != nil {
			return // the server answers FORMERR itself (TestECSMalformedClientOption)
		}
		ip, ok := netip.AddrFromSlice(src)
		if !ok {
			ip = netip.MustParseAddr("127.0.0.1")
		}
		cw := &countingWriter{ResponseWriter: test.ResponseWriter{RemoteIP: ip.String()}}
		orig := r.Copy()
		rcode, _ := fl.ServeDNS(context.Background(), request.NewScrubWriter(r.Copy(), cw), r)
		if r.String() != orig.String() {
			t.Fatalf("the client's message was modified")
		}
		if len(cw.msgs) != 1 || !(rcode == dns.RcodeSuccess) {
			t.Fatalf("%d replies, rcode %d", len(cw.msgs), rcode)
		}
		m := cw.msgs[0]
		if cw.err != nil {
			t.Fatalf("the reply does not pack: %v\n%s", cw.err, m)
		}
		sent, cerr := clientECS(orig)
		switch {
		case cerr != nil:
			if m.Rcode != dns.RcodeFormatError {
				t.Fatalf("malformed option (%v) answered %s", cerr, dns.RcodeToString[m.Rcode])
			}
		case m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeServerFailure:
			t.Fatalf("answered %s", dns.RcodeToString[m.Rcode])
		}
		got := replyECS(m)
		if got != nil && (sent == nil || got.Family != sent.Family || got.SourceNetmask != sent.SourceNetmask || !got.Address.Equal(sent.Address)) {
			t.Fatalf("reply ECS %v for query ECS %v", got, sent)
		}
		if sent != nil && cerr == nil && m.Rcode == dns.RcodeSuccess && got == nil {
			t.Fatalf("no ECS echoed to a client that sent one")
		}
		fl.pool.cache.mu.RLock()
		n, demand := fl.pool.cache.scopes.slots, len(fl.pool.cache.slots)
		fl.pool.cache.mu.RUnlock()
		if n > fl.cfg.capacity || demand > fl.cfg.capacity {
			t.Fatalf("%d client-network slots, %d on demand, capacity %d", n, demand, fl.cfg.capacity)
		}
	})
}

// benchECS is BenchmarkFlattenHit (bench_test.go) with `ecs`, for a client that sends the ECS
// option sub, or none (sub ""; its network is made from its address, 10.240.0.1): answered from
// the entry of its /24, which the upstream scoped to 24, the option echoed when there is one.
func benchECS(b *testing.B, sub string) {
	up := questionFunc(func(ctx context.Context, q question, name string) (*dns.Msg, error) {
		m, err := benchUpstream().exchange(ctx, q, name)
		if sent := q.sub; sent.IsValid() {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1,
				SourceNetmask: uint8(sent.Bits()), SourceScope: uint8(sent.Bits()), Address: net.IP(sent.Addr().AsSlice())}}
		}
		return m, err
	})
	f := newLadderFlatten(up, newFakeClock(), false)
	f.cfg.ecs = &ecsConfig{v4: defaultECSv4, v6: defaultECSv6}
	f.Next = benchFile(b)
	ctx, w, q := context.Background(), &packWriter{}, ecsMsg("example.org.", dns.TypeA, sub)
	f.ServeDNS(ctx, w, q)
	if n := f.pool.cache.len(); n != 3 {
		b.Fatalf("%d cache slots, want the alias's two and the client network's", n)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		f.ServeDNS(ctx, w, q)
	}
}

func BenchmarkECSHit(b *testing.B)              { benchECS(b, "192.0.2.77/32") }
func BenchmarkECSHitSourceAddress(b *testing.B) { benchECS(b, "") }
