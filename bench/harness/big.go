package main

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

type bigRun struct {
	Round int     `json:"round"`
	Big   perf    `json:"big"`
	One   perf    `json:"one"`
	Ratio float64 `json:"ratio"`
}

// bigResult is the many-aliases case.
type bigResult struct {
	Aliases     int `json:"aliases"`
	RefreshRate int `json:"refresh_rate"` // written to the Corefile; 0: the plugin's default
	// From exec to the ready plugin's 200 (every alias resolved or tried), and from the target's
	// first upstream query to its last.
	StartupSeconds float64 `json:"startup_s"`
	SpanSeconds    float64 `json:"target_span_s"`
	Upstream       int     `json:"upstream_startup"`
	MaxPerSecond   int     `json:"max_upstream_per_1s"`
	Names          int     `json:"distinct_names"`
	MaxPerNameType int     `json:"max_per_name_type"`
	RSSReadyKB     int     `json:"rss_ready_kb"`
	RSSAfterKB     int     `json:"rss_after_kb"`
	HWMKB          int     `json:"hwm_kb"`
	OneRSSKB       int     `json:"one_rss_kb"`
	// What VmRSS after the load is made of: pages of the binary (file-backed, shared with the
	// page cache) and anonymous memory (Go's heap, stacks, runtime), for both servers.
	FileAfterKB    int      `json:"rss_file_after_kb"`
	AnonAfterKB    int      `json:"rss_anon_after_kb"`
	OneFileAfterKB int      `json:"one_rss_file_after_kb"`
	OneAnonAfterKB int      `json:"one_rss_anon_after_kb"`
	Sample         int      `json:"sample_names"`
	Runs           []bigRun `json:"runs"`
	BigQPS         float64  `json:"big_qps"`
	OneQPS         float64  `json:"one_qps"`
	Ratio          float64  `json:"ratio"` // median of per-round ratios
	UpstreamLoad   int      `json:"upstream_during_load"`
	Retries        int      `json:"retries"`
}

