package flatten

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
)

// aliasRR is an ALIAS record in RFC 3597 generic form, as a zone file holds it.
func aliasRR(t testing.TB, owner string, ttl int, target string) string {
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(target, buf, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`%s %d IN TYPE65401 \# %d %s`, owner, ttl, n, hex.EncodeToString(buf[:n]))
}

func TestZoneAliasFromFileZone(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.add(t, "other.agency.test. 300 IN A 192.0.2.200")
	zone := exampleZone(t,
		aliasRR(t, "@", 3600, "client1.agency.test."),
		aliasRR(t, "short", 30, "client1.agency.test."), // the ALIAS TTL bounds the answer
		aliasRR(t, "both", 300, "other.agency.test."),   // the Corefile's alias wins here
		`broken 300 IN TYPE65401 \# 3 c0ff00`,           // malformed: ignored, logged
		"plain 300 IN A 192.0.2.30",
	)
	addr, _ := startCoreDNS(t, flattenCorefile(zone,
		"zone_alias",
		"alias both client1.agency.test.",
		"upstream "+u.Addr))

	m := query(t, addr, "udp", "example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "example.org.", "192.0.2.10", "192.0.2.11")
	checkTTL(t, m, 115, 120)
	checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeAAAA, 0), "example.org.", "2001:db8::10")

	m = query(t, addr, "udp", "short.example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "short.example.org.", "192.0.2.10", "192.0.2.11")
	checkTTL(t, m, 30, 30)

	checkAddrs(t, query(t, addr, "udp", "both.example.org.", dns.TypeA, 0), "both.example.org.", "192.0.2.10", "192.0.2.11")
	if c := u.count("other.agency.test.", dns.TypeA); c != 0 {
		t.Errorf("the zone's ALIAS target was asked %d times although the Corefile's alias wins", c)
	}

	m = query(t, addr, "udp", "broken.example.org.", dns.TypeA, 0)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
		t.Errorf("malformed ALIAS: want the zone's NODATA, got %v", m)
	}
	checkAddrs(t, query(t, addr, "udp", "plain.example.org.", dns.TypeA, 0), "plain.example.org.", "192.0.2.30")
	// The ALIAS record itself is still served as zone data.
	if m = query(t, addr, "udp", "example.org.", typeALIAS, 0); len(m.Answer) != 1 {
		t.Errorf("TYPE65401 query: %v", m.Answer)
	}
}

// countingZone is a zone below flatten whose records the test changes (a reload) and which counts
// the questions it gets.
type countingZone struct {
	records atomic.Pointer[[]dns.RR]
	calls   atomic.Int32
}

func (z *countingZone) set(t *testing.T, rrs ...string) {
	var out []dns.RR
	for _, s := range rrs {
		out = append(out, mustRR(t, s))
	}
	z.records.Store(&out)
}

func (z *countingZone) ServeDNS(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	z.calls.Add(1)
	q := r.Question[0]
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	soa, _ := dns.NewRR("example.org. 3600 IN SOA ns1.example.org. host.example.org. 1 7200 3600 1209600 300")
	for _, rr := range *z.records.Load() {
		if rr.Header().Name == dns.Fqdn(q.Name) && (rr.Header().Rrtype == q.Qtype || rr.Header().Rrtype == dns.TypeCNAME) {
			m.Answer = append(m.Answer, rr)
		}
	}
	if q.Qtype == dns.TypeSOA {
		m.Answer = []dns.RR{soa}
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{soa}
	}
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

func (z *countingZone) Name() string { return "zone" }

// newZoneFlatten is a Flatten over zone with zone_alias on, resolving through an in-memory
// upstream that answers every name with an address derived from it.
func newZoneFlatten(t *testing.T, zone plugin.Handler, clk *fakeClock, cnames *cnameNames) *Flatten {
	f := newTestFlatten()
	f.cfg.zones = []string{"example.org."}
	f.cfg.zoneAlias = true
	f.cfg.cnames = cnames
	up := exchangerFunc(func(_ context.Context, name string, qtype uint16) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Response = true
		if qtype == dns.TypeA {
			last := byte(len(name)) // a different address per target length: tells targets apart
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: []byte{198, 51, 100, last}}}
		}
		return m, nil
	})
	w := &walker{ex: up, maxDepth: defaultMaxDepth}
	f.zoneAliases = newZoneAliases(f.cfg.capacity)
	f.build(w.resolve)
	f.pool.cache.now = clk.now
	f.Next = zone
	return f
}

