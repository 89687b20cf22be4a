package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/miekg/dns"
)

// row is one server under load, with the processes its answers make work (the server itself,
// and for flattening rows the resolver and target behind it), whose CPU is counted against it.
type row struct {
	id, label string
	port      int
	server    *proc
	support   []*proc
	// flattening CoreDNS rows: the target listener whose queries are this row's upstream queries
	targetLabel string
	// the answers the row must give before the load starts; nil: wantA and wantAAAA
	wantA, wantAAAA []string
}

// rowRun is one round's measurements of a row.
type rowRun struct {
	Round int  `json:"round"`
	Max   perf `json:"max"`
	Fixed perf `json:"fixed"`
	// CPU of the row's processes per answered query in the max run, in microseconds.
	CPUus float64 `json:"cpu_us_per_query"`
	// Runs repeated because other processes took too much of the server core.
	Retries int `json:"retries"`
	// Flattening CoreDNS rows: queries its target got during the two runs.
	Upstream int `json:"upstream,omitempty"`
}

type rowResult struct {
	ID       string   `json:"id"`
	Label    string   `json:"label"`
	Runs     []rowRun `json:"runs"`
	QPS      float64  `json:"qps"`
	P50      float64  `json:"p50_ms"`
	P99      float64  `json:"p99_ms"`
	P999     float64  `json:"p999_ms"`
	CPUus    float64  `json:"cpu_us_per_query"`
	Lost     int      `json:"lost"`
	FixLost  int      `json:"fixed_lost"`
	Foreign  float64  `json:"server_core_foreign"`
	Retries  int      `json:"retries"`
	LoadBusy float64  `json:"dnsperf_cpu"`
	RespSize float64  `json:"response_size"`
	// Median of per-round ratios of this row's max QPS to rows 0 (the limit), 3, 3b and 4.
	Vs0     float64  `json:"vs_0"`
	Vs3     float64  `json:"vs_3"`
	Vs3b    float64  `json:"vs_3b"`
	Vs4     float64  `json:"vs_4"`
	Answers []string `json:"answers"`
}

// upstream is what a flattening row's target saw.
type upstream struct {
	Row         string         `json:"row"`
	DuringLoad  int            `json:"during_load"`
	LoadQueries int            `json:"load_client_queries"`
	LoadSeconds float64        `json:"load_seconds"`
	Total       int            `json:"total"`
	ByType      map[string]int `json:"by_type"`
	Seconds     float64        `json:"seconds"` // from the row's server start to the last count
	// The refresh interval the plugin's schedule gives a TTL: refreshed when 10% (prefetch) of
	// the TTL is left.
	Interval float64 `json:"expected_interval_s"`
}

type rowsResult struct {
	FixedQPS    int                `json:"fixed_qps"`
	Calibration map[string]float64 `json:"calibration_qps"`
	Rows        []rowResult        `json:"rows"`
	// Per round: row 1's max QPS over 0 (the limit), over 3b, over 3, and over the better
	// PowerDNS row.
	FlatVs0    []float64  `json:"flatten_vs_0"`
	FlatVs3b   []float64  `json:"flatten_vs_3b"`
	FlatVs3    []float64  `json:"flatten_vs_3"`
	FlatVsPDNS []float64  `json:"flatten_vs_best_pdns"`
	Upstream   []upstream `json:"upstream"`
}

var (
	wantA    = []string{"example.test. A 192.0.2.10", "example.test. A 192.0.2.11"}
	wantAAAA = []string{"example.test. AAAA 2001:db8::10"}
	// What the erratic plugin synthesizes (plugin/erratic: rrA and rrAAAA, TTL 0) for any name
	// of its server block's zone.
	erraticA    = []string{"example.test. A 192.0.2.53"}
	erraticAAAA = []string{"example.test. AAAA 2001:db8::53"}
)

