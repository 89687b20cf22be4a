package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// The agency case: an agency zone (server1 A, client0..client99 CNAME server1) and 100 client
// zones, each a server block whose apex flatten follows to clientN.agency.test, with an NSD
// secondary of the 100 client zones. How long after a change of server1's address every client
// apex serves it on the flattening CoreDNS and on NSD, and how many questions that cost:
//
//   - external: the agency zone on a BIND 9 primary that sends NOTIFY to a CoreDNS block with
//     `flatten { notify_from 127.0.0.1 }`; the client blocks resolve through BIND (`upstream`).
//   - self: the agency zone as a *file* block (`reload 1s`) of the same CoreDNS; the client
//     blocks resolve through this server, whose watch of the zones it serves follows the serial.

const (
	agencyClients = 100
	// agencyTTL is the TTL of server1 and of every clientN CNAME: far longer than the case, so
	// only the change detection (NOTIFY or the serial watch) can make flatten follow.
	agencyTTL = 300
	// agencyTTLMin is flatten's default `ttl MIN`: it sends NOTIFY to a zone's secondaries at
	// most once per it. Each change starts at least that long after the previous one reached
	// NSD, so that the limit never holds a change back.
	agencyTTLMin = 5 * time.Second
	// agencySweep is the least time between two sweeps over the pending client apexes.
	agencySweep = 20 * time.Millisecond
	// agencyWait bounds each wait for a change to reach every apex.
	agencyWait = 15 * time.Second
	// The goals for t1 - t0 and t2 - t0.
	agencyGoalMedian = 2.0
	agencyGoalMax    = 5.0
)

// agencyChange is one change of server1's address.
type agencyChange struct {
	Address string `json:"address"`
	Serial  int    `json:"serial"`
	// external: BIND's log line "sending notifies (serial N)" - t0; -1 when not found.
	NotifySecs float64 `json:"notify_s,omitempty"`
	// self: the agency block serving the new address (t_f) - t0.
	AgencySecs float64 `json:"agency_s,omitempty"`
	FirstSecs  float64 `json:"first_client_s"` // the first client apex on CoreDNS - t0
	CoreSecs   float64 `json:"coredns_s"`      // t1 - t0: the last client apex on CoreDNS
	NSDSecs    float64 `json:"nsd_s"`          // t2 - t0: the last client apex on NSD
	// Questions for the chains' names from this change's t0 to the next's (or to a pause after
	// the last), by "clientN TYPE" / "server1 TYPE" / "other TYPE": external, from BIND's
	// querylog; self, from the agency block's log plugin (flatten's lookups through the server).
	Questions map[string]int `json:"questions"`
	// A and AAAA questions for the chains in all; the most for one clientN name and type.
	ChainQuestions int `json:"chain_questions"`
	MaxPerName     int `json:"max_per_name_type"`
	// The harness's polls that got no answer within 200 ms (CoreDNS, NSD, the agency block), and
	// its longest sweep over the pending client apexes on CoreDNS and on NSD, in seconds.
	Lost      [3]int  `json:"polls_lost"`
	SweepCore float64 `json:"sweep_coredns_max_s"`
	SweepNSD  float64 `json:"sweep_nsd_max_s"`
}

// agencyCase is one of the two ways the agency zone is served.
type agencyCase struct {
	Name     string         `json:"name"`
	SyncSecs float64        `json:"first_sync_s"` // NSD's exec to all 100 apexes on it
	Changes  []agencyChange `json:"changes"`

	FirstMedian  float64 `json:"first_median_s"`
	CoreMedian   float64 `json:"coredns_median_s"`
	CoreMax      float64 `json:"coredns_max_s"`
	NSDMedian    float64 `json:"nsd_median_s"`
	NSDMax       float64 `json:"nsd_max_s"`
	AfterMedian  float64 `json:"after_agency_median_s"` // self: t1 - t_f
	AfterMax     float64 `json:"after_agency_max_s"`
	NotifyMedian float64 `json:"notify_median_s"` // external: BIND's NOTIFY - t0
	// The most A and AAAA questions per chain (ChainQuestions / clients) of any change; the most
	// per chain for one hop and type ("clientN A" / clients, "server1 AAAA" / clients, ...); the
	// most for one clientN name and type.
	PerChainMax float64 `json:"per_chain_max"`
	PerHopMax   float64 `json:"per_hop_max"`
	PerNameMax  int     `json:"per_name_max"`
	// Questions at startup (before the first change), for reference.
	StartupQuestions int `json:"startup_questions"`

	Error string `json:"error,omitempty"`
}

