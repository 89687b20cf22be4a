package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// render writes the results as markdown: the side-by-side table first, then the targets of the
// issue with what was measured, then the other cases and how everything was measured.
func render(r *results) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	c := r.Config

	p("# flatten benchmark results\n\n")
	p("Measured %s (%s of wall time) by `bench/run.sh`", r.Started.Format("2006-01-02 15:04 UTC"), r.Finished.Sub(r.Started).Round(1e9))
	if c.Quick {
		p(" in QUICK mode (a check of the script, not a measurement to quote)")
	}
	p(" (reproduce: `bench/run.sh`; its header explains every setting)")
	p(". Settings: ROUNDS=%d DURATION=%d s per run, dnsperf -c %d -q %d, TTL %d s, ALIASES=%d, RATE=%s, BLOCKS=%d.\n\n",
		c.Rounds, c.Duration, c.Clients, c.Outstanding, c.TTL, c.Aliases, rateText(c.RefreshRate), c.Blocks)

	if rows := r.Rows; rows != nil {
		renderRows(&b, r, rows)
	}
	renderTargets(&b, r)
	if rows := r.Rows; rows != nil {
		renderUpstream(&b, rows)
	}
	if len(r.Cold) > 0 {
		p("## Cold path\n\n")
		p("A fresh target (bench/target) %s away and a fresh flattening CoreDNS for each repetition (%d); medians, with the range in brackets, in ms. \"Right after start\" is the first A query, sent the moment the server answers the zone's SOA (bench/herd -wait-zone): the configured alias's startup resolution is then usually still in flight, and the query joins it. The on-demand name is `www` (`cname www.example.test.`, a CNAME to client2.agency.test in the zone), asked for the first time.\n\n", r.Cold[0].Delay, c.ColdReps)
		p("| target | round trips | configured alias, right after start | again | on-demand name, first query | again | server answered after |\n|---|---|---|---|---|---|---|\n")
		for _, x := range r.Cold {
			p("| %s | %d | %s | %s | %s | %s | %s |\n", x.Mode, x.Hops, spread(x.AliasFirst), spread(x.AliasSecond), spread(x.DemandFirst), spread(x.DemandSecond), spread(x.StartMs))
		}
		p("\n")
	}
	if len(r.Herd) > 0 {
		p("## Thundering herd\n\n")
		p("%d queries (A and AAAA in turn) for one name, each from its own UDP socket, released together by bench/herd; the target (%s away, one hop per question) counts what it was asked. Queries the server's socket buffer dropped are sent again after 2 s (the \"retried\" column): they add latency, not upstream queries.\n\n", c.HerdN, c.ColdDelay)
		p("| case | answered | retried | sent within | sent before the first answer | latency p50 / max (ms) | upstream queries at the target (name type = count) | total |\n|---|---|---|---|---|---|---|---|\n")
		for _, x := range r.Herd {
			p("| %s | %s of %s | %s | %s ms | %s | %s / %s | %s | %d |\n", x.Case, x.Herd["answered"], x.Herd["n"], x.Herd["retried"], x.Herd["sent_over_ms"], x.Herd["sent_before_first_answer"],
				x.Herd["lat_p50_ms"], x.Herd["lat_max_ms"], countsText(x.Counts), x.Total)
		}
		p("\n")
	}
	if g := r.Big; g != nil {
		p("## %d configured aliases\n\n", g.Aliases)
		p("One CoreDNS with %d `alias aNNNNN.example.test tNNNNN.agency.test` lines, `upstream` the fake target (delay %s, each tNNNNN a CNAME to one of 256 sNNN names with A and AAAA, TTL 3600, whole chain in one answer), refresh_rate %s. The one-alias server is the same Corefile with one alias, running at the same time.\n\n", g.Aliases, c.BigDelay, rateText(g.RefreshRate))
		p("| measure | value |\n|---|---|\n")
		p("| startup: exec to the *ready* plugin's 200 | %.1f s |\n", g.StartupSeconds)
		p("| startup: target's first to last query | %.1f s |\n", g.SpanSeconds)
		p("| upstream queries at startup (distinct names; most for one name and type) | %d (%d; %d) |\n", g.Upstream, g.Names, g.MaxPerNameType)
		p("| highest upstream queries in any 1 s window (arrival times at the target, 10 ms buckets) | %d |\n", g.MaxPerSecond)
		if g.SpanSeconds > 0 {
			p("| average upstream rate over the startup round | %.0f/s |\n", float64(g.Upstream)/g.SpanSeconds)
		}
		p("| VmRSS after warm-up / after the load / VmHWM | %.1f / %.1f / %.1f MB |\n", mb(g.RSSReadyKB), mb(g.RSSAfterKB), mb(g.HWMKB))
		p("| VmRSS of the one-alias server | %.1f MB |\n", mb(g.OneRSSKB))
		p("| after the load, file-backed (the binary's pages) / anonymous (heap, stacks): %d aliases; one alias | %.1f / %.1f MB; %.1f / %.1f MB |\n",
			g.Aliases, mb(g.FileAfterKB), mb(g.AnonAfterKB), mb(g.OneFileAfterKB), mb(g.OneAnonAfterKB))
		p("| hit-path max QPS, %d sampled names (median) | %.0f |\n", g.Sample, g.BigQPS)
		p("| hit-path max QPS, one alias (median) | %.0f |\n", g.OneQPS)
		p("| runs repeated (others took the cores) | %d |\n", g.Retries)
		p("| ratio, median of per-round ratios | %.3f |\n", g.Ratio)
		p("| upstream queries during the load | %d |\n\n", g.UpstreamLoad)
		p("Per round (QPS, %d aliases / one alias): ", g.Aliases)
		var parts []string
		for _, x := range g.Runs {
			parts = append(parts, fmt.Sprintf("%.0f / %.0f", x.Big.QPS, x.One.QPS))
		}
		p("%s.\n\n", strings.Join(parts, "; "))
	}
	if g := r.Blocks; g != nil {
		renderBlocks(&b, r, g)
	}
	if g := r.Transfer; g != nil {
		renderTransfer(&b, r, g)
	}
	if g := r.Agency; g != nil {
		renderAgency(&b, r, g)
	}
	if len(r.GoBench) > 0 {
		p("## Go benchmarks (one `go test -bench` run, pinned to the server core, GOMAXPROCS=1)\n\n")
		p("| benchmark | ns/op (median of %d) | B/op | allocs/op |\n|---|---|---|---|\n", r.GoBenchCount)
		for _, x := range r.GoBench {
			p("| %s | %.0f | %.0f | %.0f |\n", x.Name, x.NsOp, x.BOp, x.AllocsOp)
		}
		p("\n")
	}

	p("## Machine and versions\n\n| | |\n|---|---|\n")
	for _, x := range r.Machine {
		p("| %s | %s |\n", x.K, x.V)
	}
	for _, x := range r.Versions {
		p("| %s | %s |\n", x.K, x.V)
	}
	p("\n")
	renderMethod(&b, r)
	return b.String()
}

