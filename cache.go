package flatten

import (
	"container/heap"
	"context"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// cacheKey names one resolved chain.
type cacheKey struct {
	name  string // the target, a lowercased FQDN
	qtype uint16 // dns.TypeA or dns.TypeAAAA
	// scope is the client network (EDNS Client Subnet, RFC 7871 7.3) the answer is for, with
	// `ecs` (ecs.go); the zero subnet means every client.
	scope subnet
}

// entry is one resolved chain as cached, and when it was fetched. Entries are never modified once
// stored. An entry is 32 bytes and one object: with 100,000 aliases there are 200,000 entries, and
// every byte of them counts (in memory, in what the garbage collector marks, in what an answer
// loads). So the address RRset and the hops are held by pointer to copies shared with other
// entries (addrSets, shareHops) instead of as slices, ttl is the lifetime (the chain's TTL clamped
// by `ttl MIN MAX`, set by newEntry), and the fetch time is an offset on the monotonic clock
// instead of a time.Time (24 bytes).
type entry struct {
	set     *addrSet // the final address RRset; nil for a negative answer
	path    *path    // the CNAME and DNAME hops that lead to it; nil for none
	fetched int64    // nanoseconds since clockBase
	ttl     uint32   // the lifetime in seconds
	// nxdomain is set when the last name of the chain does not exist (chain.nxdomain).
	nxdomain bool
	// Set by the cache when it keeps the entry for a client network (`ecs`, ecs.go): the SCOPE
	// PREFIX-LENGTH echoed to clients, and whether the upstream wanted a longer prefix than it
	// was sent.
	ecsScope uint8
	narrow   bool
}

// addrSet is a cached address RRset. An entry holds it by pointer, one word instead of a slice's
// three, and entries that resolved to the same records share one (addrSets).
type addrSet struct{ rrs []dns.RR }

// path is the hops of a cached chain. An entry holds it by pointer, and the A and AAAA entries of
// a target share one when their hops are the same (shareHops).
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

// clockBase is what entry.fetched counts from. Offsets from a time with a monotonic reading keep
// entries immune to steps of the wall clock, as time.Time's own arithmetic would.
var clockBase = time.Now()

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
	scope *subnet // the client network the slot is for (`ecs`, ecs.go); nil: every client

	good   atomic.Pointer[entry]   // the last successful resolution, positive or negative
	fail   atomic.Pointer[failure] // the last failure, cleared by the next success
	flight atomic.Pointer[flight]  // the resolution in progress, nil when none

	// Refresh schedule of a pinned slot, guarded by cache.schedMu. The fields are small (due as
	// an offset, index as int32, failures counted instead of a backoff duration) because a
	// pinned slot exists per configured target and type.
	due      int64 // when the refresh is due, in nanoseconds since clockBase
	index    int32 // position in the schedule heap, -1 when not in it
	failures uint8 // consecutive failed refreshes: the backoff doubles with each (backoff)
	tried    bool  // the startup round has tried this slot once

	qi     uint8 // the address type, by qtypeIndex
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

// qtype is the address type s is for: dns.TypeA or dns.TypeAAAA.
func (s *slot) qtype() uint16 { return qtypes[s.qi] }

// subnet is the client network s is for; the zero subnet for every client.
func (s *slot) subnet() subnet {
	if s.scope == nil {
		return subnet{}
	}
	return *s.scope
}

// pinnedTarget holds the pinned slots of one configured target, A and AAAA, side by side: one
// allocation per target, found by name, instead of two slots and two entries in the map of
// on-demand slots (about 100 bytes per key in a Go map of this key type).
type pinnedTarget struct {
	slots [2]slot // by qtypeIndex
}

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

const (
	// failureTTL is how long a failure is remembered (RFC 9520 3.2: at least 1 s, at most
	// 5 minutes). Short, so that a recovered upstream is used again quickly.
	failureTTL = 5 * time.Second
	// staleTTL is the TTL of a stale answer (RFC 8767 4).
	staleTTL = 30
	// minRefresh and maxBackoff bound the background refresh of configured aliases.
	minRefresh = time.Second
	maxBackoff = time.Minute
	// refreshWorkers bounds concurrent background resolutions.
	refreshWorkers = 16
)

// resolveFunc resolves a key upstream; the walker in production, a fake in tests.
type resolveFunc func(ctx context.Context, k cacheKey) (*chain, error)

// cache holds resolved chains. Configured aliases have pinned slots that are resolved at startup
// and refreshed in the background before they expire; other keys get slots on demand, bounded
// by capacity and refreshed ahead of expiry when a query finds them close to it (prefetch).
type cache struct {
	resolve  resolveFunc
	now      func() time.Time
	ttlMin   uint32
	ttlMax   uint32
	prefetch float64       // refresh when less than this fraction of the lifetime is left
	stale    time.Duration // how long past expiry an entry may be served (RFC 8767)
	timeout  time.Duration // the most a client waits for a resolution
	capacity int           // most slots made on demand
	server   string        // metrics label for work done outside any query
	identity string        // the listener and zones: what a reloaded instance takes over from
	// limiter paces the upstream queries of background resolution (`refresh_rate`), so that
	// warming 100,000 aliases at startup does not flood the resolver. Queries a client waits
	// for are not paced: they are bounded by coalescing and by the cache's capacity.
	limiter *rate.Limiter
	// onPinned is told of every entry stored in a pinned slot (setGood), so that the table of
	// aliases keeps its copy for the answer path (aliasTable.publish); nil until pin.
	onPinned func(s *slot, e *entry)

	mu sync.RWMutex
	// slots holds the slots made on demand.
	slots  map[cacheKey]*slot
	demand int // slots made on demand, bounded by capacity
	// pins holds the configured targets' slots, made at setup by pinTargets: one allocation,
	// sorted by name and searched (pinnedLocked). 100,000 targets cost the garbage collector one
	// object to mark instead of 100,000, and no index: a map by name would cost about 35 bytes
	// more per target. pinsLater holds any target pinned after that (pinTarget; tests).
	pins      []pinnedTarget
	pinsLater map[string]*pinnedTarget
	// addrSets shares one copy of each address RRset between the entries that hold it, names
	// one copy of each name a chain leads to.
	addrSets addrSets
	names    nameSet
	ecs      scopeIndex // the slots of client networks (ecs.go)

	schedMu  sync.Mutex
	schedule refreshHeap
	pending  int // pinned slots the startup round has not tried yet

	base   context.Context // cancelled on stop: ends every background resolution
	cancel context.CancelFunc
	kick   chan struct{}
	sem    chan struct{}

	// life orders spawn against stop: no goroutine is added to wg once stop has begun waiting
	// (a query can arrive while a reload shuts this instance down).
	life sync.Mutex
	wg   sync.WaitGroup

	started atomic.Bool
	stopped atomic.Bool
}

func newCache(resolve resolveFunc) *cache {
	base, cancel := context.WithCancel(context.Background())
	c := &cache{
		resolve:  resolve,
		now:      time.Now,
		ttlMin:   defaultTTLMin,
		ttlMax:   defaultTTLMax,
		prefetch: defaultPrefetch,
		stale:    defaultServeStale,
		timeout:  defaultTimeout,
		capacity: defaultCapacity,
		slots:    make(map[cacheKey]*slot),
		base:     base,
		cancel:   cancel,
		kick:     make(chan struct{}, 1),
		sem:      make(chan struct{}, refreshWorkers),
	}
	c.setRefreshRate(defaultRefreshRate)
	return c
}

// setRefreshRate sets the pace of background upstream queries to at most qps in any one-second
// window, counting the first. The token bucket (burst 1) lets one question out per interval; the
// interval is 2% longer than 1/qps, so that the window holds qps questions and not qps+1, and
// questions that leave up to 20 ms late (a busy core, the Go scheduler) still do not crowd more
// than qps into any second as they arrive upstream: the resolver sees the rate it was promised.
func (c *cache) setRefreshRate(qps int) {
	c.limiter = rate.NewLimiter(rate.Every(refreshInterval(qps)), 1)
	c.base = withLimiter(c.base, c.limiter)
}

// refreshInterval is the time between two paced questions at refresh_rate qps.
func refreshInterval(qps int) time.Duration {
	return time.Second * 102 / time.Duration(100*qps)
}

// pinTargets makes the pinned slots of the configured targets (lowercased FQDNs, in any order,
// repeats allowed). Called once at setup, before start; pinTarget then finds them.
func (c *cache) pinTargets(names []string) {
	names = slices.Compact(slices.Sorted(slices.Values(names)))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pins = make([]pinnedTarget, len(names))
	for i, name := range names {
		c.initPinLocked(&c.pins[i], name)
	}
}

// pinTarget returns the pinned slots of a configured target, making them if pinTargets did not.
func (c *cache) pinTarget(name string) *pinnedTarget {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.pinnedLocked(name); p != nil {
		return p
	}
	p := new(pinnedTarget)
	c.initPinLocked(p, name)
	if c.pinsLater == nil {
		c.pinsLater = map[string]*pinnedTarget{}
	}
	c.pinsLater[name] = p
	return p
}

// initPinLocked makes p the pinned slots of name. A slot made on demand for the same key is
// taken over. c.mu is held.
func (c *cache) initPinLocked(p *pinnedTarget, name string) {
	for i, qtype := range qtypes {
		s := &p.slots[i]
		k := cacheKey{name: name, qtype: qtype}
		s.init(k)
		s.pinned = true
		if old := c.slots[k]; old != nil {
			// Not setGood: no cell copies the slot yet (aliasTable.pin copies what the slots hold).
			s.good.Store(old.good.Load())
			delete(c.slots, k)
			c.demand--
		}
	}
}

// pinnedLocked returns the pinned slots of name; nil if it is not a configured target. c.mu is
// held.
func (c *cache) pinnedLocked(name string) *pinnedTarget {
	if i, ok := c.pinIndex(name); ok {
		return &c.pins[i]
	}
	return c.pinsLater[name]
}

// pinIndex returns the index in c.pins of name's pinned slots, if pinTargets made them. c.pins
// does not change after pinTargets, so no lock is needed.
func (c *cache) pinIndex(name string) (int, bool) { return pinIndexIn(c.pins, name) }

// pinIndexIn returns the index of name's pinned slots in pins, sorted by name.
func pinIndexIn(pins []pinnedTarget, name string) (int, bool) {
	i := sort.Search(len(pins), func(i int) bool { return pins[i].slots[0].name >= name })
	return i, i < len(pins) && pins[i].slots[0].name == name
}

// setGood stores e as s's last successful resolution. Every store goes through here: the table
// of aliases copies what a pinned slot holds (onPinned), and a copy left behind would go on
// answering.
func (c *cache) setGood(s *slot, e *entry) {
	s.good.Store(e)
	if s.pinned && c.onPinned != nil {
		c.onPinned(s, e)
	}
}

// lookupLocked returns the slot for k, pinned or on demand; c.mu is held.
func (c *cache) lookupLocked(k cacheKey) *slot {
	if !k.scope.IsValid() {
		if p := c.pinnedLocked(k.name); p != nil {
			return &p.slots[qtypeIndex(k.qtype)]
		}
	}
	return c.slots[k]
}

// eachPinLocked calls fn for every pinned target; c.mu is held.
func (c *cache) eachPinLocked(fn func(*pinnedTarget)) {
	for i := range c.pins {
		fn(&c.pins[i])
	}
	for _, p := range c.pinsLater {
		fn(p)
	}
}

// eachLocked calls fn for every slot, pinned and on demand; c.mu is held.
func (c *cache) eachLocked(fn func(*slot)) {
	for _, s := range c.slots {
		fn(s)
	}
	c.eachPinLocked(func(p *pinnedTarget) {
		for i := range p.slots {
			fn(&p.slots[i])
		}
	})
}

// countLocked is the number of slots, for the entries gauge; c.mu is held.
func (c *cache) countLocked() int { return len(c.slots) + 2*(len(c.pins)+len(c.pinsLater)) }

// sibling returns the other address type's slot of a pinned target.
func (c *cache) sibling(s *slot) *slot {
	if !s.pinned {
		return nil
	}
	return c.existing(cacheKey{name: s.name, qtype: qtypes[1-s.qi]})
}

// slotFor returns the slot for k, making an on-demand one if needed and evicting another
// on-demand slot when capacity is reached.
func (c *cache) slotFor(k cacheKey) *slot {
	if s := c.existing(k); s != nil {
		return s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.lookupLocked(k); s != nil {
		return s
	}
	if c.demand >= c.capacity {
		c.evictLocked()
	}
	s := new(slot)
	s.init(k)
	c.slots[k] = s
	c.demand++
	c.countScoped(k, 1)
	cacheEntries.WithLabelValues(c.server).Set(float64(c.countLocked()))
	return s
}

// evictLocked drops one on-demand slot, an expired one if the first few looked at include one,
// else the first found. Go's map iteration starts at a random place, so this is random eviction,
// as in CoreDNS's own cache, without bookkeeping on the read path.
func (c *cache) evictLocked() {
	now := c.now()
	var victim *slot
	looked := 0
	for _, s := range c.slots {
		if victim == nil {
			victim = s
		}
		if e := s.good.Load(); e == nil || now.After(e.expires()) {
			victim = s
			break
		}
		if looked++; looked >= 8 {
			break
		}
	}
	if victim != nil {
		k := victim.key()
		delete(c.slots, k)
		c.demand--
		c.countScoped(k, -1)
	}
}

// existing returns the slot for k if there is one, without making one.
func (c *cache) existing(k cacheKey) *slot {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.lookupLocked(k)
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.countLocked()
}

// get returns what to answer for s: an entry and where it comes from. It asks upstream only when
// nothing fresh is known and no failure is remembered, and never keeps a client waiting longer
// than the timeout. The ladder (RFC 8767): fresh, then stale within the window, then nothing
// (the caller's fallback and SERVFAIL), with the failure that explains it.
//
// nested marks a lookup made by another resolution through this server. It resolves in its own
// flight instead of joining one in progress: two resolutions whose chains lead into each other
// would otherwise each wait for the other until the timeout, and the loop would never be seen.
func (c *cache) get(ctx context.Context, s *slot, nested bool) (*entry, source, *resolveError) {
	now := c.now()
	e := s.good.Load()
	if e != nil && now.Before(e.expires()) {
		// A pinned slot is refreshed on its schedule, not by queries; pinned is on the cache
		// line that good was just loaded from, so asking it first costs nothing and spares the
		// usual hit the arithmetic of nearExpiry.
		if !s.pinned && c.nearExpiry(e, now) {
			c.refreshAsync(ctx, s)
		}
		return e, srcFresh, nil
	}

	f := s.fail.Load()
	if f != nil && now.Before(f.until) {
		return c.staleOr(e, now, f.err)
	}
	if f != nil && c.usable(e, now) {
		// The last try failed and a stale answer exists: answer with it at once and retry in
		// the background, so that an outage costs clients no waiting after its first query.
		c.refreshAsync(ctx, s)
		return c.staleOr(e, now, f.err)
	}

	resolved, err := c.await(ctx, s, nested)
	if err == nil {
		return resolved, srcResolved, nil
	}
	return c.staleOr(e, c.now(), err)
}

// await resolves s for a client: it joins the flight in progress (or, nested, starts its own;
// see get) and waits for it, at most the timeout. It returns the entry, or why there is none.
func (c *cache) await(ctx context.Context, s *slot, nested bool) (*entry, *resolveError) {
	var fl *flight
	if nested {
		// Its own flight, not put on the slot.
		fl = &flight{done: make(chan struct{})}
		c.launch(ctx, s, fl)
	} else {
		fl, _ = c.claim(ctx, s)
	}
	t := time.NewTimer(c.timeout)
	defer t.Stop()
	select {
	case <-fl.done:
		return fl.entry, fl.err
	case <-t.C:
	case <-ctx.Done():
	}
	return nil, errTimeout(s.name)
}

// peek returns what get would answer s with at now, and the failure remembered for it, without
// asking upstream or waiting: for explanations.
func (c *cache) peek(s *slot, now time.Time) (*entry, source, *resolveError) {
	var err *resolveError
	if f := s.fail.Load(); f != nil {
		err = f.err
	}
	e := s.good.Load()
	switch {
	case e != nil && now.Before(e.expires()):
		return e, srcFresh, nil
	case c.usable(e, now):
		return e, srcStale, err
	}
	return nil, srcNone, err
}

// nearExpiry reports whether fresh e has less than the prefetch fraction of its lifetime left:
// a query that finds it so starts a refresh ahead of expiry.
func (c *cache) nearExpiry(e *entry, now time.Time) bool {
	return e.expires().Sub(now) < time.Duration(float64(e.lifetime())*c.prefetch)
}

// usable reports whether e may still be served, fresh or stale.
func (c *cache) usable(e *entry, now time.Time) bool {
	return e != nil && now.Before(e.expires().Add(c.stale))
}

func (c *cache) staleOr(e *entry, now time.Time, err *resolveError) (*entry, source, *resolveError) {
	if c.usable(e, now) {
		return e, srcStale, err
	}
	return nil, srcNone, err
}

// claim returns the flight for s, starting one if none is in progress, and whether this call
// started it. The flight is put on the slot before it is launched: of callers racing for an idle
// slot, one wins the swap and resolves, the others join its flight. ctx gives the resolution its
// values (the server to resolve through, the self-lookup path), not its lifetime: a flight
// outlives the client that started it, up to the timeout, and ends when the cache stops.
func (c *cache) claim(ctx context.Context, s *slot) (*flight, bool) {
	for {
		if fl := s.flight.Load(); fl != nil {
			return fl, false
		}
		fl := &flight{done: make(chan struct{})}
		if s.flight.CompareAndSwap(nil, fl) {
			c.launch(ctx, s, fl)
			return fl, true
		}
	}
}

// launch starts fl, the resolution of s, in the background. Once the cache is stopping, the
// flight fails at once (and may stay on the slot, which this instance no longer resolves).
func (c *cache) launch(ctx context.Context, s *slot, fl *flight) {
	cacheMisses.WithLabelValues(c.server).Inc()
	if !c.spawn(func() { c.run(context.WithoutCancel(ctx), s, fl) }) {
		fl.err = errStopped
		close(fl.done)
	}
}

// errStopped is the failure of a resolution asked for while the instance shuts down.
var errStopped = &resolveError{dns.ExtendedErrorCodeNotReady, "stopped", "shutting down"}

// spawn runs fn in a goroutine that stop waits for, unless the cache is stopping.
func (c *cache) spawn(fn func()) bool {
	c.life.Lock()
	defer c.life.Unlock()
	if c.stopped.Load() {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn()
	}()
	return true
}

// refreshAsync starts a background resolution of s unless one is in progress.
func (c *cache) refreshAsync(ctx context.Context, s *slot) {
	if c.stopped.Load() {
		return
	}
	if _, started := c.claim(ctx, s); started {
		refreshes.WithLabelValues(c.server).Inc()
	}
}

// run resolves s and publishes the outcome to the slot and the flight's waiters.
func (c *cache) run(ctx context.Context, s *slot, fl *flight) {
	ctx, cancel := context.WithTimeout(subnetFor(ctx, s), c.timeout)
	defer cancel()
	stop := context.AfterFunc(c.base, cancel)
	defer stop()

	start := time.Now()
	ch, err := c.resolve(ctx, s.key())
	lookupDuration.WithLabelValues(c.server).Observe(time.Since(start).Seconds())

	now := c.now()
	if err != nil {
		re := asResolveError(s.name, err)
		s.fail.Store(&failure{err: re, at: now, until: now.Add(failureTTL)})
		fl.err = re
	} else {
		fl.entry = c.newEntry(ch, now)
		c.shareHops(s, fl.entry) // before the entry is published: entries are never modified after
		c.store(ctx, s, fl.entry, ch)
		s.fail.Store(nil)
	}
	// After the outcome is stored: whoever finds no flight on the slot finds the outcome.
	s.flight.CompareAndSwap(fl, nil)
	close(fl.done)
}

// newEntry makes the entry for ch, resolved at now. Its address RRset and the names its hops
// lead to become the shared copies (ch's hops are taken over), and its TTL, clamped by `ttl MIN
// MAX`, the lifetime.
func (c *cache) newEntry(ch *chain, now time.Time) *entry {
	e := &entry{
		set:      c.addrSets.intern(ch.addrs),
		fetched:  int64(now.Sub(clockBase)),
		ttl:      min(max(ch.ttl, c.ttlMin), c.ttlMax),
		nxdomain: ch.nxdomain,
	}
	if len(ch.hops) > 0 {
		for i := range ch.hops {
			// The names a chain leads to repeat across entries (the agency pattern: many targets,
			// a few servers): one copy of each, as for address RRsets.
			ch.hops[i].target = c.names.intern(ch.hops[i].target)
		}
		e.path = &path{hops: ch.hops}
	}
	return e
}

// shareHops lets the A and AAAA entries of a pinned target share one copy of their CNAME hops
// when they are the same (the usual case: the chain's CNAMEs do not depend on the type asked).
// e is new and not yet stored; the sibling's entry is only read.
func (c *cache) shareHops(s *slot, e *entry) {
	if e.path == nil {
		return
	}
	if sib := c.sibling(s); sib != nil {
		if se := sib.good.Load(); se != nil && se.path != nil && slices.Equal(se.path.hops, e.path.hops) {
			e.path = se.path
		}
	}
}

// ttl is the TTL to answer with from e at now: the time left, counting down like a resolver's
// cache so that no downstream cache keeps the addresses longer than their owner allowed, within
// `ttl MIN MAX`. A stale answer has the RFC 8767 TTL.
func (c *cache) ttl(e *entry, src source, now time.Time) uint32 {
	if src == srcStale {
		return staleTTL
	}
	// Whole seconds elapsed, as CoreDNS's cache counts: a fresh answer has the full TTL.
	elapsed := now.Sub(e.fetchedAt()) / time.Second
	return c.clampTTL(uint32(max(time.Duration(e.ttl)-elapsed, 0)))
}

// clampTTL bounds the seconds left of a fresh answer by `ttl MIN MAX`.
func (c *cache) clampTTL(left uint32) uint32 { return min(max(left, c.ttlMin), c.ttlMax) }

// live holds the running caches by identity. A Corefile reload (the *reload* plugin) starts the
// new instance before it shuts the old one down; the new cache takes the old one's entries, so an
// upstream outage that spans a reload is still answered stale, and a reload costs no resolution
// of what is fresh.
var live = struct {
	sync.Mutex
	caches map[string]*cache
}{caches: map[string]*cache{}}

// adopt copies the entries of the cache c replaces, if any, and registers c in its place. It runs
// at OnStartup, while the instance being replaced is still registered.
func (c *cache) adopt() {
	live.Lock()
	old := live.caches[c.identity]
	live.caches[c.identity] = c
	live.Unlock()
	if old == nil || old == c {
		return
	}
	old.mu.RLock()
	entries := make(map[cacheKey]*entry, old.countLocked())
	old.eachLocked(func(s *slot) {
		if e := s.good.Load(); e != nil {
			entries[s.key()] = e
		}
	})
	old.mu.RUnlock()
	for k, e := range entries {
		// This cache's own slot (pinned for its aliases), or one on demand within its capacity.
		c.setGood(c.slotFor(k), e)
	}
}

// start begins the startup round and the background refresh of pinned slots, once.
func (c *cache) start() {
	if c.stopped.Load() || c.started.Swap(true) {
		return
	}
	now := c.now()
	c.schedMu.Lock()
	c.mu.RLock()
	c.eachPinLocked(func(p *pinnedTarget) {
		for i := range p.slots {
			if s := &p.slots[i]; s.index < 0 {
				s.due = c.since(now)
				heap.Push(&c.schedule, s)
				c.pending++
			}
		}
	})
	cacheEntries.WithLabelValues(c.server).Set(float64(c.countLocked()))
	c.mu.RUnlock()
	c.schedMu.Unlock()
	c.spawn(c.refresher)
}

// stop ends all background work and waits for it. Resolutions in flight are cancelled.
func (c *cache) stop() {
	c.life.Lock()
	already := c.stopped.Swap(true)
	c.life.Unlock()
	if already {
		return
	}
	live.Lock()
	if live.caches[c.identity] == c {
		delete(live.caches, c.identity)
	}
	live.Unlock()
	c.cancel()
	c.wg.Wait()
}

// ready reports whether the startup round has tried every configured alias once.
func (c *cache) ready() bool {
	c.schedMu.Lock()
	defer c.schedMu.Unlock()
	return c.started.Load() && c.pending == 0
}

// wake makes the refresher look at its schedule now (for example when the server to resolve
// through becomes known).
func (c *cache) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *cache) refresher() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		wait := c.runDue()
		t.Reset(wait)
		select {
		case <-c.base.Done():
			return
		case <-c.kick:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		case <-t.C:
		}
	}
}

