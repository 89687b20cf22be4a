package flatten

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
)

// anyParseLine in a row's line field asks only that the error names a line of the Corefile; 0 asks
// for no line at all (plugin.ErrOnce names none).
const anyParseLine = -1

// newSetupController returns a test controller for input in a server block for keys, by default
// example.org.:53. NewTestController leaves ServerBlockKeys empty, so set them as dnsserver does.
func newSetupController(input string, keys []string) *caddy.Controller {
	c := caddy.NewTestController("dns", input)
	c.ServerBlockKeys = []string{"example.org.:53"}
	if keys != nil {
		c.ServerBlockKeys = keys
	}
	return c
}

// checkParseErr reports a mismatch between err and a row's shouldErr, expectedErr and line, and
// returns whether the row parsed as expected without error, so that its values can be compared.
func checkParseErr(t *testing.T, i int, err error, shouldErr bool, expectedErr string, line int) bool {
	t.Helper()
	if !shouldErr {
		if err != nil {
			t.Errorf("Test %d: expected no error, got %v", i, err)
		}
		return err == nil
	}
	if err == nil {
		t.Errorf("Test %d: expected an error containing %q, got none", i, expectedErr)
		return false
	}
	if !strings.Contains(err.Error(), expectedErr) {
		t.Errorf("Test %d: expected an error containing %q, got %q", i, expectedErr, err)
	}
	switch {
	case line == anyParseLine:
		if !strings.Contains(err.Error(), "Testfile:") {
			t.Errorf("Test %d: expected the error to name a line of Testfile, got %q", i, err)
		}
	case line > 0:
		// "Testfile:3 - Error during parsing: ..." (caddyfile.Dispenser.Err); the " - " keeps
		// line 1 from matching line 12.
		if want := fmt.Sprintf("Testfile:%d - ", line); !strings.Contains(err.Error(), want) {
			t.Errorf("Test %d: expected the error to name line %d (%q), got %q", i, line, want, err)
		}
	}
	return false
}

// optionValues are the option values parse sets, to compare a whole row at once.
type optionValues struct {
	maxDepth   int
	timeout    time.Duration
	ttlMin     uint32
	ttlMax     uint32
	capacity   int
	prefetch   float64
	serveStale time.Duration
	refresh    int
}

func settingsOf(f *Flatten) optionValues {
	return optionValues{
		maxDepth:   f.cfg.maxDepth,
		timeout:    f.cfg.timeout,
		ttlMin:     f.cfg.ttlMin,
		ttlMax:     f.cfg.ttlMax,
		capacity:   f.cfg.capacity,
		prefetch:   f.cfg.prefetch,
		serveStale: f.cfg.serveStale,
		refresh:    f.cfg.refreshRate,
	}
}

// defaultSettings are the documented option defaults, spelled out rather than taken from the
// constants so that a changed default fails here.
var defaultSettings = optionValues{
	maxDepth:   8,
	timeout:    2 * time.Second,
	ttlMin:     5,
	ttlMax:     3600,
	capacity:   10000,
	prefetch:   0.10,
	serveStale: time.Hour,
	refresh:    1000,
}

// with returns the defaultSettings changed by fn.
func settingsWith(fn func(s *optionValues)) optionValues {
	s := defaultSettings
	fn(&s)
	return s
}

func TestParseDefaults(t *testing.T) {
	c := newSetupController(`flatten {
		alias @ target.example.net.
	}`, nil)
	f, err := parse(c)
	if err != nil {
		t.Fatalf("Test 0: expected no error, got %v", err)
	}
	if got := settingsOf(f); got != defaultSettings {
		t.Errorf("Test 0: expected the defaultSettings %+v, got %+v", defaultSettings, got)
	}
	if len(f.cfg.upstreams) != 0 {
		t.Errorf("Test 0: expected no upstreams (resolve through this server), got %q", f.cfg.upstreams)
	}
	if want := []string{"example.org."}; !slices.Equal(f.cfg.zones, want) {
		t.Errorf("Test 0: expected zones %v, got %v", want, f.cfg.zones)
	}
	a, ok := f.aliases.get("example.org.")
	if f.aliases.len() != 1 || !ok {
		t.Fatalf("Test 0: expected one alias at example.org., got %d aliases", f.aliases.len())
	}
	if !slices.Equal(a.targets(), []string{"target.example.net."}) || f.zoneOf("example.org.") != "example.org." {
		t.Errorf("Test 0: expected alias example.org. -> target.example.net. in example.org., got -> %s in %s", a.targets(), f.zoneOf("example.org."))
	}
}

// aliasWant is an expected alias: its targets (space-separated, in order) and the zone of ZONES
// that holds its name.
type aliasWant struct {
	target string
	zone   string
}

