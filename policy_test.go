package flatten

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/coredns/caddy"

	"github.com/miekg/dns"
)

func TestSecurityOptionsParse(t *testing.T) {
	tests := []struct {
		input       string
		shouldErr   bool
		expectedErr string
		line        int
	}{
		// 0: every option, in any order (allow_targets after the alias it allows).
		{"flatten {\n alias @ a.agency.test\n dnssec_targets secure\n allow_targets agency.test. example.net\n deny_addresses 10.0.0.0/8 192.0.2.1\n max_addresses 4\n}", false, "", 0},
		{"flatten {\n alias @ a.agency.test\n dnssec_targets any\n deny_addresses none\n}", false, "", 0},
		{"flatten {\n alias @ a.agency.test\n dnssec_targets\n}", true, "Testfile:3 - Error during parsing: 'dnssec_targets' takes 1 argument(s)", 3},
		{"flatten {\n alias @ a.agency.test\n dnssec_targets yes\n}", true, "Testfile:3 - Error during parsing: dnssec_targets 'yes' must be 'secure'", 3},
		{"flatten {\n alias @ a.agency.test\n dnssec_targets secure\n dnssec_targets any\n}", true, "Testfile:4 - Error during parsing: 'dnssec_targets' given more than once", 4},
		// 5
		{"flatten {\n alias @ a.agency.test\n allow_targets\n}", true, "Testfile:3 - Error during parsing: 'allow_targets' takes at least 1 NAME", 3},
		{"flatten {\n alias @ a.agency.test\n allow_targets agency..test\n}", true, "Testfile:3 - Error during parsing: allow_targets 'agency..test' is not a valid domain name", 3},
		// The alias line is named, though allow_targets comes after it.
		{"flatten {\n zone_alias\n alias @ a.agency.test\n alias www b.example.net a.agency.test\n allow_targets agency.test\n}", true,
			"Testfile:4 - Error during parsing: alias target 'b.example.net.' is not at or below any of allow_targets", 4},
		{"flatten {\n allow_targets agency.test\n alias @ a.agency.test evil.test\n}", true,
			"Testfile:3 - Error during parsing: alias target 'evil.test.' is not at or below any of allow_targets", 3},
		{"flatten {\n allow_targets .\n alias @ a.agency.test evil.test\n}", false, "", 0},
		// 10
		{"flatten {\n alias @ a.agency.test\n deny_addresses\n}", true, "Testfile:3 - Error during parsing: 'deny_addresses' takes CIDRs", 3},
		{"flatten {\n alias @ a.agency.test\n deny_addresses 10.0.0.0/33\n}", true, "Testfile:3 - Error during parsing: deny_addresses '10.0.0.0/33' is not a CIDR", 3},
		{"flatten {\n alias @ a.agency.test\n deny_addresses none 10.0.0.0/8\n}", true, "Testfile:3 - Error during parsing: deny_addresses 'none' cannot be given with CIDRs", 3},
		{"flatten {\n alias @ a.agency.test\n max_addresses 0\n}", true, "Testfile:3 - Error during parsing: max_addresses '0' must be a whole number of addresses from 1 to 65535", 3},
		{"flatten {\n alias @ a.agency.test\n max_addresses many\n}", true, "Testfile:3 - Error during parsing: max_addresses 'many'", 3},
		// 15
		{"flatten {\n alias @ a.agency.test\n max_addresses 1 2\n}", true, "Testfile:3 - Error during parsing: 'max_addresses' takes 1 argument(s)", 3},
	}
	for i, tc := range tests {
		err := setup(newSetupController(tc.input, nil))
		checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line)
	}
}