// agencyResult is the agency case.
type agencyResult struct {
	Clients  int         `json:"clients"`
	BIND     string      `json:"bind"`
	NSD      string      `json:"nsd"`
	External *agencyCase `json:"external"`
	Self     *agencyCase `json:"self"`
}

// agencyZoneText is agency.test with server1 at addr and clientN CNAME server1.
func agencyZoneText(serial int, addr string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "$ORIGIN agency.test.\n@ 3600 IN SOA ns1 hostmaster %d 7200 3600 1209600 300\n@ 3600 IN NS ns1\nns1 3600 IN A 192.0.2.53\n", serial)
	fmt.Fprintf(&b, "server1 %d IN A %s\n", agencyTTL, addr)
	for i := range agencyClients {
		fmt.Fprintf(&b, "client%d %d IN CNAME server1.agency.test.\n", i, agencyTTL)
	}
	return b.String()
}

// agencyCorefile is the agency block (its lines given) and the 100 client blocks, each
// flattening its apex to clientN.agency.test (through upstream when not empty) and sending NOTIFY
// to NSD.
func agencyCorefile(dir string, port, nsdPort int, upstream string, agencyLines ...string) (string, error) {
	var b strings.Builder
	b.WriteString(corefileBlock("agency.test", port, agencyLines...))
	for i := range agencyClients {
		zone := fmt.Sprintf("client%d.test", i)
		p, err := write(dir, "db."+zone, "$ORIGIN "+zone+".\n"+fmt.Sprintf(soaNS, zone+"."))
		if err != nil {
			return "", err
		}
		fl := []string{"flatten {", "    alias @ client" + fmt.Sprint(i) + ".agency.test"}
		if upstream != "" {
			fl = append(fl, "    upstream "+upstream)
		}
		fl = append(fl, "}", "file "+abs(p)+" "+zone, "transfer {", fmt.Sprintf("    to 127.0.0.1:%d", nsdPort), "}")
		b.WriteString(corefileBlock(zone, port, fl...))
	}
	return b.String(), nil
}

// nsdAgencyConf is an NSD secondary of the 100 client zones (as nsdConf, one zone each).
func nsdAgencyConf(dir string, port, primary int) string {
	c := nsdConf(dir, port, primary)
	c = c[:strings.Index(c, "zone:\n")]
	var b strings.Builder
	b.WriteString(c)
	for i := range agencyClients {
		fmt.Fprintf(&b, "zone:\n  name: client%[2]d.test\n  zonefile: \"%[1]s/client%[2]d.test.zone\"\n  request-xfr: AXFR 127.0.0.1@%[3]d NOKEY\n  allow-notify: 127.0.0.1 NOKEY\n", dir, i, primary)
	}
	return b.String()
}