// runDue starts the refresh of every pinned slot that is due, at most refreshWorkers at a time,
// and returns how long until the next one is due.
func (c *cache) runDue() time.Duration {
	for {
		now := c.now()
		c.schedMu.Lock()
		if len(c.schedule) == 0 {
			c.schedMu.Unlock()
			return time.Hour
		}
		s := c.schedule[0]
		if wait := time.Duration(s.due - c.since(now)); wait > 0 { // s.due is guarded by schedMu
			c.schedMu.Unlock()
			return wait
		}
		heap.Pop(&c.schedule)
		c.schedMu.Unlock()

		select {
		case c.sem <- struct{}{}:
		case <-c.base.Done():
			return time.Hour
		}
		if !c.spawn(func() {
			defer func() { <-c.sem }()
			c.refreshPinned(s)
		}) {
			<-c.sem
			return time.Hour
		}
	}
}

// refreshPinned resolves a pinned slot (joining a flight a client may have started) and puts it
// back on the schedule: before it expires after a success, with backoff after a failure.
func (c *cache) refreshPinned(s *slot) {
	// The resolution's first question waits for its turn here, outside the resolution's timeout;
	// further hops of a chain wait in the walker.
	if c.limiter.Wait(c.base) != nil {
		return // stopping
	}
	// The flight first, then the entry: run stores the entry before it takes its flight off the
	// slot, so a client's resolution that ended meanwhile is seen here and not resolved again.
	fl := s.flight.Load()
	if e := s.good.Load(); fl == nil && e != nil && c.now().Before(e.expires().Add(-c.refreshLead(e))) {
		// A query resolved it since it was scheduled (at startup, typically): not due yet.
		fl = &flight{entry: e}
	} else {
		if fl == nil {
			var started bool
			if fl, started = c.claim(withPrepaid(c.base), s); started {
				refreshes.WithLabelValues(c.server).Inc()
			}
		}
		select {
		case <-fl.done:
		case <-c.base.Done():
			return
		}
	}

	now := c.now()
	c.schedMu.Lock()
	defer c.schedMu.Unlock()
	if !s.tried {
		s.tried = true
		c.pending--
	}
	if fl.err == nil {
		s.failures = 0
		s.due = c.since(fl.entry.expires().Add(-c.refreshLead(fl.entry)))
	} else {
		s.failures = min(s.failures+1, maxFailures)
		retry := now.Add(backoff(s.failures))
		s.due = c.since(retry)
		// The refresher retries then: until then the failure stands for clients too, so that
		// none of them waits on an upstream known to fail (and an alias's next target answers
		// at once). RFC 9520 3.2 allows up to 5 minutes; the backoff stays under one.
		if f := s.fail.Load(); f != nil && f.until.Before(retry) {
			s.fail.CompareAndSwap(f, &failure{err: f.err, at: f.at, until: retry})
		}
	}
	heap.Push(&c.schedule, s)
	if s.index == 0 {
		// Due before anything the refresher's timer waits for (an hour, when the schedule was
		// empty as it took the last slot out): it must look again.
		c.wake()
	}
}

