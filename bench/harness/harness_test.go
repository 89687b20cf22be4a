package main

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
)

// A fixed-rate run as dnsperf 2.10 prints it with -v: one line per answered query, "> T" for a
// timeout, then the statistics.
const dnsperfVerbose = `DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15399 -d q.txt -l 2 -Q 100 -v
[Status] Sending queries (to 127.0.0.1:15399)
> NOERROR example.test A 0.000400
> NOERROR example.test AAAA 0.000100
> NOERROR example.test A 0.000300
> T example.test AAAA
> NOERROR example.test A 0.000200
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         5
  Queries completed:    4 (80.00%)
  Queries lost:         1 (20.00%)

  Response codes:       NOERROR 4 (100.00%)
  Average packet size:  request 30, response 106
  Run time (s):         2.000628
  Queries per second:   1.999372

  Average Latency (s):  0.000250 (min 0.000100, max 0.000400)
  Latency StdDev (s):   0.000112
`

func TestParseDnsperf(t *testing.T) {
	p, summary, err := parseDnsperf(strings.NewReader(dnsperfVerbose))
	if err != nil {
		t.Fatal(err)
	}
	if p.Sent != 5 || p.Completed != 4 || p.Lost != 1 || p.NoError != 4 || p.RespSize != 106 {
		t.Errorf("counts: %+v", p)
	}
	if math.Abs(p.QPS-1.999372) > 1e-9 || math.Abs(p.AvgLatMs-0.25) > 1e-9 {
		t.Errorf("qps %v, avg latency %v ms", p.QPS, p.AvgLatMs)
	}
	// Sorted latencies 0.1 0.2 0.3 0.4 +Inf (the lost query): nearest rank.
	if p.P50Ms != 0.3 || !math.IsInf(p.P99Ms, 1) || !math.IsInf(p.P999Ms, 1) {
		t.Errorf("percentiles: p50 %v p99 %v p99.9 %v", p.P50Ms, p.P99Ms, p.P999Ms)
	}
	for _, l := range summary {
		if strings.HasPrefix(l, ">") {
			t.Errorf("per-query line kept in the summary: %q", l)
		}
	}
}