func TestParseAlias(t *testing.T) {
	long := strings.Repeat("a", 64) // one more than a label may have (RFC 1035 2.3.4)
	tests := []struct {
		input           string
		keys            []string // server block keys; nil: example.org.:53
		shouldErr       bool
		expectedErr     string
		line            int
		expectedZones   []string
		expectedAliases map[string]aliasWant
	}{
		// 0: `@` is the apex of the single zone.
		{`flatten {
			alias @ target.example.net.
		}`, nil, false, "", 0, []string{"example.org."},
			map[string]aliasWant{"example.org.": {"target.example.net.", "example.org."}}},
		// 1: a relative name is relative to the single zone.
		{`flatten {
			alias www target.example.net.
		}`, nil, false, "", 0, []string{"example.org."},
			map[string]aliasWant{"www.example.org.": {"target.example.net.", "example.org."}}},
		// 2: a relative name of several labels.
		{`flatten {
			alias a.b target.example.net.
		}`, nil, false, "", 0, []string{"example.org."},
			map[string]aliasWant{"a.b.example.org.": {"target.example.net.", "example.org."}}},
		// 3: an absolute name inside ZONES.
		{`flatten {
			alias shop.example.org. target.example.net.
		}`, nil, false, "", 0, []string{"example.org."},
			map[string]aliasWant{"shop.example.org.": {"target.example.net.", "example.org."}}},
		// 4: names and targets are lowercased.
		{`flatten {
			alias WWW target.Example.NET.
			alias Shop.EXAMPLE.org. Other.Example.Net.
		}`, nil, false, "", 0, []string{"example.org."},
			map[string]aliasWant{
				"www.example.org.":  {"target.example.net.", "example.org."},
				"shop.example.org.": {"other.example.net.", "example.org."},
			}},
		// 5: ZONES as arguments, with absolute alias names in each.
		{`flatten example.org example.net {
			alias example.org. target.example.com.
			alias www.example.net. target.example.com.
		}`, nil, false, "", 0, []string{"example.org.", "example.net."},
			map[string]aliasWant{
				"example.org.":     {"target.example.com.", "example.org."},
				"www.example.net.": {"target.example.com.", "example.net."},
			}},
		// 6: a ZONES argument overrides the server block, and is normalized.
		{`flatten EXAMPLE.NET {
			alias @ target.example.com.
		}`, nil, false, "", 0, []string{"example.net."},
			map[string]aliasWant{"example.net.": {"target.example.com.", "example.net."}}},
		// 7: several alias lines, the target of one may be another alias.
		{`flatten {
			alias @ target.example.net.
			alias www target.example.net.
			alias shop www.example.org.
		}`, nil, false, "", 0, []string{"example.org."},
			map[string]aliasWant{
				"example.org.":      {"target.example.net.", "example.org."},
				"www.example.org.":  {"target.example.net.", "example.org."},
				"shop.example.org.": {"www.example.org.", "example.org."},
			}},
		// 8: the zone of a name is the longest of ZONES that holds it.
		{`flatten example.org sub.example.org {
			alias www.sub.example.org. target.example.net.
			alias www.example.org. target.example.net.
		}`, nil, false, "", 0, []string{"example.org.", "sub.example.org."},
			map[string]aliasWant{
				"www.sub.example.org.": {"target.example.net.", "sub.example.org."},
				"www.example.org.":     {"target.example.net.", "example.org."},
			}},
		// 9: ZONES from several server block keys.
		{`flatten {
			alias www.example.net. target.example.com.
		}`, []string{"example.org.:53", "example.net.:53"}, false, "", 0, []string{"example.org.", "example.net."},
			map[string]aliasWant{"www.example.net.": {"target.example.com.", "example.net."}}},
		// 10: a relative name in the root zone.
		{`flatten {
			alias www target.example.net.
		}`, []string{"dns://.:53"}, false, "", 0, []string{"."},
			map[string]aliasWant{"www.": {"target.example.net.", "."}}},
		// 11: a target inside the zone itself.
		{`flatten {
			alias @ www.example.org.
		}`, nil, false, "", 0, []string{"example.org."},
			map[string]aliasWant{"example.org.": {"www.example.org.", "example.org."}}},

		// Missing and extra arguments. The message names the option only when there are no
		// arguments (see TestParseReported), so the rows with arguments check the rest of it.
		// 12
		{`flatten {
			alias @ target.example.net.
			alias
		}`, nil, true, "'alias' takes a NAME and at least 1 TARGET, got 0 argument(s)", 3, nil, nil},
		// 13
		{`flatten {
			alias @ target.example.net.
			alias a
		}`, nil, true, "'alias' takes a NAME and at least 1 TARGET, got 1 argument(s): [a]", 3, nil, nil},
		// 14: several targets, tried in order (failover); case folded.
		{`flatten {
			alias @ target.example.net.
			alias a B. c. Backup.Example.NET.
		}`, nil, false, "", 0, []string{"example.org."}, map[string]aliasWant{
			"example.org.":   {"target.example.net.", "example.org."},
			"a.example.org.": {"b. c. backup.example.net.", "example.org."},
		}},
		// 14b: a target listed twice.
		{`flatten {
			alias @ target.example.net.
			alias a b.example.net. c.example.net. B.example.net.
		}`, nil, true, "alias 'a' lists target 'B.example.net.' more than once", 3, nil, nil},
		// 14c: a later target without its trailing dot (absolute all the same), or the alias
		// itself.
		{`flatten {
			alias @ target.example.net.
			alias a b.example.net. c.example.net
		}`, nil, false, "", 0, []string{"example.org."}, map[string]aliasWant{
			"example.org.":   {"target.example.net.", "example.org."},
			"a.example.org.": {"b.example.net. c.example.net.", "example.org."},
		}},
		{`flatten {
			alias @ target.example.net.
			alias a b.example.net. A.example.org.
		}`, nil, true, "alias 'a' points at itself", 3, nil, nil},

		// 15: a target is absolute with or without its trailing dot, as CoreDNS plugins read
		// names: both spellings give the same target.
		{`flatten {
			alias www target.example.net.
			alias @ Target.Example.NET
		}`, nil, false, "", 0, []string{"example.org."}, map[string]aliasWant{
			"www.example.org.": {"target.example.net.", "example.org."},
			"example.org.":     {"target.example.net.", "example.org."},
		}},

		// Invalid targets.
		// 16: an empty label.
		{`flatten {
			alias www target.example.net.
			alias @ bad..name.
		}`, nil, true, "alias target 'bad..name.' is not a valid", 3, nil, nil},
		// 17: the root.
		{`flatten {
			alias www target.example.net.
			alias @ .
		}`, nil, true, "alias target '.' is not a valid", 3, nil, nil},
		// 18: a label too long.
		{`flatten {
			alias www target.example.net.
			alias @ ` + long + `.example.net.
		}`, nil, true, "alias target '" + long + ".example.net.' is not a valid", 3, nil, nil},

		// Invalid names.
		// 19: an empty label in a relative name.
		{`flatten {
			alias www target.example.net.
			alias bad..name target.example.net.
		}`, nil, true, "alias name 'bad..name' is not a valid", 3, nil, nil},
		// 20: an empty label in an absolute name.
		{`flatten {
			alias www target.example.net.
			alias bad..name.example.org. target.example.net.
		}`, nil, true, "alias name 'bad..name.example.org.' is not a valid", 3, nil, nil},
		// 21: a label too long.
		{`flatten {
			alias www target.example.net.
			alias ` + long + ` target.example.net.
		}`, nil, true, "alias name '" + long + "' is not a valid", 3, nil, nil},
		// 22: a character a host name cannot have.
		{`flatten {
			alias www target.example.net.
			alias "a b" target.example.net.
		}`, nil, true, "alias name 'a b' is not a valid", 3, nil, nil},
		// 23
		{`flatten {
			alias www target.example.net.
			alias @ "a b.example.net."
		}`, nil, true, "alias target 'a b.example.net.' is not a valid", 3, nil, nil},
		// 24: outside ZONES.
		{`flatten {
			alias www target.example.net.
			alias other.example.com. t.example.net.
		}`, nil, true, "alias name 'other.example.com.' is not inside the zones [example.org.]", 3, nil, nil},
		// 25: a relative-looking name with a trailing dot is absolute, so outside ZONES.
		{`flatten {
			alias www target.example.net.
			alias shop. t.example.net.
		}`, nil, true, "alias name 'shop.' is not inside the zones", 3, nil, nil},
		// 26: a parent of the zone is outside it.
		{`flatten {
			alias www target.example.net.
			alias org. t.example.net.
		}`, nil, true, "is not inside the zones", 3, nil, nil},
		// 27: `@` with several zones as arguments.
		{`flatten example.org example.net {
			alias example.org. target.example.com.
			alias @ target.example.com.
		}`, nil, true, "alias name '@' needs exactly one zone, have 2", 3, nil, nil},
		// 28: `@` with several zones from the server block.
		{`flatten {
			alias example.org. target.example.com.
			alias @ target.example.com.
		}`, []string{"example.org.:53", "example.net.:53"}, true, "alias name '@' needs exactly one zone, have 2", 3, nil, nil},
		// 29: a relative name with several zones.
		{`flatten example.org example.net {
			alias example.org. target.example.com.
			alias www target.example.com.
		}`, nil, true, "alias name 'www' is not inside the zones [example.org. example.net.], and a relative name needs exactly one zone", 3, nil, nil},

		// The same NAME twice.
		// 30
		{`flatten {
			alias www a.example.net.
			alias www b.example.net.
		}`, nil, true, "alias 'www.example.org.' is defined more than once", 3, nil, nil},
		// 31: in different case and spelling.
		{`flatten {
			alias www a.example.net.
			alias WWW.Example.Org. b.example.net.
		}`, nil, true, "alias 'www.example.org.' is defined more than once", 3, nil, nil},
		// 32: `@` and the absolute apex.
		{`flatten {
			alias @ a.example.net.
			alias example.org. b.example.net.
		}`, nil, true, "alias 'example.org.' is defined more than once", 3, nil, nil},
		// 33: the same line twice.
		{`flatten {
			alias @ a.example.net.
			alias @ a.example.net.
		}`, nil, true, "alias 'example.org.' is defined more than once", 3, nil, nil},

		// TARGET equal to NAME.
		// 34
		{`flatten {
			alias @ a.example.net.
			alias www www.example.org.
		}`, nil, true, "alias 'www' points at itself", 3, nil, nil},
		// 35: in different case.
		{`flatten {
			alias @ a.example.net.
			alias WWW www.EXAMPLE.org.
		}`, nil, true, "alias 'WWW' points at itself", 3, nil, nil},
		// 36: the apex.
		{`flatten {
			alias www a.example.net.
			alias @ Example.Org.
		}`, nil, true, "alias '@' points at itself", 3, nil, nil},
	}

	for i, tc := range tests {
		c := newSetupController(tc.input, tc.keys)
		f, err := parse(c)
		if !checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line) {
			continue
		}
		if !slices.Equal(f.cfg.zones, tc.expectedZones) {
			t.Errorf("Test %d: expected zones %v, got %v", i, tc.expectedZones, f.cfg.zones)
		}
		if f.aliases.len() != len(tc.expectedAliases) {
			t.Errorf("Test %d: expected %d aliases, got %d", i, len(tc.expectedAliases), f.aliases.len())
		}
		for name, want := range tc.expectedAliases {
			a, ok := f.aliases.get(name)
			if !ok {
				t.Errorf("Test %d: expected an alias at %s, got none", i, name)
				continue
			}
			if strings.Join(a.targets(), " ") != want.target || f.zoneOf(name) != want.zone {
				t.Errorf("Test %d: expected alias %s -> %s in %s, got -> %s in %s",
					i, name, want.target, want.zone, a.targets(), f.zoneOf(name))
			}
		}
	}
}

