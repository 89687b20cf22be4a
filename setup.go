package flatten

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	pkgparse "github.com/coredns/coredns/plugin/pkg/parse"
	"github.com/coredns/coredns/plugin/pkg/transport"

	"github.com/miekg/dns"
)

func init() { plugin.Register("flatten", setup) }

func setup(c *caddy.Controller) error {
	if err := checkPlacement(dnsserver.Directives); err != nil {
		return plugin.Error("flatten", err)
	}
	f, err := parse(c)
	if err != nil {
		return plugin.Error("flatten", err)
	}
	f.cfg.labels.server = configServerLabel(dnsserver.GetConfig(c))
	f.cfg.labels.view = dnsserver.GetConfig(c).ViewName
	f.server = dnsserver.GetConfig(c)
	joinPool(c.Context(), f)

	c.OnStartup(f.OnStartup)
	c.OnShutdown(f.OnShutdown)

	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		f.Next = next
		return f
	})
	return nil
}

// wrappers must come before flatten in the plugin order, so that they wrap it: *cache* keeps the
// flattened answers, *dnssec* signs them (a signed zone would otherwise serve them unsigned, and
// validators would call them bogus). answerers answer from data, and must come after flatten,
// or they answer the apex (NODATA, mostly) before flatten sees the query.
var (
	wrappers  = []string{"cache", "dnssec", "minimal"}
	answerers = []string{"template", "hosts", "file", "auto", "secondary", "etcd", "kubernetes",
		"k8s_external", "route53", "azure", "clouddns", "forward", "grpc", "erratic", "whoami"}
)

// checkPlacement reports a CoreDNS built with flatten in the wrong place of its plugin order
// (directives): CoreDNS would start, and flattening would silently do nothing, or go unsigned.
func checkPlacement(directives []string) error {
	at := slices.Index(directives, "flatten")
	if at < 0 {
		return nil // not in the order at all: a test calling setup, not a server
	}
	const fix = "build CoreDNS with 'flatten' directly after 'minimal' in plugin.cfg " +
		"(COREDNS_PLUGINS appends it after 'forward', which is this mistake)"
	for _, d := range answerers {
		if i := slices.Index(directives, d); i >= 0 && i < at {
			return fmt.Errorf("this CoreDNS runs flatten after %s, which answers first: nothing would be flattened; %s", d, fix)
		}
	}
	for _, d := range wrappers {
		if i := slices.Index(directives, d); i > at {
			return fmt.Errorf("this CoreDNS runs flatten before %s, which then cannot wrap it: flattened answers would not be %s; %s",
				d, map[string]string{"cache": "cached", "dnssec": "signed", "minimal": "minimal"}[d], fix)
		}
	}
	return nil
}

// configServerLabel is the `server` metrics label of the listener, as the server itself spells
// it (dnsserver.Server.Addr), for metrics of background work that no query carries.
func configServerLabel(cfg *dnsserver.Config) string {
	host := ""
	if len(cfg.ListenHosts) > 0 {
		host = cfg.ListenHosts[0]
	}
	tr := cfg.Transport
	if tr == "" {
		tr = transport.DNS
	}
	return tr + "://" + net.JoinHostPort(host, cfg.Port)
}

