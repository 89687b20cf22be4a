package flatten

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// switchableUpstream is an exchanger that answers client1.example.net with an A record or fails,
// as the test says, and counts questions.
type switchableUpstream struct {
	mu    sync.Mutex
	down  bool
	asked int
}

func (u *switchableUpstream) setDown(down bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.down = down
}

func (u *switchableUpstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.asked
}

func (u *switchableUpstream) exchange(_ context.Context, q question, name string) (*dns.Msg, error) {
	qtype := q.key.qtype
	u.mu.Lock()
	defer u.mu.Unlock()
	u.asked++
	if u.down {
		return nil, errTimeout(name)
	}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Response = true
	if qtype == dns.TypeA {
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 10}}}
	} else {
		// NODATA, negative TTL min(900, 600) (RFC 2308 5)
		soa, _ := dns.NewRR("example.net. 900 IN SOA ns.example.net. host.example.net. 1 7200 3600 1209600 600")
		m.Ns = []dns.RR{soa}
	}
	return m, nil
}

// zoneBelow stands for the *file* plugin under flatten: the apex SOA, and an apex A record
// when fallback is set.
func zoneBelow(fallback bool) test.HandlerFunc {
	return func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		soa, _ := dns.NewRR("example.org. 3600 IN SOA ns1.example.org. host.example.org. 1 7200 3600 1209600 300")
		q := r.Question[0]
		switch {
		case q.Qtype == dns.TypeSOA:
			m.Answer = []dns.RR{soa}
		case q.Qtype == dns.TypeA && fallback:
			rr, _ := dns.NewRR("example.org. 300 IN A 192.0.2.99")
			m.Answer = []dns.RR{rr}
		default:
			m.Ns = []dns.RR{soa}
		}
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	}
}

// newLadderFlatten is a Flatten for example.org -> client1.example.net over up, with an injected
// clock, not started: tests drive the cache directly.
func newLadderFlatten(up exchanger, clk *fakeClock, fallback bool) *Flatten {
	f := newTestFlatten()
	f.cfg.zones = []string{"example.org."}
	f.addAlias("example.org.", []string{"client1.example.net."}...)
	w := &walker{ex: up, maxDepth: defaultMaxDepth}
	f.build(w.resolve)
	f.pool.cache.now = clk.now
	f.Next = zoneBelow(fallback)
	return f
}

func serve(t *testing.T, f *Flatten, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	r := new(dns.Msg)
	r.SetQuestion("example.org.", qtype)
	if edns {
		r.SetEdns0(1232, false)
	}
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	if _, err := f.ServeDNS(context.Background(), rec, r); err != nil && rec.Msg == nil {
		t.Fatalf("no reply: %v", err)
	}
	if rec.Msg == nil {
		t.Fatal("no reply written")
	}
	return rec.Msg
}

func TestFailureLadder(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		t.Run(fmt.Sprintf("fallback=%v", fallback), func(t *testing.T) {
			clk := newFakeClock()
			up := &switchableUpstream{}
			f := newLadderFlatten(up, clk, fallback)
			f.cfg.serveStale = 10 * time.Minute

			// 1. fresh
			m := serve(t, f, dns.TypeA, true)
			if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 60 || ede(m) != nil {
				t.Fatalf("fresh: %v", m)
			}

			// 2. the upstream goes down; after expiry: stale, TTL 30, EDE 3
			up.setDown(true)
			clk.advance(61 * time.Second)
			m = serve(t, f, dns.TypeA, true)
			if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != staleTTL || m.Answer[0].(*dns.A).A.String() != "192.0.2.10" {
				t.Fatalf("stale: want the old address with TTL %d, got %v", staleTTL, m.Answer)
			}
			if e := ede(m); e == nil || e.InfoCode != dns.ExtendedErrorCodeStaleAnswer {
				t.Errorf("stale answer without EDE 3: %v", m)
			}
			// no EDNS, no EDE, same answer
			if m = serve(t, f, dns.TypeA, false); m.IsEdns0() != nil || len(m.Answer) != 1 {
				t.Errorf("stale answer to a non-EDNS client: %v", m)
			}

			// 3. past the stale window: the zone's own records, else SERVFAIL with EDE 22
			clk.advance(11 * time.Minute)
			m = serve(t, f, dns.TypeA, true)
			if fallback {
				if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.99" {
					t.Errorf("fallback: want the zone's 192.0.2.99, got %v", m)
				}
			} else {
				if m.Rcode != dns.RcodeServerFailure {
					t.Fatalf("past the stale window, no fallback: rcode %s", dns.RcodeToString[m.Rcode])
				}
				if e := ede(m); e == nil || e.InfoCode != dns.ExtendedErrorCodeNoReachableAuthority {
					t.Errorf("SERVFAIL without EDE 22: %v", m)
				}
			}
			if m.Rcode == dns.RcodeNameError {
				t.Errorf("NXDOMAIN for a name that exists")
			}

			// 4. the upstream recovers: once the failure is no longer remembered, fresh again
			up.setDown(false)
			clk.advance(failureTTL + time.Second)
			m = serve(t, f, dns.TypeA, true)
			if len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.10" || ede(m) != nil {
				t.Errorf("recovered: %v", m)
			}
		})
	}
}

