package flatten

import (
	"fmt"
	"net"
	"net/netip"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/miekg/dns"
)

// failoverRecords: a primary and a backup target, each with A and AAAA.
var failoverRecords = []string{
	"primary.agency.test. 60 IN A 192.0.2.1",
	"primary.agency.test. 60 IN AAAA 2001:db8::1",
	"backup.agency.test. 60 IN A 192.0.2.2",
	"backup.agency.test. 60 IN AAAA 2001:db8::2",
}

// startFailover starts example.org flattened to primary, then backup, through u.
func startFailover(t *testing.T, u *fakeUpstream, lines ...string) server {
	t.Helper()
	lines = append([]string{"alias @ primary.agency.test. backup.agency.test.", "upstream " + u.Addr, "timeout 500ms"}, lines...)
	srv, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), lines...))
	return srv
}

// servfailer answers every query with SERVFAIL while failing is set, and from u otherwise.
func servfailer(u *fakeUpstream, failing *atomic.Bool) dns.HandlerFunc {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		if failing.Load() {
			m := new(dns.Msg)
			m.SetRcode(r, dns.RcodeServerFailure)
			w.WriteMsg(m)
			return
		}
		w.WriteMsg(u.answer(r))
	}
}

func TestFailoverPrimaryNXDOMAIN(t *testing.T) {
	u := newFakeUpstream(t, failoverRecords[2:]...) // primary does not exist
	u.setRecursive()
	srv := startFailover(t, u)
	before := metric(t, "failover_answers_total", "dns://127.0.0.1:0", "example.org.", "")
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		m := query(t, srv, "udp", "example.org.", qt, 1232)
		want := map[uint16]string{dns.TypeA: "192.0.2.2", dns.TypeAAAA: "2001:db8::2"}[qt]
		checkAddrs(t, m, "example.org.", want)
		if e := ede(m); e != nil {
			t.Errorf("%s: EDE %v on the backup's fresh answer", dns.TypeToString[qt], e)
		}
	}
	if d := metric(t, "failover_answers_total", "dns://127.0.0.1:0", "example.org.", "") - before; d != 2 {
		t.Errorf("failover_answers_total moved by %v, want 2", d)
	}
}

func TestFailoverPrimaryDead(t *testing.T) {
	u := newFakeUpstream(t, failoverRecords...)
	u.setRecursive()
	var asked atomic.Int32
	u.handle("primary.agency.test.", func(dns.ResponseWriter, *dns.Msg) { asked.Add(1) }) // never answers
	srv := startFailover(t, u)

	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 1232), "example.org.", "192.0.2.2")
	// Once the primary's failure is known, clients no longer wait for it: many queries in a row
	// cost the primary no question (only the refresher's backoff retries, at most one or two
	// in the time these take), and each is answered by the backup.
	n := asked.Load()
	for range 50 {
		m := query(t, srv, "udp", "example.org.", dns.TypeAAAA, 1232)
		checkAddrs(t, m, "example.org.", "2001:db8::2")
	}
	if d := asked.Load() - n; d > 4 {
		t.Errorf("50 client queries caused %d questions for the dead primary, want only the refresher's retries", d)
	}
}

func TestFailoverPrimaryWithoutAAAA(t *testing.T) {
	u := newFakeUpstream(t, failoverRecords[0], failoverRecords[2], failoverRecords[3])
	u.setRecursive()
	srv := startFailover(t, u)
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.1")
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeAAAA, 0), "example.org.", "2001:db8::2")
}

func TestFailoverNoTargetHasTheType(t *testing.T) {
	// Neither target has AAAA: NODATA with the zone's SOA, not SERVFAIL.
	u := newFakeUpstream(t, failoverRecords[0], failoverRecords[2])
	u.setRecursive()
	srv := startFailover(t, u)
	m := query(t, srv, "udp", "example.org.", dns.TypeAAAA, 0)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
		t.Fatalf("want NODATA with the SOA, got\n%s", m)
	}
}