func renderRows(b *strings.Builder, r *results, rows *rowsResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	c := r.Config
	p("## Side by side\n\n")
	p("Every row but 0 answers `example.test A` and `AAAA` (dnsperf, 50/50) with A 192.0.2.10, A 192.0.2.11 and AAAA 2001:db8::10; the flattening rows follow client1.agency.test CNAME server1.agency.test, served by a CoreDNS *file* instance (the target). Row 0, the limit, is the same CoreDNS with only the *erratic* plugin (`erratic { drop 0 }`) in the example.test server block: it answers every A query with A 192.0.2.53 and every AAAA with AAAA 2001:db8::53, one record it synthesizes without a lookup, so it is the least work any plugin can do to answer and its QPS is the ceiling of this CoreDNS on this core: a row within a few per cent of it (or above it, by the noise of a run) is at that ceiling%s. Medians over %d rounds; max QPS ratios are medians of per-round ratios. Latency at a fixed offered rate of %d QPS.\n\n",
		respSizes(rows), c.Rounds, rows.FixedQPS)
	p("| row | server | max QPS | vs 0 | vs 3 | vs 3b | vs 4 | p50 ms | p99 ms | p99.9 ms | CPU us/query | lost (max / fixed) | other load on server core |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range rows.Rows {
		p("| %s | %s | %.0f | %.2f | %.2f | %.2f | %.2f | %s | %s | %s | %.1f | %d / %d | %.0f%% |\n", x.ID, x.Label, x.QPS, x.Vs0, x.Vs3, x.Vs3b, x.Vs4,
			ms(x.P50), ms(x.P99), ms(x.P999), x.CPUus, x.Lost, x.FixLost, 100*x.Foreign)
	}
	p("\nflatten (row 1) per round, max QPS over row 0 (the limit) / row 3b / row 3 / the better PowerDNS row: %s / %s / %s / %s; medians %.3f / %.3f / %.3f / %.3f.\n\n",
		list(rows.FlatVs0), list(rows.FlatVs3b), list(rows.FlatVs3), list(rows.FlatVsPDNS),
		median(rows.FlatVs0), median(rows.FlatVs3b), median(rows.FlatVs3), median(rows.FlatVsPDNS))
	p("Max QPS per round:\n\n| row |")
	for i := range c.Rounds {
		p(" round %d |", i+1)
	}
	p(" dnsperf CPU, share of its core (median) | runs repeated |\n|---|")
	for range c.Rounds {
		p("---|")
	}
	p("---|---|\n")
	for _, x := range rows.Rows {
		p("| %s |", x.ID)
		for _, run := range x.Runs {
			p(" %.0f |", run.Max.QPS)
		}
		p(" %.0f%% | %d |\n", 100*x.LoadBusy, x.Retries)
	}
	p("\n")
}

// respSizes compares the average response size of row 0 with row 1's (dnsperf's "Average packet
// size"), as a clause of the sentence introducing the table; empty without both.
func respSizes(rows *rowsResult) string {
	var limit, flat float64
	for _, x := range rows.Rows {
		switch x.ID {
		case "0":
			limit = x.RespSize
		case "1":
			flat = x.RespSize
		}
	}
	if limit == 0 || flat == 0 {
		return ""
	}
	return fmt.Sprintf(" (its responses average %.0f bytes, row 1's %.0f)", limit, flat)
}

func renderUpstream(b *strings.Builder, rows *rowsResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Upstream queries of the warm flatten rows\n\n")
	p("Counted at the target (coredns_dns_requests_total of the row's own target listener). With TTL T the plugin refreshes each alias's A and AAAA when 10%% of T is left, so one question per type every 0.9 T, plus the startup round. More than that means client queries caused upstream queries; fewer means the scheduled refresh did not run, so entries expired and the first client query after each expiry waited for a resolution.\n\n")
	p("| row | client queries answered during its load runs | upstream queries in those %s | upstream queries since the server started (A / AAAA) | seconds since start | expected from the schedule |\n|---|---|---|---|---|---|\n", "runs")
	for _, u := range rows.Upstream {
		p("| %s | %d | %d (in %.0f s) | %d (%d / %d) | %.0f | %d (one per type every %.0f s, and the startup round) |\n",
			u.Row, u.LoadQueries, u.DuringLoad, u.LoadSeconds, u.Total, u.ByType["A"], u.ByType["AAAA"], u.Seconds, expectedRefresh(u), u.Interval)
	}
	p("\n")
}

