package flatten

import (
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

// block returns the running instance that flattens zones.
func block(zones string) *Flatten {
	for _, f := range running() {
		if f.cfg.labels.zones == zones {
			return f
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
	useFlattenDirective(t)
	caddy.Quiet, dnsserver.Quiet = true, true
	inst, err := caddy.Start(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(cf), ServerTypeName: "dns"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { stopInstance(t, inst) }()

	waitFor(t, "the block ready, and its alias resolved, without a query", func() bool {
		f := block("example.org.")
		return f != nil && f.Ready() && f.cache.pins[0].slots[0].good.Load() != nil
	})
	waitFor(t, "the startup lines", func() bool {
		return len(logged.lines("startup round done")) == 1
	})
	if got := logged.lines("server blocks flatten"); len(got) != 1 || !strings.Contains(got[0], "1 server blocks flatten 1 aliases, resolved through this server (1 blocks)") {
		t.Errorf("totals logged as %q", got)
	}
	if got := logged.lines("startup round done"); !strings.Contains(got[0], "2 of 2 targets and types resolved, 0 failed") {
		t.Errorf("round logged as %q", got)
	}

	// A reload: the new instance refreshes (TTL 1 s) without any query reaching it.
	old := block("example.org.")
	inst, err = inst.Restart(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(cf), ServerTypeName: "dns"})
	if err != nil {
		t.Fatal(err)
	}
	var adopted *entry
	waitFor(t, "the new instance", func() bool {
		f := block("example.org.")
		if f == nil || f == old {
			return false
		}
		adopted = f.cache.pins[0].slots[0].good.Load()
		return true
	})
	waitFor(t, "a refresh after the reload, without a query", func() bool {
		e := block("example.org.").cache.pins[0].slots[0].good.Load()
		return e != nil && adopted != nil && e.fetched > adopted.fetched
	})
	if !block("example.org.").Ready() {
		t.Errorf("the reloaded block is not ready")
	}
}