func TestParseUpstream(t *testing.T) {
	dir := t.TempDir()
	resolvConf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolvConf, []byte("nameserver 127.0.0.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	resolvConf2 := filepath.Join(dir, "resolv2.conf")
	if err := os.WriteFile(resolvConf2, []byte("search example.org\nnameserver 127.0.0.1\nnameserver ::1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyConf := filepath.Join(dir, "empty.conf")
	if err := os.WriteFile(emptyConf, []byte("search example.org\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.conf")

	tests := []struct {
		input             string
		shouldErr         bool
		expectedErr       string
		line              int
		expectedUpstreams []string
	}{
		// 0: no upstream: resolve through this server.
		{`flatten {
			alias @ target.example.net.
		}`, false, "", 0, nil},
		// 1: upstream without arguments is the same.
		{`flatten {
			alias @ target.example.net.
			upstream
		}`, false, "", 0, nil},
		// 2: port 53 is added.
		{`flatten {
			alias @ target.example.net.
			upstream 127.0.0.1
		}`, false, "", 0, []string{"127.0.0.1:53"}},
		// 3: ports are kept, IPv6 in brackets.
		{`flatten {
			alias @ target.example.net.
			upstream 127.0.0.1:5353 [::1]:53
		}`, false, "", 0, []string{"127.0.0.1:5353", "[::1]:53"}},
		// 4: a bare IPv6 address gets brackets and port 53.
		{`flatten {
			alias @ target.example.net.
			upstream ::1
		}`, false, "", 0, []string{"[::1]:53"}},
		// 5: dns:// without a port is plain DNS on port 53.
		{`flatten {
			alias @ target.example.net.
			upstream dns://127.0.0.1
		}`, false, "", 0, []string{"127.0.0.1:53"}},
		// 6: a resolv.conf file.
		{`flatten {
			alias @ target.example.net.
			upstream ` + resolvConf + `
		}`, false, "", 0, []string{"127.0.0.1:53"}},
		// 7: a resolv.conf file with several nameservers, after an address.
		{`flatten {
			alias @ target.example.net.
			upstream 192.0.2.1 ` + resolvConf2 + `
		}`, false, "", 0, []string{"192.0.2.1:53", "127.0.0.1:53", "[::1]:53"}},

		// 8: not an IP address (HostPortOrFile then tries it as a file).
		{`flatten {
			alias @ target.example.net.
			upstream 300.1.1.1:99999
		}`, true, "not an IP address or file \"300.1.1.1:99999\"", 3, nil},
		// 9: a host name is neither an address nor a file.
		{`flatten {
			alias @ target.example.net.
			upstream not a host:port:port
		}`, true, "not an IP address or file \"not\"", 3, nil},
		// 10: too many colons.
		{`flatten {
			alias @ target.example.net.
			upstream host:port:port
		}`, true, "not an IP address or file", 3, nil},
		// 11: only plain DNS.
		{`flatten {
			alias @ target.example.net.
			upstream tls://127.0.0.1
		}`, true, "upstream 'tls://127.0.0.1': only plain DNS addresses are supported", 3, nil},
		// 12
		{`flatten {
			alias @ target.example.net.
			upstream 127.0.0.1 https://192.0.2.1
		}`, true, "upstream 'https://192.0.2.1': only plain DNS addresses are supported", 3, nil},
		// 13
		{`flatten {
			alias @ target.example.net.
			upstream unix:///run/dns.sock
		}`, true, "only plain DNS addresses are supported", 3, nil},
		// 14: a missing file.
		{`flatten {
			alias @ target.example.net.
			upstream ` + missing + `
		}`, true, "not an IP address or file", 3, nil},
		// 15: a resolv.conf without nameservers.
		{`flatten {
			alias @ target.example.net.
			upstream ` + emptyConf + `
		}`, true, "no nameservers found", 3, nil},
		// 16-19: a port out of range or not a number (HostPortOrFile checks only the host).
		{`flatten {
			alias @ target.example.net.
			upstream 127.0.0.1:99999
		}`, true, "port from 1 to 65535", 3, nil},
		{`flatten {
			alias @ target.example.net.
			upstream 127.0.0.1:0
		}`, true, "port from 1 to 65535", 3, nil},
		{`flatten {
			alias @ target.example.net.
			upstream 127.0.0.1:abc
		}`, true, "port from 1 to 65535", 3, nil},
		{`flatten {
			alias @ target.example.net.
			upstream 192.0.2.1 127.0.0.1:
		}`, true, "port from 1 to 65535", 3, nil},
		// 20: a scheme with no address.
		{`flatten {
			alias @ target.example.net.
			upstream dns://
		}`, true, "invalid address", 3, nil},
	}

	for i, tc := range tests {
		c := newSetupController(tc.input, nil)
		f, err := parse(c)
		if !checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line) {
			continue
		}
		if !slices.Equal(f.cfg.upstreams, tc.expectedUpstreams) {
			t.Errorf("Test %d: expected upstreams %q, got %q", i, tc.expectedUpstreams, f.cfg.upstreams)
		}
	}
}

// TestParseArgErrorsAndDNSScheme: argument-count errors name the option, not its last
// argument, and dns://ADDR:PORT upstreams lose their scheme (both were bugs once).
func TestParseArgErrorsAndDNSScheme(t *testing.T) {
	tests := []struct {
		input             string
		shouldErr         bool
		expectedErr       string
		line              int
		expectedUpstreams []string
	}{
		// 0-6: args() formats c.Val() after c.RemainingArgs(), which is then the last argument
		// of the line, not the option ("'a' takes 2 argument(s), got 1: [a]").
		{`flatten {
			alias @ target.example.net.
			alias a
		}`, true, "'alias' takes a NAME and at least 1 TARGET, got 1 argument(s)", 3, nil},
		{`flatten {
			alias @ target.example.net.
			ttl 1
		}`, true, "'ttl' takes 2 argument(s), got 1", 3, nil},
		{`flatten {
			alias @ target.example.net.
			max_depth 1 2
		}`, true, "'max_depth' takes 1 argument(s), got 2", 3, nil},
		{`flatten {
			alias @ target.example.net.
			timeout 1s 2s
		}`, true, "'timeout' takes 1 argument(s), got 2", 3, nil},
		{`flatten {
			alias @ target.example.net.
			ttl 5
		}`, true, "'ttl' takes 2 argument(s), got 1", 3, nil},
		{`flatten {
			alias @ target.example.net.
			ttl 1 2 3
		}`, true, "'ttl' takes 2 argument(s), got 3", 3, nil},
		{`flatten {
			alias @ target.example.net.
			cache 1 2
		}`, true, "'cache' takes 1 argument(s), got 2", 3, nil},
		// 7: "dns://127.0.0.1" is taken as 127.0.0.1:53, but with a port HostPortOrFile
		// returns the address with its prefix, which the port check then rejects as having no
		// port. forward strips the prefix with parse.Transport after HostPortOrFile.
		{`flatten {
			alias @ target.example.net.
			upstream dns://127.0.0.1:5353
		}`, false, "", 0, []string{"127.0.0.1:5353"}},
	}

	for i, tc := range tests {
		c := newSetupController(tc.input, nil)
		f, err := parse(c)
		if !checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line) {
			continue
		}
		if !slices.Equal(f.cfg.upstreams, tc.expectedUpstreams) {
			t.Errorf("Test %d: expected upstreams %q, got %q", i, tc.expectedUpstreams, f.cfg.upstreams)
		}
	}
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		input       string
		shouldErr   bool
		expectedErr string
		line        int
		expected    optionValues
	}{
		// 0
		{`flatten {
			alias @ target.example.net.
		}`, false, "", 0, defaultSettings},
		// 1
		{`flatten {
			alias @ target.example.net.
			max_depth 1
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.maxDepth = 1 })},
		// 2
		{`flatten {
			alias @ target.example.net.
			max_depth 16
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.maxDepth = 16 })},
		// 3
		{`flatten {
			alias @ target.example.net.
			timeout 500ms
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.timeout = 500 * time.Millisecond })},
		// 4
		{`flatten {
			alias @ target.example.net.
			ttl 0 0
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.ttlMin, s.ttlMax = 0, 0 })},
		// 5
		{`flatten {
			alias @ target.example.net.
			ttl 30 300
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.ttlMin, s.ttlMax = 30, 300 })},
		// 6: MIN may equal MAX; 2^31-1 is the largest TTL (RFC 2181 8).
		{`flatten {
			alias @ target.example.net.
			ttl 2147483647 2147483647
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.ttlMin, s.ttlMax = 1<<31-1, 1<<31-1 })},
		// 7
		{`flatten {
			alias @ target.example.net.
			cache 1
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.capacity = 1 })},
		// 8
		{`flatten {
			alias @ target.example.net.
			prefetch
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.prefetch = 0.10 })},
		// 9
		{`flatten {
			alias @ target.example.net.
			prefetch 50%
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.prefetch = 0.50 })},
		// 10
		{`flatten {
			alias @ target.example.net.
			prefetch 1%
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.prefetch = 0.01 })},
		// 11
		{`flatten {
			alias @ target.example.net.
			prefetch 99%
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.prefetch = 0.99 })},
		// 12
		{`flatten {
			alias @ target.example.net.
			serve_stale
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.serveStale = time.Hour })},
		// 13: 0 turns serving stale off.
		{`flatten {
			alias @ target.example.net.
			serve_stale 0
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.serveStale = 0 })},
		// 14
		{`flatten {
			alias @ target.example.net.
			serve_stale 10m
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.serveStale = 10 * time.Minute })},
		// 15: every option at once, in any order among the aliases.
		{`flatten {
			serve_stale 24h
			alias @ target.example.net.
			upstream 127.0.0.1
			max_depth 4
			timeout 3s
			alias www target.example.net.
			ttl 60 600
			cache 500
			prefetch 20%
		}`, false, "", 0, optionValues{
			maxDepth: 4, timeout: 3 * time.Second, ttlMin: 60, ttlMax: 600,
			capacity: 500, prefetch: 0.20, serveStale: 24 * time.Hour, refresh: 1000,
		}},

		// max_depth. Rows with extra arguments check the message without the option's name
		// (see TestParseReported).
		// 16
		{`flatten {
			alias @ target.example.net.
			max_depth
		}`, true, "'max_depth' takes 1 argument(s), got 0", 3, defaultSettings},
		// 17
		{`flatten {
			alias @ target.example.net.
			max_depth 1 2
		}`, true, "takes 1 argument(s), got 2: [1 2]", 3, defaultSettings},
		// 18
		{`flatten {
			alias @ target.example.net.
			max_depth 0
		}`, true, "max_depth '0' must be a whole number from 1 to 16", 3, defaultSettings},
		// 19
		{`flatten {
			alias @ target.example.net.
			max_depth 17
		}`, true, "max_depth '17' must be a whole number from 1 to 16", 3, defaultSettings},
		// 20
		{`flatten {
			alias @ target.example.net.
			max_depth -1
		}`, true, "max_depth '-1' must be a whole number from 1 to 16", 3, defaultSettings},
		// 21
		{`flatten {
			alias @ target.example.net.
			max_depth abc
		}`, true, "max_depth 'abc' must be a whole number from 1 to 16", 3, defaultSettings},
		// 22
		{`flatten {
			alias @ target.example.net.
			max_depth 1.5
		}`, true, "max_depth '1.5' must be a whole number", 3, defaultSettings},

		// timeout
		// 23
		{`flatten {
			alias @ target.example.net.
			timeout
		}`, true, "'timeout' takes 1 argument(s), got 0", 3, defaultSettings},
		// 24
		{`flatten {
			alias @ target.example.net.
			timeout 1s 2s
		}`, true, "takes 1 argument(s), got 2: [1s 2s]", 3, defaultSettings},
		// 25
		{`flatten {
			alias @ target.example.net.
			timeout 0
		}`, true, "timeout '0' must be greater than zero", 3, defaultSettings},
		// 26
		{`flatten {
			alias @ target.example.net.
			timeout -1s
		}`, true, "timeout '-1s' must be greater than zero", 3, defaultSettings},
		// 27
		{`flatten {
			alias @ target.example.net.
			timeout abc
		}`, true, "timeout 'abc' is not a duration", 3, defaultSettings},
		// 28: a duration needs a unit.
		{`flatten {
			alias @ target.example.net.
			timeout 2
		}`, true, "timeout '2' is not a duration", 3, defaultSettings},

		// ttl
		// 29
		{`flatten {
			alias @ target.example.net.
			ttl
		}`, true, "'ttl' takes 2 argument(s), got 0", 3, defaultSettings},
		// 30
		{`flatten {
			alias @ target.example.net.
			ttl 5
		}`, true, "takes 2 argument(s), got 1: [5]", 3, defaultSettings},
		// 31
		{`flatten {
			alias @ target.example.net.
			ttl 1 2 3
		}`, true, "takes 2 argument(s), got 3: [1 2 3]", 3, defaultSettings},
		// 32
		{`flatten {
			alias @ target.example.net.
			ttl 300 30
		}`, true, "ttl MIN 300 is above MAX 30", 3, defaultSettings},
		// 33
		{`flatten {
			alias @ target.example.net.
			ttl -1 30
		}`, true, "ttl '-1' must be a whole number of seconds from 0 to 2147483647", 3, defaultSettings},
		// 34
		{`flatten {
			alias @ target.example.net.
			ttl 5 -30
		}`, true, "ttl '-30' must be a whole number of seconds", 3, defaultSettings},
		// 35
		{`flatten {
			alias @ target.example.net.
			ttl abc 30
		}`, true, "ttl 'abc' must be a whole number of seconds", 3, defaultSettings},
		// 36
		{`flatten {
			alias @ target.example.net.
			ttl 5 30s
		}`, true, "ttl '30s' must be a whole number of seconds", 3, defaultSettings},
		// 37: above 2^31-1.
		{`flatten {
			alias @ target.example.net.
			ttl 5 2147483648
		}`, true, "ttl '2147483648' must be a whole number of seconds from 0 to 2147483647", 3, defaultSettings},
		// 38: above 2^32-1 as well.
		{`flatten {
			alias @ target.example.net.
			ttl 5 4294967296
		}`, true, "ttl '4294967296' must be a whole number of seconds", 3, defaultSettings},

		// cache
		// 39
		{`flatten {
			alias @ target.example.net.
			cache
		}`, true, "'cache' takes 1 argument(s), got 0", 3, defaultSettings},
		// 40
		{`flatten {
			alias @ target.example.net.
			cache 1 2
		}`, true, "takes 1 argument(s), got 2: [1 2]", 3, defaultSettings},
		// 41
		{`flatten {
			alias @ target.example.net.
			cache 0
		}`, true, "cache capacity '0' must be a positive whole number", 3, defaultSettings},
		// 42
		{`flatten {
			alias @ target.example.net.
			cache -1
		}`, true, "cache capacity '-1' must be a positive whole number", 3, defaultSettings},
		// 43
		{`flatten {
			alias @ target.example.net.
			cache abc
		}`, true, "cache capacity 'abc' must be a positive whole number", 3, defaultSettings},

		// prefetch
		// 44
		{`flatten {
			alias @ target.example.net.
			prefetch 10% 20%
		}`, true, "'prefetch' takes at most 1 argument, got 2", 3, defaultSettings},
		// 45
		{`flatten {
			alias @ target.example.net.
			prefetch 0%
		}`, true, "prefetch '0%' must be a percentage from 1% to 99%", 3, defaultSettings},
		// 46
		{`flatten {
			alias @ target.example.net.
			prefetch 100%
		}`, true, "prefetch '100%' must be a percentage from 1% to 99%", 3, defaultSettings},
		// 47
		{`flatten {
			alias @ target.example.net.
			prefetch 50
		}`, true, "prefetch '50' must be a percentage", 3, defaultSettings},
		// 48
		{`flatten {
			alias @ target.example.net.
			prefetch abc%
		}`, true, "prefetch 'abc%' must be a percentage", 3, defaultSettings},
		// 49
		{`flatten {
			alias @ target.example.net.
			prefetch -5%
		}`, true, "prefetch '-5%' must be a percentage", 3, defaultSettings},
		// 50
		{`flatten {
			alias @ target.example.net.
			prefetch 0.5
		}`, true, "prefetch '0.5' must be a percentage", 3, defaultSettings},

		// serve_stale
		// 51
		{`flatten {
			alias @ target.example.net.
			serve_stale 1h 2h
		}`, true, "'serve_stale' takes at most 1 argument, got 2", 3, defaultSettings},
		// 52
		{`flatten {
			alias @ target.example.net.
			serve_stale -1s
		}`, true, "serve_stale '-1s' must not be negative", 3, defaultSettings},
		// 53
		{`flatten {
			alias @ target.example.net.
			serve_stale abc
		}`, true, "serve_stale 'abc' is not a duration", 3, defaultSettings},
		// 54: a duration needs a unit.
		{`flatten {
			alias @ target.example.net.
			serve_stale 10
		}`, true, "serve_stale '10' is not a duration", 3, defaultSettings},

		// refresh_rate
		// 55
		{`flatten {
			alias @ target.example.net.
			refresh_rate 50
		}`, false, "", 0, settingsWith(func(s *optionValues) { s.refresh = 50 })},
		// 56
		{`flatten {
			alias @ target.example.net.
			refresh_rate 0
		}`, true, "refresh_rate '0' must be a whole number of queries per second from 1 to 1000000", 3, defaultSettings},
		// 57
		{`flatten {
			alias @ target.example.net.
			refresh_rate fast
		}`, true, "refresh_rate 'fast' must be a whole number", 3, defaultSettings},
		// 58
		{`flatten {
			alias @ target.example.net.
			refresh_rate
		}`, true, "'refresh_rate' takes 1 argument(s), got 0", 3, defaultSettings},
		// 59
		{`flatten {
			alias @ target.example.net.
			refresh_rate 1000001
		}`, true, "refresh_rate '1000001' must be a whole number", 3, defaultSettings},
	}

	for i, tc := range tests {
		c := newSetupController(tc.input, nil)
		f, err := parse(c)
		if !checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line) {
			continue
		}
		if got := settingsOf(f); got != tc.expected {
			t.Errorf("Test %d: expected %+v, got %+v", i, tc.expected, got)
		}
	}
}