func TestNodataAnswerCarriesZoneSOA(t *testing.T) {
	clk := newFakeClock()
	f := newLadderFlatten(&switchableUpstream{}, clk, true)
	m := serve(t, f, dns.TypeAAAA, true) // the target has no AAAA
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 {
		t.Fatalf("NODATA: %v", m)
	}
	soa, ok := m.Ns[0].(*dns.SOA)
	// TTL: the zone's negative TTL min(3600, 300), and never more than flatten keeps the
	// target's NODATA (600 here).
	if !ok || soa.Hdr.Name != "example.org." || soa.Hdr.Ttl != 300 {
		t.Errorf("authority %v, want the zone SOA with TTL 300", m.Ns)
	}
	clk.advance(590 * time.Second)
	if m = serve(t, f, dns.TypeAAAA, true); len(m.Ns) != 1 || m.Ns[0].Header().Ttl != 10 {
		t.Errorf("10 s before the NODATA expires: authority %v, want SOA TTL 10", m.Ns)
	}
}

func TestMetrics(t *testing.T) {
	clk := newFakeClock()
	up := &switchableUpstream{}
	f := newLadderFlatten(up, clk, true)
	f.cfg.serveStale = time.Minute
	get := func() map[string]float64 {
		return map[string]float64{
			"requests": metric(t, "requests_total", "", "", ""),
			"hits":     metric(t, "cache_hits_total", "", "", ""),
			"misses":   metric(t, "cache_misses_total", "", "", ""),
			"stale":    metric(t, "stale_answers_total", "", "", ""),
			"fallback": metric(t, "fallback_answers_total", "", "", ""),
		}
	}
	before := get()
	serve(t, f, dns.TypeA, false) // miss: resolved and answered
	serve(t, f, dns.TypeA, false) // hit
	up.setDown(true)
	clk.advance(61 * time.Second)
	serve(t, f, dns.TypeA, false) // expired: miss, resolution fails, stale
	clk.advance(2 * time.Minute)
	serve(t, f, dns.TypeA, false) // past the stale window: miss, fails, fallback
	after := get()
	want := map[string]float64{"requests": 4, "hits": 1, "misses": 3, "stale": 1, "fallback": 1}
	for k, v := range want {
		if d := after[k] - before[k]; d != v {
			t.Errorf("%s moved by %v, want %v", k, d, v)
		}
	}
	if n := testutil.CollectAndCount(lookupDuration); n == 0 {
		t.Errorf("lookup_duration_seconds has no series")
	}
}

func TestReadyAfterStartupRound(t *testing.T) {
	up := &switchableUpstream{}
	f := newLadderFlatten(up, newFakeClock(), false)
	if f.Ready() {
		t.Errorf("ready before the startup round")
	}
	f.OnStartup()
	defer f.OnShutdown()
	waitFor(t, "Ready", f.Ready)
	if n := up.count(); n != 2 {
		t.Errorf("startup round asked %d questions, want 2 (A and AAAA)", n)
	}
	// After the round, queries are answered from memory: no upstream question.
	serve(t, f, dns.TypeA, false)
	serve(t, f, dns.TypeAAAA, false)
	if n := up.count(); n != 2 {
		t.Errorf("answering after the round asked %d more questions", n-2)
	}
}

func TestReloadLeavesNoGoroutine(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	before := refresherGoroutines()
	cf := flattenCorefile(exampleZone(t), "alias @ client1.agency.test.", "upstream "+u.Addr)
	inst := startReloadable(t, cf)
	sl := inst.Servers()[0]
	addr := server{udp: sl.LocalAddr().String(), tcp: sl.Addr().String()}
	checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10", "192.0.2.11")
	// A cache refreshes on a timer: between refreshes, it has no goroutine.
	waitFor(t, "the startup round's goroutines to end", func() bool { return refresherGoroutines() == before })
	// What the *reload* plugin does: restart the instance with the (new) Corefile.
	for i := range 3 {
		cf2 := strings.Replace(cf, "alias @", fmt.Sprintf("ttl %d 3600\n\t\talias @", i+1), 1)
		next, err := inst.Restart(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(cf2), ServerTypeName: "dns"})
		if err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		inst = next
		// The old instance is gone when Restart returns (OnShutdown waits for its work), and
		// the new one's startup round ends.
		if n := len(running()); n != 1 {
			t.Errorf("after reload %d: %d instances running, want 1", i+1, n)
		}
		waitFor(t, "the new instance's round", func() bool { return refresherGoroutines() == before })
	}
	stopInstance(t, inst)
	if n := len(running()); n != 0 {
		t.Errorf("after shutdown: %d instances running", n)
	}
	waitFor(t, "no goroutine left", func() bool { return refresherGoroutines() == before })
}