func TestFailoverAllTargetsFail(t *testing.T) {
	u := newFakeUpstream(t, failoverRecords...)
	u.setRecursive()
	var failing atomic.Bool
	failing.Store(true)
	u.handle("primary.agency.test.", servfailer(u, &failing))
	u.handle("backup.agency.test.", func(dns.ResponseWriter, *dns.Msg) {}) // never answers
	srv := startFailover(t, u)
	m := query(t, srv, "udp", "example.org.", dns.TypeA, 1232)
	if m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL\n%s", dns.RcodeToString[m.Rcode], m)
	}
	// The SERVFAIL says why the first target failed.
	if e := ede(m); e == nil || e.ExtraText != "upstream answered SERVFAIL for primary.agency.test." {
		t.Errorf("EDE %v, want the primary's failure", e)
	}
}

func TestFailoverSwitchesBackWhenPrimaryRecovers(t *testing.T) {
	u := newFakeUpstream(t, failoverRecords...)
	u.setRecursive()
	var failing atomic.Bool
	failing.Store(true)
	u.handle("primary.agency.test.", servfailer(u, &failing))
	srv := startFailover(t, u)
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.2")

	// The primary recovers: the refresher's next retry (backoff from 1 s) finds it, and clients
	// are answered by it again without asking for it themselves.
	failing.Store(false)
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := query(t, srv, "udp", "example.org.", dns.TypeA, 0)
		if got := addrs(t, m, "example.org."); len(got) == 1 && got[0] == "192.0.2.1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still answered by the backup after the primary recovered:\n%s", m)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFailoverPrefersFreshBackupOverStalePrimary(t *testing.T) {
	// The primary answers once, then fails; when its entry expires (TTL 1 s) the backup's fresh
	// answer is served rather than the primary's stale one. The stale answer would be served
	// without a backup (TestFailureLadder).
	u := newFakeUpstream(t, failoverRecords...)
	u.setRecursive()
	var failing atomic.Bool
	u.handle("primary.agency.test.", servfailer(u, &failing))
	srv := startFailover(t, u, "ttl 1 1")
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.1")
	failing.Store(true)
	waitFor(t, "the backup's answer", func() bool {
		m := query(t, srv, "udp", "example.org.", dns.TypeA, 1232)
		got := addrs(t, m, "example.org.")
		return len(got) == 1 && got[0] == "192.0.2.2" && ede(m) == nil
	})
}

// healthTargets serves primary.agency.test (127.0.0.2, 127.0.0.3) and backup.agency.test
// (127.0.0.4), each address with a TCP listener on one shared port, and starts example.org
// flattened to primary, then backup, with health checks of that port every 100ms.
func healthTargets(t *testing.T, extra ...string) (server, int, map[string]net.Listener) {
	t.Helper()
	ips := []netip.Addr{lo4(2), lo4(3), lo4(4)}
	port, ls := sharedPort(t, ips, listenTCP)
	listeners := map[string]net.Listener{}
	for i, ip := range ips {
		listeners[ip.String()] = ls[i]
	}
	u := newFakeUpstream(t,
		"primary.agency.test. 60 IN A 127.0.0.2", "primary.agency.test. 60 IN A 127.0.0.3",
		"backup.agency.test. 60 IN A 127.0.0.4")
	u.setRecursive()
	srv := startFailover(t, u, append([]string{fmt.Sprintf("health_check tcp %d 100ms", port)}, extra...)...)
	return srv, port, listeners
}

// answersWith waits until example.org A is answered with exactly want.
func answersWith(t *testing.T, srv server, want ...string) {
	t.Helper()
	slices.Sort(want)
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if got = addrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org."); slices.Equal(got, want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("answer %v, want %v", got, want)
}

