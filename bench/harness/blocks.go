package main

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// blockTargets is how many target names (sM.agency.test, M < 256, each with A and AAAA at the
// fake target) the blocks' aliases are spread over.
const blockTargets = 256

// roundDone is how flatten logs the end of the startup round of every block started together
// (startup.go, awaitRound); the harness waits for it when the binary holds the text.
const roundDone = "startup round done"

// blocksServer is what one of the two servers of the many-blocks case measured.
type blocksServer struct {
	// From exec to the first answer of the listener (a client zone's SOA), to the ready plugin's
	// 200, to flatten's log line that every block's startup round is done (with the line), and
	// to both (StartupSeconds; the time of the timeout when not Ready).
	ListenSeconds  float64 `json:"listen_s"`
	ReadySeconds   float64 `json:"ready_200_s"`
	RoundSeconds   float64 `json:"round_logged_s,omitempty"`
	RoundLog       string  `json:"round_log,omitempty"`
	StartupSeconds float64 `json:"startup_s"`
	Ready          bool    `json:"ready"`
	// Medians over the starts: VmRSS when ready (or at the timeout), VmRSS once it has
	// settled, VmHWM then, and the live heap after a forced collection; each start's figures are
	// in Starts. VmRSS and VmHWM after the load, which runs on the last start.
	RSSReadyKB   int           `json:"rss_ready_kb"`
	RSSSettledKB int           `json:"rss_settled_kb"`
	HWMSettledKB int           `json:"hwm_settled_kb"`
	LiveKB       int           `json:"live_heap_kb"`
	SettleSecs   float64       `json:"settle_s"`
	Starts       []blocksStart `json:"starts"`
	RSSAfterKB   int           `json:"rss_after_kb"`
	HWMAfterKB   int           `json:"hwm_after_kb"`
	AnonAfterKB  int           `json:"rss_anon_after_kb"`
	FileAfterKB  int           `json:"rss_file_after_kb"`
	Runs         []perf        `json:"runs"`
	QPS          float64       `json:"qps"` // median of the max-QPS runs
	Retries      int           `json:"retries"`
	Answers      []blockAns    `json:"answers"` // spot checks
}

// blocksStart is the memory of one start of a server, settled after its startup.
type blocksStart struct {
	RSSReadyKB   int     `json:"rss_ready_kb"`
	RSSSettledKB int     `json:"rss_settled_kb"`
	HWMSettledKB int     `json:"hwm_settled_kb"`
	LiveKB       int     `json:"live_heap_kb"` // HeapAlloc after runtime.GC (pprof heap?gc=1); 0 if not read
	SettleSecs   float64 `json:"settle_s"`
}

// summarize sets s's memory figures to the medians of its starts.
func (s *blocksServer) summarize() {
	if len(s.Starts) == 0 {
		return
	}
	of := func(f func(blocksStart) int) int {
		var v []float64
		for _, st := range s.Starts {
			v = append(v, float64(f(st)))
		}
		return int(median(v))
	}
	s.RSSReadyKB = of(func(st blocksStart) int { return st.RSSReadyKB })
	s.RSSSettledKB = of(func(st blocksStart) int { return st.RSSSettledKB })
	s.HWMSettledKB = of(func(st blocksStart) int { return st.HWMSettledKB })
	s.LiveKB = of(func(st blocksStart) int { return st.LiveKB })
	s.SettleSecs = s.Starts[len(s.Starts)-1].SettleSecs
}

// blockAns is one spot check: a query and the answer section it got.
type blockAns struct {
	Query  string   `json:"query"`
	Answer []string `json:"answer"`
}

// blocksResult is the many-server-blocks case: BLOCKS client zones on one listener, each with
// its own flatten (two aliases), against the same Corefile without flatten.
type blocksResult struct {
	Blocks         int          `json:"blocks"`
	Targets        int          `json:"target_names"`
	Sample         int          `json:"sample_blocks"` // blocks in the dnsperf file (4 queries each)
	Rounds         int          `json:"rounds"`
	Starts         int          `json:"starts"` // of each server, in turn, for the memory
	TimeoutSeconds float64      `json:"timeout_s"`
	Base           blocksServer `json:"baseline"`
	Flat           blocksServer `json:"flatten"`
	// The fake target's counters from the flatten server's exec to its readiness (or the
	// timeout), at its last start: questions, first to last, the most in any 1 s window (10 ms
	// buckets; the most of any start), distinct names, the most questions for one name and type.
	Upstream       int     `json:"upstream_startup"`
	SpanSeconds    float64 `json:"target_span_s"`
	MaxPerSecond   int     `json:"max_upstream_per_1s"`
	Names          int     `json:"distinct_names"`
	MaxPerNameType int     `json:"max_per_name_type"`
	UpstreamLoad   int     `json:"upstream_during_load"`
	// Error is set when the flatten server was not ready within the timeout (or its answers
	// were wrong); what was measured until then is kept.
	Error string `json:"error,omitempty"`
}

