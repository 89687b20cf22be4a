package flatten

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
)

// rawUDP sends one question over UDP from its own socket and returns the reply and its size on
// the wire, with EDNS0 when bufsize > 0.
func rawUDP(t *testing.T, addr, name string, qtype, bufsize uint16, do bool) (*dns.Msg, int) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	if bufsize > 0 {
		q.SetEdns0(bufsize, do)
	}
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("%s %s over UDP: %v", name, dns.TypeToString[qtype], err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatalf("reply to %s %s: %v", name, dns.TypeToString[qtype], err)
	}
	if m.Id != q.Id {
		t.Fatalf("reply ID %d, want %d", m.Id, q.Id)
	}
	return m, n
}

// waitWarm waits until the startup round of a flatten over u with agencyRecords has asked for
// the last hop of both address types of client1.agency.test. A query that comes after it joins
// the round's resolution or finds its answer. (A query that comes before it may resolve on its
// own and finish before the refresher starts the round, which then asks again.)
func waitWarm(t *testing.T, u *fakeUpstream) {
	t.Helper()
	waitFor(t, "the startup round", func() bool {
		return u.count("server1.agency.test.", dns.TypeA) >= 1 && u.count("server1.agency.test.", dns.TypeAAAA) >= 1
	})
}

// TestNotOpenResolver checks that queries for anything but A/AAAA at a configured name, inside
// or outside the flattened zones, whatever their type, flags, class or opcode, never make
// flatten ask its upstream anything.
func TestNotOpenResolver(t *testing.T) {
	zone := exampleZone(t, "www 300 IN CNAME example.org.")
	// The zone data flattening: an ALIAS record (za), a CNAME that stays in the zone (www).
	zoneData := writeZone(t, "example.org.",
		"@ 3600 IN SOA ns1.example.org. hostmaster.example.org. 2026112201 7200 3600 1209600 300",
		"@ 3600 IN NS ns1.example.org.",
		"@ 3600 IN MX 10 mail.example.org.",
		"ns1 3600 IN A 192.0.2.53",
		"mail 3600 IN A 192.0.2.25",
		"www 300 IN CNAME mail",
		aliasRecord(t, "za", 300, faultTarget),
	)
	setups := []struct {
		name     string
		corefile func(upstream string) string
	}{
		// The usual block: only the flattened zone reaches the plugin chain.
		{"zone block", func(up string) string {
			return flattenCorefile(zone, "alias @ "+faultTarget, "upstream "+up)
		}},
		// A root block: every name reaches flatten, ZONES limits it to example.org.
		{"root block", func(up string) string {
			return fmt.Sprintf(`.:0 {
	bind 127.0.0.1
	flatten example.org {
		alias @ %s
		upstream %s
	}
	file %s example.org
}
`, faultTarget, up, zone)
		}},
		// Flattening driven by zone data too: names without an ALIAS record or a CNAME that
		// leaves the zone are no more the upstream's business than before.
		{"root block, zone_alias, cname *", func(up string) string {
			return fmt.Sprintf(`.:0 {
	bind 127.0.0.1
	flatten example.org {
		alias @ %s
		zone_alias
		cname *
		upstream %s
	}
	file %s example.org
}
`, faultTarget, up, zoneData)
		}},
	}
	names := []string{
		"example.org.",              // the alias itself, for the types that are not flattened
		"www.example.org.",          // in the zone, a CNAME to the alias
		"mail.example.org.",         // in the zone, with an address
		"nope.example.org.",         // in the zone, does not exist
		"a.b.nope.example.org.",     // deeper
		faultTarget,                 // the alias's target itself
		"server1.agency.test.",      // the end of its chain
		"example.net.", "org.", ".", // outside
	}
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeANY, dns.TypeCNAME, dns.TypeMX, dns.TypeTXT, dns.TypeSOA, dns.TypeNS}

	for _, setup := range setups {
		t.Run(setup.name, func(t *testing.T) {
			u := newFakeUpstream(t, agencyRecords...)
			addr, _ := startCoreDNS(t, setup.corefile(u.Addr))
			waitWarm(t, u)
			before := u.total()

			var msgs []*dns.Msg
			for _, name := range names {
				for _, qt := range types {
					if name == "example.org." && (qt == dns.TypeA || qt == dns.TypeAAAA) {
						continue // configured
					}
					for flags := range 8 {
						m := new(dns.Msg)
						m.SetQuestion(name, qt)
						m.RecursionDesired = flags&1 != 0
						m.CheckingDisabled = flags&2 != 0
						if flags&4 != 0 {
							m.SetEdns0(1232, true)
						}
						msgs = append(msgs, m)
					}
				}
			}
			// A and AAAA at the alias name, but not a plain IN QUERY.
			for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
				for _, mod := range []func(*dns.Msg){
					func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS },
					func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY },
					func(m *dns.Msg) { m.Opcode = dns.OpcodeStatus },
					func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) },
				} {
					m := new(dns.Msg)
					m.SetQuestion("example.org.", qt)
					mod(m)
					msgs = append(msgs, m)
				}
			}

			// A NOTIFY for the alias name: the file plugin drops a NOTIFY from an address that is not
			// its primary without a reply, so only the upstream count matters here.
			notify := new(dns.Msg)
			notify.SetNotify("example.org.")
			(&dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}).Exchange(notify, addr.udp)

			var wg sync.WaitGroup
			work := make(chan *dns.Msg)
			var unanswered atomic.Int32
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
					for m := range work {
						if _, _, err := c.Exchange(m, addr.udp); err != nil {
							unanswered.Add(1)
						}
					}
				}()
			}
			for _, m := range msgs {
				work <- m
			}
			close(work)
			wg.Wait()
			if n := unanswered.Load(); n != 0 {
				t.Errorf("%d of %d queries unanswered", n, len(msgs))
			}
			if n := u.total() - before; n != 0 {
				t.Errorf("%d queries for names or types that are not configured caused %d upstream queries, want 0", len(msgs), n)
			}
		})
	}
}

