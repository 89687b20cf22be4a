package flatten

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// gathered returns the value of the metric name with the given zones label (server
// "dns://127.0.0.1:0", no view), as the *prometheus* plugin would serve it; false if there is none.
func gathered(t *testing.T, name, zones string) (float64, bool) {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["zones"] == zones && labels["server"] == coreServerLabel && labels["view"] == "" {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// TestMetricsPerBlock: two server blocks on one listener count apart, by their zones, as
// CoreDNS's cache plugin's metrics do: their entries, their requests, and their aliases by the
// state of their answers, fresh or stale.
func TestMetricsPerBlock(t *testing.T) {
	u1 := newFakeUpstream(t, append(agencyRecords, "client3.agency.test. 300 IN A 192.0.2.30")...)
	u1.setRecursive()
	u2 := newFakeUpstream(t, agencyRecords...)
	u2.setRecursive()
	var failing atomic.Bool
	u2.handle("client1.agency.test.", servfailer(u2, &failing))
	netZone := writeZone(t, "example.net.", "@ 3600 IN SOA ns1.example.net. hostmaster.example.net. 1 7200 3600 1209600 300",
		"@ 3600 IN NS ns1.example.net.")
	_, inst := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		alias @ client1.agency.test.
		alias www client3.agency.test.
		upstream %s
		ttl 1 1
	}
	file %s example.org
}
example.net:0 {
	bind 127.0.0.1
	flatten {
		alias @ client1.agency.test.
		upstream %s
		ttl 1 1
	}
	file %s example.net
}
`, u1.Addr, exampleZone(t), u2.Addr, netZone))
	if n := len(inst.Servers()); n != 1 {
		t.Fatalf("%d listeners, want the two blocks on one", n)
	}
	sl := inst.Servers()[0]
	addr := server{udp: sl.LocalAddr().String(), tcp: sl.Addr().String()}

	org, net := "example.org.", "example.net."
	waitFor(t, "both blocks' aliases fresh", func() bool {
		a, _ := gathered(t, "coredns_flatten_aliases_fresh", org)
		b, _ := gathered(t, "coredns_flatten_aliases_fresh", net)
		return a == 2 && b == 1
	})
	// Two targets in one block, one in the other: 4 entries and 2.
	if a, b := metric(t, "cache_entries", coreServerLabel, org, ""),
		metric(t, "cache_entries", coreServerLabel, net, ""); a != 4 || b != 2 {
		t.Errorf("cache_entries %v and %v, want 4 for %s and 2 for %s", a, b, org, net)
	}
	beforeOrg := metric(t, "requests_total", coreServerLabel, org, "")
	beforeNet := metric(t, "requests_total", coreServerLabel, net, "")
	checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10", "192.0.2.11")
	checkAddrs(t, query(t, addr, "udp", "www.example.org.", dns.TypeA, 0), "www.example.org.", "192.0.2.30")
	checkAddrs(t, query(t, addr, "udp", "example.net.", dns.TypeA, 0), "example.net.", "192.0.2.10", "192.0.2.11")
	if a, b := metric(t, "requests_total", coreServerLabel, org, "")-beforeOrg,
		metric(t, "requests_total", coreServerLabel, net, "")-beforeNet; a != 2 || b != 1 {
		t.Errorf("requests %v and %v, want 2 for %s and 1 for %s", a, b, org, net)
	}

	// example.net's upstream fails: once its entries expire, its alias is served stale, and
	// example.org's stay fresh.
	failing.Store(true)
	waitFor(t, "example.net.'s alias stale", func() bool {
		s, _ := gathered(t, "coredns_flatten_aliases_stale", net)
		f, _ := gathered(t, "coredns_flatten_aliases_fresh", net)
		return s == 1 && f == 0
	})
	// With TTL 1 an entry may be a moment past expiry before its refresh lands: wait for it.
	waitFor(t, "example.org.'s aliases fresh while the other block's are stale", func() bool {
		f, _ := gathered(t, "coredns_flatten_aliases_fresh", org)
		s, _ := gathered(t, "coredns_flatten_aliases_stale", org)
		ns, _ := gathered(t, "coredns_flatten_aliases_stale", net)
		return f == 2 && s == 0 && ns == 1
	})
}
