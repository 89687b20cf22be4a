package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Zone data shared by every row but 0 (erratic, which has none). The apex of example.test answers
// A 192.0.2.10, A 192.0.2.11 and AAAA 2001:db8::10: flattened from client1.agency.test ->
// server1.agency.test (rows 1, 2, 4, 5) or as static records (rows 3, 3b). Every TTL on the chain and of the static records is the same
// (cfg.TTL), so that every row's answer may be cached for as long.

const soaNS = `@ 3600 IN SOA ns1.%[1]s hostmaster.%[1]s 1 7200 3600 1209600 300
@ 3600 IN NS ns1.%[1]s
ns1 3600 IN A 192.0.2.53
`

func agencyZone(ttl int) string {
	return "$ORIGIN agency.test.\n" + fmt.Sprintf(soaNS, "agency.test.") + fmt.Sprintf(`client1 %[1]d IN CNAME server1.agency.test.
server1 %[1]d IN A 192.0.2.10
server1 %[1]d IN A 192.0.2.11
server1 %[1]d IN AAAA 2001:db8::10
`, ttl)
}

// exampleZone is example.test with extra records at the apex (none for flatten).
func exampleZone(extra string) string {
	return "$ORIGIN example.test.\n" + fmt.Sprintf(soaNS, "example.test.") + extra
}

func staticApex(ttl int) string {
	return fmt.Sprintf("@ %[1]d IN A 192.0.2.10\n@ %[1]d IN A 192.0.2.11\n@ %[1]d IN AAAA 2001:db8::10\n", ttl)
}

// aliasApex is the PowerDNS ALIAS record at the apex (its bind backend reads the type by name).
func aliasApex(ttl int) string {
	return fmt.Sprintf("@ %d IN ALIAS client1.agency.test.\n", ttl)
}

func write(dir, name, content string) (string, error) {
	p := filepath.Join(dir, name)
	return p, os.WriteFile(p, []byte(content), 0o644)
}

// corefileBlock is one CoreDNS server block for zone on 127.0.0.1:port with the given plugin
// lines (indented by the caller where they nest).
func corefileBlock(zone string, port int, lines ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d {\n    bind 127.0.0.1\n", zone, port)
	for _, l := range lines {
		b.WriteString("    " + l + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// pdnsConf is a PowerDNS Authoritative configuration: the bind backend, ALIAS expanded through
// the recursor, nothing but loopback. With caches false the packet cache and the query caches
// are off (cache-ttl, query-cache-ttl and negquery-cache-ttl 0).
func pdnsConf(dir string, port, resolverPort int, namedConf string, caches bool) string {
	c := fmt.Sprintf(`launch=bind
bind-config=%s
local-address=127.0.0.1
local-port=%d
expand-alias=yes
resolver=127.0.0.1:%d
socket-dir=%s
daemon=no
guardian=no
disable-syslog=yes
write-pid=no
webserver=no
api=no
security-poll-suffix=
loglevel=3
`, namedConf, port, resolverPort, dir)
	if !caches {
		c += "cache-ttl=0\nquery-cache-ttl=0\nnegquery-cache-ttl=0\n"
	}
	return c
}

// recursorConf is a PowerDNS Recursor that forwards agency.test to the target and can ask no one
// else: no root priming (hint-file=no), every other address refused (dont-query; forwarders are
// exempt), no security polling, no DNSSEC work (the zones are unsigned). Caches are its defaults.
func recursorConf(dir string, port, targetPort int) string {
	return fmt.Sprintf(`local-address=127.0.0.1
local-port=%d
allow-from=127.0.0.0/8
forward-zones=agency.test=127.0.0.1:%d
hint-file=no
dont-query=0.0.0.0/0, ::/0
security-poll-suffix=
dnssec=off
socket-dir=%s
daemon=no
disable-syslog=yes
quiet=yes
`, port, targetPort, dir)
}

// ports hands out free loopback ports, each free for UDP and TCP when chosen and never the same
// twice in a run.
type ports struct{ used map[int]bool }

func (p *ports) next() (int, error) {
	if p.used == nil {
		p.used = map[int]bool{}
	}
	for range 100 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err != nil {
			continue
		}
		l.Close()
		if !p.used[port] {
			p.used[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port")
}

// take hands out n ports, as next does.
func (p *ports) take(n int) ([]int, error) {
	out := make([]int, n)
	for i := range out {
		var err error
		if out[i], err = p.next(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