// namedAgencyConf is BIND 9 as the primary of agency.test: NOTIFY only to flatten's port
// (notify explicit, also-notify), without the default 5 s notify-delay between two NOTIFYs of the
// zone; every question logged to query.log, the rest to named.log (UTC, milliseconds); rndc
// through a key made for the run.
func namedAgencyConf(dir string, port, rndcPort, flattenPort int, secret string) string {
	return fmt.Sprintf(`options {
  directory "%[1]s";
  listen-on port %[2]d { 127.0.0.1; };
  listen-on-v6 { none; };
  pid-file "%[1]s/named.pid";
  session-keyfile "%[1]s/session.key";
  managed-keys-directory "%[1]s";
  recursion no;
  dnssec-validation no;
  allow-query { any; };
  querylog yes;
  notify explicit;
};
key "bench" { algorithm hmac-sha256; secret "%[5]s"; };
controls { inet 127.0.0.1 port %[3]d allow { 127.0.0.1; } keys { "bench"; }; };
logging {
  channel q { file "%[1]s/query.log"; print-time iso8601-utc; };
  channel g { file "%[1]s/named.log"; print-time iso8601-utc; severity info; };
  category queries { q; };
  category default { g; };
  category notify { g; };
};
zone "agency.test" {
  type primary;
  file "%[1]s/agency.test.db";
  notify explicit;
  notify-delay 0;
  also-notify { 127.0.0.1 port %[4]d; };
};
`, dir, port, rndcPort, flattenPort, secret)
}

func sbinPath(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return "/usr/sbin/" + name
}

func hasA(r *dns.Msg, addr string) bool {
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok && a.A.String() == addr {
			return true
		}
	}
	return false
}

// followed is what a wait for an address saw, as durations from its t0.
type followed struct {
	first, core, nsd, agency time.Duration
	// Polls without an answer within 200 ms (CoreDNS, NSD, the agency block), and the longest
	// sweep over the pending apexes on CoreDNS and on NSD (the resolution of first, core, nsd).
	lostCore, lostNSD, lostAgency int
	sweepCore, sweepNSD           time.Duration
}

