package flatten

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// adUpstream answers like an authoritative server, one record a question, for the chain
// client1.example.net CNAME server.example.net A 192.0.2.10; per name, with AD set or not, or
// SERVFAIL with an EDE, as a validating resolver would. It keeps the questions it got.
type adUpstream struct {
	mu    sync.Mutex
	ad    map[string]bool
	ede   map[string]uint16 // SERVFAIL with this EDE
	asked []*dns.Msg
}

func newADUpstream() *adUpstream {
	return &adUpstream{ad: map[string]bool{"client1.example.net.": true, "server.example.net.": true}, ede: map[string]uint16{}}
}

func (u *adUpstream) set(name string, ad bool, ede uint16) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ad[name], u.ede[name] = ad, ede
}

func (u *adUpstream) exchange(_ context.Context, q question, name string) (*dns.Msg, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	req := newQuery(name, q.key.qtype, q.dnssec)
	u.asked = append(u.asked, req)
	m := new(dns.Msg)
	m.SetReply(req)
	if code := u.ede[name]; code != 0 {
		m.Rcode = dns.RcodeServerFailure
		m.SetEdns0(1232, true)
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_EDE{InfoCode: code, ExtraText: "validation failure <server.example.net. A IN>"})
		return m, nil
	}
	m.AuthenticatedData = u.ad[name]
	switch {
	case name == "client1.example.net.":
		m.Answer = []dns.RR{&dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 300}, Target: "server.example.net."}}
	case q.key.qtype == dns.TypeA:
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 10}}}
	case q.key.qtype == dns.TypeHTTPS:
		m.Answer = []dns.RR{&dns.HTTPS{SVCB: dns.SVCB{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeHTTPS, Class: dns.ClassINET, Ttl: 60}, Priority: 1, Target: "."}}}
	}
	return m, nil
}

// newSecureFlatten is example.org -> client1.example.net over up with dnssec_targets secure (or
// not), an injected clock, not started.
func newSecureFlatten(up exchanger, clk *fakeClock, secure bool) *Flatten {
	f := newTestFlatten()
	f.cfg.zones = []string{"example.org."}
	if secure {
		f.cfg.sec = &securityConfig{secure: true}
	}
	f.addAlias("example.org.", "client1.example.net.")
	f.build((&walker{ex: up, maxDepth: defaultMaxDepth, secure: secure}).resolve)
	f.pool.cache.now = clk.now
	f.Next = zoneBelow(false)
	return f
}

// AD on every hop of the chain: served, and the cached chain is marked validated; the questions
// carry DO and AD. Without the option, no DO, and an answer without AD is served as before.
func TestSecureTargetsEveryHop(t *testing.T) {
	up := newADUpstream()
	f := newSecureFlatten(up, newFakeClock(), true)
	m := serve(t, f, dns.TypeA, true)
	if m.Rcode != dns.RcodeSuccess || firstA(m) != "192.0.2.10" {
		t.Fatalf("validated chain: %v", m)
	}
	if e := f.pool.cache.pin(cacheKey{name: "client1.example.net.", qtype: dns.TypeA}).good.Load(); e == nil || !e.validated {
		t.Errorf("the cached chain is not marked validated: %+v", e)
	}
	if len(up.asked) != 2 {
		t.Fatalf("asked %d questions, want 2 (one a hop)", len(up.asked))
	}
	for _, q := range up.asked {
		if o := q.IsEdns0(); o == nil || !o.Do() || !q.AuthenticatedData || q.CheckingDisabled {
			t.Errorf("question without DO and AD, or with CD: %v", q)
		}
	}

	// The first hop validated, the second not: the chain fails, EDE 5, and says why.
	for _, hop := range []string{"client1.example.net.", "server.example.net."} {
		up := newADUpstream()
		up.set(hop, false, 0)
		f := newSecureFlatten(up, newFakeClock(), true)
		m := serve(t, f, dns.TypeA, true)
		if m.Rcode != dns.RcodeServerFailure {
			t.Fatalf("%s without AD: rcode %s", hop, dns.RcodeToString[m.Rcode])
		}
		if e := ede(m); e == nil || e.InfoCode != dns.ExtendedErrorCodeDNSSECIndeterminate || !strings.Contains(e.ExtraText, "not validated") {
			t.Errorf("%s without AD: EDE %v, want 5 saying the target is not validated", hop, e)
		}
	}

	up = newADUpstream()
	up.set("server.example.net.", false, 0)
	f = newSecureFlatten(up, newFakeClock(), false)
	if m := serve(t, f, dns.TypeA, true); firstA(m) != "192.0.2.10" {
		t.Errorf("dnssec_targets any: an answer without AD is served: %v", m)
	}
	for _, q := range up.asked {
		if o := q.IsEdns0(); o == nil || o.Do() || q.AuthenticatedData {
			t.Errorf("dnssec_targets any: question with DO or AD: %v", q)
		}
	}
}