// perBlock is the memory above the baseline per block, in bytes.
func (g *blocksResult) perBlock(flatKB, baseKB int) float64 {
	if g.Blocks == 0 {
		return 0
	}
	return float64(flatKB-baseKB) * 1024 / float64(g.Blocks)
}

// blocksGoalMB is the target for memory above the baseline: 24 MB for 10,000 blocks, scaled by
// the number of blocks.
func blocksGoalMB(blocks int) float64 { return 24 * float64(blocks) / 10000 }

func (h *harness) blocks() (*blocksResult, error) {
	cfg := h.cfg
	n := cfg.Blocks
	if n < 1 {
		return nil, fmt.Errorf("BLOCKS=%d: need at least 1", n)
	}
	limit := cfg.BlocksTimeout
	res := &blocksResult{Blocks: n, Targets: min(blockTargets, n), Rounds: cfg.BlocksRounds, Starts: cfg.BlocksStarts, TimeoutSeconds: limit.Seconds()}
	zoneName := func(i int) string { return fmt.Sprintf("client%d.test.", i) }
	apexT := func(i int) int { return i % res.Targets }
	wwwT := func(i int) int { return (i + res.Targets/2) % res.Targets }
	tname := func(m int) string { return fmt.Sprintf("s%d.agency.test.", m) }

	tport, err := h.ports.next()
	if err != nil {
		return nil, err
	}
	target, err := h.procs.start("target-blocks", cfg.ServerCPU, nil, cfg.Target,
		"-listen", fmt.Sprintf("127.0.0.1:%d", tport), "-synth-ttl", "3600")
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

	// One zone file for every zone: relative names, so *file* reads it with the block's origin.
	zone, _ := write(h.dir, "db.blocks", "@ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300\n@ 3600 IN NS ns1\nns1 3600 IN A 192.0.2.53\n")
	zone = abs(zone)
	ports, err := h.ports.take(4)
	if err != nil {
		return nil, err
	}
	port, readyPort, metricsPort, pprofPort := ports[0], ports[1], ports[2], ports[3]
	// The ready plugin reports the plugins of the blocks it is in, so every block has it (all on
	// one address). CoreDNS 1.15 keeps one Readiness per plugin name, though (the last block's
	// flatten), so the harness also waits for flatten's log line that every block's startup round
	// is done. The extra block holds prometheus, and pprof, whose heap profile gives the live heap.
	corefile := func(flatten bool) string {
		var b strings.Builder
		fmt.Fprintf(&b, "ctl.test:%d {\n    bind 127.0.0.1\n    ready 127.0.0.1:%d\n    prometheus 127.0.0.1:%d\n    pprof 127.0.0.1:%d\n    file %s ctl.test\n}\n",
			port, readyPort, metricsPort, pprofPort, zone)
		for i := range n {
			z := strings.TrimSuffix(zoneName(i), ".")
			fmt.Fprintf(&b, "%s:%d {\n    bind 127.0.0.1\n    ready 127.0.0.1:%d\n", z, port, readyPort)
			if flatten {
				fmt.Fprintf(&b, "    flatten {\n        alias @ %s\n        alias www %s\n        upstream 127.0.0.1:%d\n    }\n", tname(apexT(i)), tname(wwwT(i)), tport)
			}
			fmt.Fprintf(&b, "    file %s %s\n}\n", zone, z)
		}
		return b.String()
	}

	// dnsperf file: A and AAAA for the apex and www of a random sample of the blocks.
	rng := rand.New(rand.NewPCG(3, 4))
	sample := min(cfg.Sample, n)
	res.Sample = sample
	var qb strings.Builder
	for _, i := range rng.Perm(n)[:sample] {
		z := strings.TrimSuffix(zoneName(i), ".")
		fmt.Fprintf(&qb, "%[1]s A\n%[1]s AAAA\nwww.%[1]s A\nwww.%[1]s AAAA\n", z)
	}
	queries, _ := write(h.dir, "queries.blocks", qb.String())
	checks := []int{0, n - 1}
	for range 3 {
		checks = append(checks, rng.IntN(n))
	}
	env := []string{"GOMAXPROCS=1"}
	bin, err := os.ReadFile(cfg.CoreDNS)
	if err != nil {
		return nil, err
	}
	logsRound := bytes.Contains(bin, []byte(roundDone))
	bin = nil
	if !logsRound {
		h.logf("this build of flatten does not log %q: startup is until the ready plugin's 200 only", roundDone)
	}

	// The servers one after the other, the baseline first (the same Corefile without flatten), and
	// again: where Go's collector happens to run during the startup moves one start's VmRSS by
	// ±15 MB, so the memory is the median over the starts. The load runs on the last start.
starts:
	for k := 1; k <= cfg.BlocksStarts; k++ {
		last := k == cfg.BlocksStarts
		for _, flat := range []bool{false, true} {
			name, label := "coredns-blocks-base", "without flatten"
			s := &res.Base
			if flat {
				name, label, s = "coredns-blocks-flatten", "with flatten", &res.Flat
			}
			s.ListenSeconds, s.ReadySeconds, s.RoundSeconds, s.RoundLog, s.Ready = 0, 0, 0, "", false
			conf, _ := write(h.dir, "Corefile."+strings.TrimPrefix(name, "coredns-"), corefile(flat))
			if err := targetReset(tport); err != nil {
				return nil, err
			}
			h.logf("start %d of %d: CoreDNS with %d server blocks %s (timeout %v)", k, cfg.BlocksStarts, n, label, limit)
			p, err := h.procs.start(name, cfg.ServerCPU, env, cfg.CoreDNS, "-conf", conf)
			if err != nil {
				return nil, err
			}
			waitErr := h.waitStartup(p, port, zoneName(0), readyPort, flat && logsRound, limit, s)
			if h.ctx.Err() != nil {
				return nil, h.ctx.Err()
			}
			if !p.alive() {
				return nil, fmt.Errorf("CoreDNS %s exited during startup (log %s): %s", label, p.log, tail(p.log, 5))
			}
			max1s := 0
			if flat {
				st, err := targetStats(tport)
				if err != nil {
					return nil, err
				}
				res.Upstream, max1s = atoi(st["total"]), atoi(st["max1s"])
				res.MaxPerSecond = max(res.MaxPerSecond, max1s)
				res.SpanSeconds = float64(atoi(st["last_ms"])-atoi(st["first_ms"])) / 1000
				res.Names = atoi(st["synthetic_names"])
				res.MaxPerNameType = atoi(st["synthetic_max_per_name_type"])
			}
			if waitErr != nil {
				// Not ready in time: keep what was measured, say so, and stop this server.
				hwm := procStatus(p.pid, "VmHWM")
				s.Starts = append(s.Starts, blocksStart{RSSReadyKB: s.RSSReadyKB, RSSSettledKB: s.RSSReadyKB, HWMSettledKB: hwm})
				res.Error = fmt.Sprintf("CoreDNS %s: %v (log %s)", label, waitErr, p.log)
				h.logf("ERROR: %s", res.Error)
				if flat {
					h.logf("startup so far: %d upstream queries over %.1f s, at most %d in 1 s; VmRSS %d kB, VmHWM %d kB",
						res.Upstream, res.SpanSeconds, res.MaxPerSecond, s.RSSReadyKB, hwm)
				}
				h.procs.stop(p)
				if !flat {
					return nil, fmt.Errorf("%s", res.Error) // without flatten there is nothing to compare with
				}
				break starts
			}
			mem := h.settle(p)
			if err := h.ctx.Err(); err != nil {
				return nil, err
			}
			mem.RSSReadyKB = s.RSSReadyKB
			if live, err := liveHeap(pprofPort); err == nil {
				mem.LiveKB = live
			} else {
				h.logf("live heap not read: %v", err)
			}
			s.Starts = append(s.Starts, mem)
			round := ""
			if s.RoundSeconds > 0 {
				round = fmt.Sprintf(", every block's startup round logged done after %.1f s", s.RoundSeconds)
			}
			h.logf("%s: listening after %.1f s, ready plugin 200 after %.1f s%s; VmRSS %d kB when ready, %d kB settled (%.0f s), VmHWM %d kB; live heap %d kB",
				label, s.ListenSeconds, s.ReadySeconds, round, mem.RSSReadyKB, mem.RSSSettledKB, mem.SettleSecs, mem.HWMSettledKB, mem.LiveKB)
			if flat {
				h.logf("startup: %d upstream queries over %.1f s, at most %d in 1 s (%d names)", res.Upstream, res.SpanSeconds, max1s, res.Names)
			}
			if !last {
				h.procs.stop(p)
				continue
			}

			// Spot checks: the baseline's apex has no addresses (NOERROR, no answer) and www does
			// not exist; with flatten each answers with its own target's address.
			for _, i := range checks {
				for _, q := range []struct {
					name string
					m    int
				}{{zoneName(i), apexT(i)}, {"www." + zoneName(i), wwwT(i)}} {
					var want []string
					if flat {
						want = []string{fmt.Sprintf("%s A 198.51.100.%d", q.name, q.m%256)}
					}
					got, err := h.waitAnswer(port, q.name, dns.TypeA, want, 5*time.Second)
					if err != nil {
						res.Error = fmt.Sprintf("CoreDNS %s: spot check: %v", label, err)
						h.procs.stop(p)
						break starts
					}
					s.Answers = append(s.Answers, blockAns{Query: q.name + " A", Answer: got})
				}
			}

			if err := targetReset(tport); err != nil {
				return nil, err
			}
			var qps []float64
			for round := 1; round <= cfg.BlocksRounds; round++ {
				r, _, retries, err := h.measure(fmt.Sprintf("%d blocks %s", n, label), []*proc{p, target}, fmt.Sprintf("blocks-%s-r%d", map[bool]string{false: "base", true: "flatten"}[flat], round),
					dnsperfArgs(port, queries, cfg.Duration, cfg.Clients, cfg.Outstanding, 0))
				if err != nil {
					return nil, err
				}
				s.Retries += retries
				s.Runs = append(s.Runs, r)
				qps = append(qps, r.QPS)
				h.logf("round %d: %d blocks %s: %.0f QPS (lost %d, NOERROR %d of %d, others %.0f%% of server core)",
					round, n, label, r.QPS, r.Lost, r.NoError, r.Completed, 100*r.Foreign)
			}
			s.QPS = median(qps)
			s.RSSAfterKB, s.HWMAfterKB = procStatus(p.pid, "VmRSS"), procStatus(p.pid, "VmHWM")
			s.AnonAfterKB, s.FileAfterKB = procStatus(p.pid, "RssAnon"), procStatus(p.pid, "RssFile")
			if flat {
				if st, err := targetStats(tport); err == nil {
					res.UpstreamLoad = atoi(st["total"])
				}
				saveMetrics(metricsPort, filepath.Join(h.raw, "blocks-metrics.txt"))
			}
			h.procs.stop(p)
		}
	}
	res.Base.summarize()
	res.Flat.summarize()
	h.procs.stop(target)
	return res, nil
}