// TestParseBlock covers the block as a whole: unknown properties, repeated options and
// directives, and blocks with no alias or no zone.
func TestParseBlock(t *testing.T) {
	tests := []struct {
		input       string
		keys        []string // server block keys; nil: example.org.:53
		shouldErr   bool
		expectedErr string
		line        int
		expectedIs  error // when set, errors.Is(err, expectedIs) must hold
	}{
		// 0: an empty line and an option before the first alias are fine.
		{`flatten {
			timeout 1s

			alias @ target.example.net.
		}`, nil, false, "", 0, nil},
		// 1
		{`flatten {
			alias @ target.example.net.
			bogus 1
		}`, nil, true, "unknown property 'bogus'", 3, nil},
		// 2: options are case sensitive.
		{`flatten {
			alias @ target.example.net.
			TIMEOUT 1s
		}`, nil, true, "unknown property 'TIMEOUT'", 3, nil},
		// 3: flatten twice in one server block.
		{`flatten {
			alias @ target.example.net.
		}
		flatten {
			alias www target.example.net.
		}`, nil, true, "can only be used once per Server Block", 0, plugin.ErrOnce},
		// 4: the same option twice.
		{`flatten {
			alias @ target.example.net.
			timeout 1s
			timeout 1s
		}`, nil, true, "'timeout' given more than once", 4, nil},
		// 5
		{`flatten {
			alias @ target.example.net.
			upstream 127.0.0.1
			max_depth 3
			upstream 127.0.0.2
		}`, nil, true, "'upstream' given more than once", 5, nil},
		// 6: repeated even when the first has no arguments.
		{`flatten {
			prefetch
			alias @ target.example.net.
			prefetch 20%
		}`, nil, true, "'prefetch' given more than once", 4, nil},
		// 7
		{`flatten {
			alias @ target.example.net.
			serve_stale
			serve_stale 0
		}`, nil, true, "'serve_stale' given more than once", 4, nil},
		// 8
		{`flatten {
			alias @ target.example.net.
			ttl 1 2
			cache 5
			max_depth 3
			ttl 1 2
		}`, nil, true, "'ttl' given more than once", 6, nil},
		// 9
		{`flatten {
			alias @ target.example.net.
			cache 5
			cache 5
		}`, nil, true, "'cache' given more than once", 4, nil},
		// 10
		{`flatten {
			alias @ target.example.net.
			max_depth 3
			max_depth 3
		}`, nil, true, "'max_depth' given more than once", 4, nil},
		// 11: no alias at all.
		{`flatten {
			max_depth 3
		}`, nil, true, "nothing to flatten: give at least one 'alias NAME TARGET'", anyParseLine, nil},
		// 12
		{`flatten {
		}`, nil, true, "nothing to flatten: give at least one 'alias NAME TARGET'", anyParseLine, nil},
		// 13
		{`flatten`, nil, true, "nothing to flatten: give at least one 'alias NAME TARGET'", 1, nil},
		// 14: an invalid ZONES argument.
		{`flatten example.org bad..zone {
			alias @ target.example.net.
		}`, nil, true, "zone 'bad..zone' is not a valid", 1, nil},
		// 15: no zone: no arguments and no server block keys.
		{`flatten {
			alias @ target.example.net.
		}`, []string{}, true, "no zones to flatten in", 1, nil},
	}

	for i, tc := range tests {
		c := newSetupController(tc.input, tc.keys)
		_, err := parse(c)
		checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line)
		if tc.expectedIs != nil && !errors.Is(err, tc.expectedIs) {
			t.Errorf("Test %d: expected errors.Is(err, %v), got %v", i, tc.expectedIs, err)
		}
	}
}

