package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"

	"github.com/miekg/dns"
)

// exampleDir holds the example Corefile and zone files, relative to this
// package's directory (go test runs in cmd/coredns).
const exampleDir = "../../example"

// The flattened TTLs are the minimum along client1 -> client2 -> server1 in
// example/db.agency.example: the CNAMEs have 300 and 120, the A RRset 600 and
// the AAAA RRset 60.
const (
	wantATTL    = 120 // min(300, 120, 600)
	wantAAAATTL = 60  // min(300, 120, 60)
)

// ttlSlack is how far below the chain minimum a flattened TTL may be. flatten
// caches the chain and counts the TTL down like a resolver's cache (rounding
// the time left down to whole seconds), so even the first answer may say 119
// for 120. A couple of seconds still tells the chain minimum apart from every
// other TTL in the zone files (300, 600, 3600).
const ttlSlack = 2

var wantA = []string{"192.0.2.10", "192.0.2.11"}

const wantAAAA = "2001:db8::10"

// TestDirectiveOrder checks that init placed flatten directly after minimal,
// so that cache and dnssec wrap it and it wraps file and forward.
func TestDirectiveOrder(t *testing.T) {
	d := dnsserver.Directives
	i := slices.Index(d, "flatten")
	if i < 0 {
		t.Fatalf("expected %q in dnsserver.Directives, got %v", "flatten", d)
	}
	if j := slices.Index(d[i+1:], "flatten"); j >= 0 {
		t.Fatalf("expected %q exactly once in dnsserver.Directives, got %v", "flatten", d)
	}
	if i == 0 || d[i-1] != "minimal" {
		t.Fatalf("expected %q directly after %q, got %v", "flatten", "minimal", d)
	}
	for _, above := range []string{"cache", "dnssec", "minimal"} {
		if j := slices.Index(d, above); j < 0 || j > i {
			t.Errorf("expected %q before flatten (index %d), got index %d", above, i, j)
		}
	}
	for _, below := range []string{"template", "hosts", "file", "auto", "secondary", "etcd", "forward"} {
		if j := slices.Index(d, below); j < i {
			t.Errorf("expected %q after flatten (index %d), got index %d", below, i, j)
		}
	}
}

// TestPluginRegistered is what `coredns -plugins` shows.
func TestPluginRegistered(t *testing.T) {
	others := caddy.ListPlugins()["others"]
	if !slices.Contains(others, "dns.flatten") {
		t.Fatalf("expected plugin %q to be registered, got %v", "dns.flatten", others)
	}
}