// maxFailures is where a slot stops counting failed refreshes: its backoff reached maxBackoff
// long before.
const maxFailures = 32

// backoff is the wait before a pinned slot's next refresh after its nth failure in a row:
// minRefresh, doubled with each further failure, up to maxBackoff.
func backoff(n uint8) time.Duration {
	if n > 6 {
		return maxBackoff
	}
	return min(minRefresh<<(n-1), maxBackoff)
}

// refreshLead is how long before e expires it is refreshed: the prefetch fraction of its lifetime,
// leaving it at least minRefresh to live first.
func (c *cache) refreshLead(e *entry) time.Duration {
	return min(time.Duration(float64(e.lifetime())*c.prefetch), max(e.lifetime()-minRefresh, 0))
}

// since is t as a slot's due time: nanoseconds since clockBase (monotonic when t is). Due times
// count from the base entries count from: a due time made from an entry's expiry (clockBase plus
// offsets) is then exactly as far from now as the expiry is. From another base, taken at another
// instant, wall and monotonic readings differ by some nanoseconds, and a clock without a
// monotonic reading (the tests' fake) would find a refresh due at the entry's time still those
// nanoseconds away.
func (c *cache) since(t time.Time) int64 { return int64(t.Sub(clockBase)) }

// refreshHeap orders pinned slots by when they are due.
type refreshHeap []*slot