// A max-QPS run has no per-query lines, so no percentiles.
func TestParseDnsperfMax(t *testing.T) {
	var b strings.Builder
	for _, l := range strings.Split(dnsperfVerbose, "\n") {
		if !strings.HasPrefix(l, ">") {
			b.WriteString(l + "\n")
		}
	}
	in := strings.Replace(b.String(), "Queries lost:         1", "Queries lost:         0", 1)
	p, _, err := parseDnsperf(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if p.P50Ms != 0 || p.P99Ms != 0 || p.Sent != 5 {
		t.Errorf("%+v", p)
	}
}

func TestPercentileAndMedian(t *testing.T) {
	v := make([]float64, 1000)
	for i := range v {
		v[i] = float64(i + 1)
	}
	for _, c := range []struct{ p, want float64 }{{50, 500}, {99, 990}, {99.9, 999}, {100, 1000}} {
		if got := percentile(v, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if !math.IsNaN(percentile(nil, 50)) {
		t.Error("percentile of nothing is not NaN")
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
}

func TestRoundDown(t *testing.T) {
	for in, want := range map[float64]int{23456: 23000, 7890.5: 7800, 150: 150, 99: 99, 0.4: 1} {
		if got := roundDown(in); got != want {
			t.Errorf("roundDown(%v) = %d, want %d", in, got, want)
		}
	}
}

func TestParseGoBench(t *testing.T) {
	out := `goos: linux
BenchmarkFlattenHit      	 1000000	       850 ns/op	     424 B/op	       6 allocs/op
BenchmarkFlattenHit      	 1000000	       900 ns/op	     424 B/op	       6 allocs/op
BenchmarkFlattenHit      	 1000000	       800 ns/op	     424 B/op	       6 allocs/op
BenchmarkCachePluginHit-2	  500000	      1970 ns/op	     832 B/op	      16 allocs/op
PASS
`
	got := parseGoBench(out)
	if len(got) != 2 || got[0] != (goBench{"BenchmarkFlattenHit", 850, 424, 6}) || got[1] != (goBench{"BenchmarkCachePluginHit", 1970, 832, 16}) {
		t.Errorf("%+v", got)
	}
}

// requestCounts reads a real HTTP endpoint on loopback, as the harness reads the target's
// prometheus plugin.
func TestRequestCounts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.
# TYPE coredns_dns_requests_total counter
coredns_dns_requests_total{family="1",proto="udp",server="dns://127.0.0.1:5301",type="A",view="",zone="agency.test."} 3
coredns_dns_requests_total{family="1",proto="tcp",server="dns://127.0.0.1:5301",type="A",view="",zone="agency.test."} 1
coredns_dns_requests_total{family="1",proto="udp",server="dns://127.0.0.1:5301",type="AAAA",view="",zone="agency.test."} 4
coredns_dns_requests_total{family="1",proto="udp",server="dns://127.0.0.1:5302",type="A",view="",zone="agency.test."} 9
coredns_dns_request_duration_seconds_count{server="dns://127.0.0.1:5301"} 100
`)
	})}
	go srv.Serve(l)
	defer srv.Close()
	c, err := requestCounts(context.Background(), l.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	a := c["dns://127.0.0.1:5301"]
	if a["A"] != 4 || a["AAAA"] != 4 || sum(a) != 8 || sum(c["dns://127.0.0.1:5302"]) != 9 {
		t.Errorf("%v", c)
	}
}

func TestExpectedRefresh(t *testing.T) {
	// The startup round (A and AAAA) and one refresh of each per 27 s that has passed.
	for secs, want := range map[float64]int{0: 2, 26.9: 2, 27: 4, 100: 8} {
		if got := expectedRefresh(upstream{Seconds: secs, Interval: 27}); got != want {
			t.Errorf("%v s: %d, want %d", secs, got, want)
		}
	}
}

func TestKeyValues(t *testing.T) {
	kv := keyValues("n=1000\nanswer_A=www.example.test. IN A 192.0.2.20\n\nnoise\n")
	if kv["n"] != "1000" || kv["answer_A"] != "www.example.test. IN A 192.0.2.20" || len(kv) != 2 {
		t.Errorf("%v", kv)
	}
}

func TestMarshalResultsNonFinite(t *testing.T) {
	r := results{Rows: &rowsResult{Rows: []rowResult{{ID: "1", P999: math.Inf(1), P50: math.NaN(), QPS: 1.5}}}}
	b, err := marshalResults(&r)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"p999_ms": "+Inf"`, `"p50_ms": "NaN"`, `"qps": 1.5`, `"id": "1"`} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %s in\n%s", want, s)
		}
	}
	if strings.Contains(s, `"big"`) {
		t.Errorf("nil pointer with omitempty written:\n%s", s)
	}
}

// The limit row (0, erratic) has its column, its ratio in the per-round line and its target; the
// 3b target is > 1.1.
func TestRenderLimitRow(t *testing.T) {
	rr := func(id string, qps, size float64) rowResult {
		return rowResult{ID: id, Label: "row " + id, QPS: qps, RespSize: size, Runs: []rowRun{{Max: perf{QPS: qps}}, {Max: perf{QPS: qps}}, {Max: perf{QPS: qps}}}}
	}
	r := results{Config: config{Rounds: 3}, Rows: &rowsResult{
		FixedQPS: 1000,
		Rows:     []rowResult{rr("0", 100000, 46), rr("1", 96000, 106), rr("3b", 80000, 106)},
		FlatVs0:  []float64{0.95, 0.96, 0.97}, FlatVs3b: []float64{1.1, 1.2, 1.3}, FlatVs3: []float64{1.3, 1.3, 1.3}, FlatVsPDNS: []float64{2, 2, 2},
	}}
	md := render(&r)
	for _, want := range []string{
		"| row | server | max QPS | vs 0 | vs 3 |",
		"| 0 | row 0 | 100000 |",
		"its responses average 46 bytes, row 1's 106",
		"max QPS over row 0 (the limit) / row 3b / row 3 / the better PowerDNS row: 0.95 0.96 0.97 / 1.10 1.20 1.30 / ",
		"medians 0.960 / 1.200 / 1.300 / 2.000.",
		"| flatten warm max QPS / erratic (the limit row) | >= 0.95 | 0.960 | yes |",
		"| flatten warm max QPS / cache + file static (3b) | > 1.1 | 1.200 | yes |",
		"(0 1 2 3 3b 4 5, 0 1 2 3 3b 4 5, ...)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("missing %q in\n%s", want, md)
		}
	}
	r.Rows.FlatVs0, r.Rows.FlatVs3b = []float64{0.9, 0.94, 0.99}, []float64{1.1, 1.1, 1.2}
	md = render(&r)
	for _, want := range []string{
		"| flatten warm max QPS / erratic (the limit row) | >= 0.95 | 0.940 | **no** |",
		"| flatten warm max QPS / cache + file static (3b) | > 1.1 | 1.100 | **no** |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("missing %q in\n%s", want, md)
		}
	}
}

