package flatten

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
)

// TestAliasTableFindsEveryName: names of every length, on both sides of the short keys' bound,
// are found in any case and only as themselves; after pin, a single target answers from its
// pinned slots and several targets from their slots in order.
func TestAliasTableFindsEveryName(t *testing.T) {
	tab := newAliasTable()
	var names []string
	for n := 2; n <= 40; n++ {
		// "a.", "ab.", ... up to 40 bytes: lengths around maxShortName (23) included.
		name := strings.Repeat("a", n-2) + "b."
		names = append(names, name)
		targets := []string{"t" + name + "agency.test."}
		if n%5 == 0 {
			targets = append(targets, "u"+name+"agency.test.", "v"+name+"agency.test.")
		}
		if !tab.add(name, targets) {
			t.Fatalf("add %q: reported a duplicate", name)
		}
	}
	if tab.add(names[3], []string{"x.agency.test."}) {
		t.Errorf("add %q twice: not reported", names[3])
	}
	if tab.len() != len(names) {
		t.Fatalf("len %d, want %d", tab.len(), len(names))
	}

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
		n := 0
		tab.each(func(name string, a alias) {
			n++
			if !isName(names, name) {
				t.Errorf("%s: each gives %q, not a configured name", stage, name)
			}
		})
		if n != len(names) {
			t.Errorf("%s: each gives %d aliases, want %d", stage, n, len(names))
		}
	}
	check("before pin")

	c := newCache(func(context.Context, cacheKey) (*chain, error) { return nil, errors.New("not asked") })
	tab.pin(c)
	check("after pin")
	for i, name := range names {
		a, _ := tab.get(name)
		want := 1
		if (i+2)%5 == 0 {
			want = 3
		}
		if got := len(a.targets()); got != want {
			t.Errorf("%q: %d targets after pin, want %d", name, got, want)
		}
		for qi, qtype := range qtypes {
			slots := a.slots(qi, nil)
			for j, s := range slots {
				if s.name != a.targets()[j] || s.qtype() != qtype || !s.pinned || c.existing(s.key()) != s {
					t.Errorf("%q: slot %d for %d is %s %d pinned %v, want the pinned slot of %s", name, j, qtype, s.name, s.qtype(), s.pinned, a.targets()[j])
				}
			}
		}
		if want == 1 && a.one == nil {
			t.Errorf("%q: a single target is not answered from its pinned pair", name)
		}
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

// TestAliasTableLaysOutEverySize: at every size, from no name to past the smallest table, a table
// finds every name it holds, in any case, before its layout and after, and no name it does not
// hold; once laid out it has one cell per name, and every cell starts a cache line.
func TestAliasTableLaysOutEverySize(t *testing.T) {
	if size := unsafe.Sizeof(aliasCell{}); size != 64 {
		t.Errorf("aliasCell is %d bytes, want 64", size)
	}
	for _, n := range []int{0, 1, 2, 3, minCells - 1, minCells, minCells + 1, 5000} {
		tab := newAliasTable()
		for i := range n {
			if !tab.add(fmt.Sprintf("a%d.example.org.", i), []string{fmt.Sprintf("t%d.agency.test.", i)}) {
				t.Fatalf("%d names: a%d reported a duplicate", n, i)
			}
		}
		check := func(laidOut bool) {
			t.Helper()
			if tab.len() != n {
				t.Fatalf("%d names: len %d", n, tab.len())
			}
			for i := range n {
				name := fmt.Sprintf("A%d.Example.ORG.", i)
				a, ok := tab.get(name)
				if !ok || a.targets()[0] != fmt.Sprintf("t%d.agency.test.", i) || (a.cell != nil) != laidOut {
					t.Fatalf("%d names, laid out %v: %s: found %v, alias %+v", n, laidOut, name, ok, a)
				}
				for _, other := range []string{fmt.Sprintf("a%d.example.org.", i+n), fmt.Sprintf("b%d.example.org.", i), ""} {
					if _, ok := tab.get(other); ok {
						t.Fatalf("%d names, laid out %v: %q found, never added", n, laidOut, other)
					}
				}
			}
		}
		check(false)
		tab.freeze()
		check(true)
		want := max(n, minCells)
		if n == 0 {
			want = 0 // a table without short names allocates no cells
		}
		if len(tab.cells) != want {
			t.Errorf("%d names in %d cells, want %d", n, len(tab.cells), want)
		}
		if p := uintptr(unsafe.Pointer(unsafe.SliceData(tab.cells))); n > 0 && p%64 != 0 {
			t.Errorf("%d cells start at %#x, not on a 64-byte line", len(tab.cells), p)
		}
	}
}

// TestLayOutReportsInseparableNames: names with the same hash, which no displacement sends to
// different cells, make a layout fail instead of searching forever (freeze then takes another
// seed). The same name twice is the way to get the same hash.
func TestLayOutReportsInseparableNames(t *testing.T) {
	k := shortKey("a.example.org.")
	if _, _, ok := layOut([]shortName{k, k}, maphash.MakeSeed(), minCells); ok {
		t.Fatal("two names with one hash laid out")
	}
	if _, _, ok := layOut([]shortName{k, shortKey("b.example.org.")}, maphash.MakeSeed(), minCells); !ok {
		t.Fatal("two names failed to lay out")
	}
}

// TestAliasCellCopiesWhatPinTakesOver: an entry a target's slot already held when pin made it
// the pinned slot (cache.initPinLocked takes over a slot made on demand) is in the cells of the
// aliases to that target from the start, not only after the next refresh.
func TestAliasCellCopiesWhatPinTakesOver(t *testing.T) {
	c := newCache(func(context.Context, cacheKey) (*chain, error) { return nil, errors.New("not asked") })
	k := cacheKey{name: "target.example.net.", qtype: dns.TypeA}
	e := &entry{set: &addrSet{}, fetched: int64(time.Since(clockBase)), ttl: 300}
	c.setGood(c.slotFor(k), e)

	tab := newAliasTable()
	tab.add("example.org.", []string{k.name})
	tab.pin(c)
	a, _ := tab.get("example.org.")
	if set, exp, ok := a.cell.fresh(qtypeIndex(dns.TypeA)); !ok || set != e.set || exp != e.fetched+int64(e.lifetime()) {
		t.Fatalf("the cell holds %v until %d (%v), want the taken-over entry's addresses", set, exp, ok)
	}
}

// TestAliasCellReadsOneEntry: readers of a cell that writers keep changing see the expiry and
// the addresses of one entry, never the expiry of one and the addresses of another. Two
// writers, one per address type, share the cell as refreshes of A and AAAA do.
func TestAliasCellReadsOneEntry(t *testing.T) {
	var c aliasCell
	sets := [2][2]*addrSet{{{}, {}}, {{}, {}}}
	exps := [2][2]int64{{1, 2}, {3, 4}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for qi := range uint8(2) {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c.store(qi, exps[qi][i%2], sets[qi][i%2])
			}
		})
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	reads := 0
	for time.Now().Before(deadline) {
		for range 1000 {
			for qi := range 2 {
				set, exp, ok := c.fresh(qi)
				if !ok {
					continue
				}
				reads++
				if (set == sets[qi][0]) != (exp == exps[qi][0]) || (set == sets[qi][1]) != (exp == exps[qi][1]) {
					close(stop)
					wg.Wait()
					t.Fatalf("type %d: read expiry %d with the addresses of the other entry", qi, exp)
				}
			}
		}
	}
	close(stop)
	wg.Wait()
	if reads == 0 {
		t.Fatal("no read got past the writers")
	}
}