// expectedRefresh is the startup round plus one refresh per type per interval elapsed.
func expectedRefresh(u upstream) int {
	return 2 * (1 + int(math.Floor(u.Seconds/u.Interval)))
}

type goal struct{ what, need, got, met string }

func renderBlocks(b *strings.Builder, r *results, g *blocksResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	c := r.Config
	p("## %d server blocks\n\n", g.Blocks)
	p("One CoreDNS with %d server blocks `clientN.test` on one listener (`bind 127.0.0.1`), each with `ready`, `file` (the same zone file: SOA, NS, the NS's A) and `flatten { alias @ sM.agency.test.; alias www sK.agency.test.; upstream TARGET }`, M and K spread over %d names of the fake target (delay 0, A and AAAA, TTL 3600), refresh_rate not set (the plugin's default, 1000/s), plus one block with `prometheus` and `pprof`. `ready` is in every block, as it reports the plugins of the blocks it is in, but CoreDNS keeps one readiness per plugin name (the last block's *flatten*), so startup counts until both its 200 and *flatten*'s log line that every block's startup round is done%s. The baseline is the same Corefile without the `flatten { ... }` lines, run before it, not at the same time. Both pinned to core %d, GOMAXPROCS=1. Each server was started %d times, in turn (baseline, flatten, baseline, ...): where Go's collector happens to run during a startup that parses a Corefile of about %d lines (%d of them *flatten*'s) moves one start's VmRSS by ±15 MB, so the memory rows are medians over the starts (each start's figure is listed), and the load ran on the last start. The live heap is HeapAlloc after a forced collection (`/debug/pprof/heap?gc=1`), once the VmRSS had settled: what the process holds, which the collector lets grow to about twice before it collects.\n\n",
		g.Blocks, g.Targets, roundLog(g.Flat), c.ServerCPU, max(g.Starts, 1), 10*g.Blocks, 5*g.Blocks)
	if g.Error != "" {
		p("**Not complete: %s.** What was measured until then is below.\n\n", g.Error)
	}
	bs, fs := g.Base, g.Flat
	sec := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f s", v)
	}
	ready := func(s blocksServer) string {
		if !s.Ready && s.StartupSeconds > 0 {
			return fmt.Sprintf("**not ready after %.0f s**", s.StartupSeconds)
		}
		return sec(s.StartupSeconds)
	}
	qps := func(s blocksServer) string {
		if len(s.Runs) == 0 {
			return "not measured"
		}
		return fmt.Sprintf("%.0f (%s)", s.QPS, qpsList(s.Runs))
	}
	diff := func(f, base int) string {
		if f == 0 || base == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f MB (%.0f bytes per block)", mb(f-base), g.perBlock(f, base))
	}
	p("| measure | without flatten | with flatten | flatten's share (above the baseline) |\n|---|---|---|---|\n")
	p("| startup: exec to the listener's first answer | %s | %s | |\n", sec(bs.ListenSeconds), sec(fs.ListenSeconds))
	p("| startup: exec to the *ready* plugin's 200 | %s | %s | |\n", sec(bs.ReadySeconds), sec(fs.ReadySeconds))
	p("| startup: exec to flatten's log line that every block's startup round is done | | %s | |\n", sec(fs.RoundSeconds))
	p("| startup: exec to both (the startup time) | %s | %s | |\n", ready(bs), ready(fs))
	each := func(s blocksServer, kb func(blocksStart) int) string {
		var v []string
		for _, st := range s.Starts {
			v = append(v, fmt.Sprintf("%.1f", mb(kb(st))))
		}
		return strings.Join(v, ", ")
	}
	settled := func(st blocksStart) int { return st.RSSSettledKB }
	live := func(st blocksStart) int { return st.LiveKB }
	p("| VmRSS when ready (or at the timeout), median | %s | %s | %s |\n", mbText(bs.RSSReadyKB), mbText(fs.RSSReadyKB), diff(fs.RSSReadyKB, bs.RSSReadyKB))
	p("| VmRSS settled (after about %.0f s), median | %s | %s | %s |\n", fs.SettleSecs, mbText(bs.RSSSettledKB), mbText(fs.RSSSettledKB), diff(fs.RSSSettledKB, bs.RSSSettledKB))
	p("| VmRSS settled, MB, each start | %s | %s | |\n", each(bs, settled), each(fs, settled))
	p("| VmHWM (the peak) then, median | %s | %s | %s |\n", mbText(bs.HWMSettledKB), mbText(fs.HWMSettledKB), diff(fs.HWMSettledKB, bs.HWMSettledKB))
	p("| live heap after a forced collection, median (MB, each start) | %s (%s) | %s (%s) | %s |\n", mbText(bs.LiveKB), each(bs, live), mbText(fs.LiveKB), each(fs, live), diff(fs.LiveKB, bs.LiveKB))
	p("| VmRSS / VmHWM after the load | %s / %s | %s / %s | %s / %s |\n", mbText(bs.RSSAfterKB), mbText(bs.HWMAfterKB), mbText(fs.RSSAfterKB), mbText(fs.HWMAfterKB),
		diff(fs.RSSAfterKB, bs.RSSAfterKB), diff(fs.HWMAfterKB, bs.HWMAfterKB))
	p("| after the load, anonymous (heap, stacks) / file-backed (the binary) | %s / %s | %s / %s | %s |\n", mbText(bs.AnonAfterKB), mbText(bs.FileAfterKB), mbText(fs.AnonAfterKB), mbText(fs.FileAfterKB),
		diff(fs.AnonAfterKB, bs.AnonAfterKB))
	p("| max QPS, A and AAAA for the apex and www of %d blocks (median of %d; per run) | %s | %s | |\n", g.Sample, g.Rounds, qps(bs), qps(fs))
	p("| runs repeated (others took the cores) | %d | %d | |\n", bs.Retries, fs.Retries)
	p("| upstream questions during startup (distinct names; most for one name and type) | | %d (%d; %d) | |\n", g.Upstream, g.Names, g.MaxPerNameType)
	p("| target: first to last question of the startup | | %.1f s | |\n", g.SpanSeconds)
	p("| highest upstream questions in any 1 s window (arrival times at the target, 10 ms buckets) | | %d | |\n", g.MaxPerSecond)
	if len(fs.Runs) > 0 {
		p("| upstream questions during the load | | %d | |\n", g.UpstreamLoad)
	}
	p("\nWithout flatten the apex has no A or AAAA (NOERROR, no answer) and www does not exist (NXDOMAIN): its QPS is that of *file* answering those, a reference, not the same work.\n\n")
}

