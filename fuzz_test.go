package flatten

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/file"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
)

// Native fuzz tests. Run one with, for example:
//
//	go test -run XXX -fuzz '^FuzzWalker$' -fuzztime 10m -parallel 1 .
//
// Their seeds are the fault cases' answers (faults_test.go); a crash found by fuzzing is saved
// under testdata/fuzz and from then on runs with every `go test`.

// faultQuestion is the question the fault cases' upstream answers.
func faultQuestion(qtype uint16) *dns.Msg {
	q := newQuery(faultTarget, qtype, false)
	q.Id = 4242
	return q
}

// walkerSeeds are upstream answers to faultQuestion(A): every fault case's answer, and the
// ordinary ones.
func walkerSeeds() [][]byte {
	r := faultQuestion(dns.TypeA)
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: "agency.test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 900},
		Ns: "ns.agency.test.", Mbox: "host.agency.test.", Serial: 1, Refresh: 7200, Retry: 3600, Expire: 1209600, Minttl: 60}
	var msgs []*dns.Msg
	add := func(m *dns.Msg) { msgs = append(msgs, m) }

	add(reply(r, aRR(faultTarget, 300, "192.0.2.10")))
	add(reply(r, cnameRR(faultTarget, 300, "client2.agency.test."), cnameRR("client2.agency.test.", 600, "server1.agency.test."),
		aRR("server1.agency.test.", 120, "192.0.2.10"), aRR("server1.agency.test.", 120, "192.0.2.11")))
	add(reply(r, cnameRR(faultTarget, 300, "server1.agency.test."))) // stops at a CNAME: the next name is asked
	add(poisonAnswer(r))
	add(dnameAnswer(r))
	add(reply(r, longChain(30)...))
	add(reply(r, longChain(8)...))
	add(reply(r, cnameRR(faultTarget, 300, "loop2.agency.test."), cnameRR("loop2.agency.test.", 300, faultTarget)))
	add(reply(r, manyAddrs(faultTarget, dns.TypeA, 200)...))
	add(reply(r, aRR(faultTarget, 0, "192.0.2.40")))
	add(reply(r, cnameRR(faultTarget, 1<<31-1, "server1.agency.test."), aRR("server1.agency.test.", 1<<31, "192.0.2.41")))
	add(reply(r, cnameRR(faultTarget, 300, "server1.agency.test."), cnameRR(faultTarget, 300, "evil.agency.test."),
		aRR("server1.agency.test.", 300, "192.0.2.42"), aRR("evil.agency.test.", 300, "203.0.113.42")))
	add(reply(r, aRR(faultTarget, 300, "2001:db8:bad::3")))
	for _, rc := range []int{dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeFormatError, dns.RcodeNotImplemented} {
		add(rcodeReply(r, rc, aRR(faultTarget, 300, "203.0.113.1")))
	}
	m := rcodeReply(r, dns.RcodeServerFailure)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeDNSBogus, ExtraText: "validation failed"})
	add(m)
	m = rcodeReply(r, dns.RcodeNameError)
	m.Ns = []dns.RR{soa}
	add(m)
	m = reply(r)
	m.Ns = []dns.RR{soa}
	add(m) // NODATA
	m = reply(r, cnameRR(faultTarget, 300, "gone.agency.test."))
	m.Rcode, m.Ns = dns.RcodeNameError, []dns.RR{soa}
	add(m) // the chain's last name does not exist
	m = reply(r)
	m.Ns = []dns.RR{&dns.NS{Hdr: dns.RR_Header{Name: "agency.test.", Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 300}, Ns: "ns.evil.test."}}
	add(m) // referral
	m = reply(r, aRR(faultTarget, 300, "203.0.113.10"))
	m.Truncated = true
	add(m)
	m = reply(r, aRR("example.org.", 300, "203.0.113.3"))
	m.Question[0].Name = "example.org."
	add(m)

	var seeds [][]byte
	for _, m := range msgs {
		b, err := m.Pack()
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b)
	}
	return append(seeds, garbage(r), garbageWithID(r))
}

