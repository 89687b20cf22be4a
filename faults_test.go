package flatten

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/file"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
)

// The fault tests ask a misbehaving upstream and check two things: what the client gets, and what
// flatten's cache holds afterwards. Every address an upstream must not be believed for is in
// 203.0.113.0/24 or 2001:db8:bad::/48 (forged); every address it may be believed for is in
// 192.0.2.0/24 or 2001:db8::/48 outside the forged block. Nothing forged is ever served or cached.

// faultTarget is the target of the alias every fault case flattens at example.org's apex.
const faultTarget = "client1.agency.test."

func isForged(addr string) bool {
	return strings.HasPrefix(addr, "203.0.113.") || strings.HasPrefix(addr, "2001:db8:bad:")
}

// faultZone is example.org as the file plugin below flatten serves it: no address at the apex.
const faultZone = `$ORIGIN example.org.
@ 3600 IN SOA ns1.example.org. hostmaster.example.org. 2026112201 7200 3600 1209600 300
@ 3600 IN NS ns1.example.org.
@ 3600 IN MX 10 mail.example.org.
ns1 3600 IN A 192.0.2.53
mail 3600 IN A 192.0.2.25
`

// faultRig is a Flatten built the way setup builds it (parse, prepare) but with an injected
// clock, over a file plugin serving faultZone, and served on loopback (UDP and TCP) by plain
// miekg servers through the scrub writer CoreDNS's server uses, so that a test can ask it like a
// client does and then look into its cache.
//
// Only the upstream transports are started, not the cache's refresher: every resolution is
// made by a query, so the questions an upstream receives can be counted exactly.
type faultRig struct {
	f    *Flatten
	clk  *fakeClock
	addr server
}

func newFaultRig(t *testing.T, lines ...string) *faultRig {
	t.Helper()
	corefile := "flatten example.org {\n\t" + strings.Join(lines, "\n\t") + "\n}"
	f, err := parse(caddy.NewTestController("dns", corefile))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, corefile)
	}
	f.prepare()
	rig := &faultRig{f: f, clk: newFakeClock()}
	f.pool.cache.now = rig.clk.now
	z, err := file.Parse(strings.NewReader(faultZone), "example.org.", "db.example.org", 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Next = file.File{Next: test.ErrorHandler(), Zones: file.Zones{Z: map[string]*file.Zone{"example.org.": z}, Names: []string{"example.org."}}}
	if f.pool.proxies != nil {
		f.pool.proxies.start()
	}
	t.Cleanup(func() { f.OnShutdown() })

	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		sw := request.NewScrubWriter(r, w)
		if rcode, _ := f.ServeDNS(context.Background(), sw, r); !plugin.ClientWrite(rcode) {
			m := new(dns.Msg)
			m.SetRcode(r, rcode)
			sw.WriteMsg(m)
		}
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rig.addr = server{udp: pc.LocalAddr().String(), tcp: l.Addr().String()}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		t.Cleanup(func() { s.Shutdown() })
	}
	return rig
}

// slot returns the cache slot of alias name (a lowercased FQDN) for qtype.
func (rig *faultRig) slot(t *testing.T, name string, qtype uint16) *slot {
	t.Helper()
	a, ok := rig.f.aliases.get(name)
	if !ok {
		t.Fatalf("no alias %q", name)
	}
	return a.slots(qtypeIndex(qtype), nil)[0]
}

// forgedInCache fails the test if any entry of the cache, for any key, holds a forged address.
func (rig *faultRig) forgedInCache(t *testing.T) {
	t.Helper()
	c := rig.f.pool.cache
	var slots []*slot
	for _, p := range c.pins {
		slots = append(slots, &p.slots[0], &p.slots[1])
	}
	c.mu.RLock()
	for _, s := range c.slots {
		slots = append(slots, s)
	}
	c.mu.RUnlock()
	for _, s := range slots {
		if e := s.good.Load(); e != nil {
			for _, a := range entryAddrs(e) {
				if isForged(a) {
					t.Errorf("cache entry %s %s holds the forged address %s", s.name, dns.TypeToString[s.qtype()], a)
				}
			}
		}
	}
}

// entryAddrs returns the addresses of a cache entry, sorted.
func entryAddrs(e *entry) []string {
	var out []string
	for _, rr := range e.addrs() {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		}
	}
	slices.Sort(out)
	return out
}

