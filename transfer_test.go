package flatten

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// transferCorefile is example.org with flatten, file and transfer (NOTIFY to notify, if any).
func transferCorefile(zonefile string, notify string, lines ...string) string {
	to := "*"
	if notify != "" {
		to = notify
	}
	return fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		%s
	}
	file %s example.org
	transfer {
		to %s
	}
}
`, strings.Join(lines, "\n\t\t"), zonefile, to)
}

// axfr transfers zone from srv over TCP (serial 0) or asks for an IXFR from serial, and returns
// the records, or fails the test.
func axfr(t testing.TB, srv server, zone string, serial uint32) []dns.RR {
	t.Helper()
	m := new(dns.Msg)
	if serial == 0 {
		m.SetAxfr(zone)
	} else {
		m.SetIxfr(zone, serial, "ns1."+zone, "hostmaster."+zone)
	}
	tr := &dns.Transfer{ReadTimeout: 5 * time.Second}
	env, err := tr.In(m, srv.tcp)
	if err != nil {
		t.Fatalf("transfer: %v", err)
	}
	var rrs []dns.RR
	for e := range env {
		if e.Error != nil {
			t.Fatalf("transfer: %v", e.Error)
		}
		rrs = append(rrs, e.RR...)
	}
	return rrs
}

// recordsAt returns the records of rrs at owner of qtype, as text without TTL, sorted.
func recordsAt(rrs []dns.RR, owner string, qtype uint16) []string {
	var out []string
	for _, rr := range rrs {
		if h := rr.Header(); strings.EqualFold(h.Name, owner) && h.Rrtype == qtype {
			out = append(out, strings.TrimPrefix(rr.String(), rr.Header().String()))
		}
	}
	slices.Sort(out)
	return out
}

func soaSerial(t *testing.T, rrs []dns.RR) uint32 {
	t.Helper()
	if len(rrs) < 1 {
		t.Fatal("empty transfer")
	}
	soa, ok := rrs[0].(*dns.SOA)
	if !ok {
		t.Fatalf("transfer starts with %s, want the SOA", rrs[0])
	}
	if last, ok := rrs[len(rrs)-1].(*dns.SOA); len(rrs) > 1 && (!ok || last.Serial != soa.Serial) {
		t.Fatalf("transfer ends with %s, want the SOA of serial %d", rrs[len(rrs)-1], soa.Serial)
	}
	return soa.Serial
}

// TestTransferMaterializes: a transfer of a flattened zone carries, at each flattened name, the
// addresses a query gets (in place of the zone's own, without ALIAS records), the rest of the
// zone as it is, under a serial above the zone's own; an IXFR at that serial gets the SOA alone,
// and the SOA a query gets shows the same serial.
func TestTransferMaterializes(t *testing.T) {
	u := newFakeUpstream(t,
		"client1.agency.test. 300 IN A 192.0.2.10", "client1.agency.test. 300 IN A 192.0.2.11",
		"client1.agency.test. 300 IN AAAA 2001:db8::10",
		"v4only.agency.test. 300 IN A 192.0.2.20",
		"za.agency.test. 300 IN A 192.0.2.30")
	zone := exampleZone(t,
		"@ 300 IN A 192.0.2.99", // the apex's own fallback: replaced
		"v4 300 IN A 192.0.2.98",
		aliasRecord(t, "za", 120, "za.agency.test."),
		"www 300 IN CNAME client1.agency.test.")
	srv, _ := startCoreDNS(t, transferCorefile(zone, "",
		"alias @ client1.agency.test.", "alias v4 v4only.agency.test.", "zone_alias", "cname www", "upstream "+u.Addr))

	rrs := axfr(t, srv, "example.org.", 0)
	serial := soaSerial(t, rrs)
	if !serialLess(2026112201, serial) {
		t.Errorf("serial %d, want above the zone's 2026112201", serial)
	}
	for _, c := range []struct {
		owner string
		qtype uint16
		want  []string
	}{
		{"example.org.", dns.TypeA, []string{"192.0.2.10", "192.0.2.11"}},
		{"example.org.", dns.TypeAAAA, []string{"2001:db8::10"}},
		{"v4.example.org.", dns.TypeA, []string{"192.0.2.20"}},
		{"v4.example.org.", dns.TypeAAAA, nil}, // no address of the type: none
		{"za.example.org.", dns.TypeA, []string{"192.0.2.30"}},
		{"za.example.org.", typeALIAS, nil},
		{"www.example.org.", dns.TypeCNAME, []string{"client1.agency.test."}}, // as the zone has it
		{"example.org.", dns.TypeMX, []string{"10 mail.example.org."}},
		{"mail.example.org.", dns.TypeA, []string{"192.0.2.25"}},
	} {
		got := recordsAt(rrs, c.owner, c.qtype)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s %s: %q, want %q", c.owner, dns.TypeToString[c.qtype], got, c.want)
		}
	}
	for _, rr := range rrs {
		if rr.Header().Name == "example.org." && rr.Header().Rrtype == dns.TypeA && rr.Header().Ttl > 300 {
			t.Errorf("%s: TTL above the chain's", rr)
		}
	}

	// What a secondary asks before it transfers: the SOA, which shows the same serial.
	m := query(t, srv, "udp", "example.org.", dns.TypeSOA, 0)
	if len(m.Answer) != 1 || m.Answer[0].(*dns.SOA).Serial != serial {
		t.Errorf("SOA answer %v, want serial %d", m.Answer, serial)
	}
	// An IXFR from a secondary that is up to date: the SOA alone.
	if rrs := axfr(t, srv, "example.org.", serial); len(rrs) != 1 || soaSerial(t, rrs) != serial {
		t.Errorf("IXFR at the current serial: %v, want the SOA alone", rrs)
	}
}

// TestTransferSerialFollowsAddresses: when a target's addresses change, the serial grows (RFC
// 1982) and the transfer carries the new addresses; when nothing changed, it stays.
func TestTransferSerialFollowsAddresses(t *testing.T) {
	u := newFakeUpstream(t, "client1.agency.test. 1 IN A 192.0.2.10")
	srv, _ := startCoreDNS(t, transferCorefile(exampleZone(t), "", "alias @ client1.agency.test.", "upstream "+u.Addr, "ttl 1 1"))

	waitFor(t, "the address in the transfer", func() bool {
		return len(recordsAt(axfr(t, srv, "example.org.", 0), "example.org.", dns.TypeA)) == 1
	})
	time.Sleep(1100 * time.Millisecond) // the serial moves at most once a second
	first := soaSerial(t, axfr(t, srv, "example.org.", 0))
	time.Sleep(1100 * time.Millisecond)
	if again := soaSerial(t, axfr(t, srv, "example.org.", 0)); again != first {
		t.Errorf("serial %d without a change, want %d", again, first)
	}
	u.set(t, "client1.agency.test.", "client1.agency.test. 1 IN A 192.0.2.77")
	var rrs []dns.RR
	waitFor(t, "the new address in the transfer", func() bool {
		rrs = axfr(t, srv, "example.org.", 0)
		return slices.Equal(recordsAt(rrs, "example.org.", dns.TypeA), []string{"192.0.2.77"})
	})
	if s := soaSerial(t, rrs); !serialLess(first, s) {
		t.Errorf("serial %d after the change, want above %d", s, first)
	}
}

// TestTransferWithFailingTargets: a dead target and one that does not exist do not hold up or
// abort the transfer: it completes within the timeout, the failing names carry what a query
// would get (the zone's own records here, or nothing), and the other names are intact.
func TestTransferWithFailingTargets(t *testing.T) {
	u := newFakeUpstream(t, "client1.agency.test. 300 IN A 192.0.2.10")
	u.handle("dead.agency.test.", func(dns.ResponseWriter, *dns.Msg) {}) // never answers
	zone := exampleZone(t, "dead 300 IN A 192.0.2.97")
	srv, _ := startCoreDNS(t, transferCorefile(zone, "",
		"alias @ client1.agency.test.", "alias dead dead.agency.test.", "alias gone gone.agency.test.",
		"upstream "+u.Addr, "timeout 1s"))

	start := time.Now()
	rrs := axfr(t, srv, "example.org.", 0)
	took := time.Since(start)
	t.Logf("transfer with a dead target took %v", took)
	if got := recordsAt(rrs, "example.org.", dns.TypeA); !slices.Equal(got, []string{"192.0.2.10"}) {
		t.Errorf("apex A %q, want 192.0.2.10", got)
	}
	if got := recordsAt(rrs, "dead.example.org.", dns.TypeA); !slices.Equal(got, []string{"192.0.2.97"}) {
		t.Errorf("dead target: %q, want the zone's own 192.0.2.97", got)
	}
	if got := recordsAt(rrs, "gone.example.org.", dns.TypeA); len(got) != 0 {
		t.Errorf("NXDOMAIN target: %q, want no address", got)
	}
	if got := recordsAt(rrs, "example.org.", dns.TypeMX); len(got) != 1 {
		t.Errorf("MX %q, want the zone's", got)
	}
}

// TestTransferAlias: with transfer_alias, the `alias` lines and the zone's ALIAS records go to
// secondaries as ALIAS records, and no addresses are materialized: the zone's own stay.
func TestTransferAlias(t *testing.T) {
	u := newFakeUpstream(t, "client1.agency.test. 300 IN A 192.0.2.10")
	zone := exampleZone(t, "@ 300 IN A 192.0.2.99", aliasRecord(t, "za", 120, "za.agency.test."))
	srv, _ := startCoreDNS(t, transferCorefile(zone, "",
		"alias @ client1.agency.test.", "zone_alias", "transfer_alias", "upstream "+u.Addr))
	rrs := axfr(t, srv, "example.org.", 0)
	if got := recordsAt(rrs, "example.org.", dns.TypeA); !slices.Equal(got, []string{"192.0.2.99"}) {
		t.Errorf("apex A %q, want the zone's own", got)
	}
	for _, owner := range []string{"example.org.", "za.example.org."} {
		if got := recordsAt(rrs, owner, typeALIAS); len(got) != 1 {
			t.Errorf("%s: ALIAS records %q, want one", owner, got)
		}
	}
	for _, rr := range rrs {
		if rr.Header().Rrtype == typeALIAS && rr.Header().Name == "example.org." {
			if target, err := aliasTarget(rr); err != nil || target != "client1.agency.test." {
				t.Errorf("apex ALIAS %s: target %q (%v), want client1.agency.test.", rr, target, err)
			}
		}
	}
}

func TestSerialArithmetic(t *testing.T) {
	for _, c := range []struct {
		a, b uint32
		less bool
	}{
		{1, 2, true}, {2, 1, false}, {1, 1, false},
		{0xffffffff, 0, true}, {0, 0xffffffff, false}, // wraps (RFC 1982 3.2)
		{1, 1 + 1<<31 - 1, true}, {1, 1 + 1<<31 + 1, false},
	} {
		if got := serialLess(c.a, c.b); got != c.less {
			t.Errorf("serialLess(%d, %d) = %v, want %v", c.a, c.b, got, c.less)
		}
	}
}

// TestZoneVersions: the serial shown is the zone's own plus the seconds since serialEpoch at the
// last change; it stays while nothing changes, moves at most once a second, follows the zone's
// own serial, and never goes back when the zone's own does.
func TestZoneVersions(t *testing.T) {
	v := zoneVersions{m: map[string]*zoneVersion{}}
	t0 := time.Unix(serialEpoch+1000, 0)
	update := func(v *zoneVersions, zoneSerial uint32, sum uint64, at time.Duration) (uint32, bool) {
		return v.update("srv z.", zoneSerial, nil, sum, t0.Add(at))
	}
	s, _ := update(&v, 100, 1, 0)
	if s != 1100 {
		t.Fatalf("first serial %d, want 1100", s)
	}
	if got, held := update(&v, 100, 1, 5*time.Second); got != s || held {
		t.Errorf("nothing changed: %d (held %v), want %d", got, held, s)
	}
	if got, held := update(&v, 100, 2, 500*time.Millisecond); got != s || !held {
		t.Errorf("a change within the second of the last: %d (held %v), want %d, held until the next second", got, held, s)
	}
	if got, _ := update(&v, 100, 2, 7*time.Second); got != 1107 {
		t.Errorf("addresses changed: %d, want 1107", got)
	}
	if got, _ := update(&v, 101, 2, 8*time.Second); got != 1109 {
		t.Errorf("the zone's serial moved: %d, want 1109", got)
	}
	if got, _ := update(&v, 50, 2, 9*time.Second); got != 1110 {
		t.Errorf("the zone's serial went back: %d, want 1110 (never back)", got)
	}
	// A restart: a new process knows nothing, and the clock has moved on.
	fresh := zoneVersions{m: map[string]*zoneVersion{}}
	if got, _ := update(&fresh, 101, 3, 20*time.Second); !serialLess(1110, got) {
		t.Errorf("after a restart: %d, want above 1110", got)
	}
}

// BenchmarkWatchZone is what the watch does each second for a zone of 10,000 flattened names
// (ALIAS records over 256 targets), all fresh: its SOA, and each name's answers from the cache.
func BenchmarkWatchZone(b *testing.B) {
	u := newFakeUpstream(b)
	srv, _ := startCoreDNS(b, transferCorefile(exampleZone(b, manyALIAS(b, u, 10000)...), "", "zone_alias", "upstream "+u.Addr))
	axfr(b, srv, "example.org.", 0) // resolves every target
	f := block("example.org.")
	b.ResetTimer()
	for b.Loop() {
		f.watchZones()
	}
}

// manyALIAS returns n ALIAS records nN to 256 targets tK.agency.test, which u answers with an A
// and an AAAA each.
func manyALIAS(tb testing.TB, u *fakeUpstream, n int) []string {
	var records []string
	for i := range n {
		target := fmt.Sprintf("t%d.agency.test.", i%256)
		if i < 256 {
			u.add(tb, fmt.Sprintf("%s 3600 IN A 192.0.2.%d", target, i), fmt.Sprintf("%s 3600 IN AAAA 2001:db8::%x", target, i))
		}
		records = append(records, aliasRecord(tb, fmt.Sprintf("n%d", i), 300, target))
	}
	return records
}

// TestNotifyRateLimit: secondaries are told of a new serial at once, then at most once per
// interval however often the serial moves, and the last serial is told when the interval is up;
// the first serial shown is not told (the zone's plugin notified its load), and the first change
// after it is told at once.
func TestNotifyRateLimit(t *testing.T) {
	v := zoneVersions{m: map[string]*zoneVersion{}}
	t0 := time.Unix(serialEpoch+1000, 0)
	const every = 5 * time.Second
	v.update("k", 100, nil, 1, t0)
	if v.notifyDue("k", t0, every) {
		t.Errorf("the first serial was notified")
	}
	var told []time.Duration
	for i := 1; i <= 12; i++ { // the addresses flap every second
		now := t0.Add(time.Duration(i) * time.Second)
		v.update("k", 100, nil, uint64(i%2+2), now)
		if v.notifyDue("k", now, every) {
			told = append(told, now.Sub(t0))
		}
	}
	if want := []time.Duration{1 * time.Second, 6 * time.Second, 11 * time.Second}; !slices.Equal(told, want) {
		t.Errorf("notified at %v, want %v", told, want)
	}
	// The flapping stops: the last serial is told once the interval is up, and only once.
	last := t0.Add(12 * time.Second)
	if v.notifyDue("k", last.Add(3*time.Second), every) {
		t.Errorf("notified again before the interval was up")
	}
	if !v.notifyDue("k", last.Add(4*time.Second), every) {
		t.Errorf("the last serial was not notified when the interval was up")
	}
	if v.notifyDue("k", last.Add(20*time.Second), every) {
		t.Errorf("notified without a change")
	}
}

// TestTransferNeverReusesSerial: a transfer whose addresses changed within the second the serial
// last moved waits for the next second, so that it does not go out under the serial of other
// addresses.
func TestTransferNeverReusesSerial(t *testing.T) {
	u := newFakeUpstream(t, "client1.agency.test. 300 IN A 192.0.2.10")
	srv, _ := startCoreDNS(t, transferCorefile(exampleZone(t), "", "alias @ client1.agency.test.", "upstream "+u.Addr))
	waitFor(t, "the address in the transfer", func() bool {
		return len(recordsAt(axfr(t, srv, "example.org.", 0), "example.org.", dns.TypeA)) == 1
	})
	// Other addresses are shown at the start of a second, under a serial of their own; the
	// transfer comes within that second.
	key := block("example.org.").zoneKey("example.org.")
	now := time.Now()
	time.Sleep(time.Unix(now.Unix()+1, 10e6).Sub(now))
	other, held := versions.update(key, 2026112201, nil, 12345, time.Now())
	if held {
		t.Fatal("setup: the other addresses' serial was held")
	}
	rrs := axfr(t, srv, "example.org.", 0)
	if got := soaSerial(t, rrs); !serialLess(other, got) {
		t.Errorf("serial %d for 192.0.2.10, want above %d, the serial of the other addresses", got, other)
	}
}