func TestHealthCheckDropsDownAddressesAndFailsOpen(t *testing.T) {
	srv, port, ls := healthTargets(t, "explain")
	answersWith(t, srv, "127.0.0.2", "127.0.0.3")

	// One of the primary's addresses stops listening: it is dropped after two failed probes.
	ls["127.0.0.3"].Close()
	answersWith(t, srv, "127.0.0.2")
	wantLines(t, explainLines(t, srv, "example.org."),
		fmt.Sprintf("health=127.0.0.3:%d state=down failures=", port),
		fmt.Sprintf("health=127.0.0.2:%d state=up failures=0", port),
		"last_error='dial tcp 127.0.0.3:",
	)

	// None of the primary's addresses is healthy: the backup answers.
	ls["127.0.0.2"].Close()
	answersWith(t, srv, "127.0.0.4")

	// Nothing is healthy anywhere: fail open, with the first target's addresses.
	ls["127.0.0.4"].Close()
	answersWith(t, srv, "127.0.0.2", "127.0.0.3")

	// Back up after one good probe.
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.3:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	answersWith(t, srv, "127.0.0.3")
}

func TestHealthCheckNoProbeSurvivesReload(t *testing.T) {
	ips := []netip.Addr{lo4(2)}
	port, _ := sharedPort(t, ips, listenTCP)
	u := newFakeUpstream(t, "primary.agency.test. 60 IN A 127.0.0.2")
	u.setRecursive()
	before := healthLoops()
	cf := flattenCorefile(exampleZone(t), "alias @ primary.agency.test.", "upstream "+u.Addr,
		fmt.Sprintf("health_check tcp %d 100ms", port))
	inst := startReloadable(t, cf)
	waitFor(t, "the health checker", func() bool { return healthLoops()-before == 1 })
	for i := range 3 {
		next, err := inst.Restart(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(cf), ServerTypeName: "dns"})
		if err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		inst = next
		// The old instance's checker has stopped when Restart returns (OnShutdown waits for it).
		if n := healthLoops() - before; n > 1 {
			t.Errorf("after reload %d: %d health checkers running, want 1", i+1, n)
		}
		waitFor(t, "the new instance's health checker", func() bool { return healthLoops()-before == 1 })
	}
	stopInstance(t, inst)
	if n := healthLoops() - before; n != 0 {
		t.Errorf("after shutdown: %d health checkers running, want 0", n)
	}
}

// healthLoops counts the health checkers' background loops.
func healthLoops() int {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 2)
	return strings.Count(b.String(), "flatten.(*healthChecker).loop(")
}

// TestHealthCheckStateSurvivesReload: an address marked down stays out of answers across a
// reload. Without the handover the new instance would serve it again (never probed, or failed
// only once, counts as up) until it failed two more probes, here 5 s apart.
func TestHealthCheckStateSurvivesReload(t *testing.T) {
	ips := []netip.Addr{lo4(2), lo4(3)}
	port, ls := sharedPort(t, ips, listenTCP)
	ls[1].Close()
	u := newFakeUpstream(t, "primary.agency.test. 60 IN A 127.0.0.2", "primary.agency.test. 60 IN A 127.0.0.3")
	u.setRecursive()
	cf := flattenCorefile(exampleZone(t), "alias @ primary.agency.test.", "upstream "+u.Addr,
		fmt.Sprintf("health_check tcp %d 100ms", port))
	inst := startReloadable(t, cf)
	sl := inst.Servers()[0]
	srv := server{udp: sl.LocalAddr().String(), tcp: sl.Addr().String()}
	answersWith(t, srv, "127.0.0.2")
	down := func() float64 { return metric(t, "health_down_addresses", coreServerLabel, "example.org.", "") }
	if g := down(); g != 1 {
		t.Errorf("health_down_addresses = %v before the reload, want 1", g)
	}

	next, err := inst.Restart(caddy.CaddyfileInput{Filepath: "Corefile", ServerTypeName: "dns",
		Contents: []byte(strings.Replace(cf, " 100ms", " 5s", 1))})
	if err != nil {
		t.Fatal(err)
	}
	defer stopInstance(t, next)
	for range 20 {
		checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org.", "127.0.0.2")
	}
	// The gauge counts the running instance's addresses: neither both instances' nor none.
	if g := down(); g != 1 {
		t.Errorf("health_down_addresses = %v after the reload, want 1", g)
	}
}
