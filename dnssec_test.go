package flatten

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// With *dnssec* above flatten (the cmd/coredns order), flattened answers are signed on the fly
// by the zone's key, NODATA gets dnssec's denial (NSEC black lie), and whatever signatures an
// upstream sends never reach the client.

// newZoneKey generates an ECDSAP256SHA256 key for zone and writes it as the
// K<zone>+013+<tag>.key/.private pair that dnssec's `key file` reads (the dnssec-keygen format).
// It returns the public key and the base name of the files.
func newZoneKey(t *testing.T, zone string) (*dns.DNSKEY, string) {
	t.Helper()
	k, priv := generateKey(t, zone)
	base := filepath.Join(t.TempDir(), fmt.Sprintf("K%s+%03d+%05d", zone, k.Algorithm, k.KeyTag()))
	if err := os.WriteFile(base+".key", []byte(k.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(base+".private", []byte(k.PrivateKeyString(priv)), 0o600); err != nil {
		t.Fatal(err)
	}
	return k, base
}

// generateKey generates an ECDSAP256SHA256 key-signing key for zone: the public key and its
// private half.
func generateKey(t *testing.T, zone string) (*dns.DNSKEY, crypto.Signer) {
	t.Helper()
	k := &dns.DNSKEY{
		Hdr:       dns.RR_Header{Name: zone, Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: 3600},
		Flags:     dns.ZONE | dns.SEP,
		Protocol:  3,
		Algorithm: dns.ECDSAP256SHA256,
	}
	priv, err := k.Generate(256)
	if err != nil {
		t.Fatal(err)
	}
	return k, priv.(crypto.Signer)
}

// upstreamSig is a made-up signature by agency.test over rrs: what a validating resolver
// upstream would pass on. It cannot verify; it must simply never be copied.
func upstreamSig(rrs []dns.RR) *dns.RRSIG {
	h := rrs[0].Header()
	return &dns.RRSIG{
		Hdr:         dns.RR_Header{Name: h.Name, Rrtype: dns.TypeRRSIG, Class: dns.ClassINET, Ttl: h.Ttl},
		TypeCovered: h.Rrtype,
		Algorithm:   dns.ECDSAP256SHA256,
		Labels:      uint8(dns.CountLabel(h.Name)),
		OrigTtl:     h.Ttl,
		Expiration:  uint32(time.Now().Add(24 * time.Hour).Unix()),
		Inception:   uint32(time.Now().Add(-time.Hour).Unix()),
		KeyTag:      4711,
		SignerName:  "agency.test.",
		Signature:   base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xab}, 64)),
	}
}

// signAll returns an RRSIG from upstreamSig for every RRset in rrs.
func signAll(rrs []dns.RR) []dns.RR {
	var sets [][]dns.RR
	for _, rr := range rrs {
		i := slices.IndexFunc(sets, func(s []dns.RR) bool {
			h, h0 := rr.Header(), s[0].Header()
			return h.Rrtype == h0.Rrtype && strings.EqualFold(h.Name, h0.Name)
		})
		if i < 0 {
			sets = append(sets, []dns.RR{rr})
			continue
		}
		sets[i] = append(sets[i], rr)
	}
	sigs := make([]dns.RR, 0, len(sets))
	for _, s := range sets {
		sigs = append(sigs, upstreamSig(s))
	}
	return sigs
}

// signingUpstream makes u answer queries for names like a signed resolver would: its usual
// answer with an RRSIG for every RRset in the answer and authority sections, whether DO was set
// or not.
func signingUpstream(u *fakeUpstream, names ...string) {
	for _, n := range names {
		u.handle(n, func(w dns.ResponseWriter, r *dns.Msg) {
			m := u.answer(r)
			m.Answer = append(m.Answer, signAll(m.Answer)...)
			m.Ns = append(m.Ns, signAll(m.Ns)...)
			w.WriteMsg(m)
		})
	}
}

func doQuery(t *testing.T, addr server, name string, qtype uint16, do bool) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(4096, do)
	return exchange(t, addr, "udp", m)
}

// rrset returns the records of section with the owner (any case) and type given; RRSIGs are
// matched on the type they cover.
func rrset(section []dns.RR, owner string, qtype uint16) (rrs []dns.RR, sigs []*dns.RRSIG) {
	for _, rr := range section {
		if !strings.EqualFold(rr.Header().Name, owner) {
			continue
		}
		if s, ok := rr.(*dns.RRSIG); ok {
			if s.TypeCovered == qtype {
				sigs = append(sigs, s)
			}
			continue
		}
		if rr.Header().Rrtype == qtype {
			rrs = append(rrs, rr)
		}
	}
	return rrs, sigs
}

