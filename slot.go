package flatten

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// cacheKey names one resolved chain.
type cacheKey struct {
	name  string // the target, a lowercased FQDN
	qtype uint16 // dns.TypeA or dns.TypeAAAA; dns.TypeHTTPS with `https`
	// scope is the client network (EDNS Client Subnet, RFC 7871 7.3) the answer is for, with
	// `ecs` (scope.go); the zero subnet means every client.
	scope subnet
}

// entry is one resolved chain as cached, and when it was fetched. Entries are never modified once
// stored. An entry is 32 bytes and one object: with 100,000 aliases there are 200,000 entries, and
// every byte of them counts (in memory, in what the garbage collector marks, in what an answer
// loads). So the address RRset and the hops are held by pointer to copies shared with other
// entries (intern.go) instead of as slices, ttl is the lifetime (the chain's TTL clamped by `ttl
// MIN MAX`, set by newEntry), and the fetch time is an offset on the monotonic clock instead of a
// time.Time (24 bytes).
type entry struct {
	set     *addrSet // the final address RRset; nil for a negative answer
	path    *path    // the CNAME and DNAME hops that lead to it; nil for none
	fetched int64    // nanoseconds since clockBase
	ttl     uint32   // the lifetime in seconds
	// nxdomain is set when the last name of the chain does not exist (chain.nxdomain).
	nxdomain bool
	// Set by the cache when it keeps the entry for a client network (`ecs`, scope.go): the SCOPE
	// PREFIX-LENGTH echoed to clients, and whether the upstream wanted a longer prefix than it
	// was sent.
	ecsScope uint8
	narrow   bool
	// validated is set when a validating upstream set AD on every answer of the chain
	// (`dnssec_targets secure`). It takes the struct's spare byte: an entry stays 32 bytes.
	validated bool
}

// addrSet is a cached address RRset. An entry holds it by pointer, one word instead of a slice's
// three, and entries that resolved to the same records share one (interner).
type addrSet struct{ rrs []dns.RR }

// path is the hops of a cached chain. An entry holds it by pointer, and the A and AAAA entries of
// a target share one when their hops are the same (cache.shareHops).
type path struct{ hops []hop }

// addrs is the final address RRset; empty for a negative answer.
func (e *entry) addrs() []dns.RR {
	if e.set == nil {
		return nil
	}
	return e.set.rrs
}

// hops is the CNAME and DNAME hops from the target to the owner of the addresses.
func (e *entry) hops() []hop {
	if e.path == nil {
		return nil
	}
	return e.path.hops
}

// negative reports whether e has no address: NODATA, or NXDOMAIN when e.nxdomain is set.
func (e *entry) negative() bool { return e.set == nil }

// clockBase is what entry.fetched and slot.due count from. Offsets from a time with a monotonic
// reading keep entries immune to steps of the wall clock, as time.Time's own arithmetic would.
var clockBase = time.Now()

// since is t as nanoseconds since clockBase (monotonic when t is).
func since(t time.Time) int64 { return int64(t.Sub(clockBase)) }

func (e *entry) fetchedAt() time.Time { return clockBase.Add(time.Duration(e.fetched)) }

// lifetime is how long e is fresh after it was fetched.
func (e *entry) lifetime() time.Duration { return time.Duration(e.ttl) * time.Second }

// expires is when e stops being fresh.
func (e *entry) expires() time.Time { return e.fetchedAt().Add(e.lifetime()) }

// failure is a remembered resolution failure (RFC 9520): while it lasts, nobody asks upstream
// again for the same key.
type failure struct {
	err   *resolveError
	at    time.Time
	until time.Time
	since time.Time // the first failure of this run of failures
}

// flight is one resolution in progress; every request for the same key waits on it
// instead of asking upstream again.
type flight struct {
	done  chan struct{}
	entry *entry
	err   *resolveError
}