// parse reads the flatten block. Every error names the line it is on.
func parse(c *caddy.Controller) (*Flatten, error) {
	f := &Flatten{cfg: newConfig(), aliases: newAliasTable()}
	// The configured targets, each pinned once however many aliases name it.
	pins := map[string]*pinnedTarget{}
	var sec securityOptions
	blocks := 0
	httpsLine := 0 // for the check made once every line is read
	for c.Next() {
		if blocks++; blocks > 1 {
			return nil, plugin.ErrOnce
		}
		zones := c.RemainingArgs()
		for _, z := range zones {
			// OriginsFromArgsOrServerBlock drops what it cannot normalize; say so instead.
			if len(plugin.Host(z).NormalizeExact()) == 0 {
				return nil, c.Errf("zone '%s' is not a valid domain name", z)
			}
		}
		f.cfg.zones = plugin.OriginsFromArgsOrServerBlock(zones, c.ServerBlockKeys)
		if len(f.cfg.zones) == 0 {
			return nil, c.Errf("no zones to flatten in")
		}
		f.cfg.labels.zones = strings.Join(f.cfg.zones, ",")
		seen := map[string]bool{}
		for c.NextBlock() {
			opt := c.Val()
			if opt != "alias" && opt != "cname" && seen[opt] {
				return nil, c.Errf("'%s' given more than once", opt)
			}
			seen[opt] = true
			var err error
			switch opt {
			case "alias":
				line := c.Line()
				var targets []string
				targets, err = parseAlias(c, f.cfg, &f.aliases, pins)
				sec.aliases = append(sec.aliases, aliasLine{line, targets})
			case "upstream":
				err = f.cfg.parseUpstream(c)
			case "max_depth":
				err = f.cfg.parseMaxDepth(c)
			case "timeout":
				err = f.cfg.parseTimeout(c)
			case "ttl":
				err = f.cfg.parseTTL(c)
			case "cache":
				err = f.cfg.parseCache(c)
			case "prefetch":
				err = f.cfg.parsePrefetch(c)
			case "serve_stale":
				err = f.cfg.parseServeStale(c)
			case "refresh_rate":
				err = f.cfg.parseRefreshRate(c)
			case "explain":
				err = f.cfg.parseExplain(c)
			case "notify_from":
				err = f.cfg.parseNotifyFrom(c)
			case "health_check":
				err = f.cfg.parseHealthCheck(c)
			case "transfer_alias":
				_, err = args(c, 0)
				f.cfg.transferAlias = true
			case "zone_alias":
				_, err = args(c, 0)
				f.cfg.zoneAlias = true
			case "https":
				httpsLine = c.Line()
				_, err = args(c, 0)
				f.cfg.https = true
			case "cname":
				err = f.cfg.parseCNAME(c)
			case "ecs":
				err = f.cfg.parseECS(c)
			case "dnssec_targets":
				err = sec.parseDNSSECTargets(c)
			case "allow_targets":
				err = sec.parseAllowTargets(c)
			case "deny_addresses":
				err = sec.parseDenyAddresses(c)
			case "max_addresses":
				err = sec.parseMaxAddresses(c)
			default:
				return nil, c.Errf("unknown property '%s'", opt)
			}
			if err != nil {
				return nil, err
			}
		}
	}
	if err := sec.finish(c, f.cfg); err != nil {
		return nil, err
	}
	if f.cfg.health != nil && f.aliases.len() == 0 {
		return nil, fmt.Errorf("%s:%d - Error during parsing: health_check probes the addresses of 'alias' targets, and there is no alias",
			c.File(), f.cfg.health.line)
	}
	if f.aliases.len() == 0 && !f.cfg.zoneAlias && f.cfg.cnames.empty() && f.cfg.notify == nil {
		return nil, c.Errf("nothing to flatten: give at least one 'alias NAME TARGET', 'zone_alias', 'cname NAMES...' or 'notify_from'")
	}
	if f.cfg.https && f.aliases.len() == 0 && !f.cfg.zoneAlias {
		return nil, fmt.Errorf("%s:%d - Error during parsing: 'https' answers HTTPS queries at the names of 'alias' lines and of ALIAS records ('zone_alias'), and the block has neither",
			c.File(), httpsLine)
	}
	if f.cfg.zoneAlias {
		f.zoneAliases = newZoneAliases(f.cfg.capacity)
	}
	return f, nil
}

// args returns exactly n arguments of the current line, or an error naming the line.
func args(c *caddy.Controller, n int) ([]string, error) {
	opt := c.Val() // before RemainingArgs moves past it
	a := c.RemainingArgs()
	if len(a) != n {
		return nil, c.Errf("'%s' takes %d argument(s), got %d: %v", opt, n, len(a), a)
	}
	return a, nil
}