// TestSetup runs setup itself: it adds the handler to the server's chain, and wraps parse errors
// as plugin errors that still name the line.
func TestSetup(t *testing.T) {
	tests := []struct {
		input       string
		shouldErr   bool
		expectedErr string
		line        int
	}{
		// 0
		{`flatten {
			alias @ target.example.net.
		}`, false, "", 0},
		// 1
		{`flatten {
			alias @ target.example.net.
			upstream 127.0.0.1
		}`, false, "", 0},
		// 2
		{`flatten {
			alias @ target.example.net.
			max_depth 0
		}`, true, "plugin/flatten: Testfile:3 - Error during parsing: max_depth '0'", 3},
	}

	for i, tc := range tests {
		c := newSetupController(tc.input, nil)
		err := setup(c)
		if !checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line) {
			continue
		}
		plugins := dnsserver.GetConfig(c).Plugin
		if len(plugins) != 1 {
			t.Errorf("Test %d: expected 1 plugin added to the chain, got %d", i, len(plugins))
			continue
		}
		h := plugins[0](nil)
		if h.Name() != "flatten" {
			t.Errorf("Test %d: expected the flatten handler, got %q", i, h.Name())
		}
		f, ok := h.(*Flatten)
		if !ok {
			t.Errorf("Test %d: expected a *Flatten, got %T", i, h)
			continue
		}
		if f.pool == nil || f.pool.members[0] != f {
			t.Errorf("Test %d: expected setup to put the block in a pool", i)
		}
	}
}