// TestExample starts example/Corefile in-process, on a free loopback port
// instead of 1053, and checks the answers the README promises.
func TestExample(t *testing.T) {
	addr := startExample(t)

	t.Run("apex A is flattened", func(t *testing.T) {
		r := exchange(t, "udp", addr, "example.com.", dns.TypeA)
		checkFlattened(t, r, "example.com.", dns.TypeA, wantA, wantATTL)
	})

	t.Run("apex AAAA keeps the question's case", func(t *testing.T) {
		r := exchange(t, "udp", addr, "ExAmPlE.CoM.", dns.TypeAAAA)
		checkFlattened(t, r, "ExAmPlE.CoM.", dns.TypeAAAA, []string{wantAAAA}, wantAAAATTL)
	})

	t.Run("apex A over TCP", func(t *testing.T) {
		r := exchange(t, "tcp", addr, "example.com.", dns.TypeA)
		checkFlattened(t, r, "example.com.", dns.TypeA, wantA, wantATTL)
	})

	zone := readZone(t, filepath.Join(exampleDir, "db.example.com"), "example.com.")
	for _, qtype := range []uint16{dns.TypeMX, dns.TypeTXT, dns.TypeSOA, dns.TypeNS} {
		t.Run("apex "+dns.TypeToString[qtype]+" comes from file unchanged", func(t *testing.T) {
			want := zone.rrset("example.com.", qtype)
			if len(want) == 0 {
				t.Fatalf("expected example/db.example.com to have %s records at the apex, found none",
					dns.TypeToString[qtype])
			}
			r := exchange(t, "udp", addr, "example.com.", qtype)
			checkFromZone(t, r, want)
		})
	}

	t.Run("www CNAME comes from file unchanged", func(t *testing.T) {
		want := zone.rrset("www.example.com.", dns.TypeCNAME)
		if len(want) != 1 {
			t.Fatalf("expected one CNAME at www in example/db.example.com, found %d", len(want))
		}
		r := exchange(t, "udp", addr, "www.example.com.", dns.TypeCNAME)
		checkFromZone(t, r, want)
	})

	t.Run("www A starts with the zone's CNAME", func(t *testing.T) {
		want := zone.rrset("www.example.com.", dns.TypeCNAME)
		if len(want) != 1 {
			t.Fatalf("expected one CNAME at www in example/db.example.com, found %d", len(want))
		}
		r := exchange(t, "udp", addr, "www.example.com.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess {
			t.Fatalf("expected rcode NOERROR, got %s:\n%v", dns.RcodeToString[r.Rcode], r)
		}
		if len(r.Answer) == 0 || r.Answer[0].String() != want[0].String() {
			t.Fatalf("expected the answer to start with %q (from the zone, not flattened), got:\n%v", want[0], r)
		}
		for _, rr := range r.Answer[1:] {
			if strings.EqualFold(rr.Header().Name, "www.example.com.") {
				t.Fatalf("expected only the CNAME to be owned by www.example.com., got %q in:\n%v", rr, r)
			}
		}
	})

	t.Run("agency.example is not flattened", func(t *testing.T) {
		// Control: the target zone itself still answers with its CNAME chain.
		r := exchange(t, "udp", addr, "client1.agency.example.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess {
			t.Fatalf("expected rcode NOERROR, got %s:\n%v", dns.RcodeToString[r.Rcode], r)
		}
		if len(r.Answer) == 0 || r.Answer[0].Header().Rrtype != dns.TypeCNAME ||
			r.Answer[0].Header().Name != "client1.agency.example." {
			t.Fatalf("expected the answer to start with the CNAME at client1.agency.example., got:\n%v", r)
		}
	})
}

// startExample starts example/Corefile on a free port of 127.0.0.1 and returns
// its address. The servers are stopped when the test ends.
func startExample(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(exampleDir, "Corefile"))
	if err != nil {
		t.Fatalf("expected to read the example Corefile: %v", err)
	}
	dir, err := filepath.Abs(exampleDir)
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(dir, "\"\\") {
		t.Skipf("example directory %q contains a quote or backslash, can't put it in a Corefile", dir)
	}

	caddy.Quiet, dnsserver.Quiet = true, true

	var lastErr error
	for range 5 { // another process may grab the port between freePort and Start
		port := freePort(t)
		cf, err := rewriteCorefile(string(raw), port, dir)
		if err != nil {
			t.Fatal(err)
		}
		inst, err := caddy.Start(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(cf), ServerTypeName: "dns"})
		if err != nil {
			lastErr = err
			if strings.Contains(err.Error(), "address already in use") {
				continue
			}
			t.Fatalf("expected the example Corefile to start, got: %v\nCorefile:\n%s", err, cf)
		}
		t.Cleanup(func() {
			errs := inst.ShutdownCallbacks()
			errs = append(errs, inst.Stop())
			inst.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Errorf("expected a clean shutdown, got: %v", err)
			}
		})
		return net.JoinHostPort("127.0.0.1", port)
	}
	t.Fatalf("expected the example Corefile to start on a free port, got: %v", lastErr)
	return ""
}

// rewriteCorefile makes the example Corefile runnable from this package: the
// listener port 1053 becomes port, and the zone file paths "example/..."
// (relative to the repository root) become absolute paths under dir.
// Comment lines are left alone.
func rewriteCorefile(cf, port, dir string) (string, error) {
	lines := strings.Split(cf, "\n")
	ports, paths := 0, 0
	for i, line := range lines {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if strings.Contains(line, ":1053") {
			line = strings.ReplaceAll(line, ":1053", ":"+port)
			ports++
		}
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "file" && strings.HasPrefix(f[1], "example/") {
			f[1] = strconv.Quote(filepath.Join(dir, strings.TrimPrefix(f[1], "example/")))
			line = strings.Join(f, " ")
			paths++
		}
		lines[i] = line
	}
	if ports == 0 || paths == 0 {
		return "", fmt.Errorf("expected example/Corefile to listen on :1053 and load zone files from example/, "+
			"found %d listeners and %d file paths to rewrite", ports, paths)
	}
	return strings.Join(lines, "\n"), nil
}