// exchangeRetry asks m over proto, trying again (up to 3 times) when a UDP datagram is lost
// in a burst.
func exchangeRetry(addr server, proto string, m *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
	var err error
	for range 3 {
		var r *dns.Msg
		if r, _, err = c.Exchange(m, addr.addr(proto)); err == nil {
			return r, nil
		}
	}
	return nil, err
}

// TestFloodCausesNoUpstreamQueries sends 2000 concurrent queries for configured names after the
// startup round: all are answered from memory, none reaches the upstream.
func TestFloodCausesNoUpstreamQueries(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	addr := startFlatten(t, u, exampleZone(t))
	waitWarm(t, u)
	before := u.total()
	checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10", "192.0.2.11")

	const n = 2000
	start := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Int32
	var firstErr atomic.Value
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			qt, proto := dns.TypeA, "udp"
			if i%2 == 1 {
				qt = dns.TypeAAAA
			}
			if i%4 >= 2 {
				proto = "tcp"
			}
			m := new(dns.Msg)
			m.SetQuestion("example.org.", qt)
			<-start
			r, err := exchangeRetry(addr, proto, m)
			if err == nil && (r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0) {
				err = fmt.Errorf("%s %s: rcode %s, %d records", proto, dns.TypeToString[qt], dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			if err != nil {
				bad.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if b := bad.Load(); b != 0 {
		t.Errorf("%d of %d queries failed, first: %v", b, n, firstErr.Load())
	}
	if d := u.total() - before; d != 0 {
		t.Errorf("a flood of %d queries for a configured name caused %d upstream queries, want 0", n, d)
	}
}

// TestFloodDuringOutage checks that when the upstream stops answering after the entry expired,
// a flood of queries asks it once per remembered failure, not once per query, and is answered
// stale.
func TestFloodDuringOutage(t *testing.T) {
	u := newFakeUpstream(t)
	var down atomic.Bool
	u.handle(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
		if !down.Load() {
			w.WriteMsg(reply(r, aRR(faultTarget, 60, "192.0.2.10")))
		}
	})
	rig := newFaultRig(t, "alias @ "+faultTarget, "upstream "+u.Addr, "timeout 300ms")
	checkAddrs(t, query(t, rig.addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10")

	down.Store(true)
	rig.clk.advance(61 * time.Second) // expired
	flood := func() (stale int) {
		const n = 2000
		var wg sync.WaitGroup
		var staleN atomic.Int32
		start := make(chan struct{})
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := new(dns.Msg)
				r.SetQuestion("example.org.", dns.TypeA)
				r.SetEdns0(1232, false)
				rec := dnstest.NewRecorder(&test.ResponseWriter{})
				<-start
				rig.f.ServeDNS(context.Background(), rec, r)
				if m := rec.Msg; m != nil && m.Rcode == dns.RcodeSuccess && len(m.Answer) == 1 &&
					m.Answer[0].(*dns.A).A.String() == "192.0.2.10" && m.Answer[0].Header().Ttl == staleTTL {
					if e := ede(m); e != nil && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer {
						staleN.Add(1)
					}
				}
			}()
		}
		close(start)
		wg.Wait()
		return int(staleN.Load())
	}

	if s := flood(); s != 2000 {
		t.Errorf("first flood: %d of 2000 answered stale with EDE 3", s)
	}
	if n := u.count(faultTarget, dns.TypeA); n != 2 {
		t.Errorf("after the first flood: %d questions in all, want 2 (the first resolution, one retry)", n)
	}
	// Past the remembered failure: one background retry, everyone answered stale at once.
	rig.clk.advance(failureTTL + time.Second)
	if s := flood(); s != 2000 {
		t.Errorf("second flood: %d of 2000 answered stale with EDE 3", s)
	}
	rig.f.pool.cache.bg.settle() // the background retry
	if n := u.count(faultTarget, dns.TypeA); n != 3 {
		t.Errorf("after the second flood: %d questions in all, want 3", n)
	}
}

// TestNoAmplification checks that a flattened answer over UDP fits the buffer the client allowed
// (512 bytes without EDNS), with TC set when it does not hold every record, for an alias with
// 200 addresses of each type.
func TestNoAmplification(t *testing.T) {
	recs := []dns.RR{cnameRR(faultTarget, 300, "server1.agency.test.")}
	recs = append(recs, manyAddrs("server1.agency.test.", dns.TypeA, 200)...)
	recs = append(recs, manyAddrs("server1.agency.test.", dns.TypeAAAA, 200)...)
	u := newFakeUpstream(t)
	u.setRecursive()
	u.mu.Lock()
	for _, rr := range recs {
		n := rr.Header().Name
		u.records[n] = append(u.records[n], rr)
	}
	u.mu.Unlock()
	addr := startFlatten(t, u, exampleZone(t))

	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		// All of them over TCP.
		if m := query(t, addr, "tcp", "example.org.", qt, 0); len(m.Answer) != 200 || m.Truncated {
			t.Fatalf("%s over TCP: %d records, TC %v", dns.TypeToString[qt], len(m.Answer), m.Truncated)
		}
		for _, size := range []uint16{0, 512, 600, 1232, 1400, 4096} {
			for _, do := range []bool{false, true} {
				if size == 0 && do {
					continue
				}
				m, n := rawUDP(t, addr.udp, "example.org.", qt, size, do)
				limit := max(int(size), 512)
				if n > limit {
					t.Errorf("%s, bufsize %d, DO %v: a %d-byte reply", dns.TypeToString[qt], size, do, n)
				}
				if len(m.Answer) < 200 && !m.Truncated {
					t.Errorf("%s, bufsize %d, DO %v: %d of 200 records without TC", dns.TypeToString[qt], size, do, len(m.Answer))
				}
				if m.Rcode != dns.RcodeSuccess {
					t.Errorf("%s, bufsize %d: rcode %s", dns.TypeToString[qt], size, dns.RcodeToString[m.Rcode])
				}
			}
		}
	}
}

// TestServfailFitsClientBuffer checks that a SERVFAIL carrying the upstream's Extended DNS Error
// also fits the client's buffer: an upstream's long EXTRA-TEXT must not make flatten an
// amplifier.
func TestServfailFitsClientBuffer(t *testing.T) {
	u := newFakeUpstream(t)
	for name, textLen := range map[string]int{"udp.agency.test.": 1100, "tcp.agency.test.": 20000} {
		text := strings.Repeat("x", textLen)
		u.handle(name, func(w dns.ResponseWriter, r *dns.Msg) {
			m := rcodeReply(r, dns.RcodeServerFailure)
			if textLen > 1100 && isUDP(w) {
				m.Truncated = true // too big for UDP: the rest over TCP
			} else {
				m.SetEdns0(1232, false)
				m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeOther, ExtraText: text})
			}
			w.WriteMsg(m)
		})
	}
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t),
		"alias u udp.agency.test.", "alias t tcp.agency.test.", "upstream "+u.Addr))
	for _, name := range []string{"u.example.org.", "t.example.org."} {
		for _, size := range []uint16{512, 1232} {
			m, n := rawUDP(t, addr.udp, name, dns.TypeA, size, false)
			if m.Rcode != dns.RcodeServerFailure {
				t.Errorf("%s: rcode %s, want SERVFAIL", name, dns.RcodeToString[m.Rcode])
			}
			if n > int(size) {
				t.Errorf("%s, bufsize %d: a %d-byte SERVFAIL", name, size, n)
			}
		}
	}
}