// The blocks case: its section, memory above the baseline per block, and its two targets, also
// when the flatten server was not ready in time.
func TestRenderBlocks(t *testing.T) {
	runs := []perf{{QPS: 50000}, {QPS: 52000}, {QPS: 51000}}
	// Three starts each, out of order: the figures are their medians.
	starts := func(settled, hwm, live [3]int) []blocksStart {
		var s []blocksStart
		for i := range 3 {
			s = append(s, blocksStart{RSSReadyKB: settled[i] * 1024, RSSSettledKB: settled[i] * 1024, HWMSettledKB: hwm[i] * 1024, LiveKB: live[i] * 1024, SettleSecs: 3})
		}
		return s
	}
	g := &blocksResult{Blocks: 10000, Targets: 256, Sample: 10000, Rounds: 3, Starts: 3, TimeoutSeconds: 900,
		Base: blocksServer{ListenSeconds: 1, ReadySeconds: 1.5, StartupSeconds: 1.5, Ready: true, RSSAfterKB: 320 * 1024, Runs: runs, QPS: 51000,
			Starts: starts([3]int{320, 290, 300}, [3]int{320, 300, 310}, [3]int{52, 50, 51})},
		Flat: blocksServer{ListenSeconds: 1.2, ReadySeconds: 1.6, RoundSeconds: 41, StartupSeconds: 41, Ready: true, RoundLog: "startup round done in 40s: 40000 of 40000 targets and types resolved, 0 failed",
			RSSAfterKB: 350 * 1024, Runs: runs, QPS: 51000, Starts: starts([3]int{310, 360, 320}, [3]int{320, 370, 330}, [3]int{57, 58, 56})},
		Upstream: 40000, SpanSeconds: 40, MaxPerSecond: 1000, Names: 256, MaxPerNameType: 157}
	g.Base.summarize()
	g.Flat.summarize()
	r := results{Config: config{Rounds: 3, Blocks: 10000}, Blocks: g}
	md := render(&r)
	for _, want := range []string{
		"## 10000 server blocks\n",
		"| 10000 blocks: resident memory above the no-flatten baseline (VmRSS settled after the startup, and VmHWM; medians over the starts) | <= 24 MB | 20.0 MB (2097 bytes per block); peak 20.0 MB; after the load 30.0 MB; live heap 6.0 MB (medians of 3 starts) | yes |",
		"| 10000 blocks: upstream questions in any 1 s during startup | <= 1000 (refresh_rate) | 1000 | yes |",
		"| startup: exec to both (the startup time) | 1.5 s | 41.0 s | |",
		"| VmHWM (the peak) then, median | 310.0 MB | 330.0 MB | 20.0 MB (2097 bytes per block) |",
		"| VmRSS settled, MB, each start | 320.0, 290.0, 300.0 | 310.0, 360.0, 320.0 | |",
		"| live heap after a forced collection, median (MB, each start) | 51.0 MB (52.0, 50.0, 51.0) | 57.0 MB (57.0, 58.0, 56.0) | 6.0 MB (629 bytes per block) |",
		"Each server was started 3 times, in turn",
		"(`startup round done in 40s: 40000 of 40000 targets and types resolved, 0 failed`)",
		"| 51000 (50000, 52000, 51000) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("missing %q in\n%s", want, md)
		}
	}

	g.Flat = blocksServer{ListenSeconds: 1.2, StartupSeconds: 900.1, Starts: []blocksStart{{RSSReadyKB: 310 * 1024, RSSSettledKB: 310 * 1024, HWMSettledKB: 320 * 1024}}}
	g.Flat.summarize()
	g.MaxPerSecond, g.Error = 900, "CoreDNS with flatten: not ready 15m0s after the exec"
	md = render(&r)
	for _, want := range []string{
		"**Not complete: CoreDNS with flatten: not ready 15m0s after the exec.**",
		"| startup: exec to both (the startup time) | 1.5 s | **not ready after 900 s** | |",
		"| 10000 blocks: resident memory above the no-flatten baseline (VmRSS settled after the startup, and VmHWM; medians over the starts) | <= 24 MB | 10.0 MB (1049 bytes per block); peak 10.0 MB, not ready after 900 s | **not known** |",
		"| 10000 blocks: upstream questions in any 1 s during startup | <= 1000 (refresh_rate) | 900 (until the timeout; not ready) | **not known** |",
		"| not measured |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("missing %q in\n%s", want, md)
		}
	}
	// A quick run's smaller count scales the memory target.
	g.Blocks = 1000
	if md = render(&r); !strings.Contains(md, "| <= 2.4 MB (24 MB per 10000 blocks) |") {
		t.Errorf("memory target not scaled:\n%s", md)
	}
}