// FuzzWalker feeds the chain walker arbitrary upstream answers: the same message answers every
// question it asks. Whatever the answer, the walk ends (loops and depth are bounded) without a
// panic, and what it returns is backed by the answer: a linked chain of CNAME/DNAME hops from the
// target, whose records are in the answer section, addresses of the asked type owned by the
// chain's last name, and a TTL no larger than any of those records'.
func FuzzWalker(f *testing.F) {
	for _, s := range walkerSeeds() {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, aaaa bool) {
		if err := new(dns.Msg).Unpack(data); err != nil {
			return
		}
		qtype := dns.TypeA
		if aaaa {
			qtype = dns.TypeAAAA
		}
		asked := 0
		ex := exchangerFunc(func(context.Context, string, uint16) (*dns.Msg, error) {
			asked++
			m := new(dns.Msg) // a fresh copy per question, as from the network
			if err := m.Unpack(data); err != nil {
				t.Fatal(err)
			}
			return m, nil
		})
		const maxDepth = 8
		w := &walker{ex: ex, maxDepth: maxDepth}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		ch, err := w.resolve(ctx, question{key: cacheKey{name: faultTarget, qtype: qtype}})

		resp := new(dns.Msg)
		resp.Unpack(data)
		checkWalk(t, resp, faultTarget, qtype, maxDepth, ch, err)
		if asked > maxDepth+1 {
			t.Errorf("%d questions for a walk of at most %d hops", asked, maxDepth)
		}
	})
}

// checkWalk checks what walker.resolve returned for target when resp answered every question.
func checkWalk(t *testing.T, resp *dns.Msg, target string, qtype uint16, maxDepth int, ch *chain, err error) {
	t.Helper()
	if err != nil {
		var re *resolveError
		if !errors.As(err, &re) {
			t.Fatalf("error %T %v is not a resolveError", err, err)
		}
		if ch != nil {
			t.Fatalf("a chain and an error (%v)", err)
		}
		return
	}
	if ch == nil {
		t.Fatal("neither a chain nor an error")
	}
	if len(ch.hops) > maxDepth {
		t.Errorf("%d hops, max_depth %d", len(ch.hops), maxDepth)
	}
	names := []string{target}
	for i, h := range ch.hops {
		owner := names[len(names)-1] // a hop starts where the one before ended
		for _, n := range names {
			if strings.EqualFold(n, h.target) {
				t.Fatalf("hop %d goes back to %q: a loop was followed", i, h.target)
			}
		}
		if !hopInAnswer(resp, owner, h) {
			t.Fatalf("hop %d %s -> %s (%s, TTL %d) is not backed by a record of the answer section", i, owner, h.target, dns.TypeToString[h.rrtype], h.ttl)
		}
		if ch.ttl > h.ttl {
			t.Errorf("chain TTL %d above hop %d's TTL %d", ch.ttl, i, h.ttl)
		}
		names = append(names, h.target)
	}
	last := names[len(names)-1]
	seen := map[string]bool{}
	for _, rr := range ch.addrs {
		h := rr.Header()
		if h.Rrtype != qtype || h.Class != dns.ClassINET || !strings.EqualFold(h.Name, last) {
			t.Fatalf("address record %q: want %s IN owned by the chain's last name %q", rr, dns.TypeToString[qtype], last)
		}
		if ch.ttl > ttlOf(rr) {
			t.Errorf("chain TTL %d above the TTL of %q", ch.ttl, rr)
		}
		if !rrInAnswer(resp, rr) {
			t.Fatalf("address record %q is not in the answer section", rr)
		}
		k := rr.String()[len(h.String()):]
		if seen[k] {
			t.Errorf("address %s twice", k)
		}
		seen[k] = true
	}
}

func rrInAnswer(resp *dns.Msg, rr dns.RR) bool {
	for _, a := range resp.Answer {
		if a.String() == rr.String() {
			return true
		}
	}
	return false
}