// Answers the fault cases are made of. They are also the fuzzers' seeds (fuzz_test.go).

func reply(r *dns.Msg, rrs ...dns.RR) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Answer = rrs
	return m
}

func rcodeReply(r *dns.Msg, rcode int, rrs ...dns.RR) *dns.Msg {
	m := reply(r, rrs...)
	m.Rcode = rcode
	return m
}

func aRR(name string, ttl uint32, ip string) dns.RR {
	if strings.Contains(ip, ":") {
		return &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: net.ParseIP(ip)}
	}
	return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.ParseIP(ip).To4()}
}

func cnameRR(name string, ttl uint32, target string) dns.RR {
	return &dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: ttl}, Target: target}
}

// hopName is the n-th name of a long chain: client1.agency.test. for 0, then hopN.agency.test.
func hopName(n int) string {
	if n == 0 {
		return faultTarget
	}
	return fmt.Sprintf("hop%d.agency.test.", n)
}

// longChain is a chain of n CNAME hops from faultTarget, ending in an A record.
func longChain(n int) []dns.RR {
	var rrs []dns.RR
	for i := range n {
		rrs = append(rrs, cnameRR(hopName(i), 300, hopName(i+1)))
	}
	return append(rrs, aRR(hopName(n), 300, "192.0.2.60"))
}

// poisonAnswer answers r (for faultTarget) with the right chain, client1 -> server1 ->
// 192.0.2.30, among records that try to plant addresses for other names: the alias name
// itself, another name of the flattened zone, the target of another alias, a record of another
// class, and addresses for chain names in the authority and additional sections.
func poisonAnswer(r *dns.Msg) *dns.Msg {
	m := reply(r,
		aRR("example.org.", 300, "203.0.113.30"),
		aRR("www.example.org.", 300, "203.0.113.31"),
		aRR("victim.agency.test.", 300, "203.0.113.32"),
		cnameRR(faultTarget, 300, "server1.agency.test."),
		&dns.A{Hdr: dns.RR_Header{Name: "server1.agency.test.", Rrtype: dns.TypeA, Class: dns.ClassCHAOS, Ttl: 300}, A: net.IPv4(203, 0, 113, 33).To4()},
		aRR("server1.agency.test.", 300, "192.0.2.30"),
		aRR("server2.agency.test.", 300, "203.0.113.34"),
	)
	m.Ns = []dns.RR{
		&dns.NS{Hdr: dns.RR_Header{Name: "agency.test.", Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 300}, Ns: "ns.evil.test."},
		aRR("server1.agency.test.", 300, "203.0.113.35"),
	}
	m.Extra = []dns.RR{
		aRR("ns.evil.test.", 300, "203.0.113.36"),
		aRR("server1.agency.test.", 300, "203.0.113.37"),
		aRR("victim.agency.test.", 300, "203.0.113.38"),
	}
	return m
}

// dnameAnswer answers r (for faultTarget) with a DNAME alone, agency.test. -> agency.example.,
// and addresses for names that are not on the chain (the DNAME's owner and target, a sibling).
func dnameAnswer(r *dns.Msg) *dns.Msg {
	return reply(r,
		&dns.DNAME{Hdr: dns.RR_Header{Name: "agency.test.", Rrtype: dns.TypeDNAME, Class: dns.ClassINET, Ttl: 250}, Target: "agency.example."},
		aRR("agency.test.", 300, "203.0.113.20"),
		aRR("agency.example.", 300, "203.0.113.21"),
		aRR("other.agency.test.", 300, "203.0.113.22"),
	)
}

// manyAddrs is n address records for name, from 192.0.2.0/24 and then 198.51.100.0/24.
func manyAddrs(name string, qtype uint16, n int) []dns.RR {
	rrs := make([]dns.RR, 0, n)
	for i := range n {
		ip := fmt.Sprintf("198.51.%d.%d", 100+i/250, i%250+1)
		if qtype == dns.TypeAAAA {
			ip = fmt.Sprintf("2001:db8::%x", i+1)
		}
		rrs = append(rrs, aRR(name, 300, ip))
	}
	return rrs
}

