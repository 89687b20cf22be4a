package flatten

import (
	"fmt"
	"strings"
	"testing"

	"github.com/coredns/caddy"
)

// block returns the running instance that flattens zones.
func block(zones string) *Flatten {
	for _, p := range running() {
		for _, f := range p.members {
			if f.cfg.labels.zones == zones {
				return f
			}
		}
	}
	return nil
}

// TestSelfResolutionWithoutQueries: resolving through this server, a block finds the server by
// asking its own listener, so the startup round runs and readiness comes without any client
// query; after a reload the new instance goes on refreshing, still without one; and the startup
// is told in two lines, the totals and the round's end.
func TestSelfResolutionWithoutQueries(t *testing.T) {
	logged := captureLog(t)
	cf := selfCorefile(t, "alias @ client1.agency.test.", "ttl 1 1")
	inst := startReloadable(t, cf)
	defer func() { stopInstance(t, inst) }()

	waitFor(t, "the block ready, and its alias resolved, without a query", func() bool {
		f := block("example.org.")
		return f != nil && f.Ready() && f.pool.cache.pins[0].slots[0].good.Load() != nil
	})
	waitFor(t, "the startup lines", func() bool {
		return len(logged.lines("startup round done")) == 1
	})
	if got := logged.lines("server blocks flatten"); len(got) != 1 || !strings.Contains(got[0], "flatten "+FullVersion()+": 1 server blocks flatten 1 aliases to 1 targets in 1 pools, resolved through this server (1 blocks)") {
		t.Errorf("totals logged as %q", got)
	}
	if got := logged.lines("startup round done"); !strings.Contains(got[0], "2 of 2 targets and types resolved, 0 failed") {
		t.Errorf("round logged as %q", got)
	}

	// A reload: the new instance refreshes (TTL 1 s) without any query reaching it.
	old := block("example.org.")
	inst, err := inst.Restart(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(cf), ServerTypeName: "dns"})
	if err != nil {
		t.Fatal(err)
	}
	var adopted *entry
	waitFor(t, "the new instance", func() bool {
		f := block("example.org.")
		if f == nil || f == old {
			return false
		}
		adopted = f.pool.cache.pins[0].slots[0].good.Load()
		return true
	})
	waitFor(t, "a refresh after the reload, without a query", func() bool {
		e := block("example.org.").pool.cache.pins[0].slots[0].good.Load()
		return e != nil && adopted != nil && e.fetched > adopted.fetched
	})
	if !block("example.org.").Ready() {
		t.Errorf("the reloaded block is not ready")
	}
}

// TestBlocksShareUpstreams: server blocks that ask one upstream share it: one resolver (one
// proxy, one memory of its failures) however many blocks, and one refresh_rate ceiling, the
// lowest the blocks give, on what it receives from their background resolution together.
func TestBlocksShareUpstreams(t *testing.T) {
	const aliases, rate = 10, 20
	u := newFakeUpstream(t)
	u.setRecursive()
	var arrived arrivals
	record := arrived.answering(u)
	var blocks []string
	for b, zone := range []string{"example.org", "example.net"} {
		lines := []string{"upstream " + u.Addr, fmt.Sprintf("refresh_rate %d", rate*(b+1))} // 20 and 40: 20 applies
		for i := range aliases {
			target := fmt.Sprintf("t%d-%d.agency.test.", b, i)
			u.add(t, target+" 300 IN A 192.0.2.10", target+" 300 IN AAAA 2001:db8::10")
			u.handle(target, record)
			lines = append(lines, fmt.Sprintf("alias a%d %s", i, target))
		}
		zf := writeZone(t, zone+".", "@ 3600 IN SOA ns1."+zone+". h."+zone+". 1 7200 3600 1209600 300", "@ 3600 IN NS ns1."+zone+".")
		blocks = append(blocks, fmt.Sprintf("%s:0 {\n\tbind 127.0.0.1\n\tflatten {\n\t\t%s\n\t}\n\tfile %s %s\n}\n", zone, strings.Join(lines, "\n\t\t"), zf, zone))
	}
	startCoreDNS(t, strings.Join(blocks, ""))

	resolvers.Lock()
	n, users := len(resolvers.m), 0
	for _, r := range resolvers.m {
		users = r.users
	}
	resolvers.Unlock()
	if n != 1 || users != 2 {
		t.Errorf("%d resolvers with %d users, want one shared by the two blocks", n, users)
	}

	const want = 2 * aliases * 2
	waitFor(t, "the startup rounds", func() bool { return arrived.count() >= want })
	most := arrived.busiestSecond()
	if most > rate {
		t.Errorf("%d upstream questions in one second from the two blocks, want at most %d (the lower refresh_rate)", most, rate)
	}
}