// parseAlias reads `alias NAME TARGET [TARGET...]`: the targets are tried in order (failover).
// pins holds the targets of the aliases read before, by name. It returns the targets.
func parseAlias(c *caddy.Controller, cfg *config, aliases *aliasTable, pins map[string]*pinnedTarget) ([]string, error) {
	a := c.RemainingArgs()
	if len(a) < 2 {
		return nil, c.Errf("'alias' takes a NAME and at least 1 TARGET, got %d argument(s): %v", len(a), a)
	}
	name, err := cfg.name(c, "alias name", a[0])
	if err != nil {
		return nil, err
	}
	if _, dup := aliases.get(name); dup {
		return nil, c.Errf("alias '%s' is defined more than once", name)
	}
	var targets []string
	var pinned []*pinnedTarget
	for _, t := range a[1:] {
		// A target is an absolute name, with or without its trailing dot, as every CoreDNS
		// plugin reads names (plugin/normalize.go).
		target := strings.ToLower(dns.Fqdn(t))
		if !hostname(target) {
			return nil, c.Errf("alias target '%s' is not a valid host name", t)
		}
		if target == name {
			return nil, c.Errf("alias '%s' points at itself", a[0])
		}
		if slices.Contains(targets, target) {
			return nil, c.Errf("alias '%s' lists target '%s' more than once", a[0], t)
		}
		targets = append(targets, target)
		p := pins[target]
		if p == nil {
			p = newPinnedTarget(target)
			pins[target] = p
		}
		pinned = append(pinned, p)
	}
	aliases.add(name, pinned)
	return targets, nil
}

// name resolves a NAME argument (what is the argument's kind, for errors) to a lowercased FQDN
// inside ZONES, reading it as CoreDNS plugins read names:
//   - `@` is the apex of the single zone;
//   - a name with a trailing dot is absolute;
//   - a name without one that is inside one of ZONES is that absolute name (`example.org` or
//     `www.example.org` in an example.org block), as *file*, *hosts* and *rewrite* read it;
//   - any other name without one is relative to the single zone (`www` is www.example.org.).
func (cfg *config) name(c *caddy.Controller, what, s string) (string, error) {
	lower := strings.ToLower(s)
	var name string
	switch {
	case s == "@":
		if len(cfg.zones) != 1 {
			return "", c.Errf("%s '@' needs exactly one zone, have %d: %v", what, len(cfg.zones), cfg.zones)
		}
		name = cfg.zones[0]
	case strings.HasSuffix(s, "."):
		name = lower
	case plugin.Zones(cfg.zones).Matches(lower+".") != "":
		name = lower + "."
	default:
		if len(cfg.zones) != 1 {
			return "", c.Errf("%s '%s' is not inside the zones %v, and a relative name needs exactly one zone", what, s, cfg.zones)
		}
		name = lower + "." + strings.TrimPrefix(cfg.zones[0], ".")
	}
	if !hostname(name) {
		return "", c.Errf("%s '%s' is not a valid host name", what, s)
	}
	if plugin.Zones(cfg.zones).Matches(name) == "" {
		return "", c.Errf("%s '%s' is not inside the zones %v", what, s, cfg.zones)
	}
	return name, nil
}

// parseCNAME reads `cname NAMES...`: names inside ZONES (read as alias names are, by name), `@`
// for the apex of the single zone, `*.ZONE` for every name below a zone, or `*` for every name in
// ZONES.
func (cfg *config) parseCNAME(c *caddy.Controller) error {
	a := c.RemainingArgs()
	if len(a) == 0 {
		return c.Errf("'cname' takes at least 1 argument: the names whose CNAME answers are flattened")
	}
	if cfg.cnames == nil {
		cfg.cnames = &cnameNames{exact: map[string]bool{}}
	}
	for _, s := range a {
		switch {
		case s == "*":
			cfg.cnames.all = true
		case s == "*.":
			return c.Errf("cname wildcard '*.' names no zone: write '*.ZONE'")
		case strings.HasPrefix(s, "*."):
			zone, err := cfg.name(c, "cname wildcard", s[2:])
			if err != nil {
				return err
			}
			cfg.cnames.suffixes = append(cfg.cnames.suffixes, "."+zone)
		default:
			name, err := cfg.name(c, "cname name", s)
			if err != nil {
				return err
			}
			cfg.cnames.exact[name] = true
		}
	}
	return nil
}