// garbageWithID is an answer whose header is right (ID, counts) and whose body is noise.
func garbageWithID(r *dns.Msg) []byte {
	b, _ := reply(r, aRR(faultTarget, 300, "203.0.113.7")).Pack()
	for i := 12; i < len(b); i++ {
		b[i] = 0xff
	}
	return b
}

// garbage is noise with an ID that is never the question's.
func garbage(r *dns.Msg) []byte {
	b := make([]byte, 64)
	for i := range b {
		b[i] = byte(0xa5 ^ i)
	}
	b[0], b[1] = byte(^r.Id>>8), byte(^r.Id)
	return b
}

func isUDP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.UDPAddr)
	return ok
}

// faultSetup installs records and handlers on the upstream for one case; it may return a step
// to run after the case's checks (nil: none).
type faultSetup func(t *testing.T, u *fakeUpstream) faultAfter

type faultAfter func(t *testing.T, rig *faultRig, u *fakeUpstream)

// faultCase is one misbehaviour of the upstream and what must come of it.
type faultCase struct {
	name  string
	setup faultSetup
	lines []string // more lines of the flatten block
	qtype uint16   // default A
	proto string   // default udp

	// What the client gets: rcode, then for SERVFAIL the EDE code and a piece of its text; for
	// NOERROR the addresses (none and nodata for NODATA with the zone's SOA) and TTL bounds.
	rcode   int
	ede     uint16
	text    string
	answer  []string
	nodata  bool
	ttl     [2]uint32
	aliases []string // more alias lines, before the default one

	// What the cache holds afterwards in the alias's slot for qtype.
	cached   []string      // the good entry's addresses; nil and !negative: no good entry
	negative bool          // the good entry is a negative answer
	lifetime time.Duration // the good entry's lifetime, when not zero
	failed   string        // the remembered failure's reason; "": none

	// Questions the upstream received, by "name" (any protocol) or "name/proto".
	asked map[string]int
}

func handleWith(name string, h func(w dns.ResponseWriter, r *dns.Msg)) faultSetup {
	return func(_ *testing.T, u *fakeUpstream) faultAfter {
		u.handle(name, h)
		return nil
	}
}

func withRecords(records ...string) faultSetup {
	return func(t *testing.T, u *fakeUpstream) faultAfter {
		u.add(t, records...)
		return nil
	}
}

func rcodeCase(rcode int, text string) faultCase {
	return faultCase{
		name: dns.RcodeToString[rcode],
		setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
			// The answer section of a failure is not an answer.
			w.WriteMsg(rcodeReply(r, rcode, aRR(faultTarget, 300, "203.0.113.1")))
		}),
		rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNoReachableAuthority, text: text,
		failed: reasonRcode, asked: map[string]int{faultTarget: 1},
	}
}

// askedTwice is c for an rcode that may mean the upstream does not speak EDNS: the question is
// asked again without it (RFC 6891 7), and fails the same way.
func askedTwice(c faultCase) faultCase {
	c.asked = map[string]int{faultTarget: 2}
	return c
}

