package flatten

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	_ "github.com/coredns/coredns/plugin/secondary" // a CoreDNS secondary

	"github.com/miekg/dns"
)

// Real secondaries (NSD and BIND 9, from Debian's packages; .ci/run installs them) transfer a
// flattened zone from a CoreDNS started by the test, and the tests query the secondaries.

// freePort returns a loopback port that is free for both UDP and TCP.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no port free for UDP and TCP")
	return 0
}

// secondary is a name server that transfers example.org from a primary.
type secondary struct {
	name string
	addr string // where it answers, UDP and TCP
	cmd  *exec.Cmd
	log  string
}

// startSecondary starts kind ("nsd" or "named") on a free loopback port, secondary for
// example.org to the primary at 127.0.0.1:primary, accepting its NOTIFY; it skips the test when
// the server is not installed.
func startSecondary(t *testing.T, kind string, primary int) *secondary {
	t.Helper()
	bin := map[string]string{"nsd": "nsd", "named": "named"}[kind]
	path, err := exec.LookPath(bin)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if p := filepath.Join(dir, bin); fileExists(p) {
				path, err = p, nil
			}
		}
	}
	if err != nil && os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed: .ci/run installs it", bin)
	}
	if err != nil {
		t.Skipf("%s is not installed (apt-get install nsd bind9; .ci/run does)", bin)
	}
	dir := t.TempDir()
	port := freePort(t)
	s := &secondary{name: kind, addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, kind+".log")}
	var conf string
	var args []string
	switch kind {
	case "nsd":
		conf = fmt.Sprintf(`server:
	ip-address: 127.0.0.1@%[2]d
	port: %[2]d
	username: ""
	chroot: ""
	zonesdir: "%[1]s"
	zonelistfile: "%[1]s/zone.list"
	database: ""
	xfrdfile: "%[1]s/xfrd.state"
	xfrdir: "%[1]s"
	pidfile: "%[1]s/nsd.pid"
	logfile: "%[1]s/nsd.log"
	server-count: 1
	verbosity: 2
	xfrd-reload-timeout: 0
remote-control:
	control-enable: no
zone:
	name: example.org
	zonefile: "%[1]s/example.org.zone"
	request-xfr: AXFR 127.0.0.1@%[3]d NOKEY
	allow-notify: 127.0.0.1 NOKEY
	provide-xfr: 127.0.0.1 NOKEY
`, dir, port, primary)
		args = []string{"-d", "-c", filepath.Join(dir, "nsd.conf")}
	case "named":
		conf = fmt.Sprintf(`options {
	directory "%[1]s";
	listen-on port %[2]d { 127.0.0.1; };
	listen-on-v6 { none; };
	pid-file "%[1]s/named.pid";
	session-keyfile "%[1]s/session.key";
	managed-keys-directory "%[1]s";
	recursion no;
	notify no;
	dnssec-validation no;
	allow-query { any; };
};
controls { };
zone "example.org" {
	type secondary;
	primaries { 127.0.0.1 port %[3]d; };
	file "%[1]s/example.org.db";
	allow-notify { 127.0.0.1; };
};
`, dir, port, primary)
		args = []string{"-g", "-n", "1", "-4", "-c", filepath.Join(dir, "named.conf")}
	}
	confName := map[string]string{"nsd": "nsd.conf", "named": "named.conf"}[kind]
	if err := os.WriteFile(filepath.Join(dir, confName), []byte(strings.ReplaceAll(conf, "\t", "  ")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(path, args...)
	s.cmd.Stdout, s.cmd.Stderr = out, out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", kind, err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		out.Close()
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("%s log:\n%s", kind, b)
		}
	})
	return s
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// ask queries the secondary; nil when it does not answer.
func (s *secondary) ask(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	r, _, err := c.Exchange(m, s.addr)
	if err != nil {
		return nil
	}
	return r
}

// addrsOf returns the sorted addresses of qtype in the secondary's answer for name.
func (s *secondary) addrsOf(name string, qtype uint16) []string {
	r := s.ask(name, qtype)
	if r == nil || r.Rcode != dns.RcodeSuccess {
		return nil
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rrAddr(rr); ok && rr.Header().Rrtype == qtype {
			out = append(out, a.String())
		}
	}
	slices.Sort(out)
	return out
}

func (s *secondary) serial() uint32 {
	if r := s.ask("example.org.", dns.TypeSOA); r != nil && len(r.Answer) == 1 {
		if soa, ok := r.Answer[0].(*dns.SOA); ok {
			return soa.Serial
		}
	}
	return 0
}

