package flatten

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metadata"
	_ "github.com/coredns/coredns/plugin/metadata" // the metadata directive

	"github.com/miekg/dns"
)

// explainLines asks for _flatten.NAME TXT and returns the answer's strings, one per record.
func explainLines(t *testing.T, srv server, name string) []string {
	t.Helper()
	m := query(t, srv, "udp", "_flatten."+name, dns.TypeTXT, 4096)
	if m.Rcode != dns.RcodeSuccess {
		t.Fatalf("explain %s: rcode %s\n%s", name, dns.RcodeToString[m.Rcode], m)
	}
	var out []string
	for _, rr := range m.Answer {
		txt, ok := rr.(*dns.TXT)
		if !ok || txt.Hdr.Ttl != 0 || txt.Hdr.Name != "_flatten."+name {
			t.Fatalf("explain %s: want TXT records with TTL 0 at the question name, got %s", name, rr)
		}
		out = append(out, strings.Join(txt.Txt, ""))
	}
	return out
}

// wantLines checks that each want is a substring of some line.
func wantLines(t *testing.T, lines []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, w) }) {
			t.Errorf("no line contains %q in:\n%s", w, strings.Join(lines, "\n"))
		}
	}
}

func TestExplainAliasWithFailover(t *testing.T) {
	u := newFakeUpstream(t, append([]string{"backup.agency.test. 60 IN CNAME edge.cdn.test."},
		"edge.cdn.test. 30 IN A 192.0.2.2", "edge.cdn.test. 30 IN AAAA 2001:db8::2")...)
	u.setRecursive()
	var failing atomic.Bool
	failing.Store(true)
	u.handle("primary.agency.test.", servfailer(u, &failing))
	srv := startFailover(t, u, "explain")
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.2")
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeAAAA, 0), "example.org.", "2001:db8::2")

	lines := explainLines(t, srv, "example.org.")
	wantLines(t, lines,
		"name=example.org. by=alias targets=primary.agency.test.,backup.agency.test.",
		"type=A answer=fresh target=backup.agency.test. ttl=30 addrs=192.0.2.2",
		"type=AAAA answer=fresh target=backup.agency.test. ttl=30 addrs=2001:db8::2",
		"target=1:primary.agency.test. type=A state=unresolved last_error='upstream answered SERVFAIL for primary.agency.test.'",
		"target=2:backup.agency.test. type=A state=fresh",
		"chain=backup.agency.test.(CNAME 60)>edge.cdn.test.(A 30) addrs=192.0.2.2",
	)
	// Explaining asks nobody: the counts do not move. The refresher retries the failing primary
	// on its backoff (1 s, then 2 s, 4 s...), and a slow run can meet a retry in the window: a
	// window in which only the primary was asked, once per type at most, is tried again (the
	// next retry is seconds away). An explanation that asks would move the counts every time.
	primary := func() int {
		return u.count("primary.agency.test.", dns.TypeA) + u.count("primary.agency.test.", dns.TypeAAAA)
	}
	for try := 1; ; try++ {
		before, beforePrimary := u.total(), primary()
		explainLines(t, srv, "example.org.")
		d, dp := u.total()-before, primary()-beforePrimary
		if d == 0 {
			break
		}
		if d == dp && dp <= 2 && try < 3 {
			continue
		}
		t.Errorf("an explanation caused %d upstream questions (%d for the primary)", d, dp)
		break
	}
}

