package flatten

import (
	"crypto"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// With a real validating resolver: Unbound (Debian's package; .ci/run installs it) on loopback,
// with trust anchors for target zones the test signs itself, and flatten in another CoreDNS with
// `dnssec_targets secure` and Unbound as its upstream.

// startUnbound starts Unbound on a free loopback port as the test's own process, in the
// foreground, from a temp dir, with conf's lines added to its server section and stubs its stub
// zones (zone -> address). It skips the test when Unbound is not installed, unless under CI.
func startUnbound(t *testing.T, conf string, stubs map[string]string) string {
	t.Helper()
	path, err := exec.LookPath("unbound")
	if err != nil && fileExists("/usr/sbin/unbound") {
		path, err = "/usr/sbin/unbound", nil
	}
	if err != nil && os.Getenv("CI") == "true" {
		t.Fatal("unbound is not installed: .ci/run installs it")
	}
	if err != nil {
		t.Skip("unbound is not installed (apt-get install unbound; .ci/run does)")
	}
	dir := t.TempDir()
	port := freePort(t)
	var b strings.Builder
	fmt.Fprintf(&b, `server:
	interface: 127.0.0.1
	port: %[2]d
	do-ip6: no
	username: ""
	chroot: ""
	directory: "%[1]s"
	pidfile: "%[1]s/unbound.pid"
	do-daemonize: no
	use-syslog: no
	logfile: ""
	verbosity: 1
	val-log-level: 2
	access-control: 127.0.0.0/8 allow
	do-not-query-localhost: no
	module-config: "validator iterator"
	ede: yes
	qname-minimisation: no
	# test. is one of Unbound's default local zones (RFC 6761): let the stubs answer for it.
	local-zone: "test." nodefault
%[3]s
remote-control:
	control-enable: no
`, dir, port, conf)
	zones := slices.Sorted(func(yield func(string) bool) {
		for z := range stubs {
			if !yield(z) {
				return
			}
		}
	})
	for _, z := range zones {
		fmt.Fprintf(&b, "stub-zone:\n\tname: %q\n\tstub-addr: %s\n", z, strings.Replace(stubs[z], ":", "@", 1))
	}
	confPath := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(confPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "unbound.log")
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, "-d", "-c", confPath)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting unbound: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		out.Close()
		if t.Failed() {
			c, _ := os.ReadFile(confPath)
			l, _ := os.ReadFile(logPath)
			t.Logf("unbound.conf:\n%s\nunbound log:\n%s", c, l)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	up := func() bool {
		m := new(dns.Msg)
		m.SetQuestion("version.server.", dns.TypeTXT)
		m.Question[0].Qclass = dns.ClassCHAOS
		_, _, err := (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(m, addr)
		return err == nil
	}
	if !waitUntil(10*time.Second, up) {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("unbound does not answer on %s:\n%s", addr, b)
	}
	return addr
}

// signedAuth is an authoritative server for one zone that the test signs itself (miekg/dns), so
// that it can serve signatures a signer would never make: expired ones.
type signedAuth struct {
	zone string
	key  *dns.DNSKEY
	priv crypto.Signer
	up   *fakeUpstream

	mu      sync.Mutex
	expired map[string]bool // names whose address records get an expired RRSIG
}

func newSignedAuth(t *testing.T, zone string, records ...string) *signedAuth {
	t.Helper()
	key, priv := generateKey(t, zone)
	a := &signedAuth{zone: zone, key: key, priv: priv, expired: map[string]bool{}}
	a.up = newFakeUpstream(t, append(records, key.String())...)
	for _, rr := range append(records, key.String()) {
		name := strings.ToLower(mustRR(t, rr).Header().Name)
		a.up.handle(name, a.serve)
	}
	return a
}

// setExpired makes the signatures of name's records expired (or valid again).
func (a *signedAuth) setExpired(name string, expired bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expired[name] = expired
}

// serve answers from the records, as the fake upstream does, with an RRSIG over the answer's
// RRset when the question has DO.
func (a *signedAuth) serve(w dns.ResponseWriter, r *dns.Msg) {
	m := a.up.answer(r)
	m.Authoritative = true
	name := strings.ToLower(r.Question[0].Name)
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(1232, o.Do())
		if o.Do() && len(m.Answer) > 0 {
			a.mu.Lock()
			expired := a.expired[name]
			a.mu.Unlock()
			now := time.Now()
			incep, expir := now.Add(-time.Hour), now.Add(24*time.Hour)
			if expired {
				incep, expir = now.Add(-48*time.Hour), now.Add(-24*time.Hour)
			}
			sig := &dns.RRSIG{
				Hdr:        dns.RR_Header{Name: m.Answer[0].Header().Name, Rrtype: dns.TypeRRSIG, Class: dns.ClassINET, Ttl: m.Answer[0].Header().Ttl},
				Algorithm:  a.key.Algorithm,
				KeyTag:     a.key.KeyTag(),
				SignerName: a.zone,
				Inception:  uint32(incep.Unix()),
				Expiration: uint32(expir.Unix()),
			}
			if err := sig.Sign(a.priv, m.Answer); err == nil {
				m.Answer = append(m.Answer, sig)
			}
		}
	}
	w.WriteMsg(m)
}

// trustAnchor is key as an Unbound trust-anchor line.
func trustAnchor(key *dns.DNSKEY) string {
	return fmt.Sprintf("\ttrust-anchor: %q\n", strings.Join(strings.Fields(key.String()), " "))
}

func TestSecureTargetsWithUnbound(t *testing.T) {
	// The target zones: secure.test signed by a CoreDNS *dnssec* block under its trust anchor;
	// wrongkey.test signed by a key that is not its anchor; insecure.test unsigned; expired.test
	// signed by the test, with expired signatures where it says.
	secureKey, secureFile := newZoneKey(t, "secure.test.")
	_, wrongFile := newZoneKey(t, "wrongkey.test.")
	wrongAnchor, _ := newZoneKey(t, "wrongkey.test.")
	soa := func(z string) string {
		return "@ 3600 IN SOA ns." + z + " hostmaster." + z + " 1 7200 3600 1209600 300"
	}
	secureZone := writeZone(t, "secure.test.", soa("secure.test."), "@ 3600 IN NS ns", "ns 3600 IN A 127.0.0.1",
		"www 300 IN A 192.0.2.80", "www 300 IN AAAA 2001:db8::80", "alias 300 IN CNAME www",
		"hop 300 IN CNAME www.insecure.test.")
	wrongZone := writeZone(t, "wrongkey.test.", soa("wrongkey.test."), "@ 3600 IN NS ns", "ns 3600 IN A 127.0.0.1",
		"www 300 IN A 192.0.2.81")
	insecureZone := writeZone(t, "insecure.test.", soa("insecure.test."), "@ 3600 IN NS ns", "ns 3600 IN A 127.0.0.1",
		"www 300 IN A 192.0.2.82")
	tport := freePort(t)
	startCoreDNS(t, fmt.Sprintf(`secure.test:%[1]d {
	bind 127.0.0.1
	dnssec {
		key file %[2]s
	}
	file %[3]s secure.test
}
wrongkey.test:%[1]d {
	bind 127.0.0.1
	dnssec {
		key file %[4]s
	}
	file %[5]s wrongkey.test
}
insecure.test:%[1]d {
	bind 127.0.0.1
	file %[6]s insecure.test
}
`, tport, secureFile, secureZone, wrongFile, wrongZone, insecureZone))
	expired := newSignedAuth(t, "expired.test.",
		"expired.test. 3600 IN SOA ns.expired.test. hostmaster.expired.test. 1 7200 3600 1209600 300",
		"www.expired.test. 300 IN A 192.0.2.83",
		"flip.expired.test. 1 IN A 192.0.2.84", // TTL 1: Unbound asks again at once
	)
	expired.setExpired("www.expired.test.", true)

	target := fmt.Sprintf("127.0.0.1:%d", tport)
	resolver := startUnbound(t, trustAnchor(secureKey)+trustAnchor(wrongAnchor)+trustAnchor(expired.key)+
		"\tdomain-insecure: \"insecure.test\"\n",
		map[string]string{"secure.test": target, "wrongkey.test": target, "insecure.test": target, "expired.test": expired.up.Addr})

	// Unbound itself: the test is worth something only if it validates as the test says.
	uq := func(name string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(1232, true)
		r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, resolver)
		if err != nil {
			t.Fatalf("unbound, %s: %v", name, err)
		}
		return r
	}
	if r := uq("www.secure.test."); r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData {
		t.Fatalf("unbound does not validate www.secure.test:\n%s", r)
	}
	if r := uq("www.insecure.test."); r.Rcode != dns.RcodeSuccess || r.AuthenticatedData {
		t.Fatalf("unbound: www.insecure.test should be insecure:\n%s", r)
	}
	for _, name := range []string{"www.wrongkey.test.", "www.expired.test."} {
		r := uq(name)
		e := ede(r)
		if r.Rcode != dns.RcodeServerFailure || e == nil || !dnssecEDE(e.InfoCode) {
			t.Fatalf("unbound: %s should be bogus with a DNSSEC EDE:\n%s", name, r)
		}
		t.Logf("unbound: %s: EDE %d %q", name, e.InfoCode, e.ExtraText)
	}

	key, keyfile := newZoneKey(t, "example.org.")
	fport := freePort(t)
	addr, _ := startCoreDNS(t, fmt.Sprintf(`example.org:%d {
	bind 127.0.0.1
	dnssec {
		key file %s
	}
	flatten {
		alias @ alias.secure.test
		alias hop hop.secure.test
		alias insecure www.insecure.test
		alias wrongkey www.wrongkey.test
		alias expired www.expired.test
		alias flip flip.expired.test
		dnssec_targets secure
		ttl 1 60
		explain
		upstream %s
	}
	file %s example.org
}
`, fport, keyfile, resolver, exampleZone(t)))

	// A signed target: served and signed, and the flattened answer validates (delv, with the
	// zone's key as its trust anchor).
	m := doQuery(t, addr, "example.org.", dns.TypeA, true)
	signedAddrs(t, m, "example.org.", key, "192.0.2.80")
	delvValidates(t, fport, key, "example.org.")

	// An unsigned target, and a chain with one unsigned hop: refused, EDE 5.
	for _, name := range []string{"insecure.example.org.", "hop.example.org."} {
		m := doQuery(t, addr, name, dns.TypeA, true)
		if e := ede(m); m.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeDNSSECIndeterminate || !strings.Contains(e.ExtraText, "not validated") {
			t.Errorf("%s: want SERVFAIL with EDE 5, got\n%s", name, m)
		}
	}
	// Bogus targets: SERVFAIL with Unbound's EDE, as Unbound gives it for the same question.
	for name, target := range map[string]string{"wrongkey.example.org.": "www.wrongkey.test.", "expired.example.org.": "www.expired.test."} {
		m := doQuery(t, addr, name, dns.TypeA, true)
		want := ede(uq(target)).InfoCode
		if e := ede(m); m.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != want {
			t.Errorf("%s: want SERVFAIL with Unbound's EDE %d, got\n%s", name, want, m)
		}
	}

	// Validated once, then bogus: served stale (EDE 3), still signed.
	signedAddrs(t, doQuery(t, addr, "flip.example.org.", dns.TypeA, true), "flip.example.org.", key, "192.0.2.84")
	expired.setExpired("flip.expired.test.", true)
	var stale *dns.Msg
	if !waitUntil(10*time.Second, func() bool {
		stale = doQuery(t, addr, "flip.example.org.", dns.TypeA, true)
		e := ede(stale)
		return e != nil && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer
	}) {
		t.Fatalf("flip: never served stale after its target turned bogus; last answer\n%s", stale)
	}
	signedAddrs(t, stale, "flip.example.org.", key, "192.0.2.84")
	var b strings.Builder
	for _, rr := range query(t, server{udp: addr.tcp, tcp: addr.tcp}, "tcp", "_flatten.flip.example.org.", dns.TypeTXT, 0).Answer {
		b.WriteString(strings.Join(rr.(*dns.TXT).Txt, "") + "\n")
	}
	if s := b.String(); !strings.Contains(s, fmt.Sprintf("dnssec=bogus(ede=%d)", dns.ExtendedErrorCodeSignatureExpired)) || !strings.Contains(s, "state=stale") {
		t.Errorf("explain of a chain that turned bogus:\n%s", s)
	}
}