// follow polls, until every one serves addr or limit is up, each on its own (so that a slow
// sweep of one does not delay the others' times): the apex A of each client not yet serving addr
// on CoreDNS (port), a sweep every agencySweep; the same on NSD (nsdPort, unless 0); and
// server1.agency.test on agencyPort (unless 0), every agencySweep.
func (h *harness) follow(port, nsdPort, agencyPort int, addr string, t0 time.Time, limit time.Duration) (followed, error) {
	var f followed
	var wg sync.WaitGroup
	errs := make([]error, 3)
	sweeper := func(k, port int, first, at, sweepMax *time.Duration, lost *int) {
		defer wg.Done()
		pending := map[int]bool{}
		for i := range agencyClients {
			pending[i] = true
		}
		for {
			sweep := time.Now()
			for i := range pending {
				r, err := ask(port, fmt.Sprintf("client%d.test.", i), dns.TypeA, 200*time.Millisecond)
				if err != nil {
					*lost++
				}
				if err != nil || !hasA(r, addr) {
					continue
				}
				delete(pending, i)
				if first != nil && *first == 0 {
					*first = time.Since(t0)
				}
			}
			*sweepMax = max(*sweepMax, time.Since(sweep))
			if len(pending) == 0 {
				*at = time.Since(t0)
				return
			}
			if time.Since(t0) > limit {
				errs[k] = fmt.Errorf("%d client apexes on port %d", len(pending), port)
				return
			}
			if err := h.sleep(time.Until(sweep.Add(agencySweep))); err != nil {
				errs[k] = err
				return
			}
		}
	}
	wg.Add(1)
	go sweeper(0, port, &f.first, &f.core, &f.sweepCore, &f.lostCore)
	if nsdPort != 0 {
		wg.Add(1)
		go sweeper(1, nsdPort, nil, &f.nsd, &f.sweepNSD, &f.lostNSD)
	}
	if agencyPort != 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				poll := time.Now()
				r, err := ask(agencyPort, "server1.agency.test.", dns.TypeA, 200*time.Millisecond)
				if err != nil {
					f.lostAgency++
				} else if hasA(r, addr) {
					f.agency = time.Since(t0)
					return
				}
				if time.Since(t0) > limit {
					errs[2] = fmt.Errorf("the agency block on port %d", agencyPort)
					return
				}
				if err := h.sleep(time.Until(poll.Add(agencySweep))); err != nil {
					errs[2] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := h.ctx.Err(); err != nil {
		return f, err
	}
	var not []string
	for _, err := range errs {
		if err != nil {
			not = append(not, err.Error())
		}
	}
	if len(not) > 0 {
		return f, fmt.Errorf("after %v, not serving A %s: %s", limit, addr, strings.Join(not, "; "))
	}
	return f, nil
}

// agency runs both cases.
func (h *harness) agency(changes int) (*agencyResult, error) {
	res := &agencyResult{Clients: agencyClients,
		BIND: firstLine(output(sbinPath("named"), "-v")),
		NSD:  strings.TrimSpace(firstLine(output(nsdPath(), "-v")))}
	var err error
	if res.External, err = h.agencyExternal(changes); err != nil {
		return nil, fmt.Errorf("BIND primary: %w", err)
	}
	h.procs.stopAll()
	if res.Self, err = h.agencySelf(changes); err != nil {
		return nil, fmt.Errorf("self-served: %w", err)
	}
	h.procs.stopAll()
	return res, nil
}

// agencyStart starts the flattening CoreDNS and NSD (in dir/nsd) and waits for every client apex
// to serve 192.0.2.10 on both.
func (h *harness) agencyStart(c *agencyCase, dir, corefile string, port, nsdPort int) error {
	conf, err := write(dir, "Corefile", corefile)
	if err != nil {
		return err
	}
	core, err := h.procs.start("coredns-agency-"+c.Name, h.cfg.ServerCPU, []string{"GOMAXPROCS=1"}, h.cfg.CoreDNS, "-conf", conf)
	if err != nil {
		return err
	}
	if _, err := h.follow(port, 0, 0, "192.0.2.10", time.Now(), 30*time.Second); err != nil {
		return fmt.Errorf("CoreDNS (log %s): %w", core.log, err)
	}
	nsdDir := filepath.Join(dir, "nsd")
	if err := mkdir(nsdDir); err != nil {
		return err
	}
	nconf, _ := write(nsdDir, "nsd.conf", nsdAgencyConf(nsdDir, nsdPort, port))
	nsd, err := h.procs.start("nsd-agency-"+c.Name, h.cfg.ServerCPU, nil, nsdPath(), "-d", "-c", nconf)
	if err != nil {
		return err
	}
	if _, err := h.follow(port, nsdPort, 0, "192.0.2.10", time.Now(), 60*time.Second); err != nil {
		return fmt.Errorf("NSD (log %s): %w", filepath.Join(nsdDir, "nsd.log"), err)
	}
	c.SyncSecs = time.Since(nsd.started).Seconds()
	h.logf("agency %s: every client apex on CoreDNS and NSD (NSD %.1f s after its exec)", c.Name, c.SyncSecs)
	// Anything the startup set going (BIND's NOTIFY at its load, retried) is over before the
	// first change, and flatten's NOTIFY limit (once per ttl MIN per zone, counted from the
	// first serial it showed, at the latest a tick after NSD's first transfer) does not hold
	// the first change back.
	return h.sleep(agencyTTLMin + 1500*time.Millisecond)
}

// changeLoop makes n changes: each waits until agencyTTLMin after the previous one reached NSD
// (plus a random 0-1 s, so that changes do not fall at the same point of the 1 s ticks), then
// mark (the window of questions ends), then change (t0 is taken just before it), then the waits.
// mark is called once more after the last change, a second after it reached NSD.
func (h *harness) changeLoop(c *agencyCase, n, port, nsdPort, agencyPort int, mark func(i int), change func(serial int, addr string) error) error {
	rng := mrand.New(mrand.NewPCG(7, 8))
	serial := 1
	for i := range n {
		if i > 0 {
			if err := h.sleep(agencyTTLMin + time.Duration(rng.IntN(1000))*time.Millisecond); err != nil {
				return err
			}
		}
		mark(i)
		serial++
		addr := fmt.Sprintf("192.0.2.%d", 20+i%200)
		t0 := time.Now()
		if err := change(serial, addr); err != nil {
			return err
		}
		f, err := h.follow(port, nsdPort, agencyPort, addr, t0, agencyWait)
		if err != nil {
			c.Error = fmt.Sprintf("change %d: %v", i+1, err)
			h.logf("ERROR: agency %s: %s", c.Name, c.Error)
			break
		}
		x := agencyChange{Address: addr, Serial: serial, FirstSecs: f.first.Seconds(), CoreSecs: f.core.Seconds(), NSDSecs: f.nsd.Seconds(),
			AgencySecs: f.agency.Seconds(), Questions: map[string]int{}}
		x.Lost, x.SweepCore, x.SweepNSD = [3]int{f.lostCore, f.lostNSD, f.lostAgency}, f.sweepCore.Seconds(), f.sweepNSD.Seconds()
		c.Changes = append(c.Changes, x)
		h.logf("agency %s: change %d to %s: first client %.2f s, all on CoreDNS %.2f s, all on NSD %.2f s%s; polls lost %v, longest sweep %.0f / %.0f ms", c.Name, i+1, addr,
			x.FirstSecs, x.CoreSecs, x.NSDSecs, map[bool]string{true: fmt.Sprintf(", agency block %.2f s", x.AgencySecs), false: ""}[agencyPort != 0], x.Lost, 1000*x.SweepCore, 1000*x.SweepNSD)
	}
	if err := h.sleep(time.Second); err != nil {
		return err
	}
	mark(len(c.Changes))
	return nil
}

// summarize fills the medians and maxima of c.
func (c *agencyCase) summarize() {
	var first, core, nsd, after, notify []float64
	for _, x := range c.Changes {
		first, core, nsd = append(first, x.FirstSecs), append(core, x.CoreSecs), append(nsd, x.NSDSecs)
		if x.AgencySecs > 0 {
			after = append(after, x.CoreSecs-x.AgencySecs)
		}
		if x.NotifySecs > 0 {
			notify = append(notify, x.NotifySecs)
		}
		c.PerChainMax = max(c.PerChainMax, float64(x.ChainQuestions)/agencyClients)
		c.PerNameMax = max(c.PerNameMax, x.MaxPerName)
		for _, k := range []string{"clientN A", "clientN AAAA", "server1 A", "server1 AAAA"} {
			c.PerHopMax = max(c.PerHopMax, float64(x.Questions[k])/agencyClients)
		}
	}
	c.FirstMedian = median(first)
	c.CoreMedian, c.CoreMax = median(core), slices.Max(append(core, 0))
	c.NSDMedian, c.NSDMax = median(nsd), slices.Max(append(nsd, 0))
	if len(after) > 0 {
		c.AfterMedian, c.AfterMax = median(after), slices.Max(after)
	}
	if len(notify) > 0 {
		c.NotifyMedian = median(notify)
	}
}

// agencyExternal is case 1: BIND 9 as the agency's primary, NOTIFY to flatten.
func (h *harness) agencyExternal(n int) (*agencyCase, error) {
	c := &agencyCase{Name: "external"}
	pp, err := h.ports.take(4)
	if err != nil {
		return nil, err
	}
	port, bport, rport, nsdPort := pp[0], pp[1], pp[2], pp[3]
	dir := abs(filepath.Join(h.dir, "agency-external"))
	bdir := filepath.Join(dir, "bind")
	if err := mkdir(bdir); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	secret := base64.StdEncoding.EncodeToString(key)
	zone := filepath.Join(bdir, "agency.test.db")
	if err := writeAtomic(zone, agencyZoneText(1, "192.0.2.10")); err != nil {
		return nil, err
	}
	nconf, _ := write(bdir, "named.conf", namedAgencyConf(bdir, bport, rport, port, secret))
	rconf, _ := write(bdir, "rndc.conf", fmt.Sprintf("key \"bench\" { algorithm hmac-sha256; secret \"%s\"; };\noptions { default-key \"bench\"; default-server 127.0.0.1; default-port %d; };\n", secret, rport))
	named, err := h.procs.start("named-agency", h.cfg.ServerCPU, nil, sbinPath("named"), "-f", "-n", "1", "-4", "-c", nconf)
	if err != nil {
		return nil, err
	}
	if _, err := h.waitAnswer(bport, "server1.agency.test.", dns.TypeA, []string{"server1.agency.test. A 192.0.2.10"}, 30*time.Second); err != nil {
		return nil, fmt.Errorf("BIND (logs %s, %s): %w", named.log, filepath.Join(bdir, "named.log"), err)
	}

	corefile, err := agencyCorefile(dir, port, nsdPort, fmt.Sprintf("127.0.0.1:%d", bport), "flatten {", "    notify_from 127.0.0.1", "}")
	if err != nil {
		return nil, err
	}
	if err := h.agencyStart(c, dir, corefile, port, nsdPort); err != nil {
		return nil, err
	}

	qlog := filepath.Join(bdir, "query.log")
	size := func() int64 {
		st, err := os.Stat(qlog)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	marks := []int64{size()}
	t0s := []time.Time{}
	rndc := sbinPath("rndc")
	err = h.changeLoop(c, n, port, nsdPort, 0, func(i int) {
		if i > 0 {
			marks = append(marks, size())
		}
	}, func(serial int, addr string) error {
		t0s = append(t0s, time.Now())
		if err := writeAtomic(zone, agencyZoneText(serial, addr)); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, rndc, "-c", rconf, "reload", "agency.test").CombinedOutput()
		if err != nil {
			return fmt.Errorf("rndc reload agency.test: %v: %s", err, strings.TrimSpace(string(out)))
		}
		if !strings.Contains(string(out), "queued") {
			h.logf("agency: rndc reload agency.test: %s", strings.TrimSpace(string(out)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	// Questions from BIND's querylog, between the marks: the first window is the startup.
	b, _ := os.ReadFile(qlog)
	startup, _, _ := tally(bindLogQuestions(b[:min(int64(len(b)), marks[0])]))
	c.StartupQuestions = startup
	for i := range c.Changes {
		lo, hi := marks[i], int64(len(b))
		if i+1 < len(marks) {
			hi = min(hi, marks[i+1])
		}
		c.Changes[i].ChainQuestions, c.Changes[i].MaxPerName, c.Changes[i].Questions = tally(bindLogQuestions(b[lo:hi]))
	}
	// When BIND sent each NOTIFY, from its log.
	sent := notifyTimes(filepath.Join(bdir, "named.log"))
	for i := range c.Changes {
		c.Changes[i].NotifySecs = -1
		if at, ok := sent[c.Changes[i].Serial]; ok {
			c.Changes[i].NotifySecs = at.Sub(t0s[i]).Seconds()
		}
	}
	c.summarize()
	return c, nil
}

// bindLogQuestions reads the questions (name, type) of a stretch of BIND's querylog ("...
// query: NAME IN TYPE ...").
func bindLogQuestions(b []byte) [][2]string {
	var out [][2]string
	for _, l := range strings.Split(string(b), "\n") {
		_, q, ok := strings.Cut(l, " query: ")
		if !ok {
			continue
		}
		f := strings.Fields(q)
		if len(f) < 3 {
			continue
		}
		out = append(out, [2]string{f[0], f[2]})
	}
	return out
}

// tally counts the A and AAAA questions for the chains' names (clientN.agency.test and
// server1.agency.test), the most for one clientN name and type (server1 is a hop of every
// chain), and every question by "clientN TYPE", "server1 TYPE" or "other TYPE".
func tally(qs [][2]string) (chain, perName int, by map[string]int) {
	by = map[string]int{}
	names := map[string]int{}
	for _, q := range qs {
		name, qtype := strings.ToLower(strings.TrimSuffix(q[0], ".")), q[1]
		kind := "other"
		switch {
		case name == "server1.agency.test":
			kind = "server1"
		case strings.HasPrefix(name, "client") && strings.HasSuffix(name, ".agency.test"):
			kind = "clientN"
		}
		by[kind+" "+qtype]++
		if kind != "other" && (qtype == "A" || qtype == "AAAA") {
			chain++
		}
		if kind == "clientN" && (qtype == "A" || qtype == "AAAA") {
			names[name+" "+qtype]++
			perName = max(perName, names[name+" "+qtype])
		}
	}
	return chain, perName, by
}

// notifyTimes reads BIND's "zone agency.test/IN: sending notifies (serial N)" lines (print-time
// iso8601-utc) into serial -> time.
func notifyTimes(path string) map[int]time.Time {
	out := map[int]time.Time{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		i := strings.Index(l, "sending notifies (serial ")
		if i < 0 {
			continue
		}
		var serial int
		if _, err := fmt.Sscanf(l[i:], "sending notifies (serial %d)", &serial); err != nil {
			continue
		}
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if t, err := time.Parse("2006-01-02T15:04:05.000Z", f[0]); err == nil {
			if _, seen := out[serial]; !seen {
				out[serial] = t
			}
		}
	}
	return out
}

// agencySelf is case 2: the agency zone as a *file* block of the same CoreDNS.
func (h *harness) agencySelf(n int) (*agencyCase, error) {
	c := &agencyCase{Name: "self"}
	pp, err := h.ports.take(2)
	if err != nil {
		return nil, err
	}
	port, nsdPort := pp[0], pp[1]
	dir := abs(filepath.Join(h.dir, "agency-self"))
	if err := mkdir(dir); err != nil {
		return nil, err
	}
	zone := filepath.Join(dir, "db.agency.test")
	if err := writeAtomic(zone, agencyZoneText(1, "192.0.2.10")); err != nil {
		return nil, err
	}
	// log in the agency block only: a line for each question that block answers, flatten's
	// resolutions through the server among them.
	corefile, err := agencyCorefile(dir, port, nsdPort, "", "file "+zone+" agency.test {", "    reload 1s", "}", "log")
	if err != nil {
		return nil, err
	}
	if err := h.agencyStart(c, dir, corefile, port, nsdPort); err != nil {
		return nil, err
	}
	logPath := filepath.Join(h.procs.logDir, "coredns-agency-self.log")
	size := func() int64 {
		st, err := os.Stat(logPath)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	marks := []int64{size()}
	err = h.changeLoop(c, n, port, nsdPort, port, func(i int) {
		if i > 0 {
			marks = append(marks, size())
		}
	}, func(serial int, addr string) error {
		return writeAtomic(zone, agencyZoneText(serial, addr))
	})
	if err != nil {
		return nil, err
	}
	b, _ := os.ReadFile(logPath)
	c.StartupQuestions, _, _ = tally(coreDNSLogQuestions(b[:min(int64(len(b)), marks[0])]))
	for i := range c.Changes {
		lo, hi := marks[i], int64(len(b))
		if i+1 < len(marks) {
			hi = min(hi, marks[i+1])
		}
		c.Changes[i].ChainQuestions, c.Changes[i].MaxPerName, c.Changes[i].Questions = tally(coreDNSLogQuestions(b[lo:hi]))
	}
	c.summarize()
	return c, nil
}

// coreDNSLogQuestions reads the questions of a stretch of CoreDNS's log plugin output
// (`[INFO] REMOTE:PORT - ID "TYPE CLASS NAME PROTO ..." ...`) that flatten asked through the
// server: those from 127.0.0.1:53, the address its lookups through the server carry; the
// harness's own polls come from other ports.
func coreDNSLogQuestions(b []byte) [][2]string {
	var out [][2]string
	for _, l := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(l, "[INFO] 127.0.0.1:53 - ")
		if !ok {
			continue
		}
		_, q, ok := strings.Cut(rest, "\"")
		if !ok {
			continue
		}
		f := strings.Fields(q)
		if len(f) < 3 {
			continue
		}
		out = append(out, [2]string{f[2], f[0]})
	}
	return out
}