// waitUntil polls cond every 20 ms for at most d.
func waitUntil(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); ; {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// primaryCorefile is example.org on port, flattened, transferred to the secondaries at notify.
func primaryCorefile(port int, zonefile string, notify []string, lines ...string) string {
	return fmt.Sprintf(`example.org:%d {
	bind 127.0.0.1
	flatten {
		%s
	}
	file %s example.org
	transfer {
		to %s
	}
}
`, port, strings.Join(lines, "\n\t\t"), zonefile, strings.Join(notify, " "))
}

// TestSecondariesServeFlattenedAddresses: NSD and BIND secondaries of a flattened zone serve the
// apex addresses the primary serves and the rest of the zone; when the target's addresses change
// upstream, NOTIFY brings the new ones to them within `ttl MIN` plus 2 s of the primary serving
// them, under a higher serial; across a restart and a reload of the primary the serial they see
// never goes back, and a later change still reaches them.
func TestSecondariesServeFlattenedAddresses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NSD and BIND")
	}
	u := newFakeUpstream(t, "client1.agency.test. 2 IN A 192.0.2.10", "client1.agency.test. 2 IN AAAA 2001:db8::10")
	zone := exampleZone(t)
	port := freePort(t)
	secs := []*secondary{startSecondary(t, "nsd", port), startSecondary(t, "named", port)}
	var notify []string
	for _, s := range secs {
		notify = append(notify, s.addr)
	}
	const ttlMin = 1
	cf := primaryCorefile(port, zone, notify, "alias @ client1.agency.test.", "upstream "+u.Addr, fmt.Sprintf("ttl %d 2", ttlMin))
	inst := startReloadable(t, cf)
	defer func() { stopInstance(t, inst) }()
	primary := &secondary{name: "primary", addr: fmt.Sprintf("127.0.0.1:%d", port)}

	// The secondaries ask for the zone at startup (and retry): they serve the apex as flattened.
	for _, s := range secs {
		if !waitUntil(30*time.Second, func() bool { return slices.Equal(s.addrsOf("example.org.", dns.TypeA), []string{"192.0.2.10"}) }) {
			t.Fatalf("%s: apex A %v, want 192.0.2.10", s.name, s.addrsOf("example.org.", dns.TypeA))
		}
		if got := s.addrsOf("example.org.", dns.TypeAAAA); !slices.Equal(got, []string{"2001:db8::10"}) {
			t.Errorf("%s: apex AAAA %v, want 2001:db8::10", s.name, got)
		}
		if r := s.ask("example.org.", dns.TypeMX); r == nil || len(r.Answer) != 1 {
			t.Errorf("%s: MX %v, want the zone's", s.name, r)
		}
		if got := s.addrsOf("mail.example.org.", dns.TypeA); !slices.Equal(got, []string{"192.0.2.25"}) {
			t.Errorf("%s: mail A %v, want 192.0.2.25", s.name, got)
		}
	}

	change := func(addr string) {
		t.Helper()
		before := map[string]uint32{}
		for _, s := range secs {
			before[s.name] = s.serial()
		}
		u.set(t, "client1.agency.test.", "client1.agency.test. 2 IN A "+addr)
		if !waitUntil(10*time.Second, func() bool { return slices.Equal(primary.addrsOf("example.org.", dns.TypeA), []string{addr}) }) {
			t.Fatalf("the primary does not serve %s", addr)
		}
		served := time.Now()
		for _, s := range secs {
			ok := waitUntil(time.Until(served.Add((ttlMin+2)*time.Second)), func() bool {
				return slices.Equal(s.addrsOf("example.org.", dns.TypeA), []string{addr})
			})
			t.Logf("%s: %s after %v (serial %d -> %d)", s.name, addr, time.Since(served).Round(time.Millisecond), before[s.name], s.serial())
			if !ok {
				t.Errorf("%s: apex A %v %v after the primary served %s, want it within ttl MIN + 2 s", s.name, s.addrsOf("example.org.", dns.TypeA), time.Since(served), addr)
			}
			if !serialLess(before[s.name], s.serial()) {
				t.Errorf("%s: serial %d after the change, want above %d", s.name, s.serial(), before[s.name])
			}
		}
	}
	change("192.0.2.77")

	// A reload, and a restart (a new process knows nothing of the serials shown before).
	seen := map[string]uint32{}
	for _, s := range secs {
		seen[s.name] = s.serial()
	}
	next, err := inst.Restart(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(cf), ServerTypeName: "dns"})
	if err != nil {
		t.Fatal(err)
	}
	inst = next
	stopInstance(t, inst)
	versions.forget()
	time.Sleep(1100 * time.Millisecond) // a restart takes time
	inst = startReloadable(t, cf)
	for _, s := range secs {
		if got := s.serial(); serialLess(got, seen[s.name]) {
			t.Errorf("%s: serial %d after the primary restarted, below %d", s.name, got, seen[s.name])
		}
	}
	change("192.0.2.88")
}