func faultCases() []faultCase {
	servfailEDE := rcodeCase(dns.RcodeServerFailure, "SERVFAIL")
	servfailEDE.name = "SERVFAIL with the upstream's EDE"
	servfailEDE.setup = handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
		m := rcodeReply(r, dns.RcodeServerFailure)
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeDNSBogus, ExtraText: "validation failed"})
		w.WriteMsg(m)
	})
	servfailEDE.ede, servfailEDE.text = dns.ExtendedErrorCodeDNSBogus, "validation failed"

	spoofed := func(real bool) faultSetup {
		return func(t *testing.T, u *fakeUpstream) faultAfter {
			// Two spoofers: another port on the upstream's address, and the upstream's port on
			// another address. Both send an answer that is right in every field (ID, question,
			// chain) to the port flatten asked from, before the real answer.
			_, port, _ := net.SplitHostPort(u.Addr)
			var spoofers []net.PacketConn
			for _, a := range []string{"127.0.0.1:0", net.JoinHostPort("127.0.0.2", port)} {
				pc, err := net.ListenPacket("udp", a)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { pc.Close() })
				spoofers = append(spoofers, pc)
			}
			u.handle(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				if isUDP(w) {
					b, _ := reply(r, aRR(faultTarget, 300, "203.0.113.50")).Pack()
					for _, pc := range spoofers {
						pc.WriteTo(b, w.RemoteAddr())
					}
				}
				if real {
					w.WriteMsg(reply(r, aRR(faultTarget, 300, "192.0.2.50")))
				}
			})
			return nil
		}
	}

	return []faultCase{
		{
			name: "late answer",
			setup: func(_ *testing.T, u *fakeUpstream) faultAfter {
				var asked, written atomic.Int32
				var prompt atomic.Bool
				u.handle(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
					n := asked.Add(1)
					m := reply(r, aRR(faultTarget, 300, fmt.Sprintf("192.0.2.%d", 100+n)))
					if !prompt.Load() {
						time.Sleep(900 * time.Millisecond) // three times the timeout
					}
					w.WriteMsg(m)
					written.Add(1)
				})
				return func(t *testing.T, rig *faultRig, _ *fakeUpstream) {
					if written.Load() != 0 {
						t.Errorf("the client's SERVFAIL came after the late answer was sent: it waited for it")
					}
					waitFor(t, "the late answer to be sent", func() bool { return written.Load() == 1 })
					s := rig.slot(t, "example.org.", dns.TypeA)
					if e := s.good.Load(); e != nil {
						t.Errorf("the answer that came after the timeout was cached: %v", entryAddrs(e))
					}
					// While the failure is remembered, SERVFAIL at once and no new question.
					checkServfail(t, query(t, rig.addr, "udp", "example.org.", dns.TypeA, 1232), dns.ExtendedErrorCodeNoReachableAuthority, "timeout")
					if n := asked.Load(); n != 1 {
						t.Errorf("%d questions during the remembered failure, want 1", n)
					}
					// Afterwards a new question is asked, and only its answer is served.
					rig.clk.advance(failureTTL + time.Second)
					prompt.Store(true)
					checkAddrs(t, query(t, rig.addr, "udp", "example.org.", dns.TypeA, 1232), "example.org.", "192.0.2.102")
					if n := asked.Load(); n != 2 {
						t.Errorf("%d questions in all, want 2", n)
					}
					if e := s.good.Load(); e == nil || !slices.Equal(entryAddrs(e), []string{"192.0.2.102"}) {
						t.Errorf("cache after the second question: %v, want 192.0.2.102", e)
					}
				}
			},
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNoReachableAuthority, text: "timeout",
			failed: reasonTimeout, asked: map[string]int{faultTarget: 1},
		},
		{
			name:  "never answers",
			setup: handleWith(faultTarget, func(dns.ResponseWriter, *dns.Msg) {}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNoReachableAuthority, text: "timeout",
			failed: reasonTimeout, asked: map[string]int{faultTarget: 1},
		},
		rcodeCase(dns.RcodeServerFailure, "SERVFAIL"),
		servfailEDE,
		rcodeCase(dns.RcodeRefused, "REFUSED"),
		askedTwice(rcodeCase(dns.RcodeFormatError, "FORMERR")),
		askedTwice(rcodeCase(dns.RcodeNotImplemented, "NOTIMP")),
		{
			name: "wrong ID",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				m := reply(r, aRR(faultTarget, 300, "203.0.113.2"))
				m.Id++
				w.WriteMsg(m)
			}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNoReachableAuthority, text: "timeout",
			failed: reasonTimeout, asked: map[string]int{faultTarget: 1},
		},
		{
			name: "question for another name",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				m := reply(r, aRR("example.org.", 300, "203.0.113.3"))
				m.Question[0].Name = "example.org."
				w.WriteMsg(m)
			}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNetworkError, text: "another question",
			failed: reasonMalformed, asked: map[string]int{faultTarget: 1},
		},
		{
			name: "question for another type",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				m := reply(r, aRR(faultTarget, 300, "2001:db8:bad::3"))
				m.Question[0].Qtype = dns.TypeAAAA
				w.WriteMsg(m)
			}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNetworkError, text: "another question",
			failed: reasonMalformed, asked: map[string]int{faultTarget: 1},
		},
		{
			name: "not a response",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				m := reply(r, aRR(faultTarget, 300, "203.0.113.4"))
				m.Response = false
				w.WriteMsg(m)
			}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNetworkError, text: "not a response",
			failed: reasonMalformed, asked: map[string]int{faultTarget: 1},
		},
		{
			name: "garbage bytes",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				w.Write(garbage(r))
			}),
			// Not an answer to our question (its ID is not ours): ignored, as if never sent.
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNoReachableAuthority, text: "timeout",
			failed: reasonTimeout, asked: map[string]int{faultTarget: 1},
		},
		{
			name: "garbage bytes with the right ID",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				w.Write(garbageWithID(r))
			}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNetworkError, text: faultTarget,
			failed: reasonNetwork,
		},
		{
			name: "truncated over UDP, good over TCP",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				if isUDP(w) {
					m := reply(r, aRR(faultTarget, 300, "203.0.113.10")) // a partial answer is no answer
					m.Truncated = true
					w.WriteMsg(m)
					return
				}
				w.WriteMsg(reply(r, aRR(faultTarget, 300, "192.0.2.10"), aRR(faultTarget, 300, "192.0.2.11")))
			}),
			rcode: dns.RcodeSuccess, answer: []string{"192.0.2.10", "192.0.2.11"}, ttl: [2]uint32{300, 300},
			cached: []string{"192.0.2.10", "192.0.2.11"},
			asked:  map[string]int{faultTarget + "/udp": 1, faultTarget + "/tcp": 1},
		},
		{
			name: "truncated over UDP, TCP closed",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				if isUDP(w) {
					m := reply(r, aRR(faultTarget, 300, "203.0.113.11"))
					m.Truncated = true
					w.WriteMsg(m)
					return
				}
				w.Close()
			}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNetworkError, text: faultTarget,
			failed: reasonNetwork, asked: map[string]int{faultTarget + "/udp": 1, faultTarget + "/tcp": 1},
		},
		{
			name: "30-hop chain, one hop per question",
			setup: func(_ *testing.T, u *fakeUpstream) faultAfter {
				u.mu.Lock()
				for _, rr := range longChain(30) {
					n := strings.ToLower(rr.Header().Name)
					u.records[n] = append(u.records[n], rr)
				}
				u.mu.Unlock()
				return nil
			},
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeOther, text: "longer than 8 hops",
			failed: reasonDepth,
			// max_depth bounds the questions too: hop9 and beyond are never asked.
			asked: map[string]int{faultTarget: 1, hopName(8): 1, hopName(9): 0, hopName(30): 0},
		},
		{
			name: "30-hop chain in one answer",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				w.WriteMsg(reply(r, longChain(30)...))
			}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeOther, text: "longer than 8 hops",
			// About 1.4 KB: more than flatten's 1232-byte buffer, so asked again over TCP.
			failed: reasonDepth, asked: map[string]int{faultTarget + "/udp": 1, faultTarget + "/tcp": 1, hopName(1): 0},
		},
		{
			name: "two-name loop over two questions",
			setup: withRecords(
				faultTarget+" 300 IN CNAME loop2.agency.test.",
				"loop2.agency.test. 300 IN CNAME "+faultTarget,
			),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeOther, text: "loop",
			failed: reasonLoop, asked: map[string]int{faultTarget: 1, "loop2.agency.test.": 1},
		},
		{
			name: "DNAME",
			setup: func(t *testing.T, u *fakeUpstream) faultAfter {
				u.handle(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) { w.WriteMsg(dnameAnswer(r)) })
				u.add(t, "client1.agency.example. 400 IN A 192.0.2.20")
				return nil
			},
			rcode: dns.RcodeSuccess, answer: []string{"192.0.2.20"}, ttl: [2]uint32{250, 250}, // the DNAME's TTL
			cached: []string{"192.0.2.20"},
			asked:  map[string]int{faultTarget: 1, "client1.agency.example.": 1},
		},
		{
			name: "out-of-chain records (poisoning attempt)",
			setup: func(t *testing.T, u *fakeUpstream) faultAfter {
				u.handle(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) { w.WriteMsg(poisonAnswer(r)) })
				u.add(t, "victim.agency.test. 300 IN A 192.0.2.31")
				return func(t *testing.T, rig *faultRig, u *fakeUpstream) {
					// The other alias's target was named in the answer; nothing was stored for it.
					for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
						if e := rig.slot(t, "victim.example.org.", qt).good.Load(); e != nil {
							t.Errorf("victim %s cached from another name's answer: %v", dns.TypeToString[qt], entryAddrs(e))
						}
					}
					// Its own question gives its own answer.
					checkAddrs(t, query(t, rig.addr, "udp", "victim.example.org.", dns.TypeA, 0), "victim.example.org.", "192.0.2.31")
					if n := u.count("victim.agency.test.", dns.TypeA); n != 1 {
						t.Errorf("victim asked %d times, want 1", n)
					}
					// The names the forged records claimed are still the zone's: no address at
					// the apex from the zone, and www does not exist.
					if m := query(t, rig.addr, "udp", "www.example.org.", dns.TypeA, 0); m.Rcode != dns.RcodeNameError {
						t.Errorf("www.example.org: %s, want NXDOMAIN from the zone", dns.RcodeToString[m.Rcode])
					}
				}
			},
			aliases: []string{"alias victim victim.agency.test."},
			rcode:   dns.RcodeSuccess, answer: []string{"192.0.2.30"}, ttl: [2]uint32{300, 300},
			cached: []string{"192.0.2.30"},
			asked:  map[string]int{faultTarget: 1, "server1.agency.test.": 0, "victim.agency.test.": 0},
		},
		{
			name: "answer of another type for the name",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				w.WriteMsg(reply(r, aRR(faultTarget, 300, "203.0.113.40")))
			}),
			qtype: dns.TypeAAAA,
			rcode: dns.RcodeSuccess, nodata: true,
			negative: true, asked: map[string]int{faultTarget: 1},
		},
		{
			name: "referral",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				m := reply(r)
				m.Ns = []dns.RR{&dns.NS{Hdr: dns.RR_Header{Name: "agency.test.", Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 300}, Ns: "ns.evil.test."}}
				m.Extra = []dns.RR{aRR("ns.evil.test.", 300, "203.0.113.41")}
				w.WriteMsg(m)
			}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNetworkError, text: "referral",
			failed: reasonMalformed, asked: map[string]int{faultTarget: 1},
		},
		{
			name: "two CNAMEs for one name",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				w.WriteMsg(reply(r,
					cnameRR(faultTarget, 300, "server1.agency.test."),
					cnameRR(faultTarget, 300, "evil.agency.test."),
					aRR("server1.agency.test.", 300, "192.0.2.42"),
					aRR("evil.agency.test.", 300, "203.0.113.42"),
				))
			}),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNetworkError, text: "two CNAMEs",
			failed: reasonMalformed, asked: map[string]int{faultTarget: 1},
		},
		{
			name: "TTL 0",
			setup: func(t *testing.T, u *fakeUpstream) faultAfter {
				u.add(t, faultTarget+" 0 IN A 192.0.2.40")
				return func(t *testing.T, rig *faultRig, u *fakeUpstream) {
					// Kept for MIN seconds: not asked again before, asked again after.
					rig.clk.advance(4 * time.Second)
					checkAddrs(t, query(t, rig.addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.40")
					if n := u.count(faultTarget, dns.TypeA); n != 1 {
						t.Errorf("asked %d times within MIN seconds, want 1", n)
					}
					rig.clk.advance(time.Second)
					checkAddrs(t, query(t, rig.addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.40")
					if n := u.count(faultTarget, dns.TypeA); n != 2 {
						t.Errorf("asked %d times after MIN seconds, want 2", n)
					}
				}
			},
			rcode: dns.RcodeSuccess, answer: []string{"192.0.2.40"}, ttl: [2]uint32{5, 5},
			cached: []string{"192.0.2.40"}, lifetime: 5 * time.Second,
			asked: map[string]int{faultTarget: 1},
		},
		{
			name: "TTL 2^31-1",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				w.WriteMsg(reply(r, cnameRR(faultTarget, 1<<31-1, "server1.agency.test."), aRR("server1.agency.test.", 1<<31-1, "192.0.2.41")))
			}),
			rcode: dns.RcodeSuccess, answer: []string{"192.0.2.41"}, ttl: [2]uint32{3600, 3600},
			cached: []string{"192.0.2.41"}, lifetime: time.Hour,
		},
		{
			name: "TTL 2^31-1 with ttl MAX 2^31-1",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				w.WriteMsg(reply(r, aRR(faultTarget, 1<<31-1, "192.0.2.41")))
			}),
			lines: []string{"ttl 5 2147483647"},
			rcode: dns.RcodeSuccess, answer: []string{"192.0.2.41"}, ttl: [2]uint32{1<<31 - 1, 1<<31 - 1},
			cached: []string{"192.0.2.41"}, lifetime: (1<<31 - 1) * time.Second,
		},
		{
			// RFC 2181 8: a TTL with the most significant bit set is to be taken as 0. miekg/dns
			// unpacks it as the plain uint32 (2147483648 here).
			name: "TTL with the top bit set",
			setup: handleWith(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
				w.WriteMsg(reply(r, aRR(faultTarget, 1<<31, "192.0.2.43")))
			}),
			rcode: dns.RcodeSuccess, answer: []string{"192.0.2.43"}, ttl: [2]uint32{5, 5},
			cached: []string{"192.0.2.43"}, lifetime: 5 * time.Second,
		},
		{
			name: "200 A records",
			setup: func(_ *testing.T, u *fakeUpstream) faultAfter {
				u.mu.Lock()
				u.records[faultTarget] = manyAddrs(faultTarget, dns.TypeA, 200)
				u.mu.Unlock()
				return func(t *testing.T, rig *faultRig, _ *fakeUpstream) {
					// Over UDP without EDNS: 512 bytes at most, TC set.
					m, size := rawUDP(t, rig.addr.udp, "example.org.", dns.TypeA, 0, false)
					if !m.Truncated || size > 512 {
						t.Errorf("UDP without EDNS: %d bytes, TC %v; want at most 512 with TC", size, m.Truncated)
					}
				}
			},
			proto: "tcp",
			rcode: dns.RcodeSuccess, ttl: [2]uint32{300, 300},
			answer: func() []string {
				var out []string
				for _, rr := range manyAddrs(faultTarget, dns.TypeA, 200) {
					out = append(out, rr.(*dns.A).A.String())
				}
				slices.Sort(out)
				return out
			}(),
			cached: func() []string {
				var out []string
				for _, rr := range manyAddrs(faultTarget, dns.TypeA, 200) {
					out = append(out, rr.(*dns.A).A.String())
				}
				slices.Sort(out)
				return out
			}(),
			// The UDP answer did not fit in flatten's 1232-byte buffer: asked again over TCP.
			asked: map[string]int{faultTarget + "/udp": 1, faultTarget + "/tcp": 1},
		},
		{
			name:  "spoofed UDP answers before the real one",
			setup: spoofed(true),
			rcode: dns.RcodeSuccess, answer: []string{"192.0.2.50"}, ttl: [2]uint32{300, 300},
			cached: []string{"192.0.2.50"}, asked: map[string]int{faultTarget: 1},
		},
		{
			name:  "spoofed UDP answers only",
			setup: spoofed(false),
			rcode: dns.RcodeServerFailure, ede: dns.ExtendedErrorCodeNoReachableAuthority, text: "timeout",
			failed: reasonTimeout, asked: map[string]int{faultTarget: 1},
		},
	}
}