// roundLog quotes flatten's log line, as a parenthesis.
func roundLog(s blocksServer) string {
	if s.RoundLog == "" {
		return ""
	}
	return " (`" + s.RoundLog + "`)"
}

func mbText(kb int) string {
	if kb == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MB", mb(kb))
}

func qpsList(runs []perf) string {
	var s []string
	for _, x := range runs {
		s = append(s, fmt.Sprintf("%.0f", x.QPS))
	}
	return strings.Join(s, ", ")
}

func renderTargets(b *strings.Builder, r *results) {
	var t []goal
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	if rows := r.Rows; rows != nil {
		row := func(id string) rowResult {
			for _, x := range rows.Rows {
				if x.ID == id {
					return x
				}
			}
			return rowResult{}
		}
		v0, v3b, v3, vp := median(rows.FlatVs0), median(rows.FlatVs3b), median(rows.FlatVs3), median(rows.FlatVsPDNS)
		t = append(t,
			goal{"flatten warm max QPS / erratic (the limit row)", ">= 0.95", fmt.Sprintf("%.3f", v0), yes(v0 >= 0.95)},
			goal{"flatten warm max QPS / cache + file static (3b)", "> 1.1", fmt.Sprintf("%.3f", v3b), yes(v3b > 1.1)},
			goal{"flatten warm max QPS / file static (3)", ">= 1.15", fmt.Sprintf("%.3f", v3), yes(v3 >= 1.15)},
			goal{"flatten warm max QPS / best PowerDNS ALIAS row", ">= 1.7", fmt.Sprintf("%.3f", vp), yes(vp >= 1.7)})
		f, s := row("1"), row("3")
		t = append(t,
			goal{fmt.Sprintf("p99 at %d QPS, flatten vs file static", rows.FixedQPS), "<= row 3", fmt.Sprintf("%s vs %s ms", ms(f.P99), ms(s.P99)), yes(f.P99 <= s.P99)},
			goal{fmt.Sprintf("p99.9 at %d QPS, flatten vs file static", rows.FixedQPS), "<= row 3", fmt.Sprintf("%s vs %s ms", ms(f.P999), ms(s.P999)), yes(f.P999 <= s.P999)})
		for _, u := range rows.Upstream {
			exp := expectedRefresh(u)
			ok := u.Total >= exp-2 && u.Total <= exp+2
			t = append(t, goal{fmt.Sprintf("row %s: upstream queries = the refresh schedule only (none caused by %d client queries)", u.Row, u.LoadQueries),
				fmt.Sprintf("%d +- 2 (one per type per %.0f s)", exp, u.Interval), strconv.Itoa(u.Total), yes(ok)})
		}
	}
	for _, x := range r.Herd {
		worst := 0
		for _, n := range x.Counts {
			worst = max(worst, n)
		}
		t = append(t, goal{fmt.Sprintf("%s queries at once, %s: upstream queries per type and hop", x.Herd["n"], x.Case), "<= 1", fmt.Sprintf("at most %d (%s)", worst, countsText(x.Counts)), yes(worst <= 1)})
	}
	if g := r.Big; g != nil {
		if g.RefreshRate > 0 {
			t = append(t, goal{fmt.Sprintf("%d aliases: upstream queries in any 1 s during startup", g.Aliases), fmt.Sprintf("<= refresh_rate %d", g.RefreshRate),
				strconv.Itoa(g.MaxPerSecond), yes(g.MaxPerSecond <= g.RefreshRate)})
		} else {
			t = append(t, goal{fmt.Sprintf("%d aliases: upstream queries in any 1 s during startup", g.Aliases), "a configured rate (RATE not set)", strconv.Itoa(g.MaxPerSecond), "not checked"})
		}
		t = append(t,
			goal{fmt.Sprintf("%d aliases: resident memory (VmHWM, the peak)", g.Aliases), "< 200 MB", fmt.Sprintf("%.1f MB", mb(g.HWMKB)), yes(mb(g.HWMKB) < 200)},
			goal{fmt.Sprintf("%d aliases: hit-path max QPS / one alias", g.Aliases), ">= 0.85", fmt.Sprintf("%.3f", g.Ratio), yes(g.Ratio >= 0.85)})
	}
	if g := r.Blocks; g != nil {
		goalMB := blocksGoalMB(g.Blocks)
		need := "<= " + strconv.FormatFloat(goalMB, 'f', -1, 64) + " MB"
		if g.Blocks != 10000 {
			need += " (24 MB per 10000 blocks)"
		}
		// Judged on the medians over the starts of VmRSS once settled after the startup and of the
		// peak (VmHWM) then; VmRSS after the load and the live heap are shown beside them.
		above := g.Flat.RSSSettledKB - g.Base.RSSSettledKB
		peak := g.Flat.HWMSettledKB - g.Base.HWMSettledKB
		got := fmt.Sprintf("%.1f MB (%.0f bytes per block); peak %.1f MB", mb(above), g.perBlock(g.Flat.RSSSettledKB, g.Base.RSSSettledKB), mb(peak))
		if g.Flat.RSSAfterKB > 0 && g.Base.RSSAfterKB > 0 {
			got += fmt.Sprintf("; after the load %.1f MB", mb(g.Flat.RSSAfterKB-g.Base.RSSAfterKB))
		}
		if g.Flat.LiveKB > 0 && g.Base.LiveKB > 0 {
			got += fmt.Sprintf("; live heap %.1f MB", mb(g.Flat.LiveKB-g.Base.LiveKB))
		}
		if n := len(g.Flat.Starts); n > 1 {
			got += fmt.Sprintf(" (medians of %d starts)", n)
		}
		met := yes(mb(max(above, peak)) <= goalMB)
		if !g.Flat.Ready {
			got += ", not ready after " + strconv.FormatFloat(g.TimeoutSeconds, 'f', 0, 64) + " s"
			if mb(max(above, peak)) <= goalMB {
				met = "**not known**"
			}
		}
		t = append(t, goal{fmt.Sprintf("%d blocks: resident memory above the no-flatten baseline (VmRSS settled after the startup, and VmHWM; medians over the starts)", g.Blocks), need, got, met})
		got = strconv.Itoa(g.MaxPerSecond)
		met = yes(g.MaxPerSecond <= 1000)
		if !g.Flat.Ready {
			got += " (until the timeout; not ready)"
			if g.MaxPerSecond <= 1000 {
				met = "**not known**"
			}
		}
		t = append(t, goal{fmt.Sprintf("%d blocks: upstream questions in any 1 s during startup", g.Blocks), "<= 1000 (refresh_rate)", got, met})
	}
	if g := r.Transfer; g != nil {
		t = append(t, transferGoals(g, yes)...)
	}
	if g := r.Agency; g != nil {
		t = append(t, agencyGoals(g, yes)...)
	}
	if hit, cache, ok := r.goBench("BenchmarkFlattenHit"), r.goBench("BenchmarkCachePluginHit"), len(r.GoBench) > 0; ok && hit != nil && cache != nil {
		t = append(t,
			goal{"Go benchmark: flatten hit vs cache plugin hit, ns/op", "<= cache", fmt.Sprintf("%.0f vs %.0f", hit.NsOp, cache.NsOp), yes(hit.NsOp <= cache.NsOp)},
			goal{"Go benchmark: flatten hit vs cache plugin hit, allocs/op", "<= cache", fmt.Sprintf("%.0f vs %.0f", hit.AllocsOp, cache.AllocsOp), yes(hit.AllocsOp <= cache.AllocsOp)})
	}
	if len(t) == 0 {
		return
	}
	fmt.Fprintf(b, "## The issue's targets\n\n| target | required | measured | met |\n|---|---|---|---|\n")
	for _, x := range t {
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", x.what, x.need, x.got, x.met)
	}
	b.WriteString("\n")
}

