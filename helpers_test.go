package flatten

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/prometheus/client_golang/prometheus"

	// The plugins the test Corefiles use.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/dnssec"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/file"
	_ "github.com/coredns/coredns/plugin/reload"

	"github.com/miekg/dns"
)

func init() { clog.Discard() }

// fakeUpstream is a DNS server on loopback (UDP and TCP on one port) whose answers a test
// controls. By default it is authoritative-style: it answers from its records, returns a CNAME
// without following it, and NXDOMAIN / NODATA with its SOA. With recursive set it follows CNAMEs
// within its records and returns the whole chain, like a resolver. A handler set for a name
// replaces all of that for queries of that name, to misbehave on purpose.
type fakeUpstream struct {
	Addr string

	mu        sync.Mutex
	records   map[string][]dns.RR // by lowercased owner
	handlers  map[string]dns.HandlerFunc
	recursive bool
	queries   map[string]int // "name TYPE proto" -> count
	soa       dns.RR

	udp, tcp *dns.Server
}

func newFakeUpstream(t testing.TB, records ...string) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{
		records:  map[string][]dns.RR{},
		handlers: map[string]dns.HandlerFunc{},
		queries:  map[string]int{},
		soa:      mustRR(t, ". 300 IN SOA ns.fake. host.fake. 1 7200 3600 1209600 60"),
	}
	u.add(t, records...)

	// One port for UDP and TCP: take a free UDP port, then the same TCP port, and try again with
	// another port if that one is taken for TCP.
	var pc net.PacketConn
	var l net.Listener
	for try := 0; l == nil; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if try == 20 {
				t.Fatal(err)
			}
		}
	}
	u.Addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(u.serve)
	u.udp = &dns.Server{PacketConn: pc, Handler: h}
	u.tcp = &dns.Server{Listener: l, Handler: h}
	for _, s := range []*dns.Server{u.udp, u.tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
	}
	t.Cleanup(u.close)
	return u
}

func (u *fakeUpstream) close() {
	u.udp.Shutdown()
	u.tcp.Shutdown()
}

// add adds records in zone-file syntax.
func (u *fakeUpstream) add(t testing.TB, records ...string) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, s := range records {
		rr := mustRR(t, s)
		n := strings.ToLower(rr.Header().Name)
		u.records[n] = append(u.records[n], rr)
	}
}

// set replaces the records of name with records.
func (u *fakeUpstream) set(t *testing.T, name string, records ...string) {
	u.mu.Lock()
	delete(u.records, strings.ToLower(name))
	u.mu.Unlock()
	u.add(t, records...)
}

// setRecursive makes the upstream follow CNAMEs in its answers, like a resolver.
func (u *fakeUpstream) setRecursive() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.recursive = true
}

// handle makes h answer every query for name.
func (u *fakeUpstream) handle(name string, h dns.HandlerFunc) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.handlers[strings.ToLower(name)] = h
}

// count returns how many queries for name and type arrived (over any protocol, or the one given).
func (u *fakeUpstream) count(name string, qtype uint16, proto ...string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for k, v := range u.queries {
		f := strings.Fields(k)
		if strings.EqualFold(f[0], name) && f[1] == dns.TypeToString[qtype] && (len(proto) == 0 || f[2] == proto[0]) {
			n += v
		}
	}
	return n
}

// total returns how many queries arrived for names other than the root (health probes ask ". NS").
func (u *fakeUpstream) total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for k, v := range u.queries {
		if !strings.HasPrefix(k, ". ") {
			n += v
		}
	}
	return n
}

func (u *fakeUpstream) serve(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) != 1 {
		return
	}
	q := r.Question[0]
	proto := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	u.mu.Lock()
	u.queries[strings.ToLower(q.Name)+" "+dns.TypeToString[q.Qtype]+" "+proto]++
	h := u.handlers[strings.ToLower(q.Name)]
	u.mu.Unlock()
	if h != nil {
		h(w, r)
		return
	}
	w.WriteMsg(u.answer(r))
}

// answer builds the default answer to r from the records.
func (u *fakeUpstream) answer(r *dns.Msg) *dns.Msg {
	u.mu.Lock()
	defer u.mu.Unlock()
	q := r.Question[0]
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = !u.recursive
	m.RecursionAvailable = u.recursive
	name := strings.ToLower(q.Name)
	for range 20 {
		rrs, ok := u.records[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{u.soa}
			return m
		}
		var cname *dns.CNAME
		found := false
		for _, rr := range rrs {
			switch {
			case rr.Header().Rrtype == q.Qtype:
				m.Answer = append(m.Answer, rr)
				found = true
			case rr.Header().Rrtype == dns.TypeCNAME:
				cname = rr.(*dns.CNAME)
			}
		}
		if found {
			return m
		}
		if cname == nil {
			m.Ns = []dns.RR{u.soa}
			return m
		}
		m.Answer = append(m.Answer, cname)
		if !u.recursive {
			return m
		}
		name = strings.ToLower(cname.Target)
	}
	return m
}