// signedAddrs checks that m answers owner with the addresses want, signed by key.
func signedAddrs(t *testing.T, m *dns.Msg, owner string, key *dns.DNSKEY, want ...string) {
	t.Helper()
	if m.Rcode != dns.RcodeSuccess {
		t.Fatalf("%s: rcode %s\n%s", owner, dns.RcodeToString[m.Rcode], m)
	}
	var got []string
	for _, rr := range checkSigned(t, m, m.Answer, owner, dns.TypeA, key) {
		got = append(got, rr.(*dns.A).A.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: %v, want %v\n%s", owner, got, want, m)
	}
}

// delvValidates checks with delv that the A RRset of name, asked of the CoreDNS on port, validates
// with key as the trust anchor.
func delvValidates(t *testing.T, port int, key *dns.DNSKEY, name string) {
	t.Helper()
	path, err := exec.LookPath("delv")
	if err != nil && os.Getenv("CI") == "true" {
		t.Fatal("delv is not installed: .ci/run installs it (bind9-dnsutils)")
	}
	if err != nil {
		t.Log("delv is not installed: the flattened answer's signature is checked in Go only")
		return
	}
	anchors := filepath.Join(t.TempDir(), "anchors.conf")
	conf := fmt.Sprintf("trust-anchors {\n\t%q static-key %d %d %d %q;\n};\n", key.Hdr.Name, key.Flags, key.Protocol, key.Algorithm, key.PublicKey)
	if err := os.WriteFile(anchors, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path, "@127.0.0.1", "-p", fmt.Sprint(port), "-a", anchors, "+root="+strings.TrimSuffix(key.Hdr.Name, "."),
		name, "A").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "; fully validated") {
		t.Errorf("delv does not validate %s: %v\n%s", name, err, out)
	}
}
