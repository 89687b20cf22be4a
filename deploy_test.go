package flatten

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/coredns/coredns/plugin/metrics" // the prometheus directive, as deployed

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// dashboard is the part of deploy/grafana/flatten.json the tests read.
type dashboard struct {
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr         string `json:"expr"`
			LegendFormat string `json:"legendFormat"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

var metricName = regexp.MustCompile(`\bcoredns_[a-z0-9_]+`)

// dashboardMetrics returns the dashboard and the metric names its queries (panels and variables)
// use, sorted.
func dashboardMetrics(t *testing.T) (dashboard, []string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("deploy", "grafana", "flatten.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("deploy/grafana/flatten.json: %v", err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			json.Unmarshal(v.Query, &q.Query) // a plain string
		}
		exprs = append(exprs, q.Query)
	}
	var names []string
	for _, e := range exprs {
		names = append(names, metricName.FindAllString(e, -1)...)
	}
	slices.Sort(names)
	return d, slices.Compact(names)
}

// exported returns the names of the series DefaultGatherer has (what the *prometheus* plugin
// serves): every family's name, and a histogram's _bucket, _sum and _count.
func exported(t *testing.T) (names map[string]bool, families []string) {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names = map[string]bool{}
	for _, mf := range mfs {
		n := mf.GetName()
		families = append(families, n)
		names[n] = true
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n+"_sum"], names[n+"_count"] = true, true
		}
	}
	return names, families
}

// TestDashboardMetrics: every metric deploy/grafana/flatten.json queries is one a CoreDNS with
// flatten exports, as read from the Prometheus registry after a CoreDNS in this process has
// produced every kind of answer (fresh, stale, fallback, failover, SERVFAIL), upstream errors,
// refreshes, a health check with an address down and a block with ecs; and every
// coredns_flatten_* metric exported is on the dashboard.
func TestDashboardMetrics(t *testing.T) {
	d, queried := dashboardMetrics(t)
	if len(queried) == 0 {
		t.Fatal("deploy/grafana/flatten.json queries no coredns_ metric")
	}

	// The answers by source, in the panel that shows them.
	var legends []string
	for _, p := range d.Panels {
		if p.Title == "Answers by source" {
			for _, tg := range p.Targets {
				legends = append(legends, tg.LegendFormat)
			}
		}
	}
	for _, want := range []string{"fresh", "stale", "fallback", "servfail"} {
		if !slices.Contains(legends, want) {
			t.Errorf(`the dashboard's "Answers by source" panel has no %q series (it has %q)`, want, legends)
		}
	}

	// Health checks probe the target addresses 127.0.0.1 (listening) and 127.0.0.2 (refused).
	hc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	go func() {
		for {
			c, err := hc.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, hcPort, _ := net.SplitHostPort(hc.Addr().String())

	u := newFakeUpstream(t,
		"good.agency.test. 300 IN A 127.0.0.1",
		"good.agency.test. 300 IN A 127.0.0.2",
		"stale.agency.test. 300 IN A 127.0.0.3",
	)
	u.setRecursive()
	var never, failing atomic.Bool
	never.Store(true)
	u.handle("broken.agency.test.", servfailer(u, &never))
	u.handle("stale.agency.test.", servfailer(u, &failing))
	orgZone := exampleZone(t, "fb 3600 IN A 127.0.0.9")
	netZone := writeZone(t, "example.net.", "@ 3600 IN SOA ns1.example.net. hostmaster.example.net. 1 7200 3600 1209600 300",
		"@ 3600 IN NS ns1.example.net.")
	srv, _ := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	prometheus 127.0.0.1:0
	flatten {
		alias @ good.agency.test.
		alias stale stale.agency.test.
		alias fb broken.agency.test.
		alias sf broken.agency.test.
		alias fo broken.agency.test. good.agency.test.
		upstream %[1]s
		ttl 1 1
		timeout 500ms
		health_check tcp %[2]s 100ms
	}
	file %[3]s example.org
}
example.net:0 {
	bind 127.0.0.1
	prometheus 127.0.0.1:0
	flatten {
		alias @ good.agency.test.
		upstream %[1]s
		ecs
	}
	file %[4]s example.net
}
`, u.Addr, hcPort, orgZone, netZone))

	const org = "example.org."
	// 127.0.0.2 and 127.0.0.3 (stale's) refuse connections: both go down, in either order.
	waitFor(t, "the aliases of good and stale fresh, and 127.0.0.2 and 127.0.0.3 down", func() bool {
		f, _ := gathered(t, "coredns_flatten_aliases_fresh", org)
		d, _ := gathered(t, "coredns_flatten_health_down_addresses", org)
		return f >= 3 && d >= 2
	})
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org.", "127.0.0.1")
	checkAddrs(t, query(t, srv, "udp", "fb.example.org.", dns.TypeA, 0), "fb.example.org.", "127.0.0.9")
	checkAddrs(t, query(t, srv, "udp", "fo.example.org.", dns.TypeA, 0), "fo.example.org.", "127.0.0.1")
	if r := query(t, srv, "udp", "sf.example.org.", dns.TypeA, 0); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("sf.example.org A: rcode %s, want SERVFAIL\n%v", dns.RcodeToString[r.Rcode], r)
	}
	query(t, srv, "udp", "example.net.", dns.TypeA, 0)
	failing.Store(true)
	waitFor(t, "stale.example.org's alias stale", func() bool {
		s, _ := gathered(t, "coredns_flatten_aliases_stale", org)
		return s == 1
	})
	if r := query(t, srv, "udp", "stale.example.org.", dns.TypeA, 1232); ede(r) == nil || ede(r).InfoCode != dns.ExtendedErrorCodeStaleAnswer {
		t.Errorf("stale.example.org A: want a stale answer, got:\n%v", r)
	}

	// Every metric the dashboard queries is exported; counters and gauges with labels appear
	// once they have a value, so wait for the ones that come from the background (refreshes,
	// probes) a little.
	var missing []string
	check := func() bool {
		names, _ := exported(t)
		missing = missing[:0]
		for _, n := range queried {
			if !names[n] {
				missing = append(missing, n)
			}
		}
		return len(missing) == 0
	}
	for deadline := time.Now().Add(5 * time.Second); !check() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Errorf("deploy/grafana/flatten.json queries metrics that are not exported: %q", missing)
	}

	// And every coredns_flatten_ metric exported is on the dashboard.
	_, families := exported(t)
	var absent []string
	for _, f := range families {
		if !strings.HasPrefix(f, "coredns_flatten_") {
			continue
		}
		on := false
		for _, n := range queried {
			on = on || n == f || strings.HasPrefix(n, f+"_")
		}
		if !on {
			absent = append(absent, f)
		}
	}
	sort.Strings(absent)
	if len(absent) > 0 {
		t.Errorf("flatten exports metrics deploy/grafana/flatten.json does not show: %q", absent)
	}
}