// waitStartup waits until the server answers a SOA query for zone (the listener is up), its ready
// plugin answers 200 and, with round, its log holds flatten's line that every block's startup
// round is done, at most limit after the exec. It records the times from the exec and VmRSS at
// the end (or at the timeout).
func (h *harness) waitStartup(p *proc, port int, zone string, readyPort int, round bool, limit time.Duration, s *blocksServer) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/ready", readyPort)
	client := &http.Client{Timeout: time.Second}
	lastLog := time.Now()
	body := ""
	logf, err := os.Open(p.log)
	if err != nil {
		return err
	}
	defer logf.Close()
	var logBuf []byte
	for {
		if s.ListenSeconds == 0 {
			if r, err := ask(port, zone, dns.TypeSOA, 200*time.Millisecond); err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
				s.ListenSeconds = time.Since(p.started).Seconds()
			}
		}
		if round && s.RoundSeconds == 0 {
			// The log is read as it grows; only the unfinished last line is kept.
			chunk, _ := io.ReadAll(logf)
			logBuf = append(logBuf, chunk...)
			for {
				i := bytes.IndexByte(logBuf, '\n')
				if i < 0 {
					break
				}
				line := string(logBuf[:i])
				logBuf = logBuf[i+1:]
				if j := strings.Index(line, roundDone); j >= 0 {
					s.RoundSeconds, s.RoundLog = time.Since(p.started).Seconds(), line[j:]
					break
				}
			}
		}
		if s.ReadySeconds == 0 {
			if resp, err := client.Get(url); err == nil {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					s.ReadySeconds = time.Since(p.started).Seconds()
				}
				body = strings.Join(strings.Fields(string(b)), " ")
			}
		}
		if s.ListenSeconds > 0 && s.ReadySeconds > 0 && (!round || s.RoundSeconds > 0) {
			s.StartupSeconds = max(s.ReadySeconds, s.RoundSeconds)
			s.Ready = true
			s.RSSReadyKB = procStatus(p.pid, "VmRSS")
			return nil
		}
		if !p.alive() {
			return fmt.Errorf("exited before it was ready")
		}
		if time.Since(p.started) > limit {
			s.StartupSeconds = time.Since(p.started).Seconds()
			s.RSSReadyKB = procStatus(p.pid, "VmRSS")
			var what []string
			if s.ListenSeconds > 0 {
				what = append(what, fmt.Sprintf("listening after %.1f s", s.ListenSeconds))
			} else {
				what = append(what, "the listener did not answer")
			}
			if s.ReadySeconds > 0 {
				what = append(what, fmt.Sprintf("ready plugin 200 after %.1f s", s.ReadySeconds))
			} else if body != "" {
				what = append(what, fmt.Sprintf("/ready said %q", body))
			}
			if round && s.RoundSeconds == 0 {
				what = append(what, fmt.Sprintf("no %q in the log", roundDone))
			}
			return fmt.Errorf("not ready %v after the exec (BLOCKS_TIMEOUT; %s)", limit, strings.Join(what, "; "))
		}
		if time.Since(lastLog) > 30*time.Second {
			lastLog = time.Now()
			h.logf("still waiting: %.0f s since the exec, VmRSS %d kB", time.Since(p.started).Seconds(), procStatus(p.pid, "VmRSS"))
		}
		if err := h.sleep(20 * time.Millisecond); err != nil {
			return err
		}
	}
}