// TestFaults asks flatten for an alias whose target's upstream misbehaves in one way per case,
// and checks what the client gets and what the cache holds afterwards.
func TestFaults(t *testing.T) {
	for _, tc := range faultCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := newFakeUpstream(t)
			after := tc.setup(t, u)
			lines := append(append(slices.Clone(tc.aliases), "alias @ "+faultTarget, "upstream "+u.Addr, "timeout 300ms"), tc.lines...)
			rig := newFaultRig(t, lines...)
			qtype, proto := cmp.Or(tc.qtype, dns.TypeA), cmp.Or(tc.proto, "udp")

			// What the client gets.
			m := query(t, rig.addr, proto, "example.org.", qtype, 1232)
			if m.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s\n%s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode], m)
			}
			if tc.rcode == dns.RcodeServerFailure {
				checkServfail(t, m, tc.ede, tc.text)
			} else if e := ede(m); e != nil {
				t.Errorf("EDE %d %q on a fresh answer", e.InfoCode, e.ExtraText)
			}
			got := addrs(t, m, "example.org.")
			for _, a := range got {
				if isForged(a) {
					t.Errorf("the forged address %s was served", a)
				}
			}
			if !slices.Equal(got, tc.answer) {
				t.Errorf("answer %v, want %v", got, tc.answer)
			}
			if tc.rcode == dns.RcodeSuccess && !m.Authoritative {
				t.Errorf("AA not set")
			}
			if tc.ttl != [2]uint32{} {
				checkTTL(t, m, tc.ttl[0], tc.ttl[1])
			}
			if tc.nodata && (len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA || m.Ns[0].Header().Name != "example.org.") {
				t.Errorf("NODATA: authority %v, want the zone's SOA", m.Ns)
			}

			// What the cache holds, once the resolution the query started has ended (a client
			// that gave up at the timeout may have its SERVFAIL before the flight has stored the
			// failure).
			rig.f.pool.cache.bg.settle()
			s := rig.slot(t, "example.org.", qtype)
			e := s.good.Load()
			switch {
			case tc.cached == nil && !tc.negative && e != nil:
				t.Errorf("cached %v (negative %v), want nothing", entryAddrs(e), e.negative())
			case (tc.cached != nil || tc.negative) && e == nil:
				t.Errorf("nothing cached, want %v (negative %v)", tc.cached, tc.negative)
			case e != nil:
				if got := entryAddrs(e); !slices.Equal(got, tc.cached) || e.negative() != tc.negative {
					t.Errorf("cached %v (negative %v), want %v (negative %v)", got, e.negative(), tc.cached, tc.negative)
				}
				if tc.lifetime != 0 && e.lifetime() != tc.lifetime {
					t.Errorf("cached for %v, want %v", e.lifetime(), tc.lifetime)
				}
			}
			fl := s.fail.Load()
			switch {
			case tc.failed == "" && fl != nil:
				t.Errorf("failure remembered: %v", fl.err)
			case tc.failed != "" && fl == nil:
				t.Errorf("no failure remembered, want %s", tc.failed)
			case fl != nil && fl.err.reason != tc.failed:
				t.Errorf("failure remembered: %s (%v), want %s", fl.err.reason, fl.err, tc.failed)
			}
			rig.forgedInCache(t)

			// What the upstream was asked.
			for k, want := range tc.asked {
				name, proto, _ := strings.Cut(k, "/")
				var n int
				if proto != "" {
					n = u.count(name, qtype, proto)
				} else {
					n = u.count(name, qtype)
				}
				if n != want {
					t.Errorf("%s asked %d times, want %d", k, n, want)
				}
			}

			if after != nil {
				after(t, rig, u)
				rig.forgedInCache(t)
			}
		})
	}
}