func renderMethod(b *strings.Builder, r *results) {
	c := r.Config
	fmt.Fprintf(b, `## How it was measured

- Every server listens on 127.0.0.1 only, on its own port, pinned with taskset to core %[1]d
  together with the processes its answers make work (the target CoreDNS, the PowerDNS Recursor),
  so their CPU counts against the row. CoreDNS runs with GOMAXPROCS=1. dnsperf and bench/herd run
  on core %[2]d. "CPU us/query" is the user+system time of the row's processes
  (/proc/PID/stat) over the queries answered in the max run; "other load on server core" is the
  share of core %[1]d used by anything else during that run (the machine is shared), from
  /proc/stat (medians over rounds). A run during which other processes took more than %[6]d%% of
  the server core is run again, up to %[7]d times ("runs repeated"). "dnsperf CPU" is dnsperf's
  CPU time over its wall time: near 100%% would mean the load generator, not the server, was
  the limit.
- Rounds alternate between rows (0 1 2 3 3b 4 5, 0 1 2 3 3b 4 5, ...) so that drift hits every row
  alike. In each round each row gets a max-QPS run (dnsperf -c %[3]d -q %[4]d for %[5]d s: enough
  outstanding queries to keep the server core busy) and then a fixed-rate run (-Q, the same rate
  for every row: half the slowest row's QPS in a warm-up run, unless FIXED_QPS is set).
- Latency percentiles: dnsperf -v prints every answered query's latency (in microseconds); the
  harness reads them as they stream, counts each lost query as infinitely slow, and takes the
  nearest-rank p50, p99 and p99.9 of the run. The table shows the median over rounds.
- Row 0 is the limit: the same cmd/coredns binary, GOMAXPROCS=1 and core, with a server block
  for example.test holding only `+"`erratic { drop 0 }`"+` (no zone data, no cache; "drop 0" drops
  nothing, where erratic's default drops every second query). It synthesizes one A or AAAA
  record for the name asked, so what it costs is CoreDNS's own work per query: reading,
  routing and writing it. "vs 0" is each row's share of that.
- Row 4 and 5 are pdns_server with the bind backend and an ALIAS record at the apex,
  expand-alias=yes, resolver= a pdns_recursor that forward-zones agency.test to the target
  (hint-file=no and dont-query for everything else, so it asks nobody but the target). Row 5 sets
  cache-ttl=0, query-cache-ttl=0 and negquery-cache-ttl=0. Other settings are the defaults.
- Raw output (dnsperf summaries, herd reports, configurations, logs) is under bench/out, which is
  not in git; bench/out/results.json holds every number above.
`, c.ServerCPU, c.LoadCPU, c.Clients, c.Outstanding, c.Duration, int(math.Round(100*c.ForeignMax)), c.Retries)
}