// TestSecondaryManyNames: a zone with 10,000 flattened names (ALIAS records) reaches an NSD
// secondary whole: every name with its A and AAAA.
func TestSecondaryManyNames(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 names")
	}
	const n = 10000
	u := newFakeUpstream(t)
	records := manyALIAS(t, u, n)
	port := freePort(t)
	nsd := startSecondary(t, "nsd", port)
	startCoreDNS(t, primaryCorefile(port, exampleZone(t, records...), []string{nsd.addr}, "zone_alias", "upstream "+u.Addr))
	if !waitUntil(30*time.Second, func() bool { return len(nsd.addrsOf("n9999.example.org.", dns.TypeAAAA)) == 1 }) {
		t.Fatalf("the secondary does not serve the zone: n9999 AAAA %v", nsd.addrsOf("n9999.example.org.", dns.TypeAAAA))
	}
	rrs := axfr(t, server{tcp: nsd.addr}, "example.org.", 0)
	addrs := 0
	for _, rr := range rrs {
		if t := rr.Header().Rrtype; t == dns.TypeA || t == dns.TypeAAAA {
			addrs++
		}
	}
	// Every name has an A and an AAAA; the zone's own: ns1 and mail.
	if want := 2*n + 2; addrs != want {
		t.Errorf("the secondary holds %d address records, want %d", addrs, want)
	}
}

// TestSecondaryWithFailingTargets: a dead target and one that does not exist hold up neither the
// transfer nor the other names on the secondary: the dead target's name has the zone's own
// address, the missing one's none, the apex its flattened one.
func TestSecondaryWithFailingTargets(t *testing.T) {
	u := newFakeUpstream(t, "client1.agency.test. 300 IN A 192.0.2.10")
	u.handle("dead.agency.test.", func(dns.ResponseWriter, *dns.Msg) {}) // never answers
	port := freePort(t)
	nsd := startSecondary(t, "nsd", port)
	startCoreDNS(t, primaryCorefile(port, exampleZone(t, "dead 300 IN A 192.0.2.97"), []string{nsd.addr},
		"alias @ client1.agency.test.", "alias dead dead.agency.test.", "alias gone gone.agency.test.",
		"upstream "+u.Addr, "timeout 1s"))
	if !waitUntil(30*time.Second, func() bool { return slices.Equal(nsd.addrsOf("example.org.", dns.TypeA), []string{"192.0.2.10"}) }) {
		t.Fatalf("the secondary's apex: %v, want 192.0.2.10", nsd.addrsOf("example.org.", dns.TypeA))
	}
	if got := nsd.addrsOf("dead.example.org.", dns.TypeA); !slices.Equal(got, []string{"192.0.2.97"}) {
		t.Errorf("dead target on the secondary: %v, want the zone's own 192.0.2.97", got)
	}
	if r := nsd.ask("gone.example.org.", dns.TypeA); r == nil || len(r.Answer) != 0 {
		t.Errorf("NXDOMAIN target on the secondary: %v, want no address", r)
	}
	if r := nsd.ask("example.org.", dns.TypeMX); r == nil || len(r.Answer) != 1 {
		t.Errorf("MX on the secondary: %v, want the zone's", r)
	}
}

// TestTransferAliasToFlatteningSecondary: with transfer_alias, a CoreDNS secondary (*secondary*)
// that runs flatten with zone_alias gets the ALIAS records and answers the apex like the primary.
func TestTransferAliasToFlatteningSecondary(t *testing.T) {
	u := newFakeUpstream(t, "client1.agency.test. 300 IN A 192.0.2.10", "client1.agency.test. 300 IN AAAA 2001:db8::10")
	port := freePort(t)
	startCoreDNS(t, primaryCorefile(port, exampleZone(t), []string{"*"},
		"alias @ client1.agency.test.", "transfer_alias", "upstream "+u.Addr))
	sec, _ := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	flatten {
		zone_alias
		upstream %s
	}
	secondary {
		transfer from 127.0.0.1:%d
	}
}
`, u.Addr, port))
	var m *dns.Msg
	ok := waitUntil(10*time.Second, func() bool {
		m = query(t, sec, "udp", "example.org.", dns.TypeA, 0)
		return m.Rcode == dns.RcodeSuccess && len(m.Answer) == 1
	})
	if !ok {
		t.Fatalf("the secondary's apex: %v", m)
	}
	checkAddrs(t, m, "example.org.", "192.0.2.10")
	checkAddrs(t, query(t, sec, "udp", "example.org.", dns.TypeAAAA, 0), "example.org.", "2001:db8::10")
	// It holds the ALIAS record, not addresses: it flattens itself.
	if m := query(t, sec, "udp", "example.org.", typeALIAS, 0); len(m.Answer) != 1 {
		t.Errorf("the secondary's apex ALIAS records: %v, want one", m.Answer)
	}
}
