package flatten

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
)

// TestAliasTableFindsEveryName: names of every length are found in any case and only as
// themselves, while there are few aliases and once there are many; each alias answers from its targets' pinned slots in order, the very slots the
// cache resolves and finds by name, shared by the aliases that name the same target.
func TestAliasTableFindsEveryName(t *testing.T) {
	f := newTestFlatten()
	tab := &f.aliases
	var names []string
	check := func(stage string) {
		t.Helper()
		for _, name := range names {
			for _, spelled := range []string{name, strings.ToUpper(name), strings.ToUpper(name[:1]) + name[1:]} {
				a, ok := tab.get(spelled)
				if !ok {
					t.Errorf("%s: %q not found", stage, spelled)
					continue
				}
				if got := a.targets()[0]; got != "t"+name+"agency.test." {
					t.Errorf("%s: %q has target %q, want t%sagency.test.", stage, spelled, got, name)
				}
			}
			// Near misses: one byte more or less, a zero byte added (the key's padding), another
			// letter.
			for _, other := range []string{name[1:], "a" + name, name + "\x00", strings.Replace(name, "b", "c", 1)} {
				if a, ok := tab.get(other); ok && !isName(names, other) {
					t.Errorf("%s: %q found (targets %v), want none", stage, other, a.targets())
				}
			}
		}
	}
	for n := 2; n <= 40; n++ {
		// "a.", "ab.", ... up to 40 bytes: lengths around maxShortName (23) included.
		name := strings.Repeat("a", n-2) + "b."
		names = append(names, name)
		targets := []string{"t" + name + "agency.test."}
		if n%5 == 0 {
			targets = append(targets, "u"+name+"agency.test.", "v"+name+"agency.test.")
		}
		if n%7 == 0 && n%5 != 0 {
			targets = append(targets, "tb.agency.test.") // the target of "b." too
		}
		f.addAlias(name, targets...)
		if len(names) <= fewAliases+2 { // a few aliases are kept apart from the map
			check(fmt.Sprintf("with %d aliases", len(names)))
		}
	}
	if tab.len() != len(names) {
		t.Fatalf("len %d, want %d", tab.len(), len(names))
	}

	check("before the cache is built")

	f.build(func(context.Context, question) (*chain, error) { return nil, errors.New("not asked") })
	c := f.pool.cache
	check("after")
	for i, name := range names {
		a, _ := tab.get(name)
		want := 1
		if n := i + 2; n%5 == 0 {
			want = 3
		} else if n%7 == 0 {
			want = 2
		}
		if got := len(a.targets()); got != want {
			t.Errorf("%q: %d targets, want %d", name, got, want)
		}
		for qi, qtype := range qtypes {
			slots := a.slots(qi, nil)
			for j, s := range slots {
				if s.name != a.targets()[j] || s.qtype() != qtype || !s.pinned || c.existing(s.key()) != s {
					t.Errorf("%q: slot %d for %d is %s %d pinned %v, want the pinned slot of %s", name, j, qtype, s.name, s.qtype(), s.pinned, a.targets()[j])
				}
			}
		}
	}
	// tb.agency.test. is the target of "b." and of every seventh name: pinned once, shared.
	one, _ := tab.get("b.")
	for _, name := range names {
		if a, _ := tab.get(name); len(a.more) > 1 && a.more[len(a.more)-1].name() == "tb.agency.test." && a.more[len(a.more)-1] != one.one {
			t.Errorf("%q: its target tb.agency.test. is not the slots of b.'s", name)
		}
	}
	if n, want := len(c.pins), len(names)+2*8; n != want {
		t.Errorf("%d pinned targets, want %d (each once)", n, want)
	}
}

func isName(names []string, name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// typedResolver answers A with 192.0.2.N and AAAA with 2001:db8::N, N counting the resolutions
// of the key, so that every entry's addresses tell it apart; or NODATA, or an error.
type typedResolver struct {
	mu     sync.Mutex
	calls  map[cacheKey]int
	nodata bool
	err    error
}

func (r *typedResolver) resolve(_ context.Context, q question) (*chain, error) {
	k := q.key
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[k]++
	if r.err != nil {
		return nil, r.err
	}
	if r.nodata {
		return &chain{ttl: 100}, nil
	}
	hdr := dns.RR_Header{Name: k.name, Rrtype: k.qtype, Class: dns.ClassINET, Ttl: 100}
	n := byte(r.calls[k])
	if k.qtype == dns.TypeA {
		return &chain{addrs: []dns.RR{&dns.A{Hdr: hdr, A: []byte{192, 0, 2, n}}}, ttl: 100}, nil
	}
	ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: n})
	return &chain{addrs: []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()}}, ttl: 100}, nil
}

func (r *typedResolver) set(nodata bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nodata, r.err = nodata, err
}