// TestReloadDuringOutageKeepsStale checks that a Corefile reload (the *reload* plugin restarts
// the instance) while the target cannot be resolved keeps serving the stale answers: a routine
// configuration change must not turn an outage that serve_stale covers into SERVFAILs.
func TestReloadDuringOutageKeepsStale(t *testing.T) {
	u := newFakeUpstream(t)
	var down atomic.Bool
	u.handle(faultTarget, func(w dns.ResponseWriter, r *dns.Msg) {
		if down.Load() {
			w.WriteMsg(rcodeReply(r, dns.RcodeServerFailure))
			return
		}
		w.WriteMsg(reply(r, aRR(faultTarget, 300, "192.0.2.10")))
	})
	cf := flattenCorefile(exampleZone(t), "alias @ "+faultTarget, "upstream "+u.Addr, "ttl 1 1", "timeout 300ms")
	inst := startReloadable(t, cf)
	defer func() { stopInstance(t, inst) }()
	sl := inst.Servers()[0]
	addr := server{udp: sl.LocalAddr().String(), tcp: sl.Addr().String()}
	checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 1232), "example.org.", "192.0.2.10")

	down.Store(true)
	isStale := func() bool {
		m := query(t, addr, "udp", "example.org.", dns.TypeA, 1232)
		e := ede(m)
		return m.Rcode == dns.RcodeSuccess && e != nil && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer
	}
	waitFor(t, "a stale answer", isStale)

	next, err := inst.Restart(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(strings.Replace(cf, "ttl 1 1", "ttl 1 2", 1)), ServerTypeName: "dns"})
	if err != nil {
		t.Fatal(err)
	}
	inst = next
	m := query(t, addr, "udp", "example.org.", dns.TypeA, 1232)
	if m.Rcode != dns.RcodeSuccess {
		t.Fatalf("after a reload during the outage: %s, want the stale answer\n%s", dns.RcodeToString[m.Rcode], m)
	}
	checkAddrs(t, m, "example.org.", "192.0.2.10")
}
