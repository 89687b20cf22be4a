package flatten

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
	before := testutil.ToFloat64(failoverAnswers.WithLabelValues("dns://127.0.0.1:0"))
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		m := query(t, srv, "udp", "example.org.", qt, 1232)
		want := map[uint16]string{dns.TypeA: "192.0.2.2", dns.TypeAAAA: "2001:db8::2"}[qt]
		checkAddrs(t, m, "example.org.", want)
		if e := ede(m); e != nil {
			t.Errorf("%s: EDE %v on the backup's fresh answer", dns.TypeToString[qt], e)
		}
	}
	if d := testutil.ToFloat64(failoverAnswers.WithLabelValues("dns://127.0.0.1:0")) - before; d != 2 {
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