// A bogus target (the upstream's SERVFAIL with a DNSSEC EDE) gets SERVFAIL passing the EDE on;
// a validated answer from before is still served stale (RFC 8767) when the upstream then fails
// or stops validating; an entry from a pool that did not validate never is.
func TestSecureTargetsBogusAndStale(t *testing.T) {
	up := newADUpstream()
	up.set("server.example.net.", false, dns.ExtendedErrorCodeSignatureExpired)
	f := newSecureFlatten(up, newFakeClock(), true)
	m := serve(t, f, dns.TypeA, true)
	if e := ede(m); m.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeSignatureExpired {
		t.Fatalf("bogus: want SERVFAIL with EDE 7, got %v", m)
	}
	st := validationState(f.pool.cache.pin(cacheKey{name: "client1.example.net.", qtype: dns.TypeA}))
	if st != "bogus(ede=7)" {
		t.Errorf("explain's state: %s", st)
	}

	clk := newFakeClock()
	up = newADUpstream()
	f = newSecureFlatten(up, clk, true)
	if m := serve(t, f, dns.TypeA, true); firstA(m) != "192.0.2.10" {
		t.Fatalf("validated: %v", m)
	}
	for _, fail := range []func(){
		func() { up.set("server.example.net.", false, 0) },
		func() { up.set("server.example.net.", false, dns.ExtendedErrorCodeDNSBogus) },
	} {
		fail()
		clk.advance(10 * time.Minute) // past the TTL and any remembered failure
		m := serve(t, f, dns.TypeA, true)
		if e := ede(m); firstA(m) != "192.0.2.10" || e == nil || e.InfoCode != dns.ExtendedErrorCodeStaleAnswer {
			t.Errorf("after a validated answer, a failing upstream: want it stale (EDE 3), got %v", m)
		}
	}

	// A reload into dnssec_targets secure keeps no answer the old pool took unvalidated.
	old := newSecureFlatten(newADUpstream(), newFakeClock(), false)
	serve(t, old, dns.TypeA, false)
	f = newSecureFlatten(newADUpstream(), newFakeClock(), true)
	f.pool.cache.adopt(old.pool.cache)
	if e := f.pool.cache.pin(cacheKey{name: "client1.example.net.", qtype: dns.TypeA}).good.Load(); e != nil {
		t.Errorf("an unvalidated entry was adopted by a secure pool: %+v", e)
	}
	old = newSecureFlatten(newADUpstream(), newFakeClock(), true)
	serve(t, old, dns.TypeA, false)
	f.pool.cache.adopt(old.pool.cache)
	if e := f.pool.cache.pin(cacheKey{name: "client1.example.net.", qtype: dns.TypeA}).good.Load(); e == nil || !e.validated {
		t.Errorf("a validated entry was not adopted: %+v", e)
	}
}

// dnssec_targets changes what upstream questions look like: blocks that differ in it never
// share a pool.
func TestSecureTargetsPoolKey(t *testing.T) {
	a := parseBlock(t, "flatten {\n alias @ a.agency.test\n}")
	b := parseBlock(t, "flatten {\n alias @ a.agency.test\n dnssec_targets secure\n}")
	c := parseBlock(t, "flatten {\n alias @ a.agency.test\n dnssec_targets any\n}")
	if poolKey(a.cfg) == poolKey(b.cfg) {
		t.Error("a secure block shares the pool of one that is not")
	}
	if poolKey(a.cfg) != poolKey(c.cfg) {
		t.Error("dnssec_targets any is the default, and shares its pool")
	}
}

// validatingUpstream answers as a validating resolver would for the agency chain (client1 CNAME
// client2 CNAME server1): with AD when the question asks for validation (DO and AD set); and
// plain.agency.test A 192.0.2.40, unsigned, never with AD.
func validatingUpstream(t *testing.T) *fakeUpstream {
	u := newFakeUpstream(t, agencyRecords...)
	u.add(t, "plain.agency.test. 300 IN A 192.0.2.40")
	for _, name := range []string{"client1.agency.test.", "client2.agency.test.", "server1.agency.test."} {
		u.handle(name, func(w dns.ResponseWriter, r *dns.Msg) {
			m := u.answer(r)
			o := r.IsEdns0()
			m.AuthenticatedData = o != nil && o.Do() && r.AuthenticatedData
			w.WriteMsg(m)
		})
	}
	return u
}