func mustRR(t testing.TB, s string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatalf("bad record %q: %v", s, err)
	}
	return rr
}

// startCoreDNS starts CoreDNS in-process with corefile (which should listen on 127.0.0.1 port 0)
// and returns the address it listens on. `flatten` is placed right after `minimal`, as in
// cmd/coredns. Everything is stopped, shutdown hooks included, when the test ends.
func startCoreDNS(t testing.TB, corefile string) (server, *caddy.Instance) {
	t.Helper()
	inst := startReloadable(t, corefile)
	t.Cleanup(func() { stopInstance(t, inst) })
	sl := inst.Servers()[0]
	return server{udp: sl.LocalAddr().String(), tcp: sl.Addr().String()}, inst
}

// startReloadable starts CoreDNS for a test that restarts it (what the *reload* plugin does):
// the caller stops the last instance, since a restarted one is gone and a cleanup of the first
// would shut it down a second time.
func startReloadable(t testing.TB, corefile string) *caddy.Instance {
	t.Helper()
	useFlattenDirective(t)
	caddy.Quiet, dnsserver.Quiet = true, true
	inst, err := caddy.Start(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(corefile), ServerTypeName: "dns"})
	if err != nil {
		t.Fatalf("starting CoreDNS: %v\n%s", err, corefile)
	}
	return inst
}

// server is where a CoreDNS started by a test listens: with port 0, UDP and TCP get different
// ports.
type server struct{ udp, tcp string }

func (s server) addr(proto string) string {
	if proto == "tcp" {
		return s.tcp
	}
	return s.udp
}

// startCoreDNSErr starts CoreDNS and returns the startup error, for configurations that must fail.
func startCoreDNSErr(t *testing.T, corefile string) error {
	t.Helper()
	useFlattenDirective(t)
	caddy.Quiet, dnsserver.Quiet = true, true
	inst, err := caddy.Start(caddy.CaddyfileInput{Filepath: "Corefile", Contents: []byte(corefile), ServerTypeName: "dns"})
	if err == nil {
		stopInstance(t, inst)
		return errors.New("CoreDNS started")
	}
	return err
}

func stopInstance(t testing.TB, inst *caddy.Instance) {
	if err := errors.Join(append(inst.ShutdownCallbacks(), inst.Stop())...); err != nil {
		t.Errorf("stopping CoreDNS: %v", err)
	}
}

var directivesMu sync.Mutex

func useFlattenDirective(t testing.TB) {
	t.Helper()
	directivesMu.Lock()
	defer directivesMu.Unlock()
	if slices.Contains(dnsserver.Directives, "flatten") {
		return
	}
	orig := slices.Clone(dnsserver.Directives)
	i := slices.Index(orig, "minimal")
	if i < 0 {
		t.Fatal("no 'minimal' directive to anchor flatten to")
	}
	dnsserver.Directives = slices.Insert(slices.Clone(orig), i+1, "flatten")
	t.Cleanup(func() {
		directivesMu.Lock()
		defer directivesMu.Unlock()
		dnsserver.Directives = orig
	})
}

// writeZone writes a zone file into a temporary directory and returns its path.
func writeZone(t testing.TB, origin string, records ...string) string {
	t.Helper()
	body := "$ORIGIN " + origin + "\n" + strings.Join(records, "\n") + "\n"
	p := filepath.Join(t.TempDir(), "db."+strings.TrimSuffix(origin, "."))
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// exampleZone is the zone most tests flatten in: apex with SOA, NS, MX and TXT but no address.
func exampleZone(t testing.TB, extra ...string) string {
	return writeZone(t, "example.org.", append([]string{
		"@ 3600 IN SOA ns1.example.org. hostmaster.example.org. 2026112201 7200 3600 1209600 300",
		"@ 3600 IN NS ns1.example.org.",
		"@ 3600 IN MX 10 mail.example.org.",
		`@ 3600 IN TXT "v=spf1 -all"`,
		"ns1 3600 IN A 192.0.2.53",
		"mail 3600 IN A 192.0.2.25",
	}, extra...)...)
}

// query sends one question to addr over proto ("udp" or "tcp"), with EDNS0 when bufsize > 0.
func query(t *testing.T, addr server, proto, name string, qtype uint16, bufsize uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if bufsize > 0 {
		m.SetEdns0(bufsize, false)
	}
	return exchange(t, addr, proto, m)
}

func exchange(t *testing.T, addr server, proto string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: proto, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr.addr(proto))
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], proto, err)
	}
	return r
}

// ede returns the Extended DNS Error of m, or nil.
func ede(m *dns.Msg) *dns.EDNS0_EDE {
	if o := m.IsEdns0(); o != nil {
		for _, opt := range o.Option {
			if e, ok := opt.(*dns.EDNS0_EDE); ok {
				return e
			}
		}
	}
	return nil
}

