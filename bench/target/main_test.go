package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func startTarget(t *testing.T, delay time.Duration, chase bool) string {
	t.Helper()
	tg := newTarget(delay, 30, 3600, chase)
	addr, stop, err := tg.serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

func ask(t *testing.T, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	resp, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return resp
}

func stats(t *testing.T, addr string) map[string]string {
	t.Helper()
	lines, err := askControl(addr, "stats."+zoneCtl)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, "=")
		m[k] = v
	}
	return m
}

func answers(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	return out
}

// Without -chase each hop is its own question, and the counters tell hops and types apart.
func TestCountsPerNameTypeAndHop(t *testing.T) {
	addr := startTarget(t, 0, false)

	r := ask(t, addr, "client1.agency.test.", dns.TypeA)
	if want := []string{"client1.agency.test. 30 IN CNAME server1.agency.test."}; !slices.Equal(answers(r), want) || !r.Authoritative {
		t.Fatalf("client1 A: got %v (aa %v), want %v", answers(r), r.Authoritative, want)
	}
	ask(t, addr, "server1.agency.test.", dns.TypeA)
	ask(t, addr, "server1.agency.test.", dns.TypeA)
	ask(t, addr, "Server1.Agency.Test.", dns.TypeAAAA)

	s := stats(t, addr)
	for k, want := range map[string]string{
		"total":                       "4",
		"q client1.agency.test. A":    "1",
		"q server1.agency.test. A":    "2",
		"q server1.agency.test. AAAA": "1",
		"synthetic_names":             "0",
		"max1s":                       "4",
	} {
		if s[k] != want {
			t.Errorf("%s = %q, want %q (all: %v)", k, s[k], want, s)
		}
	}

	// Control questions are not counted, and reset zeroes everything.
	if _, err := askControl(addr, "reset."+zoneCtl); err != nil {
		t.Fatal(err)
	}
	if s := stats(t, addr); s["total"] != "0" || s["q server1.agency.test. A"] != "" {
		t.Errorf("after reset: %v", s)
	}
}

// With -chase the answer carries the chain to its end, as an authoritative server that follows
// CNAMEs inside its zone does.
func TestChase(t *testing.T) {
	addr := startTarget(t, 0, true)
	r := ask(t, addr, "client1.agency.test.", dns.TypeAAAA)
	want := []string{"client1.agency.test. 30 IN CNAME server1.agency.test.", "server1.agency.test. 30 IN AAAA 2001:db8::10"}
	if !slices.Equal(answers(r), want) {
		t.Fatalf("got %v, want %v", answers(r), want)
	}
}

func TestSyntheticNames(t *testing.T) {
	addr := startTarget(t, 0, true)
	r := ask(t, addr, "t12345.agency.test.", dns.TypeA)
	want := []string{"t12345.agency.test. 3600 IN CNAME s57.agency.test.", "s57.agency.test. 3600 IN A 198.51.100.57"}
	if !slices.Equal(answers(r), want) {
		t.Fatalf("got %v, want %v", answers(r), want)
	}
	ask(t, addr, "t12345.agency.test.", dns.TypeA)
	ask(t, addr, "t7.agency.test.", dns.TypeAAAA)

	if r := ask(t, addr, "nope.agency.test.", dns.TypeA); r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
		t.Errorf("unknown name: rcode %s, ns %v", dns.RcodeToString[r.Rcode], r.Ns)
	}
	if r := ask(t, addr, "s300.agency.test.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("s300: rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	if r := ask(t, addr, "server1.agency.test.", dns.TypeMX); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Errorf("NODATA: %v", r)
	}
	if r := ask(t, addr, "example.org.", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("outside the zone: rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}

	s := stats(t, addr)
	// t12345, t7 and s300 (asked, though it does not exist).
	if s["synthetic_names"] != "3" || s["synthetic_max_per_name_type"] != "2" {
		t.Errorf("synthetic counters: %v", s)
	}
}

// The delay holds every answer back by at least the configured time; the counter sees the
// question when it arrives.
func TestDelay(t *testing.T) {
	const delay = 50 * time.Millisecond
	addr := startTarget(t, delay, false)
	start := time.Now()
	ask(t, addr, "server1.agency.test.", dns.TypeA)
	if took := time.Since(start); took < delay {
		t.Errorf("answered after %v, before the %v delay", took, delay)
	}
}

func TestMaxWindow(t *testing.T) {
	b := make([]int, 300)
	b[0], b[99], b[100], b[150], b[199], b[250] = 5, 1, 7, 3, 2, 4
	// Windows are 100 buckets: [100,199] holds 7+3+2 = 12, the most.
	if got := maxWindow(b); got != 12 {
		t.Errorf("maxWindow = %d, want 12", got)
	}
	if got := maxWindow(nil); got != 0 {
		t.Errorf("maxWindow(nil) = %d", got)
	}
}
