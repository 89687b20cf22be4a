package flatten

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestBlocksSharePool: server blocks with the same resolution settings share one pool, and a
// target several of them name is resolved once for all (one question per type); a block with
// other settings has a pool of its own.
func TestBlocksSharePool(t *testing.T) {
	u := newFakeUpstream(t, "client1.agency.test. 300 IN A 192.0.2.10", "client1.agency.test. 300 IN AAAA 2001:db8::10")
	blockText := func(zone, extra string) string {
		return fmt.Sprintf(`%[1]s:0 {
	bind 127.0.0.1
	flatten {
		alias @ client1.agency.test.
		upstream %[2]s
		%[3]s
	}
	file %[4]s %[1]s
}
`, zone, u.Addr, extra, writeZone(t, zone+".", "@ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300", "@ 3600 IN NS ns1", "ns1 3600 IN A 192.0.2.53"))
	}
	srv, _ := startCoreDNS(t, blockText("a.test", "")+blockText("b.test", "")+blockText("c.test", "timeout 3s"))
	for _, zone := range []string{"a.test.", "b.test.", "c.test."} {
		checkAddrs(t, query(t, srv, "udp", zone, dns.TypeA, 0), zone, "192.0.2.10")
	}
	a, b, c := block("a.test."), block("b.test."), block("c.test.")
	if a.pool != b.pool || a.pool == c.pool {
		t.Errorf("pools: a.test %p, b.test %p, c.test %p; want a and b to share one, c its own", a.pool, b.pool, c.pool)
	}
	if a.pool.cache.pinned("client1.agency.test.") != b.pool.cache.pinned("client1.agency.test.") {
		t.Errorf("a.test and b.test do not share the pinned target")
	}
	// Members of a pool keep one copy of its settings, and each its own zones and labels.
	if a.cfg.settings != b.cfg.settings || a.cfg.settings == c.cfg.settings {
		t.Errorf("settings: a.test %p, b.test %p, c.test %p; want a and b to share them", a.cfg.settings, b.cfg.settings, c.cfg.settings)
	}
	if b.cfg.timeout != 2*time.Second || c.cfg.timeout != 3*time.Second || b.cfg.labels.zones != "b.test." {
		t.Errorf("b.test: timeout %v, zones %q; c.test: timeout %v; want 2s, b.test. and 3s", b.cfg.timeout, b.cfg.labels.zones, c.cfg.timeout)
	}
	// One pool of two blocks and one of one: one question per type each.
	waitFor(t, "the startup rounds", func() bool { return a.Ready() && c.Ready() })
	if na, naaaa := u.count("client1.agency.test.", dns.TypeA), u.count("client1.agency.test.", dns.TypeAAAA); na != 2 || naaaa != 2 {
		t.Errorf("%d A and %d AAAA questions for client1.agency.test., want 2 and 2 (one each for each of two pools)", na, naaaa)
	}
}