func TestParseExplain(t *testing.T) {
	tests := []struct {
		input       string
		shouldErr   bool
		expectedErr string
		line        int
		expected    []string // the CIDRs; nil: explain off
	}{
		// 0: off by default.
		{`flatten {
			alias @ target.example.net.
		}`, false, "", 0, nil},
		// 1: loopback only without arguments.
		{`flatten {
			alias @ target.example.net.
			explain
		}`, false, "", 0, []string{"127.0.0.0/8", "::1/128"}},
		// 2: CIDRs, masked; a bare address is one host.
		{`flatten {
			alias @ target.example.net.
			explain 10.1.2.3/8 192.0.2.53 2001:db8::/32
		}`, false, "", 0, []string{"10.0.0.0/8", "192.0.2.53/32", "2001:db8::/32"}},
		// 3
		{`flatten {
			alias @ target.example.net.
			explain 10.0.0.0/33
		}`, true, "explain '10.0.0.0/33' is not a CIDR (like 192.0.2.0/24) or an address", 3, nil},
		// 4
		{`flatten {
			alias @ target.example.net.
			explain everyone
		}`, true, "explain 'everyone' is not a CIDR", 3, nil},
		// 5
		{`flatten {
			alias @ target.example.net.
			explain
			explain 10.0.0.0/8
		}`, true, "'explain' given more than once", 4, nil},
	}
	for i, tc := range tests {
		f, err := parse(newSetupController(tc.input, nil))
		if !checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line) {
			continue
		}
		var got []string
		for _, p := range f.cfg.explainNets {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tc.expected) || (tc.expected == nil) != (f.cfg.explainNets == nil) {
			t.Errorf("Test %d: explain CIDRs %v, want %v", i, got, tc.expected)
		}
	}
}