func (cfg *config) parseUpstream(c *caddy.Controller) error {
	a := c.RemainingArgs()
	if len(a) == 0 {
		return nil // resolve through this server
	}
	for i, s := range a {
		// Only plain DNS: the upstream is asked with RD over UDP, then TCP.
		tr, addr := pkgparse.Transport(s)
		if tr != transport.DNS {
			return c.Errf("upstream '%s': only plain DNS addresses are supported", s)
		}
		a[i] = addr // without "dns://", which HostPortOrFile would keep
	}
	hosts, err := pkgparse.HostPortOrFile(a...)
	if err != nil {
		return c.Errf("upstream: %v", err)
	}
	for _, h := range hosts {
		// HostPortOrFile checks the host but lets any port through.
		_, port, err := net.SplitHostPort(h)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
			return c.Errf("upstream '%s': not an address with a port from 1 to 65535", h)
		}
	}
	cfg.upstreams = hosts
	return nil
}

// hostname reports whether s is an absolute host name we can flatten: letters, digits, '-' and
// '_' in non-empty labels of at most 63 octets, 255 in all, not the root. No wildcards, spaces or
// escapes: an alias is one concrete name.
func hostname(s string) bool {
	if _, ok := dns.IsDomainName(s); !ok || s == "." || len(s) > 255 || !strings.HasSuffix(s, ".") {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

func (cfg *config) parseMaxDepth(c *caddy.Controller) error {
	a, err := args(c, 1)
	if err != nil {
		return err
	}
	n, err := wholeNumber(c, "max_depth", a[0], "", 1, maxMaxDepth)
	if err != nil {
		return err
	}
	cfg.maxDepth = n
	return nil
}

// wholeNumber parses s, the value of what, as a whole number (of unit, when not empty) from lo to
// hi, or returns the error that says so.
func wholeNumber(c *caddy.Controller, what, s, unit string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		if unit != "" {
			unit = " of " + unit
		}
		return 0, c.Errf("%s '%s' must be a whole number%s from %d to %d", what, s, unit, lo, hi)
	}
	return n, nil
}

func (cfg *config) parseTimeout(c *caddy.Controller) error {
	a, err := args(c, 1)
	if err != nil {
		return err
	}
	d, err := time.ParseDuration(a[0])
	if err != nil {
		return c.Errf("timeout '%s' is not a duration (like 2s or 500ms): %v", a[0], err)
	}
	if d <= 0 {
		return c.Errf("timeout '%s' must be greater than zero", a[0])
	}
	cfg.timeout = d
	return nil
}

func (cfg *config) parseTTL(c *caddy.Controller) error {
	a, err := args(c, 2)
	if err != nil {
		return err
	}
	var v [2]uint32
	for i, s := range a {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || n > 1<<31-1 {
			// RFC 2181 8: a TTL is at most 2^31-1.
			return c.Errf("ttl '%s' must be a whole number of seconds from 0 to %d", s, 1<<31-1)
		}
		v[i] = uint32(n)
	}
	if v[0] > v[1] {
		return c.Errf("ttl MIN %d is above MAX %d", v[0], v[1])
	}
	cfg.ttlMin, cfg.ttlMax = v[0], v[1]
	return nil
}

func (cfg *config) parseCache(c *caddy.Controller) error {
	a, err := args(c, 1)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(a[0])
	if err != nil || n < 1 {
		return c.Errf("cache capacity '%s' must be a positive whole number", a[0])
	}
	cfg.capacity = n
	return nil
}

func (cfg *config) parsePrefetch(c *caddy.Controller) error {
	a := c.RemainingArgs()
	switch len(a) {
	case 0:
		cfg.prefetch = defaultPrefetch
		return nil
	case 1:
	default:
		return c.Errf("'prefetch' takes at most 1 argument, got %d: %v", len(a), a)
	}
	p, ok := strings.CutSuffix(a[0], "%")
	n, err := strconv.Atoi(p)
	if !ok || err != nil || n < 1 || n > 99 {
		return c.Errf("prefetch '%s' must be a percentage from 1%% to 99%%", a[0])
	}
	cfg.prefetch = float64(n) / 100
	return nil
}

func (cfg *config) parseServeStale(c *caddy.Controller) error {
	a := c.RemainingArgs()
	switch len(a) {
	case 0:
		cfg.serveStale = defaultServeStale
		return nil
	case 1:
	default:
		return c.Errf("'serve_stale' takes at most 1 argument, got %d: %v", len(a), a)
	}
	d, err := time.ParseDuration(a[0])
	if err != nil {
		return c.Errf("serve_stale '%s' is not a duration (like 1h, or 0 to turn it off): %v", a[0], err)
	}
	if d < 0 {
		return c.Errf("serve_stale '%s' must not be negative", a[0])
	}
	cfg.serveStale = d
	return nil
}

func (cfg *config) parseRefreshRate(c *caddy.Controller) error {
	a, err := args(c, 1)
	if err != nil {
		return err
	}
	n, err := wholeNumber(c, "refresh_rate", a[0], "queries per second", 1, maxRefreshRate)
	if err != nil {
		return err
	}
	cfg.refreshRate = n
	return nil
}

// parseExplain reads `explain [CIDR...]`: who may ask for _flatten.NAME TXT. A bare address is
// that one host; without arguments, this host only (loopback).
func (cfg *config) parseExplain(c *caddy.Controller) error {
	a := c.RemainingArgs()
	if len(a) == 0 {
		cfg.explainNets = defaultExplainNets
		return nil
	}
	var err error
	cfg.explainNets, err = prefixes(c, "explain", a)
	return err
}

// parseNotifyFrom reads `notify_from ADDRESS|CIDR...`.
func (cfg *config) parseNotifyFrom(c *caddy.Controller) error {
	a := c.RemainingArgs()
	if len(a) == 0 {
		return c.Errf("'notify_from' takes the ADDRESS or CIDR of at least one primary allowed to send NOTIFY")
	}
	from, err := prefixes(c, "notify_from", a)
	cfg.notify = &notifyConfig{from: from}
	return err
}

// inPrefixes reports whether the address of a client (a UDP or TCP address) is inside nets, as
// `explain` and `notify_from` read them.
func inPrefixes(addr net.Addr, nets []netip.Prefix) bool {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	}
	ip = ip.Unmap()
	return slices.ContainsFunc(nets, func(p netip.Prefix) bool { return p.Contains(ip) })
}