func (h refreshHeap) Len() int           { return len(h) }
func (h refreshHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h refreshHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = int32(i), int32(j)
}
func (h *refreshHeap) Push(x any) {
	s := x.(*slot)
	s.index = int32(len(*h))
	*h = append(*h, s)
}
func (h *refreshHeap) Pop() any {
	old := *h
	n := len(old)
	s := old[n-1]
	old[n-1] = nil
	s.index = -1
	*h = old[:n-1]
	return s
}

// qtypes are the address types by qtypeIndex.
var qtypes = [2]uint16{dns.TypeA, dns.TypeAAAA}

// qtypeIndex maps the two address types to 0 and 1, for per-type arrays.
func qtypeIndex(qtype uint16) int {
	if qtype == dns.TypeAAAA {
		return 1
	}
	return 0
}

// Background resolutions carry the cache's limiter in their context; the walker waits on it
// before each upstream question but the first, which refreshPinned has already waited for.
type limiterKey struct{}
type prepaidKey struct{}

func withLimiter(ctx context.Context, l *rate.Limiter) context.Context {
	return context.WithValue(ctx, limiterKey{}, l)
}

func withPrepaid(ctx context.Context) context.Context {
	return context.WithValue(ctx, prepaidKey{}, true)
}

// pace waits before the hop-th upstream question of a resolution (0 is the first) when the
// resolution is paced. It fails when the wait would outlast the context.
func pace(ctx context.Context, hop int) error {
	l, _ := ctx.Value(limiterKey{}).(*rate.Limiter)
	if l == nil || (hop == 0 && ctx.Value(prepaidKey{}) != nil) {
		return nil
	}
	return l.Wait(ctx)
}

