package flatten

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// cdnHTTPS is a CDN's hostname as a target: app.paas.test leads through CNAMEs to edge.cdn.test,
// whose HTTPS record has every SvcParam a browser uses, and an unknown one.
var cdnHTTPS = []string{
	"app.paas.test. 300 IN CNAME app.cdn.test.",
	"app.cdn.test. 600 IN CNAME edge.cdn.test.",
	"edge.cdn.test. 120 IN A 192.0.2.10",
	"edge.cdn.test. 120 IN AAAA 2001:db8::10",
	`edge.cdn.test. 90 IN HTTPS 1 . alpn="h3,h2" port=8443 ipv4hint=192.0.2.10 ipv6hint=2001:db8::10 ech=AEX+DQBBpQAgACBtaGVsbG8= key65333="\001\002opaque"`,
	"edge.cdn.test. 90 IN HTTPS 2 fallback.cdn.test. alpn=h2",
}

// httpsData returns the data of the HTTPS records of m's answer owned by owner, sorted, and fails
// the test if the answer holds anything else.
func httpsData(t *testing.T, m *dns.Msg, owner string) []string {
	t.Helper()
	var out []string
	for _, rr := range m.Answer {
		if rr.Header().Name != owner || rr.Header().Rrtype != dns.TypeHTTPS {
			t.Errorf("answer holds %q, want only HTTPS records owned by %s", rr, owner)
			continue
		}
		out = append(out, strings.TrimPrefix(rr.String(), rr.Header().String()))
	}
	slices.Sort(out)
	return out
}

// upstreamHTTPS returns the data of the HTTPS records of records (zone-file lines) owned by owner,
// sorted: what a flattened answer must carry unchanged.
func upstreamHTTPS(t *testing.T, owner string, records ...string) []string {
	t.Helper()
	var out []string
	for _, s := range records {
		if rr := onWire(t, mustRR(t, s)); rr.Header().Rrtype == dns.TypeHTTPS && rr.Header().Name == owner {
			out = append(out, strings.TrimPrefix(rr.String(), rr.Header().String()))
		}
	}
	slices.Sort(out)
	return out
}

// onWire returns rr as it arrives from the wire: SvcParams in the order of their keys (RFC 9460
// 2.2).
func onWire(t *testing.T, rr dns.RR) dns.RR {
	t.Helper()
	m := new(dns.Msg)
	m.Answer = []dns.RR{rr}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	return m.Answer[0]
}

// TestHTTPSFollowsTarget: with `https`, an HTTPS query at an alias gets the HTTPS RRset at the end
// of the target's CNAME chain under the question name as spelled, AA set, no CNAME, the records
// unchanged (a "." TargetName stays ".", an explicit TargetName too, unknown keys byte for byte),
// the chain's smallest TTL; cached and counted like addresses.
func TestHTTPSFollowsTarget(t *testing.T) {
	u := newFakeUpstream(t, cdnHTTPS...)
	before := metric(t, "requests_total", "dns://127.0.0.1:0", "example.org.", "")
	srv, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ app.paas.test.", "upstream "+u.Addr, "https"))

	want := upstreamHTTPS(t, "edge.cdn.test.", cdnHTTPS...)
	for _, name := range []string{"example.org.", "ExAmPlE.org."} {
		m := query(t, srv, "udp", name, dns.TypeHTTPS, 1232)
		if m.Rcode != dns.RcodeSuccess || !m.Authoritative {
			t.Fatalf("%s: rcode %s, AA %v; want NOERROR, AA\n%s", name, dns.RcodeToString[m.Rcode], m.Authoritative, m)
		}
		if got := httpsData(t, m, name); !slices.Equal(got, want) {
			t.Errorf("%s HTTPS: %q, want %q", name, got, want)
		}
		checkTTL(t, m, 85, 90) // the chain's smallest TTL: the HTTPS records' own
	}
	// The unknown key's value is byte for byte what the upstream sent.
	m := query(t, srv, "tcp", "example.org.", dns.TypeHTTPS, 0)
	var local *dns.SVCBLocal
	for _, kv := range m.Answer[0].(*dns.HTTPS).Value {
		if l, ok := kv.(*dns.SVCBLocal); ok && l.KeyCode == 65333 {
			local = l
		}
	}
	if local == nil || string(local.Data) != "\x01\x02opaque" {
		t.Errorf("key65333 = %v, want the bytes 01 02 'opaque'", local)
	}
	// Cached: the chain was asked for once, however many queries.
	for _, n := range []string{"app.paas.test.", "app.cdn.test.", "edge.cdn.test."} {
		if c := u.count(n, dns.TypeHTTPS); c != 1 {
			t.Errorf("%s HTTPS asked %d times upstream, want 1", n, c)
		}
	}
	// Counted in the same metrics as address queries.
	if d := metric(t, "requests_total", "dns://127.0.0.1:0", "example.org.", "") - before; d != 3 {
		t.Errorf("requests_total moved by %v, want 3", d)
	}
	// The addresses are flattened as ever.
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10")
}

