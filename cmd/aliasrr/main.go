// Command aliasrr prints an ALIAS record (PowerDNS type 65401) in the RFC 3597 generic form that
// zone files for the *file*, *auto* and *secondary* plugins can hold, for flatten's zone_alias:
//
//	go run ./cmd/aliasrr example.org. client1.agency.example. 300
//	example.org. 300 IN TYPE65401 \# 24 07636c69656e74310661...
package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"strconv"

	"github.com/miekg/dns"
)

func main() {
	if len(os.Args) < 3 || len(os.Args) > 4 {
		fmt.Fprintln(os.Stderr, "usage: aliasrr OWNER TARGET [TTL]")
		os.Exit(2)
	}
	ttl := "3600"
	if len(os.Args) == 4 {
		ttl = os.Args[3]
	}
	line, err := record(os.Args[1], os.Args[2], ttl)
	if err != nil {
		fmt.Fprintln(os.Stderr, "aliasrr:", err)
		os.Exit(1)
	}
	fmt.Println(line)
}

// record returns the zone-file line of an ALIAS record at owner pointing at target.
func record(owner, target, ttl string) (string, error) {
	if _, err := strconv.ParseUint(ttl, 10, 31); err != nil {
		return "", fmt.Errorf("TTL %q is not a number of seconds", ttl)
	}
	if _, ok := dns.IsDomainName(target); !ok || !dns.IsFqdn(target) {
		return "", fmt.Errorf("target %q must be an absolute domain name (end with a dot)", target)
	}
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(target, buf, 0, nil, false)
	if err != nil {
		return "", fmt.Errorf("target %q: %v", target, err)
	}
	return fmt.Sprintf(`%s %s IN TYPE65401 \# %d %s`, owner, ttl, n, hex.EncodeToString(buf[:n])), nil
}