// The validation outcomes are counted, and explain shows each chain's state.
func TestSecureTargetsMetricsAndExplain(t *testing.T) {
	u := validatingUpstream(t)
	addr, _ := startCoreDNS(t, `example.org:0 {
	bind 127.0.0.1
	flatten {
		alias @ client1.agency.test
		alias plain plain.agency.test
		dnssec_targets secure
		explain
		upstream `+u.Addr+`
	}
	file `+exampleZone(t)+` example.org
}
`)
	m := query(t, addr, "udp", "example.org.", dns.TypeA, 1232)
	checkAddrs(t, m, "example.org.", "192.0.2.10", "192.0.2.11")
	m = query(t, addr, "udp", "plain.example.org.", dns.TypeA, 1232)
	if e := ede(m); m.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeDNSSECIndeterminate {
		t.Fatalf("plain: want SERVFAIL EDE 5, got %v", m)
	}
	zones := "example.org."
	server := "dns://127.0.0.1:0"
	if n := metric(t, "dnssec_validations_total", server, zones, "", "secure"); n < 1 {
		t.Errorf("secure outcomes: %v", n)
	}
	if n := metric(t, "dnssec_validations_total", server, zones, "", "unvalidated"); n < 1 {
		t.Errorf("unvalidated outcomes: %v", n)
	}
	txt := func(name string) string {
		var b strings.Builder
		for _, rr := range query(t, addr, "tcp", "_flatten."+name, dns.TypeTXT, 0).Answer {
			b.WriteString(strings.Join(rr.(*dns.TXT).Txt, "") + "\n")
		}
		return b.String()
	}
	if s := txt("example.org."); !strings.Contains(s, "target=1:client1.agency.test. type=A state=fresh") || !strings.Contains(s, "dnssec=secure") {
		t.Errorf("explain of a validated chain:\n%s", s)
	}
	if s := txt("plain.example.org."); !strings.Contains(s, "dnssec=unvalidated") {
		t.Errorf("explain of an unvalidated chain:\n%s", s)
	}
}

// With `https`, an HTTPS answer is held to dnssec_targets secure as addresses are: served when
// every hop has AD, SERVFAIL with EDE 5 when one lacks it.
func TestSecureTargetsHTTPS(t *testing.T) {
	up := newADUpstream()
	f := newSecureFlatten(up, newFakeClock(), true)
	f.cfg.https = true
	if m := serve(t, f, dns.TypeHTTPS, true); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].Header().Rrtype != dns.TypeHTTPS {
		t.Fatalf("validated chain: want the HTTPS record, got\n%v", m)
	}
	up = newADUpstream()
	up.set("server.example.net.", false, 0)
	f = newSecureFlatten(up, newFakeClock(), true)
	f.cfg.https = true
	m := serve(t, f, dns.TypeHTTPS, true)
	if e := ede(m); m.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeDNSSECIndeterminate {
		t.Errorf("a hop without AD: want SERVFAIL with EDE 5, got\n%v", m)
	}
}

// TestSecureTargetsThroughForwardTLS: the deployment the README names for `dnssec_targets secure`
// without a validating resolver on loopback: flatten resolves through this server, whose *forward*
// reaches the validating resolver over TLS. The questions carry DO and AD through *forward*, the
// resolver's AD comes back through it, and a chain the resolver did not validate gets EDE 5.
func TestSecureTargetsThroughForwardTLS(t *testing.T) {
	u := validatingUpstream(t)
	// The resolver's DNS over TLS listener (RFC 7858), with a certificate for dot.test that the
	// forward block trusts as its CA.
	certPEM, keyPEM := selfSignedCert(t, "dot.test")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	dot := &dns.Server{Listener: l, Net: "tcp-tls", Handler: dns.HandlerFunc(u.serve)}
	go dot.ActivateAndServe()
	t.Cleanup(func() { dot.Shutdown() })
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	addr, _ := startCoreDNS(t, `example.org:0 {
	bind 127.0.0.1
	flatten {
		alias @ client1.agency.test
		alias plain plain.agency.test
		dnssec_targets secure
	}
	file `+exampleZone(t)+` example.org
}
agency.test:0 {
	bind 127.0.0.1
	forward . tls://`+l.Addr().String()+` {
		tls `+ca+`
		tls_servername dot.test
	}
}
`)
	checkAddrs(t, query(t, addr, "udp", "example.org.", dns.TypeA, 1232), "example.org.", "192.0.2.10", "192.0.2.11")
	m := query(t, addr, "udp", "plain.example.org.", dns.TypeA, 1232)
	if e := ede(m); m.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeDNSSECIndeterminate {
		t.Errorf("plain: want SERVFAIL with EDE 5, got %v", m)
	}
	if n := u.count("server1.agency.test.", dns.TypeA); n < 1 {
		t.Errorf("the resolver got %d questions for server1 A over TLS, want at least 1", n)
	}
}

// selfSignedCert returns a PEM certificate for name and 127.0.0.1, signed by its own key, and
// the key.
func selfSignedCert(t *testing.T, name string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
