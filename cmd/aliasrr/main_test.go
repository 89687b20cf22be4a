package main

import (
	"encoding/hex"
	"testing"

	"github.com/miekg/dns"
)

func TestRecordRoundTrips(t *testing.T) {
	line, err := record("example.org.", "client1.agency.example.", "300")
	if err != nil {
		t.Fatal(err)
	}
	// What a zone file parser makes of it: an RFC 3597 record whose data is the target.
	rr, err := dns.NewRR(line)
	if err != nil {
		t.Fatalf("%q does not parse: %v", line, err)
	}
	u, ok := rr.(*dns.RFC3597)
	if !ok || rr.Header().Rrtype != 65401 || rr.Header().Ttl != 300 {
		t.Fatalf("parsed %q as %T type %d", line, rr, rr.Header().Rrtype)
	}
	wire, _ := hex.DecodeString(u.Rdata)
	name, _, err := dns.UnpackDomainName(wire, 0)
	if err != nil || name != "client1.agency.example." {
		t.Errorf("target %q (%v), want client1.agency.example.", name, err)
	}
	for _, bad := range [][3]string{{"example.org.", "relative.name", "300"}, {"example.org.", "a..b.", "300"}, {"example.org.", "t.example.", "-1"}} {
		if _, err := record(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("record%v: no error", bad)
		}
	}
}
