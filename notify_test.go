package flatten

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// notifyCorefile flattens example.org (a0 through agency.test, a1 through other.test) through u,
// and takes NOTIFYs for agency.test and unused.test from the addresses in from.
func notifyCorefile(t *testing.T, u *fakeUpstream, from string) string {
	return fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		alias a0 client1.agency.test.
		alias a1 www.other.test.
		upstream %[1]s
		explain
	}
	file %[2]s example.org
}
agency.test:0 unused.test:0 {
	bind 127.0.0.1
	flatten {
		notify_from %[3]s
	}
}
`, u.Addr, exampleZone(t), from)
}

func sendNotify(t *testing.T, srv server, zone string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetNotify(zone)
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, srv.udp)
	if err != nil {
		t.Fatalf("NOTIFY for %s: %v", zone, err)
	}
	return r
}

// questions counts the questions u received for name, both types.
func questions(u *fakeUpstream, name string) int {
	return u.count(name, dns.TypeA) + u.count(name, dns.TypeAAAA)
}

// TestNotifyReresolvesChainsThroughZone: a NOTIFY from an allowed address is acknowledged and
// re-resolves, at once, exactly the chains through the notified zone: one question per type for
// the chain through agency.test, none for the one through other.test. A flood of NOTIFYs costs
// at most one more re-resolution a second; a NOTIFY for a zone no chain passes through is
// acknowledged and asks nothing; explain names the zone and when it was notified.
func TestNotifyReresolvesChainsThroughZone(t *testing.T) {
	u := newFakeUpstream(t,
		"client1.agency.test. 3600 IN A 192.0.2.10", "client1.agency.test. 3600 IN AAAA 2001:db8::10",
		"www.other.test. 3600 IN A 192.0.2.20")
	srv, _ := startCoreDNS(t, notifyCorefile(t, u, "127.0.0.0/8"))
	checkAddrs(t, query(t, srv, "udp", "a0.example.org.", dns.TypeA, 0), "a0.example.org.", "192.0.2.10")
	waitFor(t, "the startup round", func() bool { return questions(u, "www.other.test.") == 2 })
	agency, other := questions(u, "client1.agency.test."), questions(u, "www.other.test.")

	u.set(t, "client1.agency.test.", "client1.agency.test. 3600 IN A 192.0.2.77", "client1.agency.test. 3600 IN AAAA 2001:db8::77")
	if r := sendNotify(t, srv, "agency.test."); r.Rcode != dns.RcodeSuccess || !r.Authoritative || r.Opcode != dns.OpcodeNotify {
		t.Fatalf("NOTIFY from an allowed address: %v, want an authoritative NOERROR", r)
	}
	waitFor(t, "the new address", func() bool {
		return slices.Equal(addrs(t, query(t, srv, "udp", "a0.example.org.", dns.TypeA, 0), "a0.example.org."), []string{"192.0.2.77"})
	})
	if n := questions(u, "client1.agency.test.") - agency; n != 2 {
		t.Errorf("%d questions for the chain through agency.test, want 2 (A and AAAA)", n)
	}
	if n := questions(u, "www.other.test.") - other; n != 0 {
		t.Errorf("%d questions for the chain through other.test, want none", n)
	}

	// A flood: the first re-resolves (or waits for the second to be up), the rest add one more.
	time.Sleep(pokeInterval)
	agency = questions(u, "client1.agency.test.")
	for range 20 {
		sendNotify(t, srv, "agency.test.")
	}
	time.Sleep(pokeInterval + 500*time.Millisecond)
	if n := questions(u, "client1.agency.test.") - agency; n < 2 || n > 4 {
		t.Errorf("20 NOTIFYs in a burst: %d questions, want 2 to 4 (at most one re-resolution a second)", n)
	}

	// A zone no chain passes through: acknowledged, nothing asked.
	before := u.total()
	if r := sendNotify(t, srv, "unused.test."); r.Rcode != dns.RcodeSuccess {
		t.Errorf("NOTIFY for an unused zone: %v, want NOERROR", r)
	}
	time.Sleep(200 * time.Millisecond)
	if n := u.total() - before; n != 0 {
		t.Errorf("a NOTIFY for an unused zone asked %d questions", n)
	}

	if got := explainLines(t, srv, "a0.example.org."); !slices.ContainsFunc(got, func(l string) bool {
		return strings.Contains(l, "zone=agency.test. changed=") && strings.Contains(l, "by='notify from 127.0.0.1'")
	}) {
		t.Errorf("explain does not say the chain passes through agency.test, notified:\n%s", strings.Join(got, "\n"))
	}
}

// TestNotifyFromElsewhereRefused: a NOTIFY from an address not in notify_from is refused (RFC
// 1996 3.10) and asks nothing.
func TestNotifyFromElsewhereRefused(t *testing.T) {
	u := newFakeUpstream(t, "client1.agency.test. 3600 IN A 192.0.2.10", "www.other.test. 3600 IN A 192.0.2.20")
	srv, _ := startCoreDNS(t, notifyCorefile(t, u, "192.0.2.1"))
	waitFor(t, "the startup round", func() bool { return questions(u, "www.other.test.") == 2 })
	before := u.total()
	if r := sendNotify(t, srv, "agency.test."); r.Rcode != dns.RcodeRefused {
		t.Errorf("NOTIFY from elsewhere: %v, want REFUSED", r)
	}
	time.Sleep(200 * time.Millisecond)
	if n := u.total() - before; n != 0 {
		t.Errorf("a refused NOTIFY asked %d questions", n)
	}
}

// TestSelfServedZoneChange: resolving through this server, a change of a zone served by another
// block (a *file* reload) reaches the flattened names within 2 s of *file* serving it, though
// the chain's TTL is an hour.
func TestSelfServedZoneChange(t *testing.T) {
	agencyText := func(serial int, addr string) string {
		return fmt.Sprintf("$ORIGIN agency.test.\n@ 3600 IN SOA ns1 hostmaster %d 7200 3600 1209600 300\n@ 3600 IN NS ns1\nns1 3600 IN A 192.0.2.53\nclient1 3600 IN CNAME server1\nserver1 3600 IN A %s\n", serial, addr)
	}
	agency := writeZone(t, "agency.test.")
	if err := os.WriteFile(agency, []byte(agencyText(1, "192.0.2.10")), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, _ := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		alias @ client1.agency.test.
	}
	file %s example.org
}
agency.test:0 {
	bind 127.0.0.1
	file %s agency.test {
		reload 100ms
	}
}
`, exampleZone(t), agency))
	checkAddrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org.", "192.0.2.10")
	time.Sleep(2 * pokeInterval) // the zone's serial is known

	if err := os.WriteFile(agency, []byte(agencyText(2, "192.0.2.77")), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "file serving the change", func() bool {
		return slices.Equal(addrs(t, query(t, srv, "udp", "server1.agency.test.", dns.TypeA, 0), "server1.agency.test."), []string{"192.0.2.77"})
	})
	served := time.Now()
	if !waitUntil(2*time.Second, func() bool {
		return slices.Equal(addrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org."), []string{"192.0.2.77"})
	}) {
		t.Errorf("the apex serves %v %v after file served the change, want 192.0.2.77 within 2 s",
			addrs(t, query(t, srv, "udp", "example.org.", dns.TypeA, 0), "example.org."), time.Since(served))
	}
	t.Logf("the apex followed %v after file", time.Since(served).Round(time.Millisecond))
}