func serveName(t *testing.T, f *Flatten, name string, qtype uint16) *dns.Msg {
	t.Helper()
	r := new(dns.Msg)
	r.SetQuestion(name, qtype)
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	f.ServeDNS(context.Background(), rec, r)
	if rec.Msg == nil {
		t.Fatalf("%s: no reply", name)
	}
	return rec.Msg
}

func firstA(m *dns.Msg) string {
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

func TestZoneAliasReloadAndCost(t *testing.T) {
	clk := newFakeClock()
	z := &countingZone{}
	z.set(t, aliasRR(t, "app.example.org.", 300, "a.example.net."), "plain.example.org. 300 IN A 192.0.2.30")
	f := newZoneFlatten(t, z, clk, nil)

	if got := firstA(serveName(t, f, "app.example.org.", dns.TypeA)); got != "198.51.100.14" {
		t.Fatalf("app -> a.example.net: got %q", got)
	}

	// Steady state: an ALIAS name costs no lookup in the zone, any other name exactly one.
	serveName(t, f, "plain.example.org.", dns.TypeA) // learns that plain holds no ALIAS
	before := z.calls.Load()
	for range 10 {
		serveName(t, f, "app.example.org.", dns.TypeA)
		serveName(t, f, "plain.example.org.", dns.TypeA)
	}
	if n := z.calls.Load() - before; n != 10 {
		t.Errorf("20 queries (10 at an ALIAS name, 10 at a plain name) cost %d lookups in the zone, want 10", n)
	}

	// The zone changes (a reload): a new target, and a removed ALIAS; seen after the refresh.
	z.set(t, aliasRR(t, "app.example.org.", 300, "longer-target.example.net."), "plain.example.org. 300 IN A 192.0.2.30")
	if got := firstA(serveName(t, f, "app.example.org.", dns.TypeA)); got != "198.51.100.14" {
		t.Errorf("within the refresh interval the old target stands: got %q", got)
	}
	clk.advance(zoneAliasRefresh + time.Second)
	if got := firstA(serveName(t, f, "app.example.org.", dns.TypeA)); got != "198.51.100.26" {
		t.Errorf("after the zone changed: got %q, want the new target's address", got)
	}
	z.set(t, "plain.example.org. 300 IN A 192.0.2.30")
	clk.advance(zoneAliasRefresh + time.Second)
	if m := serveName(t, f, "app.example.org.", dns.TypeA); len(m.Answer) != 0 {
		t.Errorf("after the ALIAS was removed: %v, want the zone's NODATA", m.Answer)
	}
}

func TestCNAMEFlattening(t *testing.T) {
	clk := newFakeClock()
	z := &countingZone{}
	z.set(t,
		"example.org. 300 IN CNAME apex.example.net.",        // an apex CNAME, as some zones (illegally) have
		"www.example.org. 600 IN CNAME cdn.example.net.",     // a chain that leaves the zone
		"a.shop.example.org. 60 IN CNAME shop.example.net.",  // matched by *.shop.example.org.
		"local.example.org. 100 IN CNAME plain.example.org.", // an in-zone chain the zone followed
		"local.example.org. 100 IN A 192.0.2.30",             // (as file returns it: CNAME + target)
		"plain.example.org. 300 IN A 192.0.2.30",
		"unlisted.example.org. 300 IN CNAME cdn.example.net.",
	)
	// countingZone returns records by owner only: give local's answer the target's A record.
	rrs := *z.records.Load()
	rrs[4].Header().Name = "plain.example.org."
	cn := &cnameNames{exact: map[string]bool{"example.org.": true, "www.example.org.": true, "local.example.org.": true}, suffixes: []string{".shop.example.org."}}
	f := newZoneFlatten(t, z, clk, cn)
	f.cfg.zoneAlias, f.zoneAliases = false, nil

	for _, tc := range []struct {
		name, want string
		ttl        uint32
	}{
		{"example.org.", "198.51.100.17", 300},
		{"www.example.org.", "198.51.100.16", 300},   // min(600, 300)
		{"a.shop.example.org.", "198.51.100.17", 60}, // the CNAME's 60 is the minimum
	} {
		m := serveName(t, f, tc.name, dns.TypeA)
		if len(m.Answer) != 1 || firstA(m) != tc.want || m.Answer[0].Header().Name != tc.name || m.Answer[0].Header().Ttl != tc.ttl {
			t.Errorf("%s: %v, want %s %s with TTL %d", tc.name, m.Answer, tc.name, tc.want, tc.ttl)
		}
	}
	// local: the zone already followed the chain; flatten only renames the address to local.
	z.records.Store(&rrs)
	lz := &localZone{countingZone: z}
	f.Next = lz
	m := serveName(t, f, "local.example.org.", dns.TypeA)
	if len(m.Answer) != 1 || firstA(m) != "192.0.2.30" || m.Answer[0].Header().Name != "local.example.org." || m.Answer[0].Header().Ttl != 100 {
		t.Errorf("in-zone chain: %v", m.Answer)
	}
	f.Next = z

	// Not listed, other types, no CNAME: the zone's answer as it is.
	if m = serveName(t, f, "unlisted.example.org.", dns.TypeA); len(m.Answer) != 1 || m.Answer[0].Header().Rrtype != dns.TypeCNAME {
		t.Errorf("unlisted name: %v, want the zone's CNAME", m.Answer)
	}
	if m = serveName(t, f, "www.example.org.", dns.TypeTXT); len(m.Answer) != 1 || m.Answer[0].Header().Rrtype != dns.TypeCNAME {
		t.Errorf("TXT at www: %v, want the zone's CNAME", m.Answer)
	}
	if m = serveName(t, f, "plain.example.org.", dns.TypeA); firstA(m) != "192.0.2.30" {
		t.Errorf("plain name: %v", m.Answer)
	}

	// `cname *` flattens every name in ZONES.
	f.cfg.cnames = &cnameNames{all: true}
	if m = serveName(t, f, "unlisted.example.org.", dns.TypeA); firstA(m) != "198.51.100.16" {
		t.Errorf("cname *: %v", m.Answer)
	}
}

// localZone answers local.example.org with the CNAME and the in-zone target's address, the way
// *file* answers an in-zone chain.
type localZone struct{ *countingZone }

func (z *localZone) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if r.Question[0].Name != "local.example.org." {
		return z.countingZone.ServeDNS(ctx, w, r)
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Answer = []dns.RR{
		&dns.CNAME{Hdr: dns.RR_Header{Name: "local.example.org.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 100}, Target: "plain.example.org."},
		&dns.A{Hdr: dns.RR_Header{Name: "plain.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: []byte{192, 0, 2, 30}},
	}
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

func TestCNAMEFromFileZone(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	zone := exampleZone(t,
		"www 300 IN CNAME client1.agency.test.",
		"*.shop 300 IN CNAME client1.agency.test.",
		"alias2 300 IN CNAME mail", // in zone: file follows it
	)
	addr, _ := startCoreDNS(t, flattenCorefile(zone,
		"cname www.example.org. *.shop.example.org. alias2.example.org.",
		"upstream "+u.Addr))
	checkAddrs(t, query(t, addr, "udp", "www.example.org.", dns.TypeA, 0), "www.example.org.", "192.0.2.10", "192.0.2.11")
	checkAddrs(t, query(t, addr, "udp", "x.shop.example.org.", dns.TypeAAAA, 0), "x.shop.example.org.", "2001:db8::10")
	checkAddrs(t, query(t, addr, "udp", "alias2.example.org.", dns.TypeA, 0), "alias2.example.org.", "192.0.2.25")
	// An in-zone chain to a name without AAAA: NODATA with the zone's SOA, and no upstream question.
	m := query(t, addr, "udp", "alias2.example.org.", dns.TypeAAAA, 0)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
		t.Errorf("in-zone chain, no AAAA: want NODATA with the SOA, got\n%s", m)
	}
	if n := u.count("mail.example.org.", dns.TypeAAAA); n != 0 {
		t.Errorf("the end of an in-zone chain was asked upstream %d times", n)
	}
	// Other types at www: the zone's CNAME.
	if m = query(t, addr, "udp", "www.example.org.", dns.TypeMX, 0); len(m.Answer) == 0 || m.Answer[0].Header().Rrtype != dns.TypeCNAME {
		t.Errorf("MX at www: %v", m.Answer)
	}
}

func TestZoneOptionsParse(t *testing.T) {
	for i, tc := range []struct {
		in  string
		err string
	}{
		{"flatten {\n zone_alias\n}", ""},
		{"flatten {\n cname @ www.example.org. *.example.org. *\n}", ""},
		{"flatten {\n zone_alias extra\n}", "Testfile:2 - Error during parsing: 'zone_alias' takes 0 argument(s)"},
		{"flatten {\n cname\n}", "Testfile:2 - Error during parsing: 'cname' takes at least 1 argument"},
		{"flatten {\n cname www\n}", ""}, // relative to the zone: www.example.org.
		{"flatten {\n cname www.other.net.\n}", "is not inside the zones"},
		{"flatten {\n cname *.other.net.\n}", "is not inside the zones"},
		{"flatten {\n cname *.\n}", "cname wildcard '*.' names no zone"},
		{"flatten {\n cname bad..name\n}", "cname name 'bad..name' is not a valid host name"},
	} {
		c := caddy.NewTestController("dns", tc.in)
		c.ServerBlockKeys = []string{"example.org.:53"}
		_, err := parse(c)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("Test %d: unexpected error %v", i, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Test %d: error %v, want it to contain %q", i, err, tc.err)
		}
	}
}

// TestCNAMELeavingTheZoneIsCachedWithSelfResolution: when this server can resolve the CNAME's
// target itself (here a `.` block forwarding to the upstream), *file* would follow the chain out
// of the zone through the server for every query, bypassing flatten's cache and failure ladder.
// flatten asks the zone without the server, so *file* answers with its part of the chain and
// flatten resolves the rest once, through its cache, and answers stale when the upstream fails.
func TestCNAMELeavingTheZoneIsCachedWithSelfResolution(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	var failing atomic.Bool
	u.handle("client1.agency.test.", servfailer(u, &failing))
	zone := exampleZone(t, "www 300 IN CNAME client1.agency.test.")
	srv, _ := startCoreDNS(t, `example.org:0 {
	bind 127.0.0.1
	flatten {
		cname www.example.org.
		ttl 1 1
	}
	file `+zone+` example.org
}
.:0 {
	bind 127.0.0.1
	forward . `+u.Addr+`
}
`)
	for range 5 {
		checkAddrs(t, query(t, srv, "udp", "www.example.org.", dns.TypeA, 0), "www.example.org.", "192.0.2.10", "192.0.2.11")
	}
	if n := u.count("client1.agency.test.", dns.TypeA); n != 1 {
		t.Errorf("5 queries asked the upstream %d times, want 1 (cached)", n)
	}
	failing.Store(true)
	waitFor(t, "a stale answer", func() bool {
		m := query(t, srv, "udp", "www.example.org.", dns.TypeA, 1232)
		e := ede(m)
		return m.Rcode == dns.RcodeSuccess && e != nil && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer && len(addrs(t, m, "www.example.org.")) == 2
	})
}

// TestAliasNameExistsForEveryType: a name flattened with `alias` that the zone holds no record
// at answers every other type with NODATA (NOERROR and the zone's SOA, RFC 2308), over UDP and
// TCP, never NXDOMAIN: RFC 8020 would let a resolver deny the name and everything below it, its
// addresses included. Names below it, and names that do exist, keep the zone's answer.
func TestAliasNameExistsForEveryType(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t, "mx-only 3600 IN MX 10 mail.example.org."),
		"alias shop client1.agency.test.", "alias mx-only client1.agency.test.", "upstream "+u.Addr))
	checkAddrs(t, query(t, addr, "udp", "shop.example.org.", dns.TypeA, 0), "shop.example.org.", "192.0.2.10", "192.0.2.11")
	for _, proto := range []string{"udp", "tcp"} {
		for _, qtype := range []uint16{dns.TypeMX, dns.TypeTXT, dns.TypeCAA, dns.TypeHTTPS, dns.TypeANY, typeALIAS, dns.TypeDS} {
			m := query(t, addr, proto, "ShOp.example.org.", qtype, 1232)
			if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
				t.Errorf("%s shop %s: want NODATA with the SOA, got\n%s", proto, dns.TypeToString[qtype], m)
			}
		}
	}
	// What the zone holds at an alias's name is answered as it is.
	if m := query(t, addr, "udp", "mx-only.example.org.", dns.TypeMX, 0); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Errorf("mx-only MX: want the zone's MX, got\n%s", m)
	}
	// Below a flattened name, and at a name nothing flattens, the zone's NXDOMAIN stands.
	for _, name := range []string{"x.shop.example.org.", "nothing.example.org."} {
		if m := query(t, addr, "udp", name, dns.TypeMX, 0); m.Rcode != dns.RcodeNameError {
			t.Errorf("%s MX: rcode %s, want NXDOMAIN", name, dns.RcodeToString[m.Rcode])
		}
	}
}

