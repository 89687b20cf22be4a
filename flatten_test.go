package flatten

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// agencyRecords is the agency pattern: client1 -> client2 -> server1, TTLs 300, 600 and 120/60.
var agencyRecords = []string{
	"client1.agency.test. 300 IN CNAME client2.agency.test.",
	"client2.agency.test. 600 IN CNAME server1.agency.test.",
	"server1.agency.test. 120 IN A 192.0.2.10",
	"server1.agency.test. 120 IN A 192.0.2.11",
	"server1.agency.test. 60 IN AAAA 2001:db8::10",
}

// flattenCorefile is example.org on loopback, flattened with the given flatten block lines, over
// a file zone.
func flattenCorefile(zonefile string, lines ...string) string {
	return fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		%s
	}
	file %s example.org
}
`, strings.Join(lines, "\n\t\t"), zonefile)
}

// startFlatten starts CoreDNS flattening example.org's apex to client1.agency.test through u.
func startFlatten(t *testing.T, u *fakeUpstream, zone string, lines ...string) server {
	t.Helper()
	lines = append([]string{"alias @ client1.agency.test.", "upstream " + u.Addr}, lines...)
	addr, _ := startCoreDNS(t, flattenCorefile(zone, lines...))
	return addr
}

func checkAddrs(t *testing.T, m *dns.Msg, owner string, want ...string) {
	t.Helper()
	if m.Rcode != dns.RcodeSuccess {
		t.Fatalf("rcode %s, want NOERROR\n%s", dns.RcodeToString[m.Rcode], m)
	}
	if !m.Authoritative {
		t.Errorf("AA not set")
	}
	slices.Sort(want)
	if got := addrs(t, m, owner); !slices.Equal(got, want) {
		t.Fatalf("answer %v, want %v\n%s", got, want, m)
	}
}

func checkTTL(t *testing.T, m *dns.Msg, lo, hi uint32) {
	t.Helper()
	for _, rr := range m.Answer {
		if ttl := rr.Header().Ttl; ttl < lo || ttl > hi {
			t.Errorf("TTL of %q is %d, want %d..%d", rr, ttl, lo, hi)
		}
	}
}

func TestAgencyChainAuthoritativeUpstream(t *testing.T) {
	// An authoritative upstream answers client1 with its CNAME only; flatten asks for each hop.
	u := newFakeUpstream(t, agencyRecords...)
	addr := startFlatten(t, u, exampleZone(t))

	m := query(t, addr, "udp", "example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "example.org.", "192.0.2.10", "192.0.2.11")
	// TTL: the smallest on the chain (120), counting down from when it was fetched.
	checkTTL(t, m, 115, 120)
	for _, n := range []string{"client1.agency.test.", "client2.agency.test.", "server1.agency.test."} {
		if c := u.count(n, dns.TypeA); c != 1 {
			t.Errorf("%s A asked %d times upstream, want 1", n, c)
		}
	}

	m = query(t, addr, "udp", "example.org.", dns.TypeAAAA, 0)
	checkAddrs(t, m, "example.org.", "2001:db8::10")
	checkTTL(t, m, 55, 60)
}

func TestAgencyChainRecursiveUpstream(t *testing.T) {
	// A recursive upstream returns the whole chain in one answer: one question is enough.
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	addr := startFlatten(t, u, exampleZone(t))

	m := query(t, addr, "tcp", "example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "example.org.", "192.0.2.10", "192.0.2.11")
	checkTTL(t, m, 115, 120)
	if c := u.count("client1.agency.test.", dns.TypeA); c != 1 {
		t.Errorf("client1 A asked %d times, want 1", c)
	}
	if c := u.count("client2.agency.test.", dns.TypeA) + u.count("server1.agency.test.", dns.TypeA); c != 0 {
		t.Errorf("later hops asked %d times, want 0: the answer had the whole chain", c)
	}
}

func TestOtherTypesAtNameUnchanged(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	addr := startFlatten(t, u, exampleZone(t, "@ 3600 IN CAA 0 issue \"ca.example.net\""))
	waitFor(t, "startup resolution", func() bool {
		return u.count("server1.agency.test.", dns.TypeA) == 1 && u.count("server1.agency.test.", dns.TypeAAAA) == 1
	})
	before := u.total()

	want := map[uint16]string{
		dns.TypeMX:  "example.org.\t3600\tIN\tMX\t10 mail.example.org.",
		dns.TypeTXT: "example.org.\t3600\tIN\tTXT\t\"v=spf1 -all\"",
		dns.TypeNS:  "example.org.\t3600\tIN\tNS\tns1.example.org.",
		dns.TypeSOA: "example.org.\t3600\tIN\tSOA\tns1.example.org. hostmaster.example.org. 2026112201 7200 3600 1209600 300",
		dns.TypeCAA: "example.org.\t3600\tIN\tCAA\t0 issue \"ca.example.net\"",
	}
	for qtype, rr := range want {
		m := query(t, addr, "udp", "example.org.", qtype, 0)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].String() != rr {
			t.Errorf("%s: got %v, want the zone's %q", dns.TypeToString[qtype], m.Answer, rr)
		}
	}
	// A CNAME query at the flattened name is the zone's business: NODATA from file.
	m := query(t, addr, "udp", "example.org.", dns.TypeCNAME, 0)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
		t.Errorf("CNAME at apex: want NODATA from the zone, got\n%s", m)
	}
	// Other names and non-IN classes are not ours either.
	m = query(t, addr, "udp", "mail.example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "mail.example.org.", "192.0.2.25")
	ch := new(dns.Msg)
	ch.SetQuestion("example.org.", dns.TypeA)
	ch.Question[0].Qclass = dns.ClassCHAOS
	exchange(t, addr, "udp", ch)

	if after := u.total(); after != before {
		t.Errorf("queries for other types, names and classes caused %d upstream queries, want 0", after-before)
	}
}

func TestQuestionCaseKept(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	addr := startFlatten(t, u, exampleZone(t))
	m := query(t, addr, "udp", "ExAmPlE.oRg.", dns.TypeAAAA, 1232)
	checkAddrs(t, m, "ExAmPlE.oRg.", "2001:db8::10")
	if m.Question[0].Name != "ExAmPlE.oRg." {
		t.Errorf("question name %q, want the client's spelling", m.Question[0].Name)
	}
}

func TestNegativeTargets(t *testing.T) {
	u := newFakeUpstream(t,
		"client1.agency.test. 300 IN CNAME server1.agency.test.",
		"server1.agency.test. 300 IN A 192.0.2.10", // no AAAA: NODATA
		"gone.agency.test. 300 IN CNAME nowhere.agency.test.",
	)
	zone := exampleZone(t)
	addr, _ := startCoreDNS(t, flattenCorefile(zone,
		"alias @ client1.agency.test.",
		"alias nx gone.agency.test.", // chain ends in NXDOMAIN
		"upstream "+u.Addr))

	for _, tc := range []struct {
		name  string
		qtype uint16
	}{
		{"example.org.", dns.TypeAAAA},
		{"nx.example.org.", dns.TypeA},
		{"nx.example.org.", dns.TypeAAAA},
	} {
		m := query(t, addr, "udp", tc.name, tc.qtype, 1232)
		if m.Rcode != dns.RcodeSuccess {
			t.Errorf("%s %s: rcode %s, want NOERROR (the name exists)", tc.name, dns.TypeToString[tc.qtype], dns.RcodeToString[m.Rcode])
		}
		if len(m.Answer) != 0 {
			t.Errorf("%s %s: answer %v, want none", tc.name, dns.TypeToString[tc.qtype], m.Answer)
		}
		if len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA || m.Ns[0].Header().Name != "example.org." {
			t.Errorf("%s %s: authority %v, want exactly the zone's SOA", tc.name, dns.TypeToString[tc.qtype], m.Ns)
		} else if ttl := m.Ns[0].Header().Ttl; ttl > 300 {
			t.Errorf("SOA TTL %d, want at most the SOA minimum 300 (RFC 2308)", ttl)
		}
		if !m.Authoritative {
			t.Errorf("%s %s: AA not set", tc.name, dns.TypeToString[tc.qtype])
		}
	}
}

func TestTTLClamped(t *testing.T) {
	u := newFakeUpstream(t,
		"client1.agency.test. 1 IN CNAME server1.agency.test.",
		"server1.agency.test. 300 IN A 192.0.2.10",
		"long.agency.test. 86400 IN A 192.0.2.20",
	)
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t),
		"alias @ client1.agency.test.",
		"alias long long.agency.test.",
		"upstream "+u.Addr,
		"ttl 30 600"))

	m := query(t, addr, "udp", "example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "example.org.", "192.0.2.10")
	checkTTL(t, m, 30, 30) // chain minimum 1, raised to MIN

	m = query(t, addr, "udp", "long.example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "long.example.org.", "192.0.2.20")
	checkTTL(t, m, 595, 600) // 86400, lowered to MAX
}

func checkServfail(t *testing.T, m *dns.Msg, code uint16, text string) {
	t.Helper()
	if m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL\n%s", dns.RcodeToString[m.Rcode], m)
	}
	e := ede(m)
	if e == nil {
		t.Fatalf("no Extended DNS Error in\n%s", m)
	}
	if e.InfoCode != code || !strings.Contains(e.ExtraText, text) {
		t.Errorf("EDE %d %q, want %d with %q", e.InfoCode, e.ExtraText, code, text)
	}
}

func TestLoopAndDepth(t *testing.T) {
	u := newFakeUpstream(t,
		// a two-name loop, spread over two questions to an authoritative upstream
		"loop1.agency.test. 300 IN CNAME loop2.agency.test.",
		"loop2.agency.test. 300 IN CNAME loop1.agency.test.",
	)
	// a chain of 5 hops: hop0 -> hop1 -> ... -> hop5 A
	for i := range 5 {
		u.add(t, fmt.Sprintf("hop%d.agency.test. 300 IN CNAME hop%d.agency.test.", i, i+1))
	}
	u.add(t, "hop5.agency.test. 300 IN A 192.0.2.5")
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t),
		"alias loop loop1.agency.test.",
		"alias deep hop0.agency.test.",
		"alias ok hop1.agency.test.", // 4 hops: within the limit
		"upstream "+u.Addr,
		"max_depth 4"))

	checkServfail(t, query(t, addr, "udp", "loop.example.org.", dns.TypeA, 1232), dns.ExtendedErrorCodeOther, "loop")
	checkServfail(t, query(t, addr, "udp", "deep.example.org.", dns.TypeA, 1232), dns.ExtendedErrorCodeOther, "longer than 4 hops")
	checkAddrs(t, query(t, addr, "udp", "ok.example.org.", dns.TypeA, 1232), "ok.example.org.", "192.0.2.5")
}

func TestUpstreamNeverAnswers(t *testing.T) {
	u := newFakeUpstream(t)
	u.handle("client1.agency.test.", func(dns.ResponseWriter, *dns.Msg) {}) // silence
	addr := startFlatten(t, u, exampleZone(t), "timeout 300ms")

	start := time.Now()
	m := query(t, addr, "udp", "example.org.", dns.TypeA, 1232)
	checkServfail(t, m, dns.ExtendedErrorCodeNoReachableAuthority, "timeout")
	// The bound, not a speed claim: the reply comes within the configured timeout plus a little,
	// never after the client gave up (the client waits 5s).
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("reply took %v with timeout 300ms", d)
	}

	// Without EDNS the client gets a plain SERVFAIL (no OPT to carry an EDE).
	m = query(t, addr, "udp", "example.org.", dns.TypeA, 0)
	if m.Rcode != dns.RcodeServerFailure || m.IsEdns0() != nil {
		t.Errorf("non-EDNS client: want SERVFAIL without OPT, got\n%s", m)
	}
}

func TestUpstreamRefusedThenNextUpstream(t *testing.T) {
	bad := newFakeUpstream(t)
	bad.handle("client1.agency.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeRefused)
		w.WriteMsg(m)
	})
	good := newFakeUpstream(t, agencyRecords...)
	good.setRecursive()
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t),
		"alias @ client1.agency.test.",
		"upstream "+bad.Addr+" "+good.Addr))
	checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10", "192.0.2.11")

	// With only the refusing upstream: SERVFAIL that says so.
	addr2, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ client1.agency.test.", "upstream "+bad.Addr))
	checkServfail(t, query(t, addr2, "udp", "example.org.", dns.TypeA, 1232), dns.ExtendedErrorCodeNoReachableAuthority, "REFUSED")
}

func TestZoneFallbackRecords(t *testing.T) {
	u := newFakeUpstream(t)
	u.handle("client1.agency.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeServerFailure)
		w.WriteMsg(m)
	})
	addr := startFlatten(t, u, exampleZone(t, "@ 300 IN A 192.0.2.99"))
	m := query(t, addr, "udp", "example.org.", dns.TypeA, 1232)
	checkAddrs(t, m, "example.org.", "192.0.2.99")
	// No fallback AAAA in the zone: SERVFAIL with the reason.
	checkServfail(t, query(t, addr, "udp", "example.org.", dns.TypeAAAA, 1232), dns.ExtendedErrorCodeNoReachableAuthority, "SERVFAIL")
}

func TestOutOfChainRecordsIgnored(t *testing.T) {
	u := newFakeUpstream(t)
	u.handle("client1.agency.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{
			mustRR(t, "example.org. 300 IN A 203.0.113.66"),       // the alias name itself: forged
			mustRR(t, "other.agency.test. 300 IN A 203.0.113.67"), // not on the chain
			mustRR(t, "client1.agency.test. 300 IN CNAME server1.agency.test."),
			mustRR(t, "server1.agency.test. 300 IN A 192.0.2.10"),
			mustRR(t, "server1.agency.test. 300 IN A 192.0.2.10"), // duplicate
		}
		m.Ns = []dns.RR{mustRR(t, "agency.test. 300 IN NS ns.evil.test.")}
		m.Extra = []dns.RR{mustRR(t, "ns.evil.test. 300 IN A 203.0.113.68")}
		w.WriteMsg(m)
	})
	addr := startFlatten(t, u, exampleZone(t))
	m := query(t, addr, "udp", "example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "example.org.", "192.0.2.10")
	if len(m.Ns)+len(m.Extra) != 0 {
		t.Errorf("authority/additional leaked: %v %v", m.Ns, m.Extra)
	}
}

func TestTruncatedUDPRetriedOverTCP(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	u.handle("client1.agency.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := u.answer(r)
		if w.RemoteAddr().Network() == "udp" {
			m.Answer, m.Truncated = nil, true
		}
		w.WriteMsg(m)
	})
	addr := startFlatten(t, u, exampleZone(t))
	checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10", "192.0.2.11")
	if c := u.count("client1.agency.test.", dns.TypeA, "tcp"); c != 1 {
		t.Errorf("TCP retries %d, want 1", c)
	}
}

func TestManyAddressesTruncatedForUDPClients(t *testing.T) {
	var recs []string
	for i := range 200 {
		recs = append(recs, fmt.Sprintf("server1.agency.test. 300 IN A 10.0.%d.%d", i/250, i%250+1))
	}
	u := newFakeUpstream(t, append(recs, "client1.agency.test. 300 IN CNAME server1.agency.test.")...)
	u.setRecursive()
	addr := startFlatten(t, u, exampleZone(t))

	// TCP: all 200 (the upstream's UDP answer was truncated, flatten asked again over TCP).
	m := query(t, addr, "tcp", "example.org.", dns.TypeA, 0)
	if len(m.Answer) != 200 || m.Truncated {
		t.Errorf("over TCP: %d records, TC=%v; want 200, TC clear", len(m.Answer), m.Truncated)
	}
	// UDP, no EDNS: at most 512 bytes, TC set.
	for _, size := range []uint16{0, 1232} {
		m = query(t, addr, "udp", "example.org.", dns.TypeA, size)
		if !m.Truncated {
			t.Errorf("UDP bufsize %d: TC not set with %d records", size, len(m.Answer))
		}
		limit := max(int(size), 512)
		m.Compress = true // as it was on the wire
		if n := m.Len(); n > limit {
			t.Errorf("UDP bufsize %d: reply is %d bytes", size, n)
		}
	}
}

// selfCorefile serves example.org (flattened) and agency.test from two blocks on one listener,
// with no upstream: chains resolve through the server itself.
func selfCorefile(t *testing.T, flattenLines ...string) string {
	agency := writeZone(t, "agency.test.",
		"@ 3600 IN SOA ns1.agency.test. hostmaster.agency.test. 1 7200 3600 1209600 300",
		"@ 3600 IN NS ns1.agency.test.",
		"ns1 3600 IN A 192.0.2.53",
		"client1 300 IN CNAME client2",
		"client2 600 IN CNAME server1",
		"server1 120 IN A 192.0.2.10",
		"server1 120 IN A 192.0.2.11",
		"server1 60 IN AAAA 2001:db8::10",
	)
	return fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		%s
	}
	file %s example.org
}
agency.test:0 {
	bind 127.0.0.1
	file %s agency.test
}
`, strings.Join(flattenLines, "\n\t\t"), exampleZone(t, "www 300 IN CNAME example.org."), agency)
}