func TestExplainStaleAndFallback(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	var failing atomic.Bool
	u.handle("client1.agency.test.", servfailer(u, &failing))
	zone := exampleZone(t, "@ 300 IN A 192.0.2.99")
	srv := startFlatten(t, u, zone, "explain", "ttl 1 1", "serve_stale 1h")
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10", "192.0.2.11")
	failing.Store(true)
	waitFor(t, "a stale answer", func() bool {
		return ede(query(t, srv, "udp", "example.org.", dns.TypeA, 1232)) != nil
	})
	wantLines(t, explainLines(t, srv, "example.org."),
		"type=A answer=stale target=client1.agency.test. ttl=30 addrs=192.0.2.10,192.0.2.11",
		"target=1:client1.agency.test. type=A state=stale",
		"last_error='upstream answered SERVFAIL for client1.agency.test.'",
	)

	// Without a stale entry (another upstream that has always failed), the zone's own record is
	// the answer: fallback; and without one either, SERVFAIL with the failure.
	u2 := newFakeUpstream(t)
	u2.handle("client1.agency.test.", servfailer(u2, &failing))
	srv2 := startFlatten(t, u2, zone, "explain")
	query(t, srv2, "udp", "example.org.", dns.TypeA, 0)
	query(t, srv2, "udp", "example.org.", dns.TypeAAAA, 0)
	wantLines(t, explainLines(t, srv2, "example.org."),
		"type=A answer=fallback addrs=192.0.2.99",
		"type=AAAA answer=servfail error='upstream answered SERVFAIL for client1.agency.test.'",
	)
}

func TestExplainCNAMEAndZoneAlias(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	zone := exampleZone(t, "www 300 IN CNAME client1.agency.test.", "shop 300 IN CNAME www",
		`cdn 300 IN TYPE65401 \# 21 07636c69656e7431066167656e6379047465737400`) // ALIAS client1.agency.test.
	srv, _ := startCoreDNS(t, flattenCorefile(zone, "cname *", "zone_alias", "upstream "+u.Addr, "explain"))
	query(t, srv, "udp", "shop.example.org.", dns.TypeA, 0)
	wantLines(t, explainLines(t, srv, "shop.example.org."),
		"name=shop.example.org. by=cname targets=client1.agency.test. via=shop.example.org. -> www.example.org. -> client1.agency.test.",
		"type=A answer=fresh target=client1.agency.test.",
		"chain=client1.agency.test.(CNAME 300)>client2.agency.test.(CNAME 600)>server1.agency.test.(A 120)",
	)
	query(t, srv, "udp", "cdn.example.org.", dns.TypeA, 0)
	wantLines(t, explainLines(t, srv, "cdn.example.org."),
		"name=cdn.example.org. by=zone_alias targets=client1.agency.test.",
		"type=A answer=fresh target=client1.agency.test.",
	)
	// A name that is not flattened says so.
	wantLines(t, explainLines(t, srv, "mail.example.org."), "mail.example.org. is not flattened here")
}

func TestExplainRefusedOutsideCIDRs(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	srv := startFlatten(t, u, exampleZone(t), "explain 192.0.2.0/24 2001:db8::1")
	m := query(t, srv, "udp", "_flatten.example.org.", dns.TypeTXT, 1232)
	if m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 {
		t.Fatalf("want REFUSED for a loopback client outside the CIDRs, got\n%s", m)
	}
	if e := ede(m); e == nil || e.InfoCode != dns.ExtendedErrorCodeProhibited {
		t.Errorf("EDE %v, want 18 (Prohibited)", e)
	}
	// Without `explain`, the name is just a name: the zone answers it (NXDOMAIN here).
	srv2 := startFlatten(t, u, exampleZone(t))
	if m := query(t, srv2, "udp", "_flatten.example.org.", dns.TypeTXT, 0); m.Rcode != dns.RcodeNameError {
		t.Errorf("without explain: rcode %s, want the zone's NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
}

// metaProbe is a plugin placed after *metadata* that records the flatten/ values once the
// answer is written, as *log* reads them.
type metaProbe struct {
	Next plugin.Handler
	mu   sync.Mutex
	seen []map[string]string
}

func (p *metaProbe) Name() string { return "flattenprobe" }

func (p *metaProbe) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	rc, err := plugin.NextOrFailure(p.Name(), p.Next, ctx, w, r)
	vals := map[string]string{}
	for _, l := range []string{metaTarget, metaSource, metaChain} {
		if fn := metadata.ValueFunc(ctx, l); fn != nil {
			vals[l] = fn()
		}
	}
	p.mu.Lock()
	p.seen = append(p.seen, vals)
	p.mu.Unlock()
	return rc, err
}

var theProbe = &metaProbe{}

func init() {
	plugin.Register("flattenprobe", func(c *caddy.Controller) error {
		c.Next()
		dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
			theProbe.Next = next
			return theProbe
		})
		return nil
	})
}