// TestCacheHammer runs many goroutines against one cache while its clock moves, entries expire,
// are prefetched, refreshed on schedule and evicted, and the resolver fails on and off. Run it
// with -race. It checks the cache's promises on every answer and that it stops cleanly.
func TestCacheHammer(t *testing.T) {
	before := refresherGoroutines()
	clk := newFakeClock()
	r := newFakeResolver(1)
	const pinned = 4
	var names []string
	for i := range pinned {
		names = append(names, fmt.Sprintf("pinned%d.example.net.", i))
	}
	c := newCache(newConfig(), r.resolve, pinnedTargets(names...), newBackground())
	c.now = clk.now
	c.cfg.timeout = 200 * time.Millisecond
	c.cfg.capacity = 50
	c.cfg.prefetch = 0.5
	c.cfg.serveStale = 3 * time.Second
	c.cfg.ttlMin, c.cfg.ttlMax = 1, 2

	var pins []*slot
	for i := range pinned {
		pins = append(pins, c.pin(cacheKey{name: fmt.Sprintf("pinned%d.example.net.", i), qtype: dns.TypeA}))
	}
	var keys []cacheKey
	for i := range 150 {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			keys = append(keys, cacheKey{name: fmt.Sprintf("n%d.example.net.", i), qtype: qt})
		}
	}
	c.start()

	done := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(3)
	go func() { // the clock: 100 ms a step, the refresher woken each time
		defer bg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			clk.advance(100 * time.Millisecond)
			c.wake()
			time.Sleep(200 * time.Microsecond) // pacing, not a timing assertion
		}
	}()
	go func() { // the upstream: down and up again
		defer bg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if i%3 == 0 {
				r.set(1, errTimeout("hammer"))
			} else {
				r.set(uint32(i%3), nil)
			}
		}
	}()
	go func() { // bookkeeping readers
		defer bg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			// A pinned target has an A and an AAAA slot.
			if n := c.len(); n > c.cfg.capacity+2*pinned {
				t.Errorf("%d slots, capacity %d + %d pinned", n, c.cfg.capacity, 2*pinned)
			}
			c.ready()
			c.wake()
			time.Sleep(time.Millisecond)
		}
	}()

	var wg sync.WaitGroup
	var answered, none atomic.Int64
	for g := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 1500 {
				var s *slot
				if rng.IntN(8) == 0 {
					s = pins[rng.IntN(pinned)]
				} else {
					s = c.slotFor(keys[rng.IntN(len(keys))])
				}
				at := clk.now()
				q := question{key: s.key()}
				if rng.IntN(16) == 0 {
					q.path = &resolvePath{target: "nested.example.net."} // a nested lookup
				}
				e, src, err := c.get(context.Background(), s, &q)
				switch src {
				case srcFresh, srcResolved, srcStale:
					answered.Add(1)
					if e == nil || len(e.addrs()) != 1 {
						t.Errorf("src %d with entry %v", src, e)
						return
					}
					if src == srcFresh && !e.expires().After(at) {
						t.Errorf("fresh answer that expired at %v, asked at %v", e.expires(), at)
					}
					if src == srcStale && !e.expires().Add(c.cfg.serveStale).After(at) {
						t.Errorf("stale answer past the stale window: expired %v, asked at %v", e.expires(), at)
					}
					ttl := c.ttl(e, src, clk.now())
					if src == srcStale && ttl != staleTTL || src != srcStale && (ttl < c.cfg.ttlMin || ttl > c.cfg.ttlMax) {
						t.Errorf("src %d: TTL %d", src, ttl)
					}
				case srcNone:
					none.Add(1)
					if e != nil || err == nil {
						t.Errorf("nothing to serve, but entry %v error %v", e, err)
					}
				default:
					t.Errorf("source %d", src)
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	bg.Wait()

	stopped := make(chan struct{})
	go func() { c.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("cache.stop hangs")
	}
	if n := c.len(); n > c.cfg.capacity+2*pinned {
		t.Errorf("%d slots at the end, capacity %d + %d pinned", n, c.cfg.capacity, 2*pinned)
	}
	waitFor(t, "no refresh goroutine left", func() bool { return refresherGoroutines() == before })
	t.Logf("%d answers, %d with nothing to serve", answered.Load(), none.Load())
	if answered.Load() == 0 || none.Load() == 0 {
		t.Errorf("the hammer did not reach both ends of the ladder: %d answers, %d none", answered.Load(), none.Load())
	}
}

// TestCNAMEToAliasNotAskedUpstream checks a CNAME in the zone that points at a flattened name
// (www CNAME @) when `cname` lists it: www answers with the alias's addresses, and the zone's own
// name is not sent to the upstream (which does not serve it, or would come back here).
func TestCNAMEToAliasNotAskedUpstream(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	zone := exampleZone(t, "www 300 IN CNAME example.org.")
	addr, _ := startCoreDNS(t, flattenCorefile(zone, "alias @ "+faultTarget, "cname www.example.org.", "upstream "+u.Addr))
	checkAddrs(t, query(t, addr, "udp", "www.example.org.", dns.TypeA, 0), "www.example.org.", "192.0.2.10", "192.0.2.11")
	if n := u.count("example.org.", dns.TypeA); n != 0 {
		t.Errorf("the zone's own name was asked upstream %d times", n)
	}
}

// TestCNAMEBelowDNAMENotOpenResolver checks that names a client makes up below a DNAME in the
// zone do not each become an upstream question when `cname` flattens: a CNAME synthesized from a
// DNAME is not flattened, the zone's DNAME answer passes through as it is.
func TestCNAMEBelowDNAMENotOpenResolver(t *testing.T) {
	u := newFakeUpstream(t, agencyRecords...)
	u.setRecursive()
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t, "d 300 IN DNAME agency.test."), "cname *", "upstream "+u.Addr))
	before := u.total()
	for i := range 20 {
		m := query(t, addr, "udp", fmt.Sprintf("r%d.d.example.org.", i), dns.TypeA, 0)
		if len(m.Answer) == 0 || m.Answer[0].Header().Rrtype != dns.TypeDNAME {
			t.Errorf("r%d.d.example.org: want the zone's DNAME answer unchanged, got\n%s", i, m)
		}
	}
	if n := u.total() - before; n != 0 {
		t.Errorf("20 made-up names below a DNAME caused %d upstream questions", n)
	}
}

// TestStartupRoundSkipsFreshEntry checks that the refresher does not resolve a configured name
// again when a query has just resolved it: upstream traffic follows the refresh schedule.
func TestStartupRoundSkipsFreshEntry(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(100)
	c := newTestCache(r, clk, keyA.name)
	s := c.pin(keyA)
	// The first query comes before the refresher has run.
	if _, src, _ := c.get(context.Background(), s, &question{key: s.key()}); src != srcResolved {
		t.Fatalf("first query: src %d", src)
	}
	c.start()
	defer c.stop()
	waitFor(t, "the startup round", c.ready)
	if n := r.count(keyA); n != 1 {
		t.Errorf("%d resolutions of a name that a query had just resolved, want 1", n)
	}
}
