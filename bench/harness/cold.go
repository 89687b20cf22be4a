package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// coldResult is the cold path with one way of answering at the target: latencies in ms, one per
// repetition (each on a freshly started server and target).
type coldResult struct {
	Mode  string `json:"mode"`
	Hops  int    `json:"round_trips"` // upstream round trips a first resolution needs
	Delay string `json:"delay"`
	// A configured alias asked the moment the server answers (its startup resolution may be
	// in flight), then again.
	AliasFirst  []float64 `json:"alias_first_ms"`
	AliasSecond []float64 `json:"alias_second_ms"`
	// A `cname` name nobody asked for before, then again.
	DemandFirst  []float64 `json:"on_demand_first_ms"`
	DemandSecond []float64 `json:"on_demand_second_ms"`
	// How long herd, started right after the server, polled its SOA before the first answer.
	StartMs []float64 `json:"start_ms"`
}

// herdResult is one thundering herd: herd's report and the target's count per name and type.
type herdResult struct {
	Case   string            `json:"case"`
	Name   string            `json:"name"`
	Herd   map[string]string `json:"herd"`
	Counts map[string]int    `json:"counts"` // "NAME TYPE" at the target
	Total  int               `json:"total"`
}

// coldServer starts a fake target (20 ms away) and a flattening CoreDNS in front of it: the
// apex is a configured alias of client1.agency.test, and www (a CNAME to client2.agency.test in
// the zone) is flattened on demand through `cname`.
func (h *harness) coldServer(tag string, chase bool) (port, tport int, stop func(), err error) {
	tport, err = h.ports.next()
	if err != nil {
		return
	}
	port, err = h.ports.next()
	if err != nil {
		return
	}
	args := []string{"-listen", fmt.Sprintf("127.0.0.1:%d", tport), "-delay", h.cfg.ColdDelay, "-ttl", strconv.Itoa(h.cfg.TTL)}
	if chase {
		args = append(args, "-chase")
	}
	target, err := h.procs.start("target-"+tag, h.cfg.ServerCPU, nil, h.cfg.Target, args...)
	if err != nil {
		return
	}
	stop = func() { h.procs.stop(target) }
	// The target is up when it answers its counters.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err = targetStats(tport); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return
		}
		if err = h.sleep(20 * time.Millisecond); err != nil {
			return
		}
	}
	zone, _ := write(h.dir, "db.example.test.cold", exampleZone(fmt.Sprintf("www %d IN CNAME client2.agency.test.\n", h.cfg.TTL)))
	conf, _ := write(h.dir, "Corefile."+tag, corefileBlock("example.test", port,
		"flatten {", "    alias @ client1.agency.test.", "    cname www.example.test.",
		fmt.Sprintf("    upstream 127.0.0.1:%d", tport), "}", "file "+abs(zone)))
	cd, err := h.procs.start("coredns-"+tag, h.cfg.ServerCPU, []string{"GOMAXPROCS=1"}, h.cfg.CoreDNS, "-conf", conf)
	if err != nil {
		stop()
		return
	}
	stop = func() { h.procs.stop(cd); h.procs.stop(target) }
	return
}

// herd runs bench/herd on the load core and returns its key=value report.
func (h *harness) herd(raw string, args ...string) (map[string]string, error) {
	out, err := run(h.ctx, h.cfg.LoadCPU, h.cfg.Herd, args...)
	os.WriteFile(filepath.Join(h.raw, raw), []byte("# herd "+strings.Join(args, " ")+"\n"+out), 0o644)
	if err != nil {
		return nil, err
	}
	kv := keyValues(out)
	if kv["answered"] != kv["n"] {
		return kv, fmt.Errorf("herd %s: %s of %s answered", strings.Join(args, " "), kv["answered"], kv["n"])
	}
	return kv, nil
}