// hopInAnswer reports whether a CNAME in the answer section makes hop h from owner, or a DNAME
// does by substitution (RFC 6672 2.2).
func hopInAnswer(resp *dns.Msg, owner string, h hop) bool {
	for _, rr := range resp.Answer {
		if rr.Header().Class != dns.ClassINET || ttlOf(rr) != h.ttl {
			continue
		}
		switch v := rr.(type) {
		case *dns.CNAME:
			if h.rrtype == dns.TypeCNAME && strings.EqualFold(v.Hdr.Name, owner) && strings.EqualFold(dns.Fqdn(v.Target), h.target) {
				return true
			}
		case *dns.DNAME:
			if h.rrtype != dns.TypeDNAME || !dns.IsSubDomain(v.Hdr.Name, owner) || len(v.Hdr.Name) >= len(owner) {
				continue
			}
			if strings.EqualFold(owner[:len(owner)-len(v.Hdr.Name)]+dns.Fqdn(v.Target), h.target) {
				return true
			}
		}
	}
	return false
}

// fuzzUpstream is an in-memory authoritative upstream for FuzzServeDNS: the agency chain, a
// target that does not exist and one whose upstream fails.
func fuzzUpstream() exchanger {
	records := map[string][]dns.RR{}
	for _, s := range append(slices.Clone(agencyRecords), "server1.agency.test. 120 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.10") {
		rr, _ := dns.NewRR(s)
		records[rr.Header().Name] = append(records[rr.Header().Name], rr)
	}
	soa, _ := dns.NewRR("agency.test. 300 IN SOA ns.agency.test. host.agency.test. 1 7200 3600 1209600 60")
	return exchangerFunc(func(_ context.Context, name string, qtype uint16) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetReply(faultQuestion(qtype))
		m.Question[0].Name = name
		if name == "broken.agency.test." {
			m.Rcode = dns.RcodeServerFailure
			return m, nil
		}
		rrs, ok := records[name]
		if !ok {
			m.Rcode, m.Ns = dns.RcodeNameError, []dns.RR{soa}
			return m, nil
		}
		for _, rr := range rrs {
			if t := rr.Header().Rrtype; t == qtype || t == dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
			}
		}
		if len(m.Answer) == 0 {
			m.Ns = []dns.RR{soa}
		}
		return m, nil
	})
}

// aliasRecord is an ALIAS record (TYPE65401) in the RFC 3597 generic form zone files hold it in.
func aliasRecord(tb testing.TB, owner string, ttl int, target string) string {
	tb.Helper()
	if _, ok := dns.IsDomainName(target); !ok || !dns.IsFqdn(target) {
		tb.Fatalf("ALIAS target %q is not a fully qualified name", target)
	}
	return newALIAS(owner, target, uint32(ttl)).String()
}

// fuzzZoneText is example.org as the file plugin below flatten serves it in FuzzServeDNS: an
// address at fb (the fallback of an alias whose target fails), ALIAS records (good, malformed,
// pointing at the zone itself), CNAME chains that stay in the zone or leave it, a wildcard and
// a DNAME.
func fuzzZoneText(tb testing.TB) string {
	return "$ORIGIN example.org.\n" + strings.Join([]string{
		"@ 3600 IN SOA ns1.example.org. host.example.org. 1 7200 3600 1209600 300",
		"@ 3600 IN NS ns1.example.org.",
		"ns1 3600 IN A 192.0.2.53",
		"fb 300 IN A 192.0.2.99",
		aliasRecord(tb, "za", 300, faultTarget),
		aliasRecord(tb, "zaself", 300, "zaself.example.org."),
		aliasRecord(tb, "zagone", 60, "gone.agency.test."),
		`zabad 300 IN TYPE65401 \# 3 010203`,
		"www 300 IN CNAME client1.agency.test.",
		"in 300 IN CNAME fb",
		"twice 300 IN CNAME www",
		"*.wild 300 IN CNAME client2.agency.test.",
		"d 300 IN DNAME agency.test.",
		"loop 300 IN CNAME loop2",
		"loop2 300 IN CNAME loop",
	}, "\n") + "\n"
}