func TestSelfResolution(t *testing.T) {
	addr, _ := startCoreDNS(t, selfCorefile(t, "alias @ client1.agency.test."))
	m := query(t, addr, "udp", "example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "example.org.", "192.0.2.10", "192.0.2.11")
	checkTTL(t, m, 115, 120)
	checkAddrs(t, query(t, addr, "tcp", "example.org.", dns.TypeAAAA, 0), "example.org.", "2001:db8::10")
}

func TestSelfResolutionLoops(t *testing.T) {
	addr, _ := startCoreDNS(t, selfCorefile(t,
		"alias a a2.example.org.", // a -> a2 (alias) -> a: a loop through two flattened names
		"alias a2 a.example.org.",
		"alias @ www.example.org.", // the apex -> www, whose CNAME points back at the apex
		"timeout 1s"))
	for _, name := range []string{"a.example.org.", "example.org."} {
		m := query(t, addr, "udp", name, dns.TypeA, 1232)
		checkServfail(t, m, dns.ExtendedErrorCodeOther, "loop")
	}
}

func TestDNAMEChain(t *testing.T) {
	u := newFakeUpstream(t)
	// A resolver's answer: the DNAME, the CNAME synthesized from it, and the target's address.
	u.handle("app.old.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{
			mustRR(t, "old.test. 300 IN DNAME new.test."),
			mustRR(t, "app.old.test. 300 IN CNAME app.new.test."),
			mustRR(t, "app.new.test. 200 IN A 192.0.2.77"),
		}
		w.WriteMsg(m)
	})
	// An answer with the DNAME alone: flatten synthesizes the CNAME (RFC 6672 2.2) and asks on.
	u.handle("web.old2.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{mustRR(t, "old2.test. 100 IN DNAME new.test.")}
		w.WriteMsg(m)
	})
	u.add(t, "web.new.test. 300 IN A 192.0.2.78")
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t),
		"alias a app.old.test.", "alias b web.old2.test.", "upstream "+u.Addr))

	m := query(t, addr, "udp", "a.example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "a.example.org.", "192.0.2.77")
	checkTTL(t, m, 195, 200)
	m = query(t, addr, "udp", "b.example.org.", dns.TypeA, 0)
	checkAddrs(t, m, "b.example.org.", "192.0.2.78")
	checkTTL(t, m, 95, 100) // the DNAME's TTL is on the chain
	if c := u.count("web.new.test.", dns.TypeA); c != 1 {
		t.Errorf("the name synthesized from the DNAME was asked %d times, want 1", c)
	}
}