// typedResolver answers A with 192.0.2.N and AAAA with 2001:db8::N, N counting the resolutions
// of the key, so that every entry's addresses tell it apart; or NODATA, or an error.
type typedResolver struct {
	mu     sync.Mutex
	calls  map[cacheKey]int
	nodata bool
	err    error
}

func (r *typedResolver) resolve(_ context.Context, k cacheKey) (*chain, error) {
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

// TestAliasCellAnswersAsItsSlot: aliases with a short name answer fresh queries from their
// cell's copy of the target's entry (aliasTable), and what they answer is what the pinned slot
// answers, through every change of the entry: the first resolution, seconds counted down (a
// fraction of one does not count), a refresh to new addresses, expiry into stale answers, and a
// negative answer. Two short names and a long one (always answered through the slot) lead to
// the same target; their answers must not differ but by the owner name.
func TestAliasCellAnswersAsItsSlot(t *testing.T) {
	clk := newFakeClock()
	r := &typedResolver{calls: map[cacheKey]int{}}
	f := New()
	f.Zones = []string{"example.org."}
	long := "a-name-longer-than-a-cell-holds.example.org."
	names := []string{"example.org.", "www.example.org.", long}
	for _, name := range names {
		f.aliases.add(name, []string{"target.example.net."})
	}
	f.initCache(r.resolve, "")
	f.cache.now = clk.now
	f.cache.stale = 10 * time.Minute
	f.Next = zoneBelow(false)
	defer f.cache.stop()

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
	// even while the target's entry is fresh in the cell (pick): answering it would let the
	// target's refresh renew the entry from itself.
	q := new(dns.Msg)
	q.SetQuestion(names[0], dns.TypeA)
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	f.ServeDNS(withPath(context.Background(), "target.example.net."), rec, q)
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
		f.cache.refreshAsync(context.Background(), s)
		waitFor(t, "the refresh", func() bool { return s.good.Load() != old })
	}
	check("refreshed", 100, "192.0.2.2", "2001:db8::2")
	for _, name := range names[:2] {
		c, _ := f.aliases.get(name)
		for qi := range qtypes {
			if set, _, ok := c.cell.fresh(qi); !ok || set != a.one.slots[qi].good.Load().set {
				t.Errorf("refreshed: the cell of %s holds no copy of the entry for type %d", name, qtypes[qi])
			}
		}
	}
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
		f.cache.refreshAsync(context.Background(), s)
		waitFor(t, "the negative answer", func() bool { e := s.good.Load(); return e != nil && e.negative() })
	}
	check("negative", 0)
	for _, name := range names {
		if m := ask(name, dns.TypeA); len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Errorf("negative: %s answered without the zone's SOA: %v", name, m)
		}
	}
}