// fuzzZone is the file plugin serving fuzzZoneText, behind a test handler that keeps to the
// handler contract where *file* does not: *file* drops a NOTIFY from a stranger without writing
// anything and returns NOERROR (CoreDNS's server accepts only QUERY and NOTIFY, so other opcodes
// never get here). For names outside the zone, nothing is written and REFUSED returned.
func fuzzZone(tb testing.TB) plugin.Handler {
	z, err := file.Parse(strings.NewReader(fuzzZoneText(tb)), "example.org.", "db.example.org", 0)
	if err != nil {
		tb.Fatal(err)
	}
	fz := file.File{Next: test.NextHandler(dns.RcodeRefused, nil), Zones: file.Zones{Z: map[string]*file.Zone{"example.org.": z}, Names: []string{"example.org."}}}
	return test.HandlerFunc(func(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		if r.Opcode != dns.OpcodeQuery {
			return dns.RcodeNotImplemented, nil
		}
		return fz.ServeDNS(ctx, w, r)
	})
}

func newFuzzFlatten(tb testing.TB) *Flatten {
	f, err := parse(caddy.NewTestController("dns", `flatten example.org {
		alias @ client1.agency.test.
		alias ns1 client1.agency.test.
		alias deep client2.agency.test.
		alias nx gone.agency.test.
		alias fail broken.agency.test.
		alias fb broken.agency.test.
		zone_alias
		cname *
		https
		cache 20
		timeout 100ms
	}`))
	if err != nil {
		tb.Fatal(err)
	}
	f.prepare()
	w := &walker{ex: fuzzUpstream(), maxDepth: f.cfg.maxDepth}
	f.pool.self = nil
	f.build(w.resolve)
	f.Next = fuzzZone(tb)
	tb.Cleanup(func() { f.pool.cache.stop() })
	return f
}

// countingWriter records what is written to the client, packing it as the server would.
type countingWriter struct {
	test.ResponseWriter
	msgs []*dns.Msg
	err  error
}

func (w *countingWriter) WriteMsg(m *dns.Msg) error {
	if _, err := m.Pack(); err != nil && w.err == nil {
		w.err = err
	}
	w.msgs = append(w.msgs, m)
	return nil
}

