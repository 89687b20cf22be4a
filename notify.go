package flatten

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin/pkg/nonwriter"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// Chains re-resolved when a zone they pass through changes, instead of when their TTL runs out:
// the agency pattern's point is that moving a server is one A record, and every client apex
// should follow in seconds, not after the chain's TTL.
//
//   - A zone this server serves (another block's *file*, *auto* or *secondary*) and that chains
//     resolved through this server pass through is watched: its SOA serial, asked through the
//     server every second. When it moves, the chains through it are re-resolved.
//   - A zone on other servers whose primaries send NOTIFY (RFC 1996) to a block with
//     `notify_from`: a NOTIFY from an allowed address makes the chains through that zone
//     re-resolve at once. It carries no data; it only triggers the lookups.
//
// A chain passes through a zone when its target or a name its CNAMEs lead to is at or below the
// zone's apex. Re-resolutions of one zone are started at most once a second (a flood of NOTIFYs
// or flapping serials costs at most one question per hop per chain per second); a change within
// that second is taken when it is up.

// pokeInterval is the least time between two re-resolutions of the chains through one zone.
const pokeInterval = time.Second

// pokes remembers, for each zone, when its chains were last re-resolved, and whether another
// re-resolution waits for the interval to be up.
var pokes = pokeLog{m: map[string]*pokeState{}}

type pokeLog struct {
	mu sync.Mutex
	m  map[string]*pokeState
}

type pokeState struct {
	at      time.Time // the last re-resolution
	why     string    // what caused it: "notify from ADDRESS" or "serial N"
	pending bool      // another is set to run when the interval is up
}

// poke re-resolves the chains through zone (a lowercased FQDN) in every running pool, now or,
// within pokeInterval of the last time, once when it is up. why is what caused it, for explain.
func poke(zone, why string) {
	pokes.mu.Lock()
	st := pokes.m[zone]
	if st == nil {
		st = &pokeState{}
		pokes.m[zone] = st
	}
	now := time.Now()
	if wait := st.at.Add(pokeInterval).Sub(now); wait > 0 {
		if !st.pending {
			st.pending = true
			time.AfterFunc(wait, func() {
				pokes.mu.Lock()
				st.pending = false
				pokes.mu.Unlock()
				poke(zone, why)
			})
		}
		pokes.mu.Unlock()
		return
	}
	st.at, st.why = now, why
	pokes.mu.Unlock()
	for _, p := range running() {
		p.cache.reresolve(zone)
	}
}

// lastPoke returns when the chains through zone were last re-resolved, and why; zero if never.
func lastPoke(zone string) (time.Time, string) {
	pokes.mu.Lock()
	defer pokes.mu.Unlock()
	if st := pokes.m[zone]; st != nil {
		return st.at, st.why
	}
	return time.Time{}, ""
}

// passesThrough reports whether the chain of s (its target, and the names its last entry's hops
// lead to) has a name at or below zone.
func passesThrough(s *slot, zone string) bool {
	if dns.IsSubDomain(zone, s.name) {
		return true
	}
	if e := s.good.Load(); e != nil {
		for _, h := range e.hops() {
			if dns.IsSubDomain(zone, h.target) {
				return true
			}
		}
	}
	return false
}

// reresolve starts a resolution of every slot whose chain passes through zone, unless one is in
// progress. A pinned slot's schedule then finds it fresh and moves its next refresh on.
func (c *cache) reresolve(zone string) {
	if c.bg.done() {
		return
	}
	var through []*slot
	for _, p := range c.pins {
		for i := range p.slots {
			if s := &p.slots[i]; passesThrough(s, zone) {
				through = append(through, s)
			}
		}
	}
	c.mu.RLock()
	for _, s := range c.slots {
		if passesThrough(s, zone) {
			through = append(through, s)
		}
	}
	c.mu.RUnlock()
	for _, s := range through {
		c.refreshAsync(context.Background(), s, &question{key: s.key(), pace: c.limiter})
	}
}

// chainZones returns the zones that explain names for the chain of s: those it passes through
// among the zones watched or notified.
func chainZones(s *slot) []string {
	var zones []string
	pokes.mu.Lock()
	for z := range pokes.m {
		zones = append(zones, z)
	}
	pokes.mu.Unlock()
	local.mu.Lock()
	for z := range local.serials {
		zones = append(zones, z)
	}
	local.mu.Unlock()
	slices.Sort(zones)
	zones = slices.Compact(zones)
	return slices.DeleteFunc(zones, func(z string) bool { return !passesThrough(s, z) })
}

// local watches the zones this server serves that chains resolved through it pass through, every
// second while a running pool resolves through this server (acquired by pool.start).
var local = localZones{ticking: ticking{interval: pokeInterval}, apex: map[string]string{}, serials: map[string]uint32{}}

func init() { local.fn = local.lookAll }

type localZones struct {
	ticking
	mu      sync.Mutex
	apex    map[string]string // chain name -> the apex of its zone served here; "" when not served here
	serials map[string]uint32 // zone -> its serial when last looked at
}