// checkSigned checks that section holds the RRset (owner, qtype) with exactly one RRSIG, by
// the zone's key, owned by owner exactly as spelled, that verifies and is valid now.
func checkSigned(t *testing.T, m *dns.Msg, section []dns.RR, owner string, qtype uint16, key *dns.DNSKEY) []dns.RR {
	t.Helper()
	rrs, sigs := rrset(section, owner, qtype)
	what := owner + " " + dns.TypeToString[qtype]
	if len(rrs) == 0 {
		t.Fatalf("no %s RRset\n%s", what, m)
	}
	if len(sigs) != 1 {
		t.Fatalf("%d RRSIGs cover %s, want 1\n%s", len(sigs), what, m)
	}
	s := sigs[0]
	if s.Hdr.Name != owner {
		t.Errorf("RRSIG over %s is owned by %q, want %q", what, s.Hdr.Name, owner)
	}
	if s.SignerName != key.Hdr.Name || s.KeyTag != key.KeyTag() || s.Algorithm != key.Algorithm {
		t.Errorf("RRSIG over %s: signer %s tag %d alg %d, want %s %d %d", what, s.SignerName, s.KeyTag, s.Algorithm,
			key.Hdr.Name, key.KeyTag(), key.Algorithm)
	}
	if err := s.Verify(key, rrs); err != nil {
		t.Errorf("RRSIG over %s does not verify with the zone's key: %v\n%s", what, err, m)
	}
	if !s.ValidityPeriod(time.Now()) {
		t.Errorf("RRSIG over %s is not valid now: %s", what, s)
	}
	return rrs
}

// checkNoForeign checks that no record in m is owned by an upstream name and that every RRSIG
// is made by the zone.
func checkNoForeign(t *testing.T, m *dns.Msg, zone string) {
	t.Helper()
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if rr.Header().Rrtype == dns.TypeOPT {
				continue
			}
			if dns.IsSubDomain("agency.test.", rr.Header().Name) {
				t.Errorf("upstream record leaked: %s", rr)
			}
			if s, ok := rr.(*dns.RRSIG); ok && s.SignerName != zone {
				t.Errorf("RRSIG not made by %s: %s", zone, s)
			}
		}
	}
}

func countRRSIGs(m *dns.Msg) int {
	n := 0
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if rr.Header().Rrtype == dns.TypeRRSIG || rr.Header().Rrtype == dns.TypeNSEC {
				n++
			}
		}
	}
	return n
}