// addrs returns the answer's A/AAAA data, sorted, and fails if any answer record is not an
// address owned by owner.
func addrs(t *testing.T, m *dns.Msg, owner string) []string {
	t.Helper()
	var out []string
	for _, rr := range m.Answer {
		if rr.Header().Name != owner {
			t.Errorf("answer record %q: owner is not %q", rr, owner)
		}
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		default:
			t.Errorf("answer holds a %s record: %q", dns.TypeToString[rr.Header().Rrtype], rr)
		}
	}
	slices.Sort(out)
	return out
}

// waitFor polls cond until it holds or 5 seconds pass; for background work that has no event to
// wait on. It is not a timing assertion: it only bounds how long a broken test hangs.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newTestFlatten returns a Flatten with the default settings and no zone or alias.
func newTestFlatten() *Flatten { return &Flatten{cfg: newConfig(), aliases: newAliasTable()} }

// addAlias configures an alias at name to targets (lowercased FQDNs), as parse does: one pinned
// target per name.
func (f *Flatten) addAlias(name string, targets ...string) {
	pins := map[string]*pinnedTarget{}
	for _, p := range f.aliases.targets() {
		pins[p.name()] = p
	}
	var a []*pinnedTarget
	for _, target := range targets {
		if pins[target] == nil {
			pins[target] = newPinnedTarget(target)
		}
		a = append(a, pins[target])
	}
	f.aliases.add(name, a)
}

// pinnedTargets returns the pinned slots of names, sorted by name as the cache keeps them.
func pinnedTargets(names ...string) []*pinnedTarget {
	var out []*pinnedTarget
	for _, name := range names {
		out = append(out, newPinnedTarget(name))
	}
	return sortPins(out)
}

// pinned returns the pinned slot of a configured target for k.
func (c *cache) pin(k cacheKey) *slot {
	return &c.pinned(k.name).slots[qtypeIndex(k.qtype)]
}

// len is the number of slots, pinned and on demand.
func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.slots) + 2*len(c.pins)
}

// stop ends the cache's background work and waits for it (Flatten.OnShutdown stops the
// instance's).
func (c *cache) stop() {
	c.bg.stop()
	c.close()
}

// arrivals records when questions reach a fake upstream.
type arrivals struct {
	mu sync.Mutex
	at []time.Time
}

// answering returns a handler that records each question's arrival and answers it as u would.
func (a *arrivals) answering(u *fakeUpstream) dns.HandlerFunc {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		a.mu.Lock()
		a.at = append(a.at, time.Now())
		a.mu.Unlock()
		w.WriteMsg(u.answer(r))
	}
}

func (a *arrivals) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.at)
}

// busiestSecond is the most arrivals in any window of one second.
func (a *arrivals) busiestSecond() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	most := 0
	for i := range a.at {
		n := 0
		for j := i; j < len(a.at) && a.at[j].Sub(a.at[i]) < time.Second; j++ {
			n++
		}
		most = max(most, n)
	}
	return most
}

// metric returns the value of the flatten metric name (without "coredns_flatten_") whose labels
// are values, in the order server, zones, view and then reason or result; 0 when it has no such
// sample (a counter that was never counted). It gathers what a scrape would.
func metric(t *testing.T, name string, values ...string) float64 {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	keys := []string{"server", "zones", "view", "reason", "result", "outcome"}
	for _, mf := range families {
		if mf.GetName() != "coredns_flatten_"+name {
			continue
		}
	samples:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, p := range m.GetLabel() {
				got[p.GetName()] = p.GetValue()
			}
			i := 0
			for _, k := range keys {
				if v, ok := got[k]; ok {
					if i >= len(values) || values[i] != v {
						continue samples
					}
					i++
				}
			}
			if i != len(values) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// prepare gives f a pool of its own and builds it, as setup and OnStartup do, without starting
// anything: it opens no socket and starts no goroutine.
func (f *Flatten) prepare() {
	p := newPool(poolKey(f.cfg), f.cfg)
	p.join(f)
	p.build()
}

// build gives f a pool of its own in front of resolve, built as prepare does.
func (f *Flatten) build(resolve resolveFunc) {
	p := &pool{key: poolKey(f.cfg), origin: poolOrigin(f.cfg), resolve: resolve}
	p.join(f)
	p.build()
	if f.cfg.zoneAlias && f.zoneAliases == nil {
		f.zoneAliases = newZoneAliases(f.cfg.capacity)
	}
}

// forget drops what the zones showed, as a restarted process would.
func (v *zoneVersions) forget() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.m = map[string]*zoneVersion{}
}

// settle waits until the goroutines b has started so far have ended, and then takes b's lock,
// which spawn takes before it adds to the WaitGroup. A WaitGroup may be used again after Wait
// only if that Add happens after it, and the query that starts the next resolution reaches the
// server over a socket, which the race detector does not count as an order: the lock is.
func (b *background) settle() {
	b.wg.Wait()
	b.mu.Lock()
	b.mu.Unlock()
}