// TestHTTPSAliasMode: an AliasMode record (priority 0) is copied as it is, its TargetName too.
func TestHTTPSAliasMode(t *testing.T) {
	recs := []string{"svc.cdn.test. 300 IN A 192.0.2.20", "svc.cdn.test. 300 IN HTTPS 0 pool.cdn.test."}
	u := newFakeUpstream(t, recs...)
	srv, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ svc.cdn.test.", "upstream "+u.Addr, "https"))
	m := query(t, srv, "udp", "example.org.", dns.TypeHTTPS, 0)
	if got := httpsData(t, m, "example.org."); !slices.Equal(got, []string{"0 pool.cdn.test."}) {
		t.Errorf("HTTPS %q, want the AliasMode record unchanged", got)
	}
}

// TestHTTPSNegative: a target without HTTPS records gives NODATA with the zone's SOA, and so does
// one that does not exist: the flattened name exists.
func TestHTTPSNegative(t *testing.T) {
	u := newFakeUpstream(t, "plain.host.test. 300 IN A 192.0.2.30")
	srv, _ := startCoreDNS(t, flattenCorefile(exampleZone(t),
		"alias @ plain.host.test.", "alias gone gone.host.test.", "upstream "+u.Addr, "https"))
	for _, name := range []string{"example.org.", "gone.example.org."} {
		m := query(t, srv, "udp", name, dns.TypeHTTPS, 0)
		if m.Rcode != dns.RcodeSuccess || !m.Authoritative || len(m.Answer) != 0 || len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Errorf("%s HTTPS: want NODATA with the zone's SOA, got\n%s", name, m)
		}
	}
}

// TestHTTPSZoneWins: the zone's own HTTPS record at the name is the answer, and nothing is asked
// upstream; without `https`, HTTPS queries go to the zone as they always did.
func TestHTTPSZoneWins(t *testing.T) {
	u := newFakeUpstream(t, cdnHTTPS...)
	zone := exampleZone(t, "@ 300 IN HTTPS 1 . alpn=h2")
	srv, _ := startCoreDNS(t, flattenCorefile(zone, "alias @ app.paas.test.", "alias shop app.paas.test.", "upstream "+u.Addr, "https"))
	m := query(t, srv, "udp", "example.org.", dns.TypeHTTPS, 0)
	if got := httpsData(t, m, "example.org."); !slices.Equal(got, []string{`1 . alpn="h2"`}) {
		t.Errorf("HTTPS %q, want the zone's own", got)
	}
	if c := u.count("app.paas.test.", dns.TypeHTTPS); c != 0 {
		t.Errorf("the target's HTTPS was asked %d times, want 0", c)
	}

	off := newFakeUpstream(t, cdnHTTPS...)
	srv, _ = startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ app.paas.test.", "upstream "+off.Addr))
	m = query(t, srv, "udp", "example.org.", dns.TypeHTTPS, 0)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 {
		t.Errorf("without https: want the zone's NODATA, got\n%s", m)
	}
	if c := off.total(); c > 2 { // the startup round's A and AAAA of app.paas.test may have gone
		for _, n := range []string{"app.paas.test.", "edge.cdn.test."} {
			if c := off.count(n, dns.TypeHTTPS); c != 0 {
				t.Errorf("without https: %s HTTPS asked %d times upstream", n, c)
			}
		}
	}
}

// TestHTTPSFromZoneAlias: an ALIAS record's name gets its target's HTTPS records too, its TTL
// bounded by the ALIAS record's.
func TestHTTPSFromZoneAlias(t *testing.T) {
	u := newFakeUpstream(t, cdnHTTPS...)
	zone := exampleZone(t, aliasRecord(t, "za", 30, "app.paas.test."))
	srv, _ := startCoreDNS(t, flattenCorefile(zone, "zone_alias", "upstream "+u.Addr, "https"))
	m := query(t, srv, "udp", "za.example.org.", dns.TypeHTTPS, 0)
	if got, want := httpsData(t, m, "za.example.org."), upstreamHTTPS(t, "edge.cdn.test.", cdnHTTPS...); !slices.Equal(got, want) {
		t.Errorf("HTTPS %q, want %q", got, want)
	}
	checkTTL(t, m, 25, 30)
}