func (h *harness) cold() ([]coldResult, error) {
	var out []coldResult
	for _, mode := range []struct {
		name  string
		chase bool
		hops  int
	}{
		{"target answers one hop at a time (client1 -> server1: two questions)", false, 2},
		{"target answers the whole chain (one question)", true, 1},
	} {
		res := coldResult{Mode: mode.name, Hops: mode.hops, Delay: h.cfg.ColdDelay}
		for rep := 1; rep <= h.cfg.ColdReps; rep++ {
			tag := fmt.Sprintf("cold%d-%d", mode.hops, rep)
			port, _, stop, err := h.coldServer(tag, mode.chase)
			if err != nil {
				return nil, err
			}
			srv := fmt.Sprintf("127.0.0.1:%d", port)
			// herd polls the zone's SOA (answered by file, never upstream) and sends the A
			// query the moment the server answers it.
			first, err := h.herd(tag+"-alias1.txt", "-server", srv, "-name", "example.test.", "-n", "1", "-qtypes", "A", "-wait-zone", "example.test.")
			if err != nil {
				stop()
				return nil, err
			}
			res.StartMs = append(res.StartMs, atof(first["waited_ms"]))
			second, err := h.herd(tag+"-alias2.txt", "-server", srv, "-name", "example.test.", "-n", "1", "-qtypes", "A")
			if err != nil {
				stop()
				return nil, err
			}
			dfirst, err := h.herd(tag+"-www1.txt", "-server", srv, "-name", "www.example.test.", "-n", "1", "-qtypes", "A")
			if err != nil {
				stop()
				return nil, err
			}
			dsecond, err := h.herd(tag+"-www2.txt", "-server", srv, "-name", "www.example.test.", "-n", "1", "-qtypes", "A")
			stop()
			if err != nil {
				return nil, err
			}
			for _, c := range []struct {
				kv   map[string]string
				want string
			}{{first, "example.test. IN A 192.0.2.10; example.test. IN A 192.0.2.11"}, {dfirst, "www.example.test. IN A 192.0.2.20"}} {
				if c.kv["answer_A"] != c.want {
					return nil, fmt.Errorf("cold answer %q, want %q", c.kv["answer_A"], c.want)
				}
			}
			res.AliasFirst = append(res.AliasFirst, atof(first["lat_max_ms"]))
			res.AliasSecond = append(res.AliasSecond, atof(second["lat_max_ms"]))
			res.DemandFirst = append(res.DemandFirst, atof(dfirst["lat_max_ms"]))
			res.DemandSecond = append(res.DemandSecond, atof(dsecond["lat_max_ms"]))
			h.logf("cold (%d round trips of %s) rep %d: alias first %.2f ms, second %.2f ms; on demand first %.2f ms, second %.2f ms",
				mode.hops, h.cfg.ColdDelay, rep, res.AliasFirst[rep-1], res.AliasSecond[rep-1], res.DemandFirst[rep-1], res.DemandSecond[rep-1])
		}
		out = append(out, res)
	}
	return out, nil
}

func (h *harness) herds() ([]herdResult, error) {
	var out []herdResult
	n := strconv.Itoa(h.cfg.HerdN)
	for _, c := range []struct {
		name, qname string
		names       []string
	}{
		{"on-demand name (`cname`), nobody asked before", "www.example.test.", []string{"client2.agency.test.", "server2.agency.test."}},
		{"configured alias, the moment the server answers (joins the startup resolution)", "example.test.", []string{"client1.agency.test.", "server1.agency.test."}},
	} {
		tag := "herd-" + strings.SplitN(c.qname, ".", 2)[0]
		if c.qname == "example.test." {
			tag = "herd-apex"
		}
		port, tport, stop, err := h.coldServer(tag, false)
		if err != nil {
			return nil, err
		}
		kv, err := h.herd(tag+".txt", "-server", fmt.Sprintf("127.0.0.1:%d", port), "-name", c.qname, "-n", n,
			"-qtypes", "A,AAAA", "-wait-zone", "example.test.")
		if err != nil {
			stop()
			return nil, err
		}
		// Anything still in flight (a refresh cannot be due yet) has been counted on arrival.
		st, err := targetStats(tport)
		stop()
		if err != nil {
			return nil, err
		}
		res := herdResult{Case: c.name, Name: c.qname, Herd: kv, Counts: map[string]int{}}
		for _, name := range c.names {
			for _, t := range []string{"A", "AAAA"} {
				res.Counts[name+" "+t] = atoi(st["q "+name+" "+t])
				res.Total += res.Counts[name+" "+t]
			}
		}
		keys := make([]string, 0, len(res.Counts))
		for k := range res.Counts {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%d", k, res.Counts[k]))
		}
		h.logf("herd %s: %s answered (%s retried), upstream %s", c.qname, kv["answered"], kv["retried"], strings.Join(parts, ", "))
		out = append(out, res)
	}
	return out, nil
}