// TestAliasesAnswerFromTheirTargetsSlot: aliases that lead to one target answer from its pinned
// slot, through every change of the entry: the first resolution, seconds counted down (a fraction
// of one does not count), a refresh to new addresses, expiry into stale answers, and a negative
// answer. Names short and long lead to the same target; their answers must not differ but by the
// owner name.
func TestAliasesAnswerFromTheirTargetsSlot(t *testing.T) {
	clk := newFakeClock()
	r := &typedResolver{calls: map[cacheKey]int{}}
	f := newTestFlatten()
	f.cfg.zones = []string{"example.org."}
	long := "a-name-longer-than-most-names-here.example.org."
	names := []string{"example.org.", "www.example.org.", long}
	for _, name := range names {
		f.addAlias(name, "target.example.net.")
	}
	f.build(r.resolve)
	f.pool.cache.now = clk.now
	f.cfg.serveStale = 10 * time.Minute
	f.Next = zoneBelow(false)
	defer f.pool.cache.stop()

	ask := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		q := new(dns.Msg)
		q.SetQuestion(strings.ToUpper(name[:1])+name[1:], qtype)
		q.SetEdns0(1232, false)
		rec := dnstest.NewRecorder(&test.ResponseWriter{})
		f.ServeDNS(context.Background(), rec, q)
		if rec.Msg == nil {
			t.Fatalf("%s %d: no reply", name, qtype)
		}
		return rec.Msg
	}
	// check asks every name for both types, the long name first, and returns the answers'
	// addresses and TTLs, which must be the same for every name.
	check := func(stage string, wantTTL uint32, wantAddrs ...string) {
		t.Helper()
		for qi, qtype := range qtypes {
			var first string
			for _, name := range []string{long, names[0], names[1]} {
				m := ask(name, qtype)
				got := fmt.Sprintf("rcode %d answer %d ns %d ede %v", m.Rcode, len(m.Answer), len(m.Ns), ede(m) != nil)
				for _, rr := range m.Answer {
					if !strings.EqualFold(rr.Header().Name, name) {
						t.Errorf("%s: %s answered with owner %s", stage, name, rr.Header().Name)
					}
					got += fmt.Sprintf(" %s ttl %d", strings.Fields(rr.String())[4], rr.Header().Ttl)
				}
				if first == "" {
					first = got
					want := fmt.Sprintf("rcode 0 answer %d", min(len(wantAddrs), 1))
					if !strings.HasPrefix(got, want) || (len(wantAddrs) > 0 && !strings.Contains(got, fmt.Sprintf(" %s ttl %d", wantAddrs[qi], wantTTL))) {
						t.Errorf("%s: %s %d answered %q, want %v with TTL %d", stage, name, qtype, got, wantAddrs, wantTTL)
					}
				} else if got != first {
					t.Errorf("%s: %s %d answered %q, the long name %q", stage, name, qtype, got, first)
				}
			}
		}
	}

	check("first resolution", 100, "192.0.2.1", "2001:db8::1")
	// A lookup through this server that comes back to the target it is resolving is a loop,
	// even while the target's entry is fresh (pick): answering it would let the
	// target's refresh renew the entry from itself.
	q := new(dns.Msg)
	q.SetQuestion(names[0], dns.TypeA)
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	f.ServeDNS(withPath(context.Background(), &resolvePath{target: "target.example.net."}), rec, q)
	if rec.Msg == nil || rec.Msg.Rcode != dns.RcodeServerFailure {
		t.Errorf("a lookup that loops back to its target: %v, want SERVFAIL", rec.Msg)
	}
	clk.advance(400 * time.Millisecond)
	check("0.4 s later", 100, "192.0.2.1", "2001:db8::1")
	clk.advance(time.Second)
	check("1.4 s later", 99, "192.0.2.1", "2001:db8::1")

	// A refresh before expiry: every name answers the new addresses at once.
	a, _ := f.aliases.get(names[0])
	for qi := range qtypes {
		s := &a.one.slots[qi]
		old := s.good.Load()
		f.pool.cache.refreshAsync(context.Background(), s, &question{key: s.key()})
		waitFor(t, "the refresh", func() bool { return s.good.Load() != old })
	}
	check("refreshed", 100, "192.0.2.2", "2001:db8::2")
	clk.advance(99*time.Second + 900*time.Millisecond)
	check("0.1 s before expiry, raised to the minimum TTL", defaultTTLMin, "192.0.2.2", "2001:db8::2")

	// Expired, the upstream failing: stale answers, TTL 30 and EDE 3 (RFC 8767), for every name.
	r.set(false, errTimeout("target.example.net."))
	clk.advance(200 * time.Millisecond)
	check("expired, upstream down", staleTTL, "192.0.2.2", "2001:db8::2")

	// The upstream back with NODATA: NODATA with the zone's SOA for every name.
	r.set(true, nil)
	clk.advance(failureTTL + time.Second)
	for qi := range qtypes {
		s := &a.one.slots[qi]
		f.pool.cache.refreshAsync(context.Background(), s, &question{key: s.key()})
		waitFor(t, "the negative answer", func() bool { e := s.good.Load(); return e != nil && e.negative() })
	}
	check("negative", 0)
	for _, name := range names {
		if m := ask(name, dns.TypeA); len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Errorf("negative: %s answered without the zone's SOA: %v", name, m)
		}
	}
}