func (h *harness) rows() (*rowsResult, error) {
	cfg := h.cfg
	dir := h.dir
	coreEnv := []string{"GOMAXPROCS=1"}
	np := func() int {
		p, err := h.ports.next()
		if err != nil {
			panic(err)
		}
		return p
	}

	// Zone files.
	agency, err := write(dir, "db.agency.test", agencyZone(cfg.TTL))
	agency = abs(agency)
	if err != nil {
		return nil, err
	}
	flatZone, _ := write(dir, "db.example.test.flatten", exampleZone(""))
	flatZone = abs(flatZone)
	staticZone, _ := write(dir, "db.example.test.static", exampleZone(staticApex(cfg.TTL)))
	staticZone = abs(staticZone)
	aliasZone, _ := write(dir, "db.example.test.alias", exampleZone(aliasApex(cfg.TTL)))
	queries, _ := write(dir, "queries.apex", "example.test A\nexample.test AAAA\n")

	// The target: one CoreDNS file instance with a listener for each client of it, so that
	// each one's queries are counted apart (coredns_dns_requests_total by server).
	tF1, tF2, tP, metrics := np(), np(), np(), np()
	var targetCf string
	for _, p := range []int{tF1, tF2, tP} {
		targetCf += corefileBlock("agency.test", p, fmt.Sprintf("prometheus 127.0.0.1:%d", metrics), "file "+agency)
	}
	targetConf, _ := write(dir, "Corefile.target", targetCf)
	target, err := h.procs.start("target-file", cfg.ServerCPU, coreEnv, cfg.CoreDNS, "-conf", targetConf)
	if err != nil {
		return nil, err
	}
	label := func(p int) string { return fmt.Sprintf("dns://127.0.0.1:%d", p) }

	// The recursor behind PowerDNS.
	rp := np()
	recDir := filepath.Join(dir, "recursor")
	if err := mkdir(recDir); err != nil {
		return nil, err
	}
	if _, err := write(recDir, "recursor.conf", recursorConf(recDir, rp, tP)); err != nil {
		return nil, err
	}
	recursor, err := h.procs.start("pdns-recursor", cfg.ServerCPU, nil, "pdns_recursor", "--config-dir="+recDir)
	if err != nil {
		return nil, err
	}

	var rows []*row
	coredns := func(id, label string, lines ...string) (*row, error) {
		port := np()
		conf, _ := write(dir, "Corefile.row"+id, corefileBlock("example.test", port, lines...))
		p, err := h.procs.start("row"+id, cfg.ServerCPU, coreEnv, cfg.CoreDNS, "-conf", conf)
		if err != nil {
			return nil, err
		}
		r := &row{id: id, label: label, port: port, server: p}
		rows = append(rows, r)
		return r, nil
	}
	flattenBlock := func(tport int) []string {
		return []string{"flatten {", "    alias @ client1.agency.test.", fmt.Sprintf("    upstream 127.0.0.1:%d", tport), "}"}
	}
	// Row 0, the limit: erratic answers every A and AAAA query of its zone with one record it
	// synthesizes, without looking anything up (drop 0: it drops none; its default drops every
	// second query).
	r0, err := coredns("0", "erratic, synthesized A/AAAA (the limit)", "erratic {", "    drop 0", "}")
	if err != nil {
		return nil, err
	}
	r0.wantA, r0.wantAAAA = erraticA, erraticAAAA
	r1, err := coredns("1", "flatten, cache warm (flatten + file)", append(flattenBlock(tF1), "file "+flatZone)...)
	if err != nil {
		return nil, err
	}
	r1.support, r1.targetLabel = []*proc{target}, label(tF1)
	r2, err := coredns("2", "cache + flatten + file", append(append([]string{"cache"}, flattenBlock(tF2)...), "file "+flatZone)...)
	if err != nil {
		return nil, err
	}
	r2.support, r2.targetLabel = []*proc{target}, label(tF2)
	if _, err := coredns("3", "file, static A/AAAA", "file "+staticZone); err != nil {
		return nil, err
	}
	if _, err := coredns("3b", "cache + file, static A/AAAA", "cache", "file "+staticZone); err != nil {
		return nil, err
	}
	for _, p := range []struct {
		id, label string
		caches    bool
	}{{"4", "PowerDNS ALIAS, default caches", true}, {"5", "PowerDNS ALIAS, packet and query caches off", false}} {
		port := np()
		pdir := filepath.Join(dir, "pdns"+p.id)
		if err := mkdir(pdir); err != nil {
			return nil, err
		}
		named, _ := write(pdir, "named.conf", fmt.Sprintf("zone \"example.test\" { type master; file \"%s\"; };\n", abs(aliasZone)))
		if _, err := write(pdir, "pdns.conf", pdnsConf(pdir, port, rp, named, p.caches)); err != nil {
			return nil, err
		}
		pp, err := h.procs.start("pdns"+p.id, cfg.ServerCPU, nil, "pdns_server", "--config-dir="+pdir)
		if err != nil {
			return nil, err
		}
		rows = append(rows, &row{id: p.id, label: p.label, port: port, server: pp, support: []*proc{recursor, target}})
	}
	h.logf("servers started; waiting for every row to answer example.test A and AAAA")

	res := &rowsResult{Calibration: map[string]float64{}}
	answers := map[string][]string{}
	for _, r := range rows {
		wa, waaaa := wantA, wantAAAA
		if r.wantA != nil {
			wa, waaaa = r.wantA, r.wantAAAA
		}
		a, err := h.waitAnswer(r.port, "example.test.", dns.TypeA, wa, 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("row %s (log %s): %w", r.id, r.server.log, err)
		}
		aaaa, err := h.waitAnswer(r.port, "example.test.", dns.TypeAAAA, waaaa, 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("row %s (log %s): %w", r.id, r.server.log, err)
		}
		answers[r.id] = append(a, aaaa...)
	}
	// Calibration: a short max-QPS run of each row, which also warms every cache; the fixed rate
	// is half the slowest row's.
	slowest := math.Inf(1)
	for _, r := range rows {
		p, err := runDnsperf(h.ctx, cfg.LoadCPU, filepath.Join(h.raw, "cal-row"+r.id+".txt"),
			dnsperfArgs(r.port, queries, cfg.CalDuration, cfg.Clients, cfg.Outstanding, 0))
		if err != nil {
			return nil, err
		}
		res.Calibration[r.id] = p.QPS
		slowest = min(slowest, p.QPS)
		h.logf("calibration row %s: %.0f QPS", r.id, p.QPS)
	}
	res.FixedQPS = cfg.FixedQPS
	if res.FixedQPS == 0 {
		res.FixedQPS = roundDown(slowest / 2)
	}
	h.logf("fixed rate for latency: %d QPS", res.FixedQPS)

	runs := map[string][]rowRun{}
	upLoad := map[string]int{}
	loadQueries := map[string]int{}
	loadSeconds := map[string]float64{}
	for round := 1; round <= cfg.Rounds; round++ {
		for _, r := range rows {
			rr := rowRun{Round: round}
			rowProcs := append([]*proc{r.server}, r.support...)
			before, err := h.targetCount(metrics, r.targetLabel)
			if err != nil {
				return nil, err
			}
			t0 := time.Now()
			var cpuTicks uint64
			rr.Max, cpuTicks, rr.Retries, err = h.measure("row "+r.id, rowProcs, fmt.Sprintf("max-row%s-r%d", r.id, round),
				dnsperfArgs(r.port, queries, cfg.Duration, cfg.Clients, cfg.Outstanding, 0))
			if err != nil {
				return nil, err
			}
			if rr.Max.Completed > 0 {
				rr.CPUus = float64(cpuTicks) * 1e6 / float64(cfg.ClkTck) / float64(rr.Max.Completed)
			}
			var fixedRetries int
			rr.Fixed, _, fixedRetries, err = h.measure("row "+r.id, rowProcs, fmt.Sprintf("fixed-row%s-r%d", r.id, round),
				dnsperfArgs(r.port, queries, cfg.Duration, cfg.Clients, cfg.Outstanding, res.FixedQPS))
			if err != nil {
				return nil, err
			}
			rr.Retries += fixedRetries
			secs := time.Since(t0).Seconds()
			after, err := h.targetCount(metrics, r.targetLabel)
			if err != nil {
				return nil, err
			}
			if r.targetLabel != "" {
				rr.Upstream = after - before
				upLoad[r.id] += rr.Upstream
				loadQueries[r.id] += rr.Max.Completed + rr.Fixed.Completed
				loadSeconds[r.id] += secs
			}
			runs[r.id] = append(runs[r.id], rr)
			h.logf("round %d row %-2s max %6.0f QPS (lost %d, %.1f us CPU/q, others %2.0f%% of server core, dnsperf %3.0f%% of a core)  at %d QPS: p50 %.3f p99 %.3f p99.9 %.3f ms (lost %d, others %2.0f%%)",
				round, r.id, rr.Max.QPS, rr.Max.Lost, rr.CPUus, 100*rr.Max.Foreign, 100*rr.Max.LoadCPU, res.FixedQPS,
				rr.Fixed.P50Ms, rr.Fixed.P99Ms, rr.Fixed.P999Ms, rr.Fixed.Lost, 100*rr.Fixed.Foreign)
		}
	}

	// Upstream queries of the flattening rows over the whole phase.
	counts, err := requestCounts(h.ctx, metrics)
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		if r.targetLabel == "" {
			continue
		}
		res.Upstream = append(res.Upstream, upstream{
			Row: r.id, DuringLoad: upLoad[r.id], LoadQueries: loadQueries[r.id], LoadSeconds: loadSeconds[r.id],
			Total: sum(counts[r.targetLabel]), ByType: counts[r.targetLabel], Seconds: time.Since(r.server.started).Seconds(),
			Interval: float64(cfg.TTL) * 0.9,
		})
	}

	// Medians and ratios.
	qps := func(id string, round int) float64 { return runs[id][round].Max.QPS }
	for _, r := range rows {
		rs := runs[r.id]
		out := rowResult{ID: r.id, Label: r.label, Runs: rs, Answers: answers[r.id]}
		var q, p50, p99, p999, cpu, foreign, load, v0, v3, v3b, v4 []float64
		for i, x := range rs {
			q = append(q, x.Max.QPS)
			p50 = append(p50, x.Fixed.P50Ms)
			p99 = append(p99, x.Fixed.P99Ms)
			p999 = append(p999, x.Fixed.P999Ms)
			cpu = append(cpu, x.CPUus)
			foreign = append(foreign, x.Max.Foreign)
			load = append(load, x.Max.LoadCPU)
			out.Retries += x.Retries
			out.Lost += x.Max.Lost
			out.FixLost += x.Fixed.Lost
			out.RespSize = x.Max.RespSize
			v0 = append(v0, x.Max.QPS/qps("0", i))
			v3 = append(v3, x.Max.QPS/qps("3", i))
			v3b = append(v3b, x.Max.QPS/qps("3b", i))
			v4 = append(v4, x.Max.QPS/qps("4", i))
		}
		out.QPS, out.P50, out.P99, out.P999 = median(q), median(p50), median(p99), median(p999)
		out.CPUus, out.Foreign, out.LoadBusy = median(cpu), median(foreign), median(load)
		out.Vs0, out.Vs3, out.Vs3b, out.Vs4 = median(v0), median(v3), median(v3b), median(v4)
		res.Rows = append(res.Rows, out)
	}
	for i := range cfg.Rounds {
		f := qps("1", i)
		res.FlatVs0 = append(res.FlatVs0, f/qps("0", i))
		res.FlatVs3b = append(res.FlatVs3b, f/qps("3b", i))
		res.FlatVs3 = append(res.FlatVs3, f/qps("3", i))
		res.FlatVsPDNS = append(res.FlatVsPDNS, f/max(qps("4", i), qps("5", i)))
	}
	return res, nil
}