// TestHTTPSStale: when the upstream stops answering after the HTTPS records expire, they are
// served stale (RFC 8767) with EDE 3, like addresses.
func TestHTTPSStale(t *testing.T) {
	recs := []string{"svc.cdn.test. 1 IN A 192.0.2.20", "svc.cdn.test. 1 IN HTTPS 1 . alpn=h3"}
	u := newFakeUpstream(t, recs...)
	srv, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ svc.cdn.test.", "upstream "+u.Addr, "https", "ttl 1 60", "timeout 300ms"))
	if got := httpsData(t, query(t, srv, "udp", "example.org.", dns.TypeHTTPS, 0), "example.org."); len(got) != 1 {
		t.Fatalf("first answer %q", got)
	}
	u.handle("svc.cdn.test.", func(dns.ResponseWriter, *dns.Msg) {}) // never answers again
	waitFor(t, "a stale HTTPS answer", func() bool {
		m := query(t, srv, "udp", "example.org.", dns.TypeHTTPS, 1232)
		e := ede(m)
		return len(m.Answer) == 1 && e != nil && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer && m.Answer[0].Header().Ttl == staleTTL
	})
}

// TestHTTPSFollowsFailoverAndHealth: the HTTPS answer comes from the target that answers the
// addresses, and with health checks, addresses marked down leave ipv4hint too.
func TestHTTPSFollowsFailoverAndHealth(t *testing.T) {
	ips := []netip.Addr{lo4(2), lo4(3), lo4(4)}
	port, ls := sharedPort(t, ips, listenTCP)
	u := newFakeUpstream(t,
		"primary.agency.test. 60 IN A 127.0.0.2", "primary.agency.test. 60 IN A 127.0.0.3",
		"primary.agency.test. 60 IN HTTPS 1 . alpn=h3 ipv4hint=127.0.0.2,127.0.0.3,127.0.0.9",
		"backup.agency.test. 60 IN A 127.0.0.4",
		"backup.agency.test. 60 IN HTTPS 1 . alpn=h2 ipv4hint=127.0.0.4")
	u.setRecursive()
	srv := startFailover(t, u, "https", fmt.Sprintf("health_check tcp %d 100ms", port))
	https := func() []string {
		return httpsData(t, query(t, srv, "udp", "example.org.", dns.TypeHTTPS, 0), "example.org.")
	}
	if got := https(); !slices.Equal(got, []string{`1 . alpn="h3" ipv4hint="127.0.0.2,127.0.0.3,127.0.0.9"`}) {
		t.Fatalf("HTTPS %q, want the primary's", got)
	}

	// 127.0.0.3 goes down: out of the A answer, and out of ipv4hint (127.0.0.9 is not probed:
	// kept).
	ls[1].Close()
	answersWith(t, srv, "127.0.0.2")
	if got := https(); !slices.Equal(got, []string{`1 . alpn="h3" ipv4hint="127.0.0.2,127.0.0.9"`}) {
		t.Errorf("HTTPS %q, want the primary's without 127.0.0.3", got)
	}
	// The primary is down altogether: the backup answers A, and HTTPS with it.
	ls[0].Close()
	answersWith(t, srv, "127.0.0.4")
	if got := https(); !slices.Equal(got, []string{`1 . alpn="h2" ipv4hint="127.0.0.4"`}) {
		t.Errorf("HTTPS %q, want the backup's", got)
	}
}