func TestParseNotifyFrom(t *testing.T) {
	tests := []struct {
		input       string
		shouldErr   bool
		expectedErr string
		line        int
		expected    []string // the CIDRs; nil: none taken
	}{
		// 0: off by default.
		{`flatten {
			alias @ target.example.net.
		}`, false, "", 0, nil},
		// 1: addresses and CIDRs; a block may hold only this line.
		{`flatten {
			notify_from 192.0.2.1 2001:db8::/32
		}`, false, "", 0, []string{"192.0.2.1/32", "2001:db8::/32"}},
		// 2
		{`flatten {
			notify_from
		}`, true, "'notify_from' takes the ADDRESS or CIDR of at least one primary", 2, nil},
		// 3
		{`flatten {
			notify_from primary.example.net
		}`, true, "notify_from 'primary.example.net' is not a CIDR (like 192.0.2.0/24) or an address", 2, nil},
	}
	for i, tc := range tests {
		f, err := parse(newSetupController(tc.input, nil))
		if !checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line) {
			continue
		}
		var got []string
		if f.cfg.notify != nil {
			for _, p := range f.cfg.notify.from {
				got = append(got, p.String())
			}
		}
		if !slices.Equal(got, tc.expected) || (tc.expected == nil) != (f.cfg.notify == nil) {
			t.Errorf("Test %d: notify_from %v, want %v", i, got, tc.expected)
		}
	}
}

func TestParseHealthCheck(t *testing.T) {
	tests := []struct {
		input       string
		shouldErr   bool
		expectedErr string
		line        int
		port        int
		interval    time.Duration
	}{
		// 0: off by default.
		{`flatten {
			alias @ target.example.net.
		}`, false, "", 0, 0, 0},
		// 1: default interval.
		{`flatten {
			alias @ target.example.net.
			health_check tcp 443
		}`, false, "", 0, 443, 10 * time.Second},
		// 2: before the aliases it probes.
		{`flatten {
			health_check tcp 80 30s
			alias @ target.example.net.
		}`, false, "", 0, 80, 30 * time.Second},
		// 3
		{`flatten {
			alias @ target.example.net.
			health_check udp 53
		}`, true, "health_check 'udp': only 'tcp' (a TCP connect to PORT) is supported", 3, 0, 0},
		// 4
		{`flatten {
			alias @ target.example.net.
			health_check tcp 65536
		}`, true, "health_check port '65536' must be a whole number from 1 to 65535", 3, 0, 0},
		// 5
		{`flatten {
			alias @ target.example.net.
			health_check tcp https
		}`, true, "health_check port 'https' must be a whole number", 3, 0, 0},
		// 6
		{`flatten {
			alias @ target.example.net.
			health_check tcp 443 10
		}`, true, "health_check interval '10' is not a duration", 3, 0, 0},
		// 7
		{`flatten {
			alias @ target.example.net.
			health_check tcp 443 10ms
		}`, true, "health_check interval '10ms' must be at least 100ms", 3, 0, 0},
		// 8
		{`flatten {
			alias @ target.example.net.
			health_check tcp
		}`, true, "'health_check' takes tcp, a PORT and an optional INTERVAL, got 1 argument(s): [tcp]", 3, 0, 0},
		// 9
		{`flatten {
			alias @ target.example.net.
			health_check tcp 443 1s 2s
		}`, true, "'health_check' takes tcp, a PORT and an optional INTERVAL, got 4 argument(s)", 3, 0, 0},
		// 10: nothing to probe; the error names the health_check line.
		{`flatten {
			zone_alias
			health_check tcp 443
		}`, true, "health_check probes the addresses of 'alias' targets, and there is no alias", 3, 0, 0},
		// 11
		{`flatten {
			alias @ target.example.net.
			health_check tcp 443
			health_check tcp 80
		}`, true, "'health_check' given more than once", 4, 0, 0},
	}
	for i, tc := range tests {
		f, err := parse(newSetupController(tc.input, nil))
		if !checkParseErr(t, i, err, tc.shouldErr, tc.expectedErr, tc.line) {
			continue
		}
		var port int
		var interval time.Duration
		if h := f.cfg.health; h != nil {
			port, interval = h.port, h.interval
		}
		if port != tc.port || interval != tc.interval {
			t.Errorf("Test %d: health_check %d every %s, want %d every %s", i, port, interval, tc.port, tc.interval)
		}
	}
}