// parseBlock parses a flatten block for example.org.
func parseBlock(t *testing.T, block string) *Flatten {
	t.Helper()
	c := caddy.NewTestController("dns", block)
	c.ServerBlockKeys = []string{"example.org.:53"}
	f, err := parse(c)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// The default deny list is zone data's only; deny_addresses given applies to every name, and
// none turns it off; without any option a block holds no security settings at all.
func TestSecurityOptionsValues(t *testing.T) {
	f := parseBlock(t, "flatten {\n alias @ a.agency.test\n zone_alias\n}")
	if f.cfg.sec != nil || f.cfg.policyFor(false) != nil || f.cfg.policyFor(true) != defaultZonePolicy || f.cfg.secureTargets() {
		t.Errorf("no options: sec %+v, alias policy %v, zone policy %v", f.cfg.sec, f.cfg.policyFor(false), f.cfg.policyFor(true))
	}
	f = parseBlock(t, "flatten {\n alias @ a.agency.test\n deny_addresses 10.0.0.0/8 192.0.2.1\n max_addresses 3\n allow_targets Agency.Test\n dnssec_targets secure\n}")
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32")}
	for _, fromZone := range []bool{false, true} {
		if p := f.cfg.policyFor(fromZone); p == nil || !slices.Equal(p.deny, want) || p.max != 3 {
			t.Errorf("fromZone=%v: policy %+v, want deny %v max 3", fromZone, p, want)
		}
	}
	if !f.cfg.secureTargets() || !slices.Equal(f.cfg.allowTargets(), []string{"agency.test."}) {
		t.Errorf("secure %v allow %v", f.cfg.secureTargets(), f.cfg.allowTargets())
	}
	if !f.cfg.targetAllowed("a.b.agency.test.") || !f.cfg.targetAllowed("agency.test.") || f.cfg.targetAllowed("xagency.test.") {
		t.Error("allow_targets agency.test: a name at or below it is allowed, xagency.test not")
	}
	f = parseBlock(t, "flatten {\n alias @ a.agency.test\n deny_addresses none\n}")
	if f.cfg.policyFor(false) != nil || f.cfg.policyFor(true) != nil {
		t.Errorf("deny_addresses none: policies %v %v, want none", f.cfg.policyFor(false), f.cfg.policyFor(true))
	}
	f = parseBlock(t, "flatten {\n alias @ a.agency.test\n max_addresses 2\n}")
	if p := f.cfg.policyFor(false); p == nil || len(p.deny) != 0 || p.max != 2 {
		t.Errorf("max_addresses alone: alias policy %+v", p)
	}
	if p := f.cfg.policyFor(true); p == nil || !slices.Equal(p.deny, defaultZoneDeny) || p.max != 2 {
		t.Errorf("max_addresses alone: zone policy %+v keeps the default deny list", p)
	}
}

func TestAddrPolicyApply(t *testing.T) {
	rrs := []dns.RR{
		mustRR(t, "a. 60 IN A 192.0.2.1"), mustRR(t, "a. 60 IN A 127.0.0.1"),
		mustRR(t, "a. 60 IN A 192.0.2.2"), mustRR(t, "a. 60 IN A 169.254.169.254"),
	}
	p := &addrPolicy{deny: defaultZoneDeny}
	if got := addrList(p.apply(rrs)); got != "192.0.2.1,192.0.2.2" {
		t.Errorf("got %s", got)
	}
	if addrList(rrs) != "192.0.2.1,127.0.0.1,192.0.2.2,169.254.169.254" {
		t.Error("apply changed its input, which is a shared cache entry's")
	}
	if got := addrList((&addrPolicy{deny: defaultZoneDeny, max: 1}).apply(rrs)); got != "192.0.2.1" {
		t.Errorf("max 1: got %s", got)
	}
	v6 := []dns.RR{mustRR(t, "a. 60 IN AAAA ::1"), mustRR(t, "a. 60 IN AAAA fe80::1"), mustRR(t, "a. 60 IN AAAA ::"), mustRR(t, "a. 60 IN AAAA ff02::1")}
	if got := p.apply(v6); len(got) != 0 {
		t.Errorf("v6: got %s, want none", addrList(got))
	}
	// Nothing dropped: the warm answer allocates nothing.
	ok := rrs[:1]
	if n := testing.AllocsPerRun(100, func() { p.apply(ok) }); n != 0 {
		t.Errorf("apply with nothing dropped: %v allocations", n)
	}
}

// Zone data cannot make flatten ask or answer what the operator did not allow: zone_alias
// records and cname chains to loopback, link-local and unspecified addresses, to names outside
// allow_targets; an alias line may, as its operator wrote it.
func TestZoneDataPolicy(t *testing.T) {
	u := newFakeUpstream(t,
		"loop.agency.test. 300 IN A 127.0.0.1",
		"loop.agency.test. 300 IN AAAA ::1",
		"meta.agency.test. 300 IN A 169.254.169.254",
		"mixed.agency.test. 300 IN A 127.0.0.2",
		"mixed.agency.test. 300 IN A 192.0.2.20",
		"mixed.agency.test. 300 IN AAAA ::1",
		"mixed.agency.test. 300 IN AAAA 2001:db8::20",
		"evil.example.net. 300 IN A 192.0.2.66",
		"ok.agency.test. 300 IN A 192.0.2.21",
	)
	zone := exampleZone(t,
		aliasRR(t, "loop", 300, "loop.agency.test."),
		aliasRR(t, "meta", 300, "meta.agency.test."),
		aliasRR(t, "mixed", 300, "mixed.agency.test."),
		aliasRR(t, "evil", 300, "evil.example.net."),
		aliasRR(t, "evilfb", 300, "evil.example.net."),
		"evilfb 300 IN A 192.0.2.99", // the zone's own address: the fallback
		aliasRR(t, "ok", 300, "ok.agency.test."),
		"cloop 300 IN CNAME loop.agency.test.",
		"cevil 300 IN CNAME evil.example.net.",
		"cop 300 IN CNAME op.example.org.", // a chain that ends at an alias line's name
		`op 300 IN TXT "in the zone"`,
	)
	addr, _ := startCoreDNS(t, flattenCorefile(zone,
		"zone_alias",
		"cname cloop cevil cop",
		"alias op loop.agency.test",
		"allow_targets agency.test",
		"explain",
		"upstream "+u.Addr))

	servfail := func(name string, qtype uint16, code uint16) {
		t.Helper()
		m := query(t, addr, "udp", name, qtype, 1232)
		if m.Rcode != dns.RcodeServerFailure {
			t.Fatalf("%s: rcode %s, want SERVFAIL\n%s", name, dns.RcodeToString[m.Rcode], m)
		}
		if e := ede(m); e == nil || e.InfoCode != code {
			t.Errorf("%s: EDE %v, want %d", name, e, code)
		}
	}
	// Every address denied: the ladder (no zone records here), SERVFAIL with EDE 18.
	servfail("loop.example.org.", dns.TypeA, dns.ExtendedErrorCodeProhibited)
	servfail("loop.example.org.", dns.TypeAAAA, dns.ExtendedErrorCodeProhibited)
	servfail("meta.example.org.", dns.TypeA, dns.ExtendedErrorCodeProhibited)
	servfail("cloop.example.org.", dns.TypeA, dns.ExtendedErrorCodeProhibited)
	// Some denied: dropped from the answer.
	checkAddrs(t, query(t, addr, "udp", "mixed.example.org.", dns.TypeA, 0), "mixed.example.org.", "192.0.2.20")
	checkAddrs(t, query(t, addr, "udp", "mixed.example.org.", dns.TypeAAAA, 0), "mixed.example.org.", "2001:db8::20")
	// The operator's alias line is not zone data: no default deny list.
	checkAddrs(t, query(t, addr, "udp", "op.example.org.", dns.TypeA, 0), "op.example.org.", "127.0.0.1")
	checkAddrs(t, query(t, addr, "udp", "ok.example.org.", dns.TypeA, 0), "ok.example.org.", "192.0.2.21")

	// Outside allow_targets: never asked upstream; the zone's own records, else SERVFAIL EDE 18.
	servfail("evil.example.org.", dns.TypeA, dns.ExtendedErrorCodeProhibited)
	servfail("cevil.example.org.", dns.TypeA, dns.ExtendedErrorCodeProhibited)
	checkAddrs(t, query(t, addr, "udp", "evilfb.example.org.", dns.TypeA, 0), "evilfb.example.org.", "192.0.2.99")
	if n := u.count("evil.example.net.", dns.TypeA); n != 0 {
		t.Errorf("a target outside allow_targets was asked upstream %d times", n)
	}

	m := query(t, addr, "udp", "_flatten.evil.example.org.", dns.TypeTXT, 0)
	if txt := fmt.Sprint(m.Answer); !strings.Contains(txt, "policy=prohibited target=evil.example.net.") {
		t.Errorf("explain of a prohibited target: %s", txt)
	}
	m = query(t, addr, "udp", "_flatten.loop.example.org.", dns.TypeTXT, 0)
	if txt := fmt.Sprint(m.Answer); !strings.Contains(txt, "policy=addresses deny=0.0.0.0/8,127.0.0.0/8") || !strings.Contains(txt, "answer=servfail") {
		t.Errorf("explain of a denied target: %s", txt)
	}
	// A chain that ends at an alias line's name is answered as that alias, and explained so.
	checkAddrs(t, query(t, addr, "udp", "cop.example.org.", dns.TypeA, 0), "cop.example.org.", "127.0.0.1")
	m = query(t, addr, "udp", "_flatten.cop.example.org.", dns.TypeTXT, 0)
	if txt := fmt.Sprint(m.Answer); strings.Contains(txt, "policy=addresses") || !strings.Contains(txt, "type=A answer=fresh target=loop.agency.test.") {
		t.Errorf("explain of a chain to an alias: %s", txt)
	}
}

// deny_addresses given applies to alias lines too; none lets zone data answer anything.
func TestDenyAddressesExplicit(t *testing.T) {
	u := newFakeUpstream(t,
		"loop.agency.test. 300 IN A 127.0.0.1",
		"net10.agency.test. 300 IN A 10.1.2.3",
		"net10.agency.test. 300 IN A 192.0.2.30",
	)
	zone := exampleZone(t, aliasRR(t, "zloop", 300, "loop.agency.test."))
	addr, _ := startCoreDNS(t, flattenCorefile(zone,
		"zone_alias",
		"alias op net10.agency.test",
		"deny_addresses 10.0.0.0/8",
		"upstream "+u.Addr))
	checkAddrs(t, query(t, addr, "udp", "op.example.org.", dns.TypeA, 0), "op.example.org.", "192.0.2.30")
	// The explicit list replaces the default one for zone data as well.
	checkAddrs(t, query(t, addr, "udp", "zloop.example.org.", dns.TypeA, 0), "zloop.example.org.", "127.0.0.1")

	zone = exampleZone(t, aliasRR(t, "zloop", 300, "loop.agency.test."))
	addr, _ = startCoreDNS(t, flattenCorefile(zone, "zone_alias", "deny_addresses none", "upstream "+u.Addr))
	checkAddrs(t, query(t, addr, "udp", "zloop.example.org.", dns.TypeA, 0), "zloop.example.org.", "127.0.0.1")

	// A block without any of the options: the default list for zone data.
	zone = exampleZone(t, aliasRR(t, "zloop", 300, "loop.agency.test."))
	addr, _ = startCoreDNS(t, flattenCorefile(zone, "zone_alias", "alias op loop.agency.test", "upstream "+u.Addr))
	m := query(t, addr, "udp", "zloop.example.org.", dns.TypeA, 1232)
	if e := ede(m); m.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeProhibited {
		t.Errorf("no options, zone_alias to 127.0.0.1: want SERVFAIL EDE 18, got\n%s", m)
	}
	checkAddrs(t, query(t, addr, "udp", "op.example.org.", dns.TypeA, 0), "op.example.org.", "127.0.0.1")
}

// max_addresses keeps the first N of the target's 500 addresses, in the target's order.
func TestMaxAddresses(t *testing.T) {
	u := newFakeUpstream(t)
	var want []string
	for i := range 500 {
		a := fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256+0)
		u.add(t, "many.agency.test. 300 IN A "+a)
		if i < 7 {
			want = append(want, a)
		}
	}
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ many.agency.test", "max_addresses 7", "upstream "+u.Addr))
	m := query(t, addr, "tcp", "example.org.", dns.TypeA, 0)
	var got []string
	for _, rr := range m.Answer {
		got = append(got, rr.(*dns.A).A.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("max_addresses 7 of 500: got %v, want %v", got, want)
	}

	// Without it, all 500.
	addr, _ = startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ many.agency.test", "upstream "+u.Addr))
	if m := query(t, addr, "tcp", "example.org.", dns.TypeA, 0); len(m.Answer) != 500 {
		t.Errorf("no max_addresses: %d addresses, want 500", len(m.Answer))
	}
}

// Zone transfers carry what queries get: zone data's targets outside allow_targets are not
// resolved (the zone's own records go out), and denied addresses are left out.
func TestTransferPolicy(t *testing.T) {
	u := newFakeUpstream(t,
		"za.agency.test. 300 IN A 192.0.2.30", "za.agency.test. 300 IN A 127.0.0.1",
		"evil.example.net. 300 IN A 192.0.2.66")
	zone := exampleZone(t,
		aliasRecord(t, "za", 120, "za.agency.test."),
		aliasRecord(t, "evil", 120, "evil.example.net."),
		"evil 300 IN A 192.0.2.97")
	srv, _ := startCoreDNS(t, transferCorefile(zone, "", "zone_alias", "allow_targets agency.test", "upstream "+u.Addr))
	var rrs []dns.RR
	waitFor(t, "za's address in the transfer", func() bool {
		rrs = axfr(t, srv, "example.org.", 0)
		return len(recordsAt(rrs, "za.example.org.", dns.TypeA)) > 0
	})
	if got := recordsAt(rrs, "za.example.org.", dns.TypeA); !slices.Equal(got, []string{"192.0.2.30"}) {
		t.Errorf("za A: %q, want 192.0.2.30 alone", got)
	}
	if got := recordsAt(rrs, "evil.example.org.", dns.TypeA); !slices.Equal(got, []string{"192.0.2.97"}) {
		t.Errorf("evil A: %q, want the zone's own 192.0.2.97", got)
	}
	if n := u.count("evil.example.net.", dns.TypeA); n != 0 {
		t.Errorf("a target outside allow_targets was asked upstream %d times", n)
	}
}