// settle waits until VmRSS has changed by less than 1% (or 256 kB) in each of two seconds in a
// row, at most 30 s, and returns it and VmHWM.
func (h *harness) settle(p *proc) blocksStart {
	start := time.Now()
	prev := procStatus(p.pid, "VmRSS")
	for stable := 0; stable < 2 && time.Since(start) < 30*time.Second; {
		if h.sleep(time.Second) != nil {
			break
		}
		cur := procStatus(p.pid, "VmRSS")
		d := cur - prev
		prev = cur
		if d < 0 {
			d = -d
		}
		if d < 256 || float64(d) < 0.01*float64(cur) {
			stable++
		} else {
			stable = 0
		}
	}
	return blocksStart{SettleSecs: time.Since(start).Seconds(), RSSSettledKB: prev, HWMSettledKB: procStatus(p.pid, "VmHWM")}
}

// liveHeap is the server's live heap in kB: HeapAlloc after a collection, from the heap profile
// of the pprof plugin at port (gc=1 collects first; debug=1 appends runtime.MemStats).
func liveHeap(port int) (int, error) {
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap?gc=1&debug=1", port))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	const key = "\n# HeapAlloc = "
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return 0, fmt.Errorf("no HeapAlloc in the heap profile (HTTP %d)", resp.StatusCode)
	}
	v := b[i+len(key):]
	if j := bytes.IndexByte(v, '\n'); j >= 0 {
		v = v[:j]
	}
	n, err := strconv.Atoi(string(v))
	if err != nil {
		return 0, fmt.Errorf("HeapAlloc %q: %v", v, err)
	}
	return n / 1024, nil
}

// saveMetrics keeps the prometheus endpoint's text in path (for reading later; best effort).
func saveMetrics(port int, path string) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if f, err := os.Create(path); err == nil {
		io.Copy(f, resp.Body)
		f.Close()
	}
}

// tail is the last n lines of a file, on one line.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	l := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(l[max(0, len(l)-n):], " | ")
}