// TestParseNamesAsCoreDNSWrites: every name argument means the same name with or without its
// trailing dot, as in every CoreDNS plugin (plugin/normalize.go). A dotless NAME inside one of the
// block's zones is that absolute name; one that is not is relative to the single zone. The two
// traps: `www.example.org` in an example.org block is not www.example.org.example.org., and
// `example.org` is the apex.
func TestParseNamesAsCoreDNSWrites(t *testing.T) {
	type names struct{ aliases, cnames, suffixes []string }
	parsed := func(t *testing.T, block string) names {
		t.Helper()
		f, err := parse(newSetupController(block, nil))
		if err != nil {
			t.Fatalf("%s: %v", block, err)
		}
		var n names
		f.aliases.each(func(name string, a alias) {
			n.aliases = append(n.aliases, name+" -> "+strings.Join(a.targets(), ","))
		})
		if f.cfg.cnames != nil {
			n.cnames = slices.Sorted(maps.Keys(f.cfg.cnames.exact))
			n.suffixes = f.cfg.cnames.suffixes
		}
		slices.Sort(n.aliases)
		return n
	}
	for i, tc := range []struct {
		zones     string // the flatten line's ZONES; the server block is example.org
		spellings []string
		want      names
	}{
		{"", []string{"alias www.example.org t.example.net.", "alias www.example.org. t.example.net", "alias www t.example.net", "alias WWW.Example.ORG T.Example.Net."},
			names{aliases: []string{"www.example.org. -> t.example.net."}}},
		{"", []string{"alias example.org t.example.net", "alias example.org. t.example.net.", "alias @ t.example.net", "alias Example.Org t.example.net."},
			names{aliases: []string{"example.org. -> t.example.net."}}},
		{"", []string{"alias @ myapp.paas.example.net", "alias @ myapp.paas.example.net."},
			names{aliases: []string{"example.org. -> myapp.paas.example.net."}}},
		// Inside a zone means below it label by label: notexample.org is not in example.org.
		{"", []string{"alias notexample.org t.example.net", "alias notexample.org.example.org. t.example.net"},
			names{aliases: []string{"notexample.org.example.org. -> t.example.net."}}},
		{"example.org example.net", []string{"alias shop.example.net t.example.com", "alias shop.example.net. t.example.com."},
			names{aliases: []string{"shop.example.net. -> t.example.com."}}},
		{"", []string{"cname www.example.org *.shop.example.org example.org", "cname www *.shop @", "cname www.example.org. *.shop.example.org. example.org."},
			names{cnames: []string{"example.org.", "www.example.org."}, suffixes: []string{".shop.example.org."}}},
	} {
		for _, line := range tc.spellings {
			got := parsed(t, "flatten "+tc.zones+" {\n"+line+"\n}")
			if !slices.Equal(got.aliases, tc.want.aliases) || !slices.Equal(got.cnames, tc.want.cnames) || !slices.Equal(got.suffixes, tc.want.suffixes) {
				t.Errorf("Test %d: %q gives %+v, want %+v", i, line, got, tc.want)
			}
		}
	}

	// A name that is in no zone cannot be relative to one when there are several: refused, with
	// the line.
	for i, tc := range []struct{ block, err string }{
		{"flatten example.org example.net {\nalias example.org t.example.com\nalias www t.example.com\n}", "Testfile:3 - Error during parsing: alias name 'www' is not inside the zones [example.org. example.net.], and a relative name needs exactly one zone"},
		{"flatten example.org example.net {\ncname shop\n}", "Testfile:2 - Error during parsing: cname name 'shop' is not inside the zones"},
		{"flatten {\nalias shop.example.com. t.example.com\n}", "Testfile:2 - Error during parsing: alias name 'shop.example.com.' is not inside the zones [example.org.]"},
	} {
		if _, err := parse(newSetupController(tc.block, nil)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Refused %d: error %v, want %q", i, err, tc.err)
		}
	}
}

// TestPlacementChecked: a CoreDNS built with flatten in the wrong place of its plugin order does
// not start, and says why and what to do; in the right place (directly after minimal) it does.
func TestPlacementChecked(t *testing.T) {
	std := slices.Clone(dnsserver.Directives)
	std = slices.DeleteFunc(std, func(d string) bool { return d == "flatten" })
	at := func(after string) []string {
		i := slices.Index(std, after)
		return slices.Insert(slices.Clone(std), i+1, "flatten")
	}
	for i, tc := range []struct {
		directives []string
		err        string
	}{
		{at("minimal"), ""},
		{append(slices.Clone(std), "flatten"), "runs flatten after template, which answers first"}, // COREDNS_PLUGINS
		{at("file"), "runs flatten after template, which answers first"},
		{slices.Insert(slices.Clone(std), slices.Index(std, "cache"), "flatten"), "runs flatten before cache, which then cannot wrap it: flattened answers would not be cached"},
	} {
		err := checkPlacement(tc.directives)
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Test %d: %v, want %q", i, err, tc.err)
		}
	}

	// A real server with flatten last, as COREDNS_PLUGINS builds it: CoreDNS does not start.
	directivesMu.Lock()
	orig := dnsserver.Directives
	dnsserver.Directives = append(slices.Clone(std), "flatten")
	directivesMu.Unlock()
	t.Cleanup(func() {
		directivesMu.Lock()
		defer directivesMu.Unlock()
		dnsserver.Directives = orig
	})
	err := startCoreDNSErr(t, flattenCorefile(exampleZone(t), "alias @ client1.agency.test.", "upstream 127.0.0.1:1"))
	if err == nil || !strings.Contains(err.Error(), "plugin/flatten: this CoreDNS runs flatten after template") ||
		!strings.Contains(err.Error(), "directly after 'minimal' in plugin.cfg") {
		t.Errorf("flatten last in the plugin order: %v, want the placement error", err)
	}
}