func TestDNSSECSignedAnswers(t *testing.T) {
	key, keyfile := newZoneKey(t, "example.org.")
	u := newFakeUpstream(t, append(slices.Clone(agencyRecords),
		"client3.agency.test. 300 IN CNAME server3.agency.test.",
		"server3.agency.test. 300 IN A 192.0.2.30", // no AAAA: NODATA
	)...)
	u.setRecursive()
	signingUpstream(u, "client1.agency.test.", "client3.agency.test.")

	// The test is only worth something if the upstream really sends signatures.
	up := server{udp: u.Addr, tcp: u.Addr}
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		if m := doQuery(t, up, "client1.agency.test.", qt, true); countRRSIGs(m) == 0 {
			t.Fatalf("fake upstream sent no RRSIG for client1 %s:\n%s", dns.TypeToString[qt], m)
		}
	}
	if m := doQuery(t, up, "client3.agency.test.", dns.TypeAAAA, true); countRRSIGs(m) < 2 {
		t.Fatalf("fake upstream sent no RRSIG with its NODATA:\n%s", m)
	}

	addr, _ := startCoreDNS(t, fmt.Sprintf(`example.org:0 {
	bind 127.0.0.1
	dnssec {
		key file %s
	}
	flatten {
		alias @ client1.agency.test.
		alias v4only client3.agency.test.
		upstream %s
	}
	file %s example.org
}
`, keyfile, u.Addr, exampleZone(t)))

	t.Run("A", func(t *testing.T) {
		m := doQuery(t, addr, "example.org.", dns.TypeA, true)
		rrs := checkSigned(t, m, m.Answer, "example.org.", dns.TypeA, key)
		var got []string
		for _, rr := range rrs {
			got = append(got, rr.(*dns.A).A.String())
		}
		slices.Sort(got)
		if !slices.Equal(got, []string{"192.0.2.10", "192.0.2.11"}) || len(m.Answer) != len(rrs)+1 || m.Rcode != dns.RcodeSuccess {
			t.Errorf("want NOERROR, 192.0.2.10 and 192.0.2.11 and their RRSIG, got %v\n%s", got, m)
		}
		checkNoForeign(t, m, "example.org.")
		if o := m.IsEdns0(); o == nil || !o.Do() {
			t.Errorf("DO not echoed")
		}
	})

	t.Run("AAAA", func(t *testing.T) {
		m := doQuery(t, addr, "example.org.", dns.TypeAAAA, true)
		rrs := checkSigned(t, m, m.Answer, "example.org.", dns.TypeAAAA, key)
		if len(rrs) != 1 || rrs[0].(*dns.AAAA).AAAA.String() != "2001:db8::10" || len(m.Answer) != 2 {
			t.Errorf("want 2001:db8::10 and its RRSIG\n%s", m)
		}
		checkNoForeign(t, m, "example.org.")
	})

	t.Run("question case", func(t *testing.T) {
		// The RRSIG is owned by the name as the client spelled it; the signature is over the
		// canonical (lower case) form, so it verifies all the same.
		m := doQuery(t, addr, "ExAmPlE.oRg.", dns.TypeA, true)
		checkSigned(t, m, m.Answer, "ExAmPlE.oRg.", dns.TypeA, key)
		checkNoForeign(t, m, "example.org.")
	})

	t.Run("NODATA", func(t *testing.T) {
		m := doQuery(t, addr, "v4only.example.org.", dns.TypeAAAA, true)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
			t.Fatalf("want NOERROR with no answer\n%s", m)
		}
		checkSigned(t, m, m.Ns, "example.org.", dns.TypeSOA, key)
		nsecs := checkSigned(t, m, m.Ns, "v4only.example.org.", dns.TypeNSEC, key)
		nsec := nsecs[0].(*dns.NSEC)
		// dnssec's black lie: the name exists (\000.name is next), with no AAAA but an A.
		if nsec.NextDomain != `\000.v4only.example.org.` || slices.Contains(nsec.TypeBitMap, dns.TypeAAAA) ||
			!slices.Contains(nsec.TypeBitMap, dns.TypeA) {
			t.Errorf("NSEC %s: want next \\000.v4only.example.org., A without AAAA", nsec)
		}
		if len(m.Ns) != 4 {
			t.Errorf("authority has %d records, want SOA, NSEC and their RRSIGs\n%s", len(m.Ns), m)
		}
		checkNoForeign(t, m, "example.org.")
		// The A side of the same alias is signed as usual.
		m = doQuery(t, addr, "v4only.example.org.", dns.TypeA, true)
		checkSigned(t, m, m.Answer, "v4only.example.org.", dns.TypeA, key)
		checkNoForeign(t, m, "example.org.")
	})

	t.Run("apex MX", func(t *testing.T) {
		m := doQuery(t, addr, "example.org.", dns.TypeMX, true)
		rrs := checkSigned(t, m, m.Answer, "example.org.", dns.TypeMX, key)
		if len(rrs) != 1 || rrs[0].String() != "example.org.\t3600\tIN\tMX\t10 mail.example.org." {
			t.Errorf("MX %v, want the zone's", rrs)
		}
		checkNoForeign(t, m, "example.org.")
	})

	t.Run("DNSKEY", func(t *testing.T) {
		m := doQuery(t, addr, "example.org.", dns.TypeDNSKEY, true)
		checkSigned(t, m, m.Answer, "example.org.", dns.TypeDNSKEY, key)
	})

	t.Run("no DO", func(t *testing.T) {
		for _, q := range []struct {
			name  string
			qtype uint16
		}{
			{"example.org.", dns.TypeA}, {"example.org.", dns.TypeAAAA},
			{"v4only.example.org.", dns.TypeAAAA}, {"example.org.", dns.TypeMX},
		} {
			for _, edns := range []bool{true, false} {
				var m *dns.Msg
				if edns {
					m = doQuery(t, addr, q.name, q.qtype, false)
				} else {
					m = query(t, addr, "udp", q.name, q.qtype, 0)
				}
				if n := countRRSIGs(m); n != 0 || m.Rcode != dns.RcodeSuccess {
					t.Errorf("%s %s without DO (EDNS %v): %d RRSIG/NSEC, rcode %s; want none, NOERROR\n%s",
						q.name, dns.TypeToString[q.qtype], edns, n, dns.RcodeToString[m.Rcode], m)
				}
				checkNoForeign(t, m, "example.org.")
			}
		}
	})
}