func TestUntrustedAnswersDiscarded(t *testing.T) {
	u := newFakeUpstream(t)
	reply := func(r *dns.Msg) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{mustRR(t, r.Question[0].Name+" 300 IN A 203.0.113.1")}
		return m
	}
	u.handle("wrongid.agency.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := reply(r)
		m.Id++
		w.WriteMsg(m)
	})
	u.handle("otherq.agency.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := reply(r)
		m.Question[0].Name = "example.org."
		m.Answer = []dns.RR{mustRR(t, "example.org. 300 IN A 203.0.113.2")}
		w.WriteMsg(m)
	})
	u.handle("garbage.agency.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		b, _ := reply(r).Pack()
		w.Write(b[:len(b)-7]) // cut in the middle of the answer
	})
	u.handle("query.agency.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := reply(r)
		m.Response = false // a query, not an answer
		w.WriteMsg(m)
	})
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t),
		"alias wrongid wrongid.agency.test.",
		"alias otherq otherq.agency.test.",
		"alias garbage garbage.agency.test.",
		"alias query query.agency.test.",
		"upstream "+u.Addr,
		"timeout 300ms"))

	checkServfail(t, query(t, addr, "udp", "wrongid.example.org.", dns.TypeA, 1232), dns.ExtendedErrorCodeNoReachableAuthority, "timeout")
	checkServfail(t, query(t, addr, "udp", "otherq.example.org.", dns.TypeA, 1232), dns.ExtendedErrorCodeNetworkError, "another question")
	checkServfail(t, query(t, addr, "udp", "garbage.example.org.", dns.TypeA, 1232), dns.ExtendedErrorCodeNetworkError, "garbage.agency.test.")
	checkServfail(t, query(t, addr, "udp", "query.example.org.", dns.TypeA, 1232), dns.ExtendedErrorCodeNetworkError, "not a response")
}