func ms(v float64) string {
	if math.IsInf(v, 1) {
		return "lost"
	}
	if math.IsNaN(v) {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func mb(kb int) float64 { return float64(kb) / 1024 }

func list(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(s, " ")
}

// spread is the median and range of v.
func spread(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return fmt.Sprintf("%.1f [%.1f-%.1f]", median(v), lo, hi)
}

func countsText(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s = %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func renderTransfer(b *strings.Builder, r *results, g *transferResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	c := r.Config
	p("## Zone transfers\n\n")
	p("**Propagation.** A target CoreDNS (*file*, `reload 1s`) serves client1.agency.test CNAME server1.agency.test and server1's A, TTL %d s. The primary, a CoreDNS with `flatten { alias @ client1.agency.test; ttl %d %d }`, `file` and `transfer { to NSD }`, serves example.test; %s is its secondary (`request-xfr` from the primary, `allow-notify` from 127.0.0.1; the SOA refresh, 7200 s, is longer than the case, so only NOTIFY brings a change). NSD served the zone %.1f s after its exec. Then %d times, after a random pause of 0-1 s (so that changes do not fall at the same point of the reload and watch ticks): the target's zone file is rewritten with a new address for server1 and a higher serial (t0), the primary's apex A is polled every 10 ms until it has the new address (t1), then NSD's (t2). t1 - t0 is the primary learning it (bound by *file*'s reload tick, 1 s, and the TTL, %d s); t2 - t1 is the secondary following the primary (flatten's watch tick, NOTIFY, NSD's IXFR/AXFR and reload). All servers pinned to core %d, CoreDNS with GOMAXPROCS=1.\n\n",
		xfrTargetTTL, xfrTTLMin, xfrTargetTTL, g.NSD, g.FirstSyncSecs, c.XfrChanges, xfrTargetTTL, c.ServerCPU)
	if g.Error != "" {
		p("**Not complete: %s.** The changes measured until then are below.\n\n", g.Error)
	}
	p("| change | new address | primary: t1 - t0 | secondary: t2 - t1 | in all: t2 - t0 | NSD's SOA serial before -> after |\n|---|---|---|---|---|---|\n")
	for i, x := range g.Changes {
		higher := ""
		if x.SerialAfter <= x.SerialBefore {
			higher = " (**not higher**)"
		}
		p("| %d | %s | %.2f s | %.2f s | %.2f s | %d -> %d%s |\n", i+1, x.Address, x.PrimarySecs, x.SecondarySecs, x.TotalSecs, x.SerialBefore, x.SerialAfter, higher)
	}
	if len(g.Changes) > 0 {
		p("| median | | %.2f s | %.2f s | %.2f s | |\n", g.PrimaryMedian, g.SecondaryMedian, g.TotalMedian)
		p("| max | | %.2f s | %.2f s | %.2f s | |\n", g.PrimaryMax, g.SecondaryMax, g.TotalMax)
	}
	p("\n**A zone with %d flattened names.** A second primary (its own CoreDNS process, same binary and core) serves big.test: `flatten { zone_alias; upstream TARGET }`, `file` of a zone with %d ALIAS records `nN 300 IN TYPE65401 \\# ...` (RFC 3597 form) pointing at %d names sK.agency.test of the target, each with A and AAAA (TTL 300), and `transfer { to * }`. Once it answered the first and the last name (%.1f s after its exec), the harness (on core %d) transferred the zone twice by AXFR over TCP (miekg/dns Transfer.In), counting every record.\n\n",
		g.Names, g.Names, g.Targets, g.StartupSecs, c.LoadCPU)
	p("| measure | value |\n|---|---|\n")
	p("| records in the first AXFR (both SOAs included) | %d (%s) |\n", g.Records, countsText(g.ByType))
	p("| A and AAAA at the flattened names | %d (expected %d) |\n", g.Flattened, 2*g.Names)
	p("| first AXFR, request to last record | %.2f s |\n", g.FirstSecs)
	p("| second AXFR (%d records) | %.2f s |\n", g.Second, g.SecondSecs)
	p("| VmRSS before the first AXFR / after the second (VmHWM then) | %s / %s (%s) |\n\n", mbText(g.RSSBeforeKB), mbText(g.RSSAfterKB), mbText(g.HWMAfterKB))
}

// transferGoals are the transfer case's rows of the targets table.
func transferGoals(g *transferResult, yes func(bool) string) []goal {
	var t []goal
	n := len(g.Changes)
	if n > 0 {
		got := fmt.Sprintf("max %.2f s, median %.2f s (%d changes)", g.SecondaryMax, g.SecondaryMedian, n)
		met := yes(g.SecondaryMax <= xfrGoal)
		if g.Error != "" {
			got += "; " + g.Error
			met = yes(false)
		}
		t = append(t,
			goal{"NSD secondary serves new flattened addresses after the primary (t2 - t1)", fmt.Sprintf("<= ttl MIN + 2 s = %d s", xfrGoal), got, met},
			goal{"NSD's SOA serial after each change", "higher than before", fmt.Sprintf("higher after %d of %d", g.SerialsUp, n), yes(g.SerialsUp == n && g.Error == "")})
	}
	if g.Records > 0 {
		t = append(t, goal{fmt.Sprintf("AXFR of a zone with %d flattened names: their A and AAAA", g.Names), strconv.Itoa(2 * g.Names), strconv.Itoa(g.Flattened), yes(g.Flattened == 2*g.Names)})
	}
	return t
}

func renderAgency(b *strings.Builder, r *results, g *agencyResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	c := r.Config
	p("## Agency changes\n\n")
	p("An agency zone, agency.test: server1 A (TTL %d s) and client0 ... client%d CNAME server1 (TTL %d s). One CoreDNS serves %d client zones, each its own server block on one listener, `clientN.test { flatten { alias @ clientN.agency.test ... }; file (SOA, NS, the NS's A); transfer { to NSD } }`, *flatten*'s settings otherwise its defaults (`ttl 5 3600`: NOTIFY to a zone's secondaries at most once per 5 s); %s is the secondary of the %d client zones (`request-xfr` from CoreDNS, `allow-notify` from 127.0.0.1). Once NSD served every apex with the first address, %d times: server1's address is changed (t0) and the apex A of every client zone is polled on CoreDNS and on NSD, a sweep over the apexes not yet changed every %d ms, until every one serves the new address on CoreDNS (t1; \"first client\" is when the first one did) and on NSD (t2). Each change comes %.0f-%.0f s after the previous one reached NSD (at least the `ttl MIN` of the NOTIFY limit, plus a random part so that changes do not fall at the same point of the 1 s ticks), and the first %.1f s after NSD first served every zone: *flatten* counts the limit from the first serial it showed, so a change sooner after startup reaches the secondaries only `ttl MIN` after it. The chains' TTL (%d s) is far longer than the case: only the change detection makes *flatten* follow. All servers pinned to core %d, CoreDNS with GOMAXPROCS=1; the harness polls from core %d.\n\n",
		agencyTTL, agencyClients-1, agencyTTL, g.Clients, g.NSD, g.Clients, c.AgencyChanges, agencySweep.Milliseconds(), agencyTTLMin.Seconds(), agencyTTLMin.Seconds()+1, agencyTTLMin.Seconds()+1.5, agencyTTL, c.ServerCPU, c.LoadCPU)
	sec := func(v float64) string { return fmt.Sprintf("%.2f s", v) }
	if x := g.External; x != nil {
		p("**Case 1: NOTIFY from an external primary.** %s is the primary of agency.test (`notify explicit; also-notify { 127.0.0.1 port FLATTEN; }; notify-delay 0;`, `querylog yes` to a file, `allow-query { any; }`); CoreDNS has a block `agency.test { flatten { notify_from 127.0.0.1 } }` and each client block `upstream` BIND. A change rewrites the zone file with the new address and a higher serial and runs `rndc reload agency.test` (t0 just before the write). \"BIND NOTIFY\" is the time of BIND's log line `sending notifies (serial N)` after t0. Questions are counted in BIND's query log from a change's t0 to the next's (the last: to 1 s after it reached NSD); the chains are clientN A and AAAA, and BIND answers each with the CNAME and server1's A (or, for AAAA, no data) in one answer, so one question per type per chain is one per hop. NSD served every client zone %.1f s after its exec; BIND logged %d A/AAAA questions for the chains' names before the first change (CoreDNS's startup, and the harness's one probe of server1).\n\n",
			g.BIND, x.SyncSecs, x.StartupQuestions)
		if x.Error != "" {
			p("**Not complete: %s.** The changes measured until then are below.\n\n", x.Error)
		}
		p("| change | new address | BIND NOTIFY | first client on CoreDNS | all on CoreDNS: t1 - t0 | all on NSD: t2 - t0 | questions at BIND (name type = count) | A/AAAA questions per chain | most for one name and type |\n|---|---|---|---|---|---|---|---|---|\n")
		for i, y := range x.Changes {
			notify := "not in its log"
			if y.NotifySecs >= 0 {
				notify = sec(y.NotifySecs)
			}
			p("| %d | %s | %s | %s | %s | %s | %s | %.2f | %d |\n", i+1, y.Address, notify, sec(y.FirstSecs), sec(y.CoreSecs), sec(y.NSDSecs), countsText(y.Questions), float64(y.ChainQuestions)/agencyClients, y.MaxPerName)
		}
		if len(x.Changes) > 0 {
			p("| median | | %s | %s | %s | %s | | | |\n", sec(x.NotifyMedian), sec(x.FirstMedian), sec(x.CoreMedian), sec(x.NSDMedian))
			p("| max | | | | %s | %s | | %.2f | %d |\n", sec(x.CoreMax), sec(x.NSDMax), x.PerChainMax, x.PerNameMax)
		}
		p("\n")
	}
	if x := g.Self; x != nil {
		p("**Case 2: the agency zone served by the same CoreDNS.** The agency zone is a block of the same CoreDNS, `agency.test { file ZONE agency.test { reload 1s }; log }` (*log* only to count the questions that block answers), and the client blocks have no `upstream`: *flatten* resolves through the server, and watches the SOA serial of the zones it serves that its chains pass through, every second. A change rewrites the zone file (a rename) with the new address and serial + 1 (t0); t_f is when the agency block itself serves the new server1 address (polled every 20 ms). Questions are the *log* lines of the agency block from 127.0.0.1:53, the address *flatten*'s lookups through the server carry (the harness's polls come from other ports), from a change's t0 to the next's; *file* answers clientN A with the CNAME and server1's A; for AAAA *flatten* also asks server1 AAAA itself (the `server1 AAAA` count), a second hop of that chain, since *file*'s answer to clientN AAAA does not show that server1 has none. *file*'s reload and *flatten*'s watch both tick every second from about the server's start, so t1 - t_f mostly shows how the two ticks are phased in this process: it can be up to a second more when the watch ticks just before the reload. NSD served every client zone %.1f s after its exec; *flatten* asked %d A/AAAA questions for the chains' names before the first change.\n\n",
			x.SyncSecs, x.StartupQuestions)
		if x.Error != "" {
			p("**Not complete: %s.** The changes measured until then are below.\n\n", x.Error)
		}
		p("| change | new address | agency block: t_f - t0 | first client on CoreDNS | all on CoreDNS: t1 - t0 | t1 - t_f | all on NSD: t2 - t0 | questions flatten asked through the server (name type = count) | A/AAAA questions per chain | most for one clientN name and type |\n|---|---|---|---|---|---|---|---|---|---|\n")
		for i, y := range x.Changes {
			p("| %d | %s | %s | %s | %s | %s | %s | %s | %.2f | %d |\n", i+1, y.Address, sec(y.AgencySecs), sec(y.FirstSecs), sec(y.CoreSecs), sec(y.CoreSecs-y.AgencySecs), sec(y.NSDSecs), countsText(y.Questions), float64(y.ChainQuestions)/agencyClients, y.MaxPerName)
		}
		if len(x.Changes) > 0 {
			p("| median | | | %s | %s | %s | %s | | | |\n", sec(x.FirstMedian), sec(x.CoreMedian), sec(x.AfterMedian), sec(x.NSDMedian))
			p("| max | | | | %s | %s | %s | | %.2f | %d |\n", sec(x.CoreMax), sec(x.AfterMax), sec(x.NSDMax), x.PerChainMax, x.PerNameMax)
		}
		p("\n")
	}
	lost, sweep := 0, 0.0
	for _, x := range []*agencyCase{g.External, g.Self} {
		for _, y := range x.Changes {
			lost += y.Lost[0] + y.Lost[1] + y.Lost[2]
			sweep = max(sweep, y.SweepCore, y.SweepNSD)
		}
	}
	p("The harness polls CoreDNS's apexes, NSD's and (case 2) the agency block each in its own loop, so a slow sweep of one does not delay the times of the others; a time is taken when the answer with the new address arrives, so it is late by at most one sweep: the longest sweep over the pending apexes of any change was %.0f ms. Polls without an answer within 200 ms (each would add that much): %d in all changes of both cases (per change in results.json, `polls_lost`).\n\n", 1000*sweep, lost)
}

// agencyGoals are the agency case's rows of the targets table.
func agencyGoals(g *agencyResult, yes func(bool) string) []goal {
	var t []goal
	need := fmt.Sprintf("median < %.0f s, max < %.0f s", agencyGoalMedian, agencyGoalMax)
	timing := func(what string, c *agencyCase, med, mx float64) {
		n := len(c.Changes)
		if n == 0 {
			t = append(t, goal{what, need, "not measured: " + c.Error, yes(false)})
			return
		}
		got := fmt.Sprintf("median %.2f s, max %.2f s (%d changes)", med, mx, n)
		ok := med < agencyGoalMedian && mx < agencyGoalMax
		if c.Error != "" {
			got += "; " + c.Error
			ok = false
		}
		t = append(t, goal{what, need, got, yes(ok)})
	}
	questions := func(what string, c *agencyCase) {
		if len(c.Changes) == 0 {
			return
		}
		got := fmt.Sprintf("at most %.2f per chain per hop and type; %.2f per chain in all (A and AAAA); at most %d for one clientN name and type", c.PerHopMax, c.PerChainMax, c.PerNameMax)
		t = append(t, goal{what, "<= 1 per hop per type per chain", got, yes(c.PerHopMax <= 1 && c.PerNameMax <= 1)})
	}
	if c := g.External; c != nil {
		timing(fmt.Sprintf("agency change, BIND primary with NOTIFY: all %d client apexes on flatten (t1 - t0)", g.Clients), c, c.CoreMedian, c.CoreMax)
		timing(fmt.Sprintf("agency change, BIND primary with NOTIFY: all %d client apexes on the NSD secondary (t2 - t0)", g.Clients), c, c.NSDMedian, c.NSDMax)
		questions("agency change, BIND primary: questions BIND received per change", c)
	}
	if c := g.Self; c != nil {
		timing(fmt.Sprintf("agency change, zone served by the same CoreDNS: all %d client apexes on flatten (t1 - t0)", g.Clients), c, c.CoreMedian, c.CoreMax)
		timing(fmt.Sprintf("agency change, zone served by the same CoreDNS: all %d client apexes on the NSD secondary (t2 - t0)", g.Clients), c, c.NSDMedian, c.NSDMax)
		questions("agency change, zone served by the same CoreDNS: questions flatten asked through the server per change", c)
	}
	return t
}