// maxAddrSets bounds the address RRsets remembered for sharing.
const maxAddrSets = 1 << 16

// addrSets lets entries that resolve to the same address RRset share one copy of it. Many
// aliases typically end at a few servers (the agency pattern: every client's name follows one
// of a handful of server names), and an RRset unpacked from each upstream answer costs about
// 250 bytes; with 100,000 aliases sharing saves most of the cache's memory. The records are
// never modified once cached (renamed copies them for each answer), so sharing is safe. The
// map is bounded: when full, it starts over, and later entries share with each other.
type addrSets struct {
	mu   sync.Mutex
	sets map[string]*addrSet
}

// intern returns the shared set holding rrs; nil for none.
func (a *addrSets) intern(rrs []dns.RR) *addrSet {
	if len(rrs) == 0 {
		return nil
	}
	// The key is everything an answer uses: owner, type, TTL and the addresses in order.
	h := rrs[0].Header()
	key := make([]byte, 0, len(h.Name)+8+16*len(rrs))
	key = append(key, h.Name...)
	key = append(key, byte(h.Rrtype>>8), byte(h.Rrtype), byte(h.Ttl>>24), byte(h.Ttl>>16), byte(h.Ttl>>8), byte(h.Ttl))
	for _, rr := range rrs {
		if rr.Header().Ttl != h.Ttl {
			return &addrSet{rrs: rrs} // TTLs that differ within the set: rare; not shared
		}
		switch v := rr.(type) {
		case *dns.A:
			key = append(key, v.A.To16()...)
		case *dns.AAAA:
			key = append(key, v.AAAA.To16()...)
		default:
			return &addrSet{rrs: rrs}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if shared, ok := a.sets[string(key)]; ok {
		return shared
	}
	if a.sets == nil || len(a.sets) >= maxAddrSets {
		a.sets = make(map[string]*addrSet)
	}
	set := &addrSet{rrs: rrs}
	a.sets[string(key)] = set
	return set
}

// nameSet shares one copy of each name that chains lead to. Go's unique package would do it
// without a bound, but its canonical copy is dropped once no Handle refers to it, and entries keep
// the string, not a Handle: after the next collection the same name would be copied again. The
// set is bounded like addrSets: when full it starts over.
type nameSet struct {
	mu sync.Mutex
	m  map[string]string
}

func (n *nameSet) intern(name string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if shared, ok := n.m[name]; ok {
		return shared
	}
	if n.m == nil || len(n.m) >= maxAddrSets {
		n.m = make(map[string]string)
	}
	n.m[name] = name
	return name
}