// clientQueries are the seeds of FuzzServeDNS.
func clientQueries() [][]byte {
	var msgs []*dns.Msg
	for _, name := range []string{"example.org.", "ExAmPlE.OrG.", "www.example.org.", "deep.example.org.", "nx.example.org.",
		"fail.example.org.", "fb.example.org.", "mail.example.org.", "example.net.", faultTarget, "za.example.org.",
		"zaself.example.org.", "zagone.example.org.", "zabad.example.org.", "in.example.org.", "twice.example.org.",
		"x.wild.example.org.", "client1.d.example.org.", "loop.example.org."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeHTTPS, dns.TypeMX, dns.TypeANY, dns.TypeCNAME} {
			m := new(dns.Msg)
			m.SetQuestion(name, qt)
			msgs = append(msgs, m)
		}
	}
	for _, mod := range []func(*dns.Msg){
		func(m *dns.Msg) { m.SetEdns0(512, true) },
		func(m *dns.Msg) { m.SetEdns0(1232, false); m.CheckingDisabled = true },
		func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS },
		func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify },
		func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) },
		func(m *dns.Msg) { m.Response = true; m.Answer = []dns.RR{aRR("example.org.", 300, "203.0.113.1")} },
		func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0)})
		},
	} {
		m := new(dns.Msg)
		m.SetQuestion("example.org.", dns.TypeA)
		mod(m)
		msgs = append(msgs, m)
	}
	var seeds [][]byte
	for _, m := range msgs {
		b, err := m.Pack()
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

// FuzzServeDNS feeds ServeDNS arbitrary client messages (with a question, as the server only
// passes those on). It must not panic, must follow the handler contract (a reply written and a
// success rcode returned, or nothing written and a failure rcode returned), and a reply it writes
// must pack and answer the client's question; a flattened name is never NXDOMAIN and its answer
// holds only records of the asked type (addresses, or with `https` HTTPS records) owned by the
// question name.
func FuzzServeDNS(f *testing.F) {
	for _, s := range clientQueries() {
		f.Add(s)
	}
	fl := newFuzzFlatten(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := new(dns.Msg)
		if err := r.Unpack(data); err != nil || len(r.Question) == 0 {
			return
		}
		orig := r.Copy()
		w := &countingWriter{}
		// The scrub writer gets its own copy of the query: it strips unknown EDNS options from
		// the query's OPT record when it moves it into the reply (request.SizeAndDo).
		rcode, _ := fl.ServeDNS(context.Background(), request.NewScrubWriter(r.Copy(), w), r)
		if r.String() != orig.String() {
			t.Fatalf("the client's message was modified:\n%s\nwas\n%s", r, orig)
		}
		if len(w.msgs) > 1 {
			t.Fatalf("%d replies written", len(w.msgs))
		}
		if written := len(w.msgs) == 1; written != plugin.ClientWrite(rcode) {
			t.Fatalf("rcode %s returned, reply written: %v", dns.RcodeToString[rcode], written)
		}
		if len(w.msgs) == 0 {
			return
		}
		m := w.msgs[0]
		if w.err != nil {
			t.Fatalf("the reply does not pack: %v\n%s", w.err, m)
		}
		if m.Id != orig.Id || !m.Response {
			t.Fatalf("reply ID %d response %v, want ID %d response", m.Id, m.Response, orig.Id)
		}
		q := orig.Question[0]
		if len(m.Question) != 1 || m.Question[0] != q {
			t.Fatalf("reply question %v, want %v", m.Question, q)
		}
		if _, ok := fl.aliases.get(q.Name); !(isAddressQuery(orig) || isHTTPSQuery(orig)) || !ok {
			return // the zone's answer, or one flattened from the zone's data
		}
		if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeServerFailure {
			t.Fatalf("flattened name answered %s", dns.RcodeToString[m.Rcode])
		}
		// Flattened answers are owned by the question name as the client spelled it; the zone's
		// fallback records come as the zone spells them (as *file* answers them): same name, any
		// letter case.
		for _, rr := range m.Answer {
			if h := rr.Header(); !strings.EqualFold(h.Name, q.Name) || h.Rrtype != q.Qtype || h.Class != dns.ClassINET {
				t.Fatalf("answer record %q for question %v", rr, q)
			}
		}
	})
}

// parseSeeds are flatten block bodies for FuzzParse: every option, valid and not.
var parseSeeds = []string{
	"alias @ client1.agency.test.",
	"alias @ client1.agency.test.\nupstream 127.0.0.1:5353 [::1]:53 dns://127.0.0.1\ntimeout 300ms\nmax_depth 8",
	"alias @ a.example.net.\nalias www b.example.net.\nalias x.example.org. c.example.net.\nttl 5 3600\ncache 50\nprefetch 10%\nserve_stale 1h",
	"alias @ a.example.net.\nttl 0 2147483647\nprefetch\nserve_stale\nserve_stale 0",
	"alias @ a.example.net.\nttl 10 5",
	"alias @ a.example.net.\nmax_depth 17",
	"alias @ a.example.net.\ntimeout -1s",
	"alias @ a.example.net.\nprefetch 100%",
	"alias @ a.example.net.\nupstream tls://127.0.0.1",
	"alias @ a.example.net.\nupstream 127.0.0.1:0",
	"alias @ @",
	"alias @ example.org.",
	"alias * a.example.net.",
	"alias www.example.net. a.example.net.",
	"alias @ a.example.net.\nalias @ b.example.net.",
	"alias @ a.example.net.\nunknown 1",
	"alias @ a.example.net. {\n}\n",
	"}\nflatten {\nalias @ a.example.net.",
	`alias "@" "a.example.net."`,
	"alias @ a\\.b.example.net.",
	"zone_alias",
	"zone_alias extra",
	"cname @ www.example.org. *.shop.example.org. *",
	"cname *.\ncname www.other.net.",
	"alias @ a.example.net.\nzone_alias\ncname www.example.org.\ncname *.example.org.",
	"alias @ a.example.net.\nhttps",
	"https\ncname www",
}