// freePort returns a port of 127.0.0.1 that was free for both UDP and TCP.
func freePort(t *testing.T) string {
	t.Helper()
	for range 10 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("expected to listen on UDP 127.0.0.1:0: %v", err)
		}
		_, port, _ := net.SplitHostPort(u.LocalAddr().String())
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
		u.Close()
		if err != nil {
			continue // TCP side taken, try another port
		}
		l.Close()
		return port
	}
	t.Fatal("expected to find a port of 127.0.0.1 free for both UDP and TCP")
	return ""
}

func exchange(t *testing.T, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("expected an answer to %s %s over %s from %s, got: %v",
			name, dns.TypeToString[qtype], network, addr, err)
	}
	return r
}

// checkFlattened checks a flattened apex answer: NOERROR, AA, exactly the
// addresses in want, owned by owner (spelled as in the question), no CNAME,
// and the chain-minimum TTL ttl, counted down by at most ttlSlack seconds.
func checkFlattened(t *testing.T, r *dns.Msg, owner string, qtype uint16, want []string, ttl uint32) {
	t.Helper()
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("expected rcode NOERROR, got %s:\n%v", dns.RcodeToString[r.Rcode], r)
	}
	if !r.Authoritative {
		t.Errorf("expected the AA flag on a flattened answer, got:\n%v", r)
	}
	var got []string
	for _, rr := range r.Answer {
		h := rr.Header()
		if h.Rrtype == dns.TypeCNAME {
			t.Fatalf("expected no CNAME in a flattened answer, got %q in:\n%v", rr, r)
		}
		if h.Rrtype != qtype {
			t.Fatalf("expected only %s records in the answer, got %q in:\n%v", dns.TypeToString[qtype], rr, r)
		}
		if h.Name != owner {
			t.Errorf("expected owner %q (the question name, same case), got %q", owner, h.Name)
		}
		if h.Class != dns.ClassINET {
			t.Errorf("expected class IN, got %q", rr)
		}
		if h.Ttl > ttl || h.Ttl+ttlSlack < ttl {
			t.Errorf("expected TTL %d (the chain minimum, counted down by at most %ds), got %q", ttl, ttlSlack, rr)
		}
		switch rr := rr.(type) {
		case *dns.A:
			got = append(got, rr.A.String())
		case *dns.AAAA:
			got = append(got, rr.AAAA.String())
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Fatalf("expected exactly the addresses %v at %s, got %v in:\n%v", want, owner, got, r)
	}
}

// checkFromZone checks that r is an authoritative NOERROR answer whose answer
// section is exactly want, as loaded from the zone file.
func checkFromZone(t *testing.T, r *dns.Msg, want []dns.RR) {
	t.Helper()
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("expected rcode NOERROR, got %s:\n%v", dns.RcodeToString[r.Rcode], r)
	}
	if !r.Authoritative {
		t.Errorf("expected the AA flag, got:\n%v", r)
	}
	got, exp := rrStrings(r.Answer), rrStrings(want)
	if !slices.Equal(got, exp) {
		t.Fatalf("expected the zone's records unchanged:\n%s\ngot:\n%s\nfull answer:\n%v",
			strings.Join(exp, "\n"), strings.Join(got, "\n"), r)
	}
}

func rrStrings(rrs []dns.RR) []string {
	s := make([]string, len(rrs))
	for i, rr := range rrs {
		s[i] = rr.String()
	}
	sort.Strings(s)
	return s
}

type zoneRRs []dns.RR

// readZone parses a zone file with the miekg/dns parser.
func readZone(t *testing.T, path, origin string) zoneRRs {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("expected to open zone file: %v", err)
	}
	defer f.Close()
	var rrs zoneRRs
	zp := dns.NewZoneParser(f, origin, path)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("expected %s to parse: %v", path, err)
	}
	return rrs
}

func (z zoneRRs) rrset(name string, qtype uint16) []dns.RR {
	var s []dns.RR
	for _, rr := range z {
		if rr.Header().Rrtype == qtype && strings.EqualFold(rr.Header().Name, name) {
			s = append(s, rr)
		}
	}
	return s
}