// TestTrimHints: addresses marked down by health checks, or inside `deny_addresses`, leave the
// hints; a hint whose every address is dropped is dropped (an empty one is malformed); other
// SvcParams, and records of other types, are left alone.
func TestTrimHints(t *testing.T) {
	down4, down6, up := lo4(3), netip.MustParseAddr("2001:db8::3"), lo4(2)
	h := newHealthChecker(53, 0, nil, tallyOf(metricLabels{server: "test-hints"}), newBackground())
	f := &Flatten{pool: &pool{health: h}}
	records := func() []dns.RR {
		return []dns.RR{
			mustRR(t, "example.org. 60 IN HTTPS 1 . alpn=h3 ipv4hint=127.0.0.2,127.0.0.3 ipv6hint=2001:db8::3 port=443"),
			mustRR(t, "example.org. 60 IN HTTPS 2 . ipv4hint=127.0.0.3"),
			&dns.A{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IP(down4.AsSlice())},
		}
	}
	check := func(what string, rrs []dns.RR, want ...string) {
		t.Helper()
		for i, w := range want {
			if got := strings.TrimPrefix(rrs[i].String(), rrs[i].Header().String()); got != w {
				t.Errorf("%s: record %d: %q, want %q", what, i, got, w)
			}
		}
		if rrs[2].(*dns.A).A.String() != "127.0.0.3" {
			t.Errorf("%s: an A record was changed: %s", what, rrs[2])
		}
	}
	all := []string{`1 . alpn="h3" ipv4hint="127.0.0.2,127.0.0.3" ipv6hint="2001:db8::3" port="443"`, `2 . ipv4hint="127.0.0.3"`}

	rrs := records()
	f.trimHints(rrs, nil) // nothing probed, no policy
	check("nothing down", rrs, all...)

	h.snap.Store(&healthSnapshot{addrs: map[netip.Addr]addrHealth{down4: {state: healthDown}, down6: {state: healthDown}, up: {state: healthUp}}, down: 2})
	rrs = records()
	f.trimHints(rrs, nil)
	check("health", rrs, `1 . alpn="h3" ipv4hint="127.0.0.2" port="443"`, "2 .")

	h.snap.Store(nil)
	rrs = records()
	f.trimHints(rrs, &addrPolicy{deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("2001:db8::/32")}})
	check("deny_addresses", rrs, `1 . alpn="h3" ipv4hint="127.0.0.3" port="443"`, `2 . ipv4hint="127.0.0.3"`)
}

// TestHTTPSExplain: explain tells what an HTTPS query gets.
func TestHTTPSExplain(t *testing.T) {
	u := newFakeUpstream(t, cdnHTTPS...)
	srv, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ app.paas.test.", "upstream "+u.Addr, "https", "explain 127.0.0.0/8"))
	query(t, srv, "udp", "example.org.", dns.TypeHTTPS, 0)
	wantLines(t, explainLines(t, srv, "example.org."),
		`type=HTTPS answer=fresh target=app.paas.test.`,
		`target=1:app.paas.test. type=HTTPS state=fresh`,
		`chain=app.paas.test.(CNAME 300)>app.cdn.test.(CNAME 600)>edge.cdn.test.(HTTPS 90)`,
	)
}

func TestHTTPSParse(t *testing.T) {
	tests := []struct {
		input       string
		shouldErr   bool
		expectedErr string
		line        int
	}{
		{"flatten {\n alias @ a.test.\n https\n}", false, "", 0},
		{"flatten {\n zone_alias\n https\n}", false, "", 0},
		{"flatten {\n alias @ a.test.\n https on\n}", true, "Testfile:3 - Error during parsing: 'https' takes 0 argument(s)", 3},
		{"flatten {\n alias @ a.test.\n https\n https\n}", true, "Testfile:4 - Error during parsing: 'https' given more than once", 4},
		// With only `cname`, `https` would do nothing: said, not ignored.
		{"flatten {\n https\n cname www\n}", true, "Testfile:2 - Error during parsing: 'https' answers HTTPS queries at the names of 'alias' lines", 2},
	}
	for i, tc := range tests {
		_, err := parse(newSetupController(tc.input, nil))
		checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line)
	}
}