// prefixes reads the CIDRs or addresses of option's arguments a.
func prefixes(c *caddy.Controller, option string, a []string) ([]netip.Prefix, error) {
	out := []netip.Prefix{}
	for _, s := range a {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			ip, aerr := netip.ParseAddr(s)
			if aerr != nil || ip.Zone() != "" {
				return nil, c.Errf("%s '%s' is not a CIDR (like 192.0.2.0/24) or an address", option, s)
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// parseHealthCheck reads `health_check tcp PORT [INTERVAL]`.
func (cfg *config) parseHealthCheck(c *caddy.Controller) error {
	a := c.RemainingArgs()
	if len(a) < 2 || len(a) > 3 {
		return c.Errf("'health_check' takes tcp, a PORT and an optional INTERVAL, got %d argument(s): %v", len(a), a)
	}
	if a[0] != "tcp" {
		return c.Errf("health_check '%s': only 'tcp' (a TCP connect to PORT) is supported", a[0])
	}
	port, err := wholeNumber(c, "health_check port", a[1], "", 1, 65535)
	if err != nil {
		return err
	}
	h := &healthConfig{port: port, interval: defaultHealthInterval, line: c.Line()}
	if len(a) == 3 {
		d, err := time.ParseDuration(a[2])
		if err != nil {
			return c.Errf("health_check interval '%s' is not a duration (like 10s): %v", a[2], err)
		}
		if d < minHealthInterval {
			return c.Errf("health_check interval '%s' must be at least %s", a[2], minHealthInterval)
		}
		h.interval = d
	}
	cfg.health = h
	return nil
}

// parseECS reads `ecs [V4BITS [V6BITS]]`: the most bits of a client's address sent upstream.
func (cfg *config) parseECS(c *caddy.Controller) error {
	a := c.RemainingArgs()
	if len(a) > 2 {
		return c.Errf("'ecs' takes at most 2 arguments (V4BITS V6BITS), got %d: %v", len(a), a)
	}
	e := &ecsConfig{v4: defaultECSv4, v6: defaultECSv6}
	for i, s := range a {
		what, most, bits := "V4BITS", 32, &e.v4
		if i == 1 {
			what, most, bits = "V6BITS", 128, &e.v6
		}
		n, err := wholeNumber(c, "ecs "+what, s, "bits", 0, most)
		if err != nil {
			return err
		}
		*bits = n
	}
	cfg.ecs = e
	return nil
}