func (h *harness) big() (*bigResult, error) {
	cfg := h.cfg
	n := cfg.Aliases
	width := max(5, len(strconv.Itoa(n-1)))
	aname := func(i int) string { return fmt.Sprintf("a%0*d.example.test.", width, i) }
	tname := func(i int) string { return fmt.Sprintf("t%0*d.agency.test.", width, i) }
	res := &bigResult{Aliases: n, RefreshRate: cfg.RefreshRate}

	tport, err := h.ports.next()
	if err != nil {
		return nil, err
	}
	target, err := h.procs.start("target-big", cfg.ServerCPU, nil, cfg.Target,
		"-listen", fmt.Sprintf("127.0.0.1:%d", tport), "-delay", cfg.BigDelay, "-chase", "-synth-ttl", "3600")
	if err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := targetStats(tport); err == nil {
			break
		} else if time.Now().After(deadline) {
			return nil, err
		}
		if err := h.sleep(20 * time.Millisecond); err != nil {
			return nil, err
		}
	}

	zone, _ := write(h.dir, "db.example.test.big", exampleZone(""))
	zone = abs(zone)
	corefile := func(port, readyPort int, aliases int) string {
		var b strings.Builder
		fmt.Fprintf(&b, "example.test:%d {\n    bind 127.0.0.1\n    ready 127.0.0.1:%d\n    flatten {\n", port, readyPort)
		for i := range aliases {
			fmt.Fprintf(&b, "        alias %s %s\n", aname(i), tname(i))
		}
		fmt.Fprintf(&b, "        upstream 127.0.0.1:%d\n", tport)
		if cfg.RefreshRate > 0 {
			fmt.Fprintf(&b, "        refresh_rate %d\n", cfg.RefreshRate)
		}
		fmt.Fprintf(&b, "    }\n    file %s\n}\n", zone)
		return b.String()
	}
	ports, err := h.ports.take(4)
	if err != nil {
		return nil, err
	}
	onePort, oneReady, bigPort, bigReady := ports[0], ports[1], ports[2], ports[3]
	env := []string{"GOMAXPROCS=1"}

	// The one-alias server first, so that its startup is not counted with the big one's.
	oneConf, _ := write(h.dir, "Corefile.one", corefile(onePort, oneReady, 1))
	one, err := h.procs.start("coredns-one", cfg.ServerCPU, env, cfg.CoreDNS, "-conf", oneConf)
	if err != nil {
		return nil, err
	}
	if _, err := h.waitReady(oneReady, time.Minute); err != nil {
		return nil, fmt.Errorf("one-alias server (log %s): %w", one.log, err)
	}
	if err := targetReset(tport); err != nil {
		return nil, err
	}

	bigConf, _ := write(h.dir, "Corefile.big", corefile(bigPort, bigReady, n))
	h.logf("starting CoreDNS with %d aliases (refresh_rate %s)", n, rateText(cfg.RefreshRate))
	big, err := h.procs.start("coredns-big", cfg.ServerCPU, env, cfg.CoreDNS, "-conf", bigConf)
	if err != nil {
		return nil, err
	}
	took, err := h.waitReady(bigReady, 30*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("big server (log %s): %w", big.log, err)
	}
	res.StartupSeconds = took.Seconds()
	st, err := targetStats(tport)
	if err != nil {
		return nil, err
	}
	res.Upstream = atoi(st["total"])
	res.MaxPerSecond = atoi(st["max1s"])
	res.SpanSeconds = float64(atoi(st["last_ms"])-atoi(st["first_ms"])) / 1000
	res.Names = atoi(st["synthetic_names"])
	res.MaxPerNameType = atoi(st["synthetic_max_per_name_type"])
	res.RSSReadyKB = procStatus(big.pid, "VmRSS")
	res.OneRSSKB = procStatus(one.pid, "VmRSS")
	h.logf("ready after %.1f s: %d upstream queries over %.1f s, at most %d in 1 s; RSS %d kB",
		res.StartupSeconds, res.Upstream, res.SpanSeconds, res.MaxPerSecond, res.RSSReadyKB)

	// Spot checks: each answers with its own target's address.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		i := rng.IntN(n)
		want := []string{fmt.Sprintf("%s A 198.51.100.%d", aname(i), i%256)}
		if _, err := h.waitAnswer(bigPort, aname(i), dns.TypeA, want, 5*time.Second); err != nil {
			return nil, err
		}
	}

	// dnsperf files: a random sample of the names (A and AAAA each), and the one alias.
	sample := min(cfg.Sample, n)
	res.Sample = sample
	idx := rng.Perm(n)[:sample]
	var b strings.Builder
	for _, i := range idx {
		name := strings.TrimSuffix(aname(i), ".")
		b.WriteString(name + " A\n" + name + " AAAA\n")
	}
	bigFile, _ := write(h.dir, "queries.big", b.String())
	oneName := strings.TrimSuffix(aname(0), ".")
	oneFile, _ := write(h.dir, "queries.one", oneName+" A\n"+oneName+" AAAA\n")

	if err := targetReset(tport); err != nil {
		return nil, err
	}
	var ratios, bq, oq []float64
	for round := 1; round <= cfg.Rounds; round++ {
		r := bigRun{Round: round}
		var retries int
		r.Big, _, retries, err = h.measure(fmt.Sprintf("%d aliases", n), []*proc{big, target}, fmt.Sprintf("big-r%d", round),
			dnsperfArgs(bigPort, bigFile, cfg.Duration, cfg.Clients, cfg.Outstanding, 0))
		if err != nil {
			return nil, err
		}
		res.Retries += retries
		r.One, _, retries, err = h.measure("one alias", []*proc{one, target}, fmt.Sprintf("one-r%d", round),
			dnsperfArgs(onePort, oneFile, cfg.Duration, cfg.Clients, cfg.Outstanding, 0))
		if err != nil {
			return nil, err
		}
		res.Retries += retries
		r.Ratio = r.Big.QPS / r.One.QPS
		res.Runs = append(res.Runs, r)
		ratios, bq, oq = append(ratios, r.Ratio), append(bq, r.Big.QPS), append(oq, r.One.QPS)
		h.logf("round %d: %d aliases %.0f QPS (lost %d, NOERROR %d of %d, others %.0f%% of server core), one alias %.0f QPS (others %.0f%%): ratio %.3f",
			round, n, r.Big.QPS, r.Big.Lost, r.Big.NoError, r.Big.Completed, 100*r.Big.Foreign, r.One.QPS, 100*r.One.Foreign, r.Ratio)
	}
	res.BigQPS, res.OneQPS, res.Ratio = median(bq), median(oq), median(ratios)
	res.RSSAfterKB = procStatus(big.pid, "VmRSS")
	res.HWMKB = procStatus(big.pid, "VmHWM")
	res.FileAfterKB, res.AnonAfterKB = procStatus(big.pid, "RssFile"), procStatus(big.pid, "RssAnon")
	res.OneFileAfterKB, res.OneAnonAfterKB = procStatus(one.pid, "RssFile"), procStatus(one.pid, "RssAnon")
	if st, err := targetStats(tport); err == nil {
		res.UpstreamLoad = atoi(st["total"])
	}
	h.procs.stop(big)
	h.procs.stop(one)
	h.procs.stop(target)
	return res, nil
}

func rateText(r int) string {
	if r == 0 {
		return "not set: the plugin's default"
	}
	return strconv.Itoa(r) + "/s"
}

// waitReady polls the ready plugin until it answers 200 and returns how long that took from the
// call.
func (h *harness) waitReady(port int, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	url := fmt.Sprintf("http://127.0.0.1:%d/ready", port)
	client := &http.Client{Timeout: time.Second}
	for time.Since(start) < limit {
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(start), nil
			}
		}
		if err := h.sleep(20 * time.Millisecond); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("not ready after %v", limit)
}