// lookAll looks at the zones served here of every pool resolving through this server.
func (l *localZones) lookAll() {
	for _, p := range running() {
		if p.self != nil {
			l.look(p)
		}
	}
}

// look finds the zones served here that the chains of p pass through (once per name), and pokes
// those whose serial moved.
func (l *localZones) look(p *pool) {
	srv := p.self.server.Load()
	if srv == nil {
		return
	}
	var names []string
	each := func(s *slot) {
		names = append(names, s.name)
		if e := s.good.Load(); e != nil {
			for _, h := range e.hops() {
				names = append(names, h.target)
			}
		}
	}
	for _, t := range p.cache.pins {
		each(&t.slots[0])
	}
	p.cache.mu.RLock()
	for _, s := range p.cache.slots {
		each(s)
	}
	p.cache.mu.RUnlock()
	zones := map[string]bool{}
	for _, name := range names {
		l.mu.Lock()
		apex, known := l.apex[name]
		l.mu.Unlock()
		if !known {
			apex = localApex(srv, name)
			l.mu.Lock()
			l.apex[name] = apex
			l.mu.Unlock()
		}
		if apex != "" {
			zones[apex] = true
		}
	}
	for zone := range zones {
		soa := localSOA(srv, zone)
		if soa == nil {
			continue
		}
		l.mu.Lock()
		before, seen := l.serials[zone]
		l.serials[zone] = soa.Serial
		l.mu.Unlock()
		if seen && before != soa.Serial {
			poke(zone, "serial "+strconv.FormatUint(uint64(soa.Serial), 10))
		}
	}
}

// localApex returns the apex of the zone this server serves name from (an authoritative answer
// to SOA: the SOA in the answer or the authority section); "" when it is not served here.
func localApex(srv *dnsserver.Server, name string) string {
	m := askServer(srv, name, dns.TypeSOA)
	if m == nil || !m.Authoritative {
		return ""
	}
	for _, rr := range append(m.Answer, m.Ns...) {
		if soa, ok := rr.(*dns.SOA); ok && dns.IsSubDomain(soa.Hdr.Name, name) {
			return strings.ToLower(soa.Hdr.Name)
		}
	}
	return ""
}

// localSOA returns the SOA of zone as this server serves it.
func localSOA(srv *dnsserver.Server, zone string) *dns.SOA {
	m := askServer(srv, zone, dns.TypeSOA)
	if m == nil || !m.Authoritative {
		return nil
	}
	for _, rr := range m.Answer {
		if soa, ok := rr.(*dns.SOA); ok && strings.EqualFold(soa.Hdr.Name, zone) {
			return soa
		}
	}
	return nil
}

// askServer sends one question through srv's plugin chains, as a lookup through this server does.
func askServer(srv *dnsserver.Server, name string, qtype uint16) *dns.Msg {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ctx = context.WithValue(ctx, dnsserver.Key{}, srv)
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	rw := &recorder{stubWriter: selfWriter}
	srv.ServeDNS(ctx, rw, m)
	return rw.msg
}

// recorder keeps the message written to it.
type recorder struct {
	stubWriter
	msg *dns.Msg
}

func (r *recorder) WriteMsg(m *dns.Msg) error { r.msg = m; return nil }

// notifyConfig is `notify_from ADDRESS|CIDR...`: the primaries whose NOTIFY for the block's zones
// make the chains through them re-resolve.
type notifyConfig struct{ from []netip.Prefix }

func (n *notifyConfig) allows(addr net.Addr) bool { return inPrefixes(addr, n.from) }

// refusedNotify limits the log lines of refused NOTIFYs to one a minute.
var refusedNotify = rate.Sometimes{Interval: time.Minute}

// serveNotify answers a NOTIFY (RFC 1996) for one of the block's zones: from an allowed address,
// the chains through the zone are re-resolved and it is acknowledged, by the plugin below if one
// takes it (*secondary* then transfers the zone, and the watch of the zones served here
// re-resolves the chains again once it serves the new data), else by flatten; from anywhere else
// it is refused and changes nothing (RFC 1996 3.10).
func (f *Flatten) serveNotify(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	state := request.Request{W: w, Req: r}
	zone := strings.ToLower(state.Name())
	m := new(dns.Msg)
	if !f.cfg.notify.allows(w.RemoteAddr()) {
		m.SetRcode(r, dns.RcodeRefused)
		w.WriteMsg(m)
		refusedNotify.Do(func() {
			log.Warningf("refused a NOTIFY for %s from %s, not in notify_from (more are refused without a line for a minute)", zone, state.IP())
		})
		return dns.RcodeRefused, nil
	}
	poke(zone, "notify from "+state.IP())
	if f.Next != nil {
		nw := nonwriter.New(w)
		if _, err := f.Next.ServeDNS(ctx, nw, r); err == nil && nw.Msg != nil && nw.Msg.Rcode == dns.RcodeSuccess {
			w.WriteMsg(nw.Msg)
			return dns.RcodeSuccess, nil
		}
	}
	m.SetReply(r)
	m.Authoritative = true
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}