func TestMetadataForLog(t *testing.T) {
	useFlattenDirective(t)
	directivesMu.Lock()
	orig := slices.Clone(dnsserver.Directives)
	dnsserver.Directives = slices.Insert(slices.Clone(orig), slices.Index(orig, "metadata")+1, "flattenprobe")
	directivesMu.Unlock()
	t.Cleanup(func() {
		directivesMu.Lock()
		dnsserver.Directives = orig
		directivesMu.Unlock()
	})

	u := newFakeUpstream(t, append(agencyRecords, failoverRecords[2:]...)...)
	u.setRecursive()
	u.handle("primary.agency.test.", func(dns.ResponseWriter, *dns.Msg) {}) // dead
	srv, _ := startCoreDNS(t, `example.org:0 {
	bind 127.0.0.1
	metadata
	flattenprobe
	flatten {
		alias @ client1.agency.test.
		alias www primary.agency.test. backup.agency.test.
		upstream `+u.Addr+`
		timeout 300ms
	}
	file `+exampleZone(t)+` example.org
}
`)
	seen := func() int {
		theProbe.mu.Lock()
		defer theProbe.mu.Unlock()
		return len(theProbe.seen)
	}
	// ask sends a query and returns what the probe saw for it: the probe records after the
	// answer is written, so the client may have it first.
	ask := func(name string, qtype uint16) map[string]string {
		n := seen()
		query(t, srv, "udp", name, qtype, 0)
		waitFor(t, "the probe", func() bool { return seen() > n })
		theProbe.mu.Lock()
		defer theProbe.mu.Unlock()
		return theProbe.seen[n]
	}
	ask("example.org.", dns.TypeA)
	waitFor(t, "the startup round", func() bool { return u.count("client1.agency.test.", dns.TypeA) > 0 })
	want := map[string]string{metaTarget: "client1.agency.test.", metaSource: "fresh",
		metaChain: "client1.agency.test. -> client2.agency.test. -> server1.agency.test."}
	if got := ask("example.org.", dns.TypeA); !mapsEqual(got, want) {
		t.Errorf("metadata %v, want %v", got, want)
	}
	ask("www.example.org.", dns.TypeA)
	want = map[string]string{metaTarget: "backup.agency.test.", metaSource: "fresh", metaChain: "backup.agency.test."}
	if got := ask("www.example.org.", dns.TypeA); !mapsEqual(got, want) {
		t.Errorf("metadata %v, want %v", got, want)
	}
	// A query flatten does not answer leaves the values empty.
	if got := ask("example.org.", dns.TypeMX); got[metaTarget] != "" || got[metaSource] != "" {
		t.Errorf("metadata for an MX query %v, want empty", got)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestExplainSaysWhyNotYet: with nothing known of a target, explain says why: the server to
// resolve through is not known yet (and whether the block could ask its own listener), or the
// startup round is running.
func TestExplainSaysWhyNotYet(t *testing.T) {
	f := newLadderFlatten(&switchableUpstream{}, newFakeClock(), false)
	f.pool.self = newSelfExchanger()
	for _, tc := range []struct {
		probed bool
		want   string
	}{
		{false, "the startup round waits for the server to resolve through"},
		{true, "could not ask its own listener for the server to resolve through; the first query brings it"},
	} {
		f.pool.self.probed.Store(tc.probed)
		if got := f.notYet(); !strings.Contains(got, tc.want) {
			t.Errorf("probed %v: %q, want %q", tc.probed, got, tc.want)
		}
	}
	f.pool.self = nil
	if got := f.notYet(); !strings.Contains(got, "the startup round is running") {
		t.Errorf("before the round: %q", got)
	}
}