// targetCount is the number of queries the target listener labelled server has answered (0
// when the row has none).
func (h *harness) targetCount(metricsPort int, server string) (int, error) {
	if server == "" {
		return 0, nil
	}
	c, err := requestCounts(h.ctx, metricsPort)
	if err != nil {
		return 0, err
	}
	return sum(c[server]), nil
}

func ticks(ps []*proc) uint64 {
	var t uint64
	for _, p := range ps {
		t += cpuTicks(p.pid)
	}
	return t
}

// roundDown keeps two significant digits: 23456 -> 23000.
func roundDown(v float64) int {
	if v < 100 {
		return max(int(v), 1)
	}
	mag := math.Pow(10, math.Floor(math.Log10(v))-1)
	return int(math.Floor(v/mag) * mag)
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

func mkdir(d string) error { return os.MkdirAll(d, 0o755) }

// measure runs dnsperf against a server (id names it in the log) and accounts for the cores: the
// CPU ticks the row's processes used, the share of the server core that other processes took, and
// the share of the load core that processes other than dnsperf and the harness took. The machine
// is shared, so each run first waits (up to cfg.QuietWait) for a moment when neither core is
// busy, and a run during which others took more than cfg.ForeignMax of either core is repeated,
// up to cfg.Retries times (the last try counts whatever happened). The waits and repeats of a
// whole run are bounded by cfg.ExtraBudget.
func (h *harness) measure(id string, rowProcs []*proc, raw string, args []string) (perf, uint64, int, error) {
	for attempt := 0; ; attempt++ {
		if err := h.waitQuiet(); err != nil {
			return perf{}, 0, attempt, err
		}
		cpu0 := ticks(rowProcs)
		self0 := cpuTicks(os.Getpid())
		busy0, total0 := coreTicks(h.cfg.ServerCPU)
		lbusy0, ltotal0 := coreTicks(h.cfg.LoadCPU)
		p, err := runDnsperf(h.ctx, h.cfg.LoadCPU, filepath.Join(h.raw, fmt.Sprintf("%s-try%d.txt", raw, attempt+1)), args)
		if err != nil {
			return p, 0, attempt, err
		}
		cpu1 := ticks(rowProcs)
		self1 := cpuTicks(os.Getpid())
		busy1, total1 := coreTicks(h.cfg.ServerCPU)
		lbusy1, ltotal1 := coreTicks(h.cfg.LoadCPU)
		if total1 > total0 {
			p.Foreign = max(0, float64(busy1-busy0)-float64(cpu1-cpu0)) / float64(total1-total0)
		}
		if ltotal1 > ltotal0 {
			// Ours on the load core: dnsperf, and the harness reading its output.
			mine := p.CPUSeconds*float64(h.cfg.ClkTck) + float64(self1-self0)
			p.LoadForeign = max(0, float64(lbusy1-lbusy0)-mine) / float64(ltotal1-ltotal0)
		}
		if (p.Foreign <= h.cfg.ForeignMax && p.LoadForeign <= h.cfg.ForeignMax) || attempt >= h.cfg.Retries || h.extra > h.cfg.ExtraBudget {
			return p, cpu1 - cpu0, attempt, nil
		}
		h.extra += time.Duration(h.cfg.Duration) * time.Second
		h.logf("%s: other processes took %.0f%% of the server core and %.0f%% of the load core during %s; running it again",
			id, 100*p.Foreign, 100*p.LoadForeign, raw)
	}
}

// waitQuiet waits until both cores were less than cfg.ForeignMax busy over 500 ms (between runs
// the servers are idle, so what is busy is someone else), or cfg.QuietWait has passed.
func (h *harness) waitQuiet() error {
	start := time.Now()
	defer func() { h.extra += time.Since(start) }()
	deadline := start.Add(h.cfg.QuietWait)
	for {
		s0, st0 := coreTicks(h.cfg.ServerCPU)
		l0, lt0 := coreTicks(h.cfg.LoadCPU)
		if err := h.sleep(500 * time.Millisecond); err != nil {
			return err
		}
		s1, st1 := coreTicks(h.cfg.ServerCPU)
		l1, lt1 := coreTicks(h.cfg.LoadCPU)
		quiet := st1 > st0 && lt1 > lt0 &&
			float64(s1-s0)/float64(st1-st0) <= h.cfg.ForeignMax && float64(l1-l0)/float64(lt1-lt0) <= h.cfg.ForeignMax
		if quiet || time.Now().After(deadline) || h.extra+time.Since(start) > h.cfg.ExtraBudget {
			return nil
		}
	}
}