// slot holds everything known about one key. It has no lock: reads on the answer path load
// atomic pointers, and the flight in progress is claimed by compare-and-swap. A slot is 64
// bytes; there is one per configured target and address type (200,000 for 100,000 aliases).
// So it does not keep its cacheKey as one (40 bytes, of which the client network is 20 and used
// by few): key() puts it together.
type slot struct {
	name  string  // the target, a lowercased FQDN
	scope *subnet // the client network the slot is for (`ecs`); nil: every client

	good   atomic.Pointer[entry]   // the last successful resolution, positive or negative
	fail   atomic.Pointer[failure] // the last failure, cleared by the next success
	flight atomic.Pointer[flight]  // the resolution in progress, nil when none

	// Refresh schedule of a pinned slot, guarded by cache.mu (schedule.go). The fields are
	// small (due as an offset, index as int32, failures counted instead of a backoff duration)
	// because a pinned slot exists per configured target and type.
	due      int64 // when the refresh is due, in nanoseconds since clockBase
	index    int32 // position in the schedule heap, -1 when not in it
	failures uint8 // consecutive failed refreshes: the backoff doubles with each (backoff)
	tried    bool  // the startup round has tried this slot once

	qi     uint8 // the type, by qtypeIndex
	pinned bool  // belongs to a configured alias: never evicted, refreshed on a schedule
}

// init makes s the slot for k, not in the refresh schedule.
func (s *slot) init(k cacheKey) {
	s.name, s.qi, s.index = k.name, uint8(qtypeIndex(k.qtype)), -1
	if k.scope.IsValid() {
		scope := k.scope
		s.scope = &scope
	}
}

// key is the cache key s is the slot for.
func (s *slot) key() cacheKey {
	k := cacheKey{name: s.name, qtype: s.qtype()}
	if s.scope != nil {
		k.scope = *s.scope
	}
	return k
}

// qtype is the type s is for: dns.TypeA, dns.TypeAAAA or dns.TypeHTTPS.
func (s *slot) qtype() uint16 { return slotTypes[s.qi] }

// subnet is the client network s is for; the zero subnet for every client.
func (s *slot) subnet() subnet {
	if s.scope == nil {
		return subnet{}
	}
	return *s.scope
}

// pinnedTarget holds the pinned slots of one configured target, A and AAAA, side by side: one
// object per target, which the aliases that name it point at (aliases.go) and the cache finds by
// name (cache.pins).
type pinnedTarget struct {
	slots [2]slot // by qtypeIndex
}

// newPinnedTarget returns the pinned slots of the target name (a lowercased FQDN).
func newPinnedTarget(name string) *pinnedTarget {
	p := new(pinnedTarget)
	for i, qtype := range qtypes {
		p.slots[i].init(cacheKey{name: name, qtype: qtype})
		p.slots[i].pinned = true
	}
	return p
}

// name is the target's name.
func (p *pinnedTarget) name() string { return p.slots[0].name }

// source says where an answer comes from, for the failure ladder and metrics.
type source int

const (
	srcFresh    source = iota // cached and fresh: a hit
	srcResolved               // resolved for this query (a miss)
	srcStale
	srcNone // nothing to serve: the caller falls back to zone data, then SERVFAIL
)

// String is the source's name in explain answers and in flatten/source metadata.
func (s source) String() string {
	switch s {
	case srcFresh:
		return "fresh"
	case srcResolved:
		return "resolved"
	case srcStale:
		return "stale"
	}
	return "none"
}

// qtypes are the address types by qtypeIndex: a pinned target has a slot of each.
var qtypes = [2]uint16{dns.TypeA, dns.TypeAAAA}

// slotTypes are the types a slot may be for, by qtypeIndex: the address types, then HTTPS
// (`https`), whose slots are made on demand.
var slotTypes = [3]uint16{dns.TypeA, dns.TypeAAAA, dns.TypeHTTPS}

// httpsIndex is qtypeIndex(dns.TypeHTTPS).
const httpsIndex = 2

// qtypeIndex maps the two address types to 0 and 1, for per-type arrays, and HTTPS to 2.
func qtypeIndex(qtype uint16) int {
	switch qtype {
	case dns.TypeAAAA:
		return 1
	case dns.TypeHTTPS:
		return httpsIndex
	}
	return 0
}

// rrAddr is the address of an A or AAAA record, unmapped (A records unpack as 16-byte
// IPv4-mapped slices); false for any other record.
func rrAddr(rr dns.RR) (netip.Addr, bool) {
	var ip netip.Addr
	var ok bool
	switch v := rr.(type) {
	case *dns.A:
		ip, ok = netip.AddrFromSlice(v.A)
	case *dns.AAAA:
		ip, ok = netip.AddrFromSlice(v.AAAA)
	}
	return ip.Unmap(), ok
}