func TestUpstreamMetrics(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.handle("refused.agency.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeRefused)
		w.WriteMsg(m)
	})
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t),
		"alias @ client1.agency.test.", "alias bad refused.agency.test.", "upstream "+u.Addr))
	label := "dns://" + addr.udp
	label = label[:strings.LastIndex(label, ":")] + ":0" // the server label keeps the configured port
	query(t, addr, "udp", "example.org.", dns.TypeA, 0)
	query(t, addr, "udp", "bad.example.org.", dns.TypeA, 0)
	waitFor(t, "startup round", func() bool { return u.count("refused.agency.test.", dns.TypeAAAA) >= 1 })

	if n := metric(t, "upstream_queries_total", label, "example.org.", ""); n < 6 {
		t.Errorf("upstream_queries_total %v, want at least 6 (3 hops for A and AAAA)", n)
	}
	if n := metric(t, "upstream_errors_total", label, "example.org.", "", reasonRcode); n < 2 {
		t.Errorf("upstream_errors_total{reason=rcode} %v, want at least 2 (A and AAAA refused)", n)
	}
	if n := metric(t, "refreshes_total", label, "example.org.", ""); n < 4 {
		t.Errorf("refreshes_total %v, want at least 4 (the startup round)", n)
	}
	if n := metric(t, "cache_entries", label, "example.org.", ""); n != 4 {
		t.Errorf("cache_entries %v, want 4 (2 aliases x A, AAAA)", n)
	}
}
