package flatten

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// ednsUpstream answers the target over a resolver that does not speak EDNS: a question with an
// OPT record gets rcode; one without gets the address (truncated over UDP when truncate is set,
// whole over TCP). It counts the questions of each kind.
type ednsUpstream struct {
	*fakeUpstream
	rcode    int
	truncate bool

	mu          sync.Mutex
	edns, plain map[string]int // by protocol
}

const ednsTarget = "old.appliance.test."

func newEDNSUpstream(t *testing.T, rcode int, truncate bool) *ednsUpstream {
	u := &ednsUpstream{fakeUpstream: newFakeUpstream(t), rcode: rcode, truncate: truncate, edns: map[string]int{}, plain: map[string]int{}}
	u.handle(ednsTarget, func(w dns.ResponseWriter, r *dns.Msg) {
		proto := "udp"
		if w.RemoteAddr().Network() == "tcp" {
			proto = "tcp"
		}
		u.mu.Lock()
		if r.IsEdns0() != nil {
			u.edns[proto]++
		} else {
			u.plain[proto]++
		}
		u.mu.Unlock()
		if r.IsEdns0() != nil {
			m := new(dns.Msg)
			m.SetRcode(r, u.rcode) // no OPT record: it does not know what one is
			w.WriteMsg(m)
			return
		}
		m := new(dns.Msg)
		m.SetReply(r)
		if u.truncate && proto == "udp" {
			m.Truncated = true
		} else if r.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{aRR(ednsTarget, 1, "192.0.2.80")}
		} else {
			m.Ns = []dns.RR{u.soa}
		}
		w.WriteMsg(m)
	})
	return u
}

func (u *ednsUpstream) counts() (edns, plain map[string]int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return copied(u.edns), copied(u.plain)
}

func copied(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// TestUpstreamWithoutEDNS: a resolver that answers FORMERR or NOTIMP to a question with EDNS is
// asked again without it (RFC 6891 7), its plain answer is used (over TCP when truncated), and it
// is asked without EDNS from then on: refreshes send no EDNS question again.
func TestUpstreamWithoutEDNS(t *testing.T) {
	for _, tc := range []struct {
		rcode    int
		truncate bool
	}{
		{dns.RcodeFormatError, false},
		{dns.RcodeNotImplemented, false},
		{dns.RcodeFormatError, true},
	} {
		t.Run(fmt.Sprintf("%s truncated=%v", dns.RcodeToString[tc.rcode], tc.truncate), func(t *testing.T) {
			u := newEDNSUpstream(t, tc.rcode, tc.truncate)
			addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ "+ednsTarget, "upstream "+u.Addr, "ttl 1 1"))
			checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.80")
			// Refreshes every second: the resolver is asked without EDNS.
			waitFor(t, "three refreshes", func() bool {
				_, plain := u.counts()
				return plain["tcp"]+plain["udp"] >= 6 && (!tc.truncate || plain["tcp"] >= 3)
			})
			edns, plain := u.counts()
			// At most one EDNS question per type, at startup (the second type may already find the
			// resolver known to need none); none after.
			if n := edns["udp"] + edns["tcp"]; n < 1 || n > 2 {
				t.Errorf("%d questions with EDNS, want 1 or 2 (at startup only)", n)
			}
			if tc.truncate && plain["tcp"] < plain["udp"]-1 {
				t.Errorf("truncated plain answers: %d questions over TCP for %d over UDP, want every one retried", plain["tcp"], plain["udp"])
			}
			checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.80")
		})
	}
}

// TestUpstreamServfailKeepsEDNS: only FORMERR and NOTIMP say that EDNS is not understood; a
// resolver that fails otherwise is not asked again without it.
func TestUpstreamServfailKeepsEDNS(t *testing.T) {
	u := newEDNSUpstream(t, dns.RcodeServerFailure, false)
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ "+ednsTarget, "upstream "+u.Addr))
	if m := query(t, addr, "udp", "example.org.", dns.TypeA, 0); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	if _, plain := u.counts(); plain["udp"]+plain["tcp"] != 0 {
		t.Errorf("asked without EDNS %v after a SERVFAIL", plain)
	}
}

// TestNoHealthProbesUpstream: flatten asks its upstreams only about the names it flattens. A
// resolver that stops answering is asked after the others for a while, and never probed with the
// `. IN NS` questions of the proxy package's health checks.
func TestNoHealthProbesUpstream(t *testing.T) {
	dead := newFakeUpstream(t)
	dead.handle("client1.agency.test.", func(dns.ResponseWriter, *dns.Msg) {}) // never answers
	live := newFakeUpstream(t, agencyRecords...)
	live.setRecursive()
	addr, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ client1.agency.test.",
		"upstream "+dead.Addr+" "+live.Addr, "timeout 400ms", "ttl 1 1"))
	checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10", "192.0.2.11")

	// Refreshes go on every second; after the first failures, the dead resolver is asked after
	// the live one, which answers: it is not asked on every refresh.
	time.Sleep(2500 * time.Millisecond)
	for _, u := range []*fakeUpstream{dead, live} {
		if n := u.count(".", dns.TypeNS); n != 0 {
			t.Errorf("%s got %d `. NS` health probes, want none", u.Addr, n)
		}
	}
	if n := dead.count("client1.agency.test.", dns.TypeA); n > 2 {
		t.Errorf("the dead resolver was asked %d times in 2.5 s, want it asked last after its first failure", n)
	}
}