// FuzzParse feeds the Corefile parser arbitrary text inside a flatten block. It must not panic,
// and when it accepts the block, the settings are within their documented bounds.
func FuzzParse(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add(s)
	}
	for _, tc := range faultCases() {
		f.Add(strings.Join(append([]string{"alias @ " + faultTarget, "upstream 127.0.0.1:53", "timeout 300ms"}, tc.lines...), "\n"))
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, p := range []string{"/dev", "/proc", "/sys", "/run"} {
			if strings.Contains(body, p) {
				return // upstream takes a resolv.conf path; keep the fuzzer off special files
			}
		}
		c := caddy.NewTestController("dns", "flatten example.org {\n"+body+"\n}")
		c.ServerBlockKeys = []string{"example.org:53"}
		fl, err := parse(c)
		if err != nil {
			if fl != nil {
				t.Errorf("parse returned a Flatten and the error %v", err)
			}
			return
		}
		checkParsed(t, fl)
		fl.prepare() // builds the resolution path; opens nothing
	})
}

// checkParsed checks a Flatten that parse accepted against the README's bounds.
func checkParsed(t *testing.T, fl *Flatten) {
	t.Helper()
	if len(fl.cfg.zones) == 0 {
		t.Errorf("no zones")
	}
	if fl.aliases.len() == 0 && !fl.cfg.zoneAlias && fl.cfg.cnames.empty() && fl.cfg.notify == nil {
		t.Errorf("accepted with nothing to flatten: no alias, zone_alias, cname or notify_from")
	}
	if c := fl.cfg.cnames; c != nil {
		for name := range c.exact {
			if !hostname(name) || name != strings.ToLower(name) || plugin.Zones(fl.cfg.zones).Matches(name) == "" {
				t.Errorf("cname name %q: not a lowercased host name inside %v", name, fl.cfg.zones)
			}
		}
		for _, sfx := range c.suffixes {
			zone := strings.TrimPrefix(sfx, ".")
			if !strings.HasPrefix(sfx, ".") || !hostname(zone) || plugin.Zones(fl.cfg.zones).Matches(zone) == "" {
				t.Errorf("cname wildcard suffix %q: not '.' and a host name inside %v", sfx, fl.cfg.zones)
			}
		}
	}
	fl.aliases.each(func(k string, a alias) {
		targets := a.targets()
		if k != strings.ToLower(k) || len(targets) == 0 {
			t.Errorf("alias %q: targets %q, want a lowercased name with a target", k, targets)
		}
		for i, tg := range targets {
			if tg != strings.ToLower(tg) || !hostname(tg) || tg == k || slices.Index(targets, tg) != i {
				t.Errorf("alias %q -> %q: want distinct lowercased host names other than the alias", k, targets)
			}
		}
		if !hostname(k) {
			t.Errorf("alias %q: not a host name", k)
		}
		if z := plugin.Zones(fl.cfg.zones).Matches(k); z == "" || fl.zoneOf(k) != z {
			t.Errorf("alias %q: zone %q of %v, want %q", k, fl.zoneOf(k), fl.cfg.zones, z)
		}
	})

	if fl.cfg.maxDepth < 1 || fl.cfg.maxDepth > maxMaxDepth {
		t.Errorf("max_depth %d", fl.cfg.maxDepth)
	}
	if fl.cfg.timeout <= 0 {
		t.Errorf("timeout %v", fl.cfg.timeout)
	}
	if fl.cfg.ttlMin > fl.cfg.ttlMax || fl.cfg.ttlMax > 1<<31-1 {
		t.Errorf("ttl %d %d", fl.cfg.ttlMin, fl.cfg.ttlMax)
	}
	if fl.cfg.capacity < 1 {
		t.Errorf("cache %d", fl.cfg.capacity)
	}
	if fl.cfg.prefetch < 0.01 || fl.cfg.prefetch > 0.99 {
		t.Errorf("prefetch %v", fl.cfg.prefetch)
	}
	if fl.cfg.serveStale < 0 {
		t.Errorf("serve_stale %v", fl.cfg.serveStale)
	}
	for _, u := range fl.cfg.upstreams {
		_, port, err := net.SplitHostPort(u)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
			t.Errorf("upstream %q is not host:port", u)
		}
	}
}