// BIND 9.18's query log (print-time iso8601-utc) and its notify log line.
func TestAgencyLogs(t *testing.T) {
	qlog := `2026-12-07T00:50:01.123Z client @0x7f8c1c0 127.0.0.1#41234 (client5.agency.test): query: client5.agency.test IN A -E(0)DC (127.0.0.1)
2026-12-07T00:50:01.124Z client @0x7f8c1c0 127.0.0.1#41235 (client5.agency.test): query: client5.agency.test IN AAAA -E(0)DC (127.0.0.1)
2026-12-07T00:50:01.125Z client @0x7f8c1c0 127.0.0.1#41236 (client5.agency.test): query: Client5.agency.test IN A -E(0)DC (127.0.0.1)
2026-12-07T00:50:01.126Z client @0x7f8c1c0 127.0.0.1#41237 (server1.agency.test): query: server1.agency.test IN A -E(0)DC (127.0.0.1)
2026-12-07T00:50:01.127Z client @0x7f8c1c0 127.0.0.1#41238 (agency.test): query: agency.test IN SOA -E(0)DC (127.0.0.1)
`
	chain, perName, by := tally(bindLogQuestions([]byte(qlog)))
	if chain != 4 || perName != 2 || by["clientN A"] != 2 || by["clientN AAAA"] != 1 || by["server1 A"] != 1 || by["other SOA"] != 1 {
		t.Errorf("countQueries = %d, %d, %v", chain, perName, by)
	}
	clog := `[INFO] 127.0.0.1:53 - 1234 "AAAA IN client5.agency.test. tcp 48 false 65535" NOERROR qr,aa,rd 120 0.0001s
[INFO] 127.0.0.1:41234 - 1235 "A IN server1.agency.test. udp 37 false 512" NOERROR qr,aa,rd 70 0.0001s
[INFO] 127.0.0.1:53 - 1236 "AAAA IN server1.agency.test. tcp 48 false 65535" NOERROR qr,aa,rd 100 0.0001s
[INFO] plugin/transfer: Outgoing transfer of 5 records
`
	chain, perName, by = tally(coreDNSLogQuestions([]byte(clog)))
	if chain != 2 || perName != 1 || by["clientN AAAA"] != 1 || by["server1 AAAA"] != 1 || by["server1 A"] != 0 {
		t.Errorf("CoreDNS log: %d, %d, %v", chain, perName, by)
	}
	dir := t.TempDir()
	p := dir + "/named.log"
	writeRaw(p, "2026-12-07T00:50:01.200Z zone agency.test/IN: loaded serial 3\n2026-12-07T00:50:01.250Z zone agency.test/IN: sending notifies (serial 3)\n")
	at, ok := notifyTimes(p)[3]
	if !ok || at.Format("15:04:05.000") != "00:50:01.250" {
		t.Errorf("notifyTimes = %v, %v", at, ok)
	}
}