// TestHTTPSTransferred: with `https`, a transfer carries at each flattened name the HTTPS records
// a query gets (the zone's own where it has them), and the serial moves when they change.
func TestHTTPSTransferred(t *testing.T) {
	u := newFakeUpstream(t, append(slices.Clone(cdnHTTPS), "own.cdn.test. 300 IN A 192.0.2.40", "own.cdn.test. 300 IN HTTPS 1 . alpn=h3")...)
	zone := exampleZone(t, aliasRecord(t, "za", 300, "app.paas.test."), "own 300 IN HTTPS 1 . alpn=h2")
	srv, _ := startCoreDNS(t, transferCorefile(zone, "",
		"alias @ app.paas.test.", "alias own own.cdn.test.", "zone_alias", "https", "upstream "+u.Addr, "ttl 1 1"))

	var rrs []dns.RR
	want := upstreamHTTPS(t, "edge.cdn.test.", cdnHTTPS...)
	waitFor(t, "HTTPS records in the transfer", func() bool {
		rrs = axfr(t, srv, "example.org.", 0)
		return slices.Equal(recordsAt(rrs, "example.org.", dns.TypeHTTPS), want)
	})
	if got := recordsAt(rrs, "za.example.org.", dns.TypeHTTPS); !slices.Equal(got, want) {
		t.Errorf("za HTTPS %q, want %q", got, want)
	}
	if got := recordsAt(rrs, "own.example.org.", dns.TypeHTTPS); !slices.Equal(got, []string{`1 . alpn="h2"`}) {
		t.Errorf("own HTTPS %q, want the zone's own alone", got)
	}
	if c := u.count("own.cdn.test.", dns.TypeHTTPS); c != 0 {
		t.Errorf("own.cdn.test HTTPS asked %d times, want 0: the zone has its own", c)
	}

	time.Sleep(1100 * time.Millisecond) // the serial moves at most once a second
	first := soaSerial(t, axfr(t, srv, "example.org.", 0))
	u.set(t, "edge.cdn.test.", "edge.cdn.test. 1 IN A 192.0.2.10", "edge.cdn.test. 1 IN HTTPS 1 . alpn=h2")
	waitFor(t, "the new HTTPS record in the transfer", func() bool {
		rrs = axfr(t, srv, "example.org.", 0)
		return slices.Equal(recordsAt(rrs, "example.org.", dns.TypeHTTPS), []string{`1 . alpn="h2"`})
	})
	if s := soaSerial(t, rrs); !serialLess(first, s) {
		t.Errorf("serial %d after the HTTPS change, want above %d", s, first)
	}
}

// TestHTTPSCoalescedAndClamped: concurrent HTTPS queries for a cold target share one upstream
// question per name of the chain, and the TTL is held within `ttl MIN MAX` like addresses'.
func TestHTTPSCoalescedAndClamped(t *testing.T) {
	u := newFakeUpstream(t, cdnHTTPS...)
	u.handle("edge.cdn.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		time.Sleep(200 * time.Millisecond) // long enough for every query below to arrive first
		w.WriteMsg(u.answer(r))
	})
	srv, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ app.paas.test.", "upstream "+u.Addr, "https", "ttl 100 200"))
	var wg sync.WaitGroup
	answers := make([]*dns.Msg, 20)
	errs := make([]error, len(answers))
	for i := range answers {
		wg.Go(func() {
			m := new(dns.Msg)
			m.SetQuestion("example.org.", dns.TypeHTTPS)
			answers[i], _, errs[i] = (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, srv.addr("udp"))
		})
	}
	wg.Wait()
	for i, m := range answers {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if len(m.Answer) != 2 {
			t.Fatalf("want the two HTTPS records, got\n%s", m)
		}
		checkTTL(t, m, 95, 100) // the chain's 90, raised to MIN
	}
	if c := u.count("edge.cdn.test.", dns.TypeHTTPS); c != 1 {
		t.Errorf("edge.cdn.test HTTPS asked %d times for 20 concurrent queries, want 1", c)
	}
}

// TestHTTPSTargetPolicy: for a name flattened from zone data, `allow_targets` holds for HTTPS
// queries too (a target outside it is never asked), and `deny_addresses` (by default loopback and
// the like for zone data) leaves the hints as it leaves the addresses.
func TestHTTPSTargetPolicy(t *testing.T) {
	u := newFakeUpstream(t,
		"svc.cdn.test. 300 IN A 192.0.2.1",
		"svc.cdn.test. 300 IN HTTPS 1 . alpn=h2 ipv4hint=127.0.0.1,192.0.2.1 ipv6hint=::1",
		"evil.other.test. 300 IN HTTPS 1 . alpn=h2")
	zone := exampleZone(t, aliasRecord(t, "za", 300, "svc.cdn.test."), aliasRecord(t, "bad", 300, "evil.other.test."))
	srv, _ := startCoreDNS(t, flattenCorefile(zone, "zone_alias", "https", "allow_targets cdn.test", "upstream "+u.Addr))

	m := query(t, srv, "udp", "za.example.org.", dns.TypeHTTPS, 0)
	if got := httpsData(t, m, "za.example.org."); !slices.Equal(got, []string{`1 . alpn="h2" ipv4hint="192.0.2.1"`}) {
		t.Errorf("za HTTPS %q, want the hints without 127.0.0.1 and ::1", got)
	}
	m = query(t, srv, "udp", "bad.example.org.", dns.TypeHTTPS, 1232)
	if e := ede(m); m.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeProhibited {
		t.Errorf("bad HTTPS: want SERVFAIL with EDE 18, got\n%s", m)
	}
	if c := u.count("evil.other.test.", dns.TypeHTTPS); c != 0 {
		t.Errorf("a target outside allow_targets was asked %d times", c)
	}
}