// TestAliasNameExistsSigned: with *dnssec*, the denial at an alias name absent from the zone is a
// NODATA proof: an NSEC at the name itself whose bitmap has A and AAAA and not the type asked.
func TestAliasNameExistsSigned(t *testing.T) {
	key, keyfile := newZoneKey(t, "example.org.")
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	addr, _ := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	dnssec {
		key file %s
	}
	flatten {
		alias shop client1.agency.test.
		upstream %s
	}
	file %s example.org
}
`, keyfile, u.Addr, exampleZone(t)))
	for _, qtype := range []uint16{dns.TypeMX, dns.TypeTXT} {
		m := doQuery(t, addr, "shop.example.org.", qtype, true)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
			t.Fatalf("shop %s: want NOERROR and no answer, got\n%s", dns.TypeToString[qtype], m)
		}
		nsecs := checkSigned(t, m, m.Ns, "shop.example.org.", dns.TypeNSEC, key)
		if len(nsecs) != 1 {
			t.Fatalf("shop %s: want one NSEC at shop.example.org., got\n%s", dns.TypeToString[qtype], m)
		}
		bitmap := nsecs[0].(*dns.NSEC).TypeBitMap
		if !slices.Contains(bitmap, dns.TypeA) || !slices.Contains(bitmap, dns.TypeAAAA) || slices.Contains(bitmap, qtype) {
			t.Errorf("shop %s: NSEC bitmap %v, want A and AAAA, not %s", dns.TypeToString[qtype], bitmap, dns.TypeToString[qtype])
		}
	}
}

// TestExistingNameWriter: only an NXDOMAIN for the name itself becomes NODATA; a chain that ends
// in NXDOMAIN and a signed zone's own denial are written as they are, and the message from below
// is never changed.
func TestExistingNameWriter(t *testing.T) {
	soa := mustRR(t, "example.org. 300 IN SOA ns1.example.org. hostmaster.example.org. 1 7200 3600 1209600 300")
	for i, tc := range []struct {
		rcode  int
		answer []dns.RR
		ns     []dns.RR
		want   int
	}{
		{dns.RcodeNameError, nil, []dns.RR{soa}, dns.RcodeSuccess},
		{dns.RcodeNameError, []dns.RR{mustRR(t, "shop.example.org. 300 IN CNAME gone.example.org.")}, []dns.RR{soa}, dns.RcodeNameError},
		{dns.RcodeNameError, nil, []dns.RR{soa, mustRR(t, "s.example.org. 300 IN NSEC t.example.org. A RRSIG NSEC")}, dns.RcodeNameError},
		{dns.RcodeSuccess, nil, []dns.RR{soa}, dns.RcodeSuccess},
		{dns.RcodeServerFailure, nil, nil, dns.RcodeServerFailure},
	} {
		q := new(dns.Msg)
		q.SetQuestion("shop.example.org.", dns.TypeMX)
		m := new(dns.Msg)
		m.SetRcode(q, tc.rcode)
		m.Answer, m.Ns = tc.answer, tc.ns
		rec := dnstest.NewRecorder(&test.ResponseWriter{})
		existingName{rec}.WriteMsg(m)
		if rec.Msg.Rcode != tc.want || len(rec.Msg.Ns) != len(tc.ns) || len(rec.Msg.Answer) != len(tc.answer) {
			t.Errorf("Test %d: wrote rcode %s with %d answers and %d in authority, want %s, %d and %d", i,
				dns.RcodeToString[rec.Msg.Rcode], len(rec.Msg.Answer), len(rec.Msg.Ns), dns.RcodeToString[tc.want], len(tc.answer), len(tc.ns))
		}
		if m.Rcode != tc.rcode {
			t.Errorf("Test %d: the message from below was changed", i)
		}
	}
}
