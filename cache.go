package flatten

import (
	"context"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

const (
	// failureTTL is how long a failure is remembered (RFC 9520 3.2: at least 1 s, at most
	// 5 minutes). Short, so that a recovered upstream is used again quickly.
	failureTTL = 5 * time.Second
	// staleTTL is the TTL of a stale answer (RFC 8767 4).
	staleTTL = 30
)

// question is what one resolution is made for: its inputs, passed down from the handler (or the
// refresher) to the walker and the upstream.
type question struct {
	key cacheKey
	// sub is the client network sent upstream (ECS, RFC 7871); the zero Prefix for none. It may
	// be longer than key.scope: a client inside a broader network's slot asks for its own.
	sub netip.Prefix
	// pace, for background refreshes (`refresh_rate`), is the limiter each upstream question
	// after the first waits on; the refresher waited for the first outside the timeout.
	pace *rate.Limiter
	// tally counts the resolution: the block's on the listener of the query, if any.
	tally *tally
	// path is the targets being resolved by the lookups through this server that led to this
	// one; nil for a client's query.
	path *resolvePath
	// peek asks what the cache would answer now, without resolving or waiting: an explanation
	// must not change what it explains.
	peek bool
	// dnssec asks the upstream to validate (DO and AD set), for `dnssec_targets secure`; the
	// walker sets it.
	dnssec bool
	// policy filters the addresses the query may be answered with (`deny_addresses`,
	// `max_addresses`); nil: all of them. Read when answering, not when resolving: the cache
	// is shared by names flattened under different policies.
	policy *addrPolicy
}

// nested reports a lookup made by another resolution through this server.
func (q question) nested() bool { return q.path != nil }

// resolveFunc resolves a question upstream; the walker in production, a fake in tests.
type resolveFunc func(ctx context.Context, q question) (*chain, error)

// cache holds resolved chains. Configured aliases have pinned slots that are resolved at startup
// and refreshed in the background before they expire (schedule.go); other keys get slots on
// demand, bounded by capacity and refreshed ahead of expiry when a query finds them close to it
// (prefetch). Answers for client networks are slots whose key has a scope (scope.go).
type cache struct {
	cfg     *config
	resolve resolveFunc
	now     func() time.Time
	bg      *background
	// limiter paces the upstream queries of background resolution (`refresh_rate`), so that
	// warming 100,000 aliases at startup does not flood the resolver. Queries a client waits
	// for are not paced: they are bounded by coalescing and by the cache's capacity.
	limiter *rate.Limiter
	// tally counts the work no query asked for (the schedule's), under the block's labels.
	tally *tally

	// pins holds the configured targets' slots, sorted by name and searched (pinned): fixed
	// once the cache is made, so read without a lock. A map by name would cost about 35 bytes
	// more per target.
	pins []*pinnedTarget

	// mu guards the rest: the slots made on demand and what indexes them, and the refresh
	// schedule. Answers from a pinned slot take no lock.
	mu     sync.RWMutex
	slots  map[cacheKey]*slot // the slots made on demand, at most cfg.capacity; nil until one is
	scopes scopeIndex         // the prefix lengths of the client-network slots (scope.go)
	sched  schedule
}

// newCache makes the cache of the configured targets pins (sorted by name, as
// aliasTable.targets returns them) in front of resolve. Its background work runs in bg.
func newCache(cfg *config, resolve resolveFunc, pins []*pinnedTarget, bg *background) *cache {
	return &cache{
		cfg:     cfg,
		resolve: resolve,
		now:     time.Now,
		bg:      bg,
		limiter: rate.NewLimiter(refreshLimit(cfg.refreshRate), 1),
		tally:   tallyOf(cfg.labels),
		pins:    pins,
	}
}

// pinned returns the pinned slots of name; nil if it is not a configured target.
func (c *cache) pinned(name string) *pinnedTarget {
	i := sort.Search(len(c.pins), func(i int) bool { return c.pins[i].name() >= name })
	if i < len(c.pins) && c.pins[i].name() == name {
		return c.pins[i]
	}
	return nil
}

// pinnedAddrs returns the addresses the configured targets resolve to, fresh or stale: what
// health checks probe. It reads the slots' entries without a lock (they are atomic), so the
// prober may call it while queries are served.
func (c *cache) pinnedAddrs() []netip.Addr {
	var out []netip.Addr
	for _, p := range c.pins {
		for i := range p.slots {
			if e := p.slots[i].good.Load(); e != nil {
				for _, rr := range e.addrs() {
					if ip, ok := rrAddr(rr); ok {
						out = append(out, ip)
					}
				}
			}
		}
	}
	return out
}

// existing returns the slot for k if there is one, pinned or on demand, without making one.
func (c *cache) existing(k cacheKey) *slot {
	if !k.scope.IsValid() && k.qtype != dns.TypeHTTPS {
		if p := c.pinned(k.name); p != nil {
			return &p.slots[qtypeIndex(k.qtype)]
		}
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.slots[k]
}

// slotFor returns the slot for k, making an on-demand one if needed and evicting another
// on-demand slot when capacity is reached.
func (c *cache) slotFor(k cacheKey) *slot {
	if s := c.existing(k); s != nil {
		return s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.slots[k]; s != nil {
		return s
	}
	if len(c.slots) >= c.cfg.capacity {
		c.evictLocked()
	}
	s := new(slot)
	s.init(k)
	if c.slots == nil {
		c.slots = map[cacheKey]*slot{}
	}
	c.slots[k] = s
	c.scopes.count(k, 1)
	return s
}

// evictLocked drops one on-demand slot, an expired one if the first few looked at include one,
// else the first found. Go's map iteration starts at a random place, so this is random eviction,
// as in CoreDNS's own cache, without bookkeeping on the read path. c.mu is held.
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
		c.scopes.count(k, -1)
	}
}

// drop removes an on-demand slot that holds nothing worth keeping.
func (c *cache) drop(s *slot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.good.Store(nil)
	if k := s.key(); c.slots[k] == s {
		delete(c.slots, k)
		c.scopes.count(k, -1)
	}
}

// entries returns the number of slots, pinned and on demand, and of those for client networks.
func (c *cache) entries() (all, ecs int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.slots) + 2*len(c.pins), c.scopes.slots
}

// get returns what to answer q with, and where it comes from. q is passed by pointer, as through
// pick: on a server goroutine's small stack, copies of it in each frame made warm answers grow the
// stack (runtime.copystack was a fifth of a warm answer's CPU under dnsperf). shared is the slot of q's target
// and type for every client (pinned for a configured target); with a client network, q.key has
// its scope and the answer comes from the most specific network's slot that holds the client.
//
// It asks upstream only when nothing fresh is known and no failure is remembered (and never for a
// peek), and never keeps a client waiting longer than the timeout. The ladder (RFC 8767): fresh,
// then stale within the window (stale), then nothing (the caller's fallback and SERVFAIL), with
// the failure that explains it.
func (c *cache) get(ctx context.Context, shared *slot, q *question) (*entry, source, *resolveError) {
	now := c.now()
	s, holder, e := shared, shared, shared.good.Load()
	if q.key.scope.IsValid() {
		e, holder = c.covering(q.key, now, false)
	}
	if e != nil && now.Before(e.expires()) {
		// A pinned slot is refreshed on its schedule, not by queries. A broader network's slot
		// is refreshed through itself, so that the clients of all the networks it serves start
		// one refresh between them, made for this client's network.
		if !holder.pinned && !q.peek && c.nearExpiry(e, now) {
			c.refreshAsync(ctx, holder, q)
		}
		return e, srcFresh, nil
	}
	if q.peek {
		var err *resolveError
		if f := s.fail.Load(); f != nil {
			err = f.err
		}
		return c.stale(shared, q.key, now, err)
	}
	if q.key.scope.IsValid() {
		s = c.slotFor(q.key)
	}

	if f := s.fail.Load(); f != nil {
		e, src, err := c.stale(shared, q.key, now, f.err)
		if now.Before(f.until) {
			return e, src, err
		}
		if src != srcNone {
			// The last try failed and a stale answer exists: answer with it at once and retry in
			// the background, so that an outage costs clients no waiting after its first query.
			c.refreshAsync(ctx, s, q)
			return e, src, err
		}
	}

	resolved, err := c.await(ctx, s, q)
	if err == nil {
		return resolved, srcResolved, nil
	}
	return c.stale(shared, q.key, c.now(), err)
}

// stale is the rest of the ladder when nothing fresh can be had for k: the most specific entry
// still within the stale window, and for a client network, then the warm answer of shared; else
// nothing, with err.
func (c *cache) stale(shared *slot, k cacheKey, now time.Time, err *resolveError) (*entry, source, *resolveError) {
	if k.scope.IsValid() {
		if e, _ := c.covering(k, now, true); e != nil {
			if now.Before(e.expires()) {
				return e, srcFresh, nil // a broader network's answer, fresh: valid for this client
			}
			return e, srcStale, err
		}
		if w := shared.good.Load(); c.usable(w, now) {
			// The warm answer, resolved for flatten's own address, stands in, served like a
			// stale one (short TTL, EDE 3) and echoed with the client's whole network as scope:
			// it is nobody's tailored answer.
			stand := *w
			stand.ecsScope = uint8(k.scope.Bits())
			return &stand, srcStale, err
		}
		return nil, srcNone, err
	}
	if e := shared.good.Load(); c.usable(e, now) {
		return e, srcStale, err
	}
	return nil, srcNone, err
}

// await resolves s for a client: it joins the flight in progress and waits for it, at most the
// timeout. It returns the entry, or why there is none.
//
// A nested lookup resolves in its own flight instead of joining one in progress: two resolutions
// whose chains lead into each other would otherwise each wait for the other until the timeout,
// and the loop would never be seen.
func (c *cache) await(ctx context.Context, s *slot, q *question) (*entry, *resolveError) {
	var fl *flight
	if q.nested() {
		fl = &flight{done: make(chan struct{})} // not put on the slot
		c.launch(ctx, s, fl, q)
	} else {
		fl, _ = c.claim(ctx, s, q, func(e *entry) bool { return e != nil && c.now().Before(e.expires()) })
	}
	t := time.NewTimer(c.cfg.timeout)
	defer t.Stop()
	select {
	case <-fl.done:
		return fl.entry, fl.err
	case <-t.C:
	case <-ctx.Done():
	}
	return nil, errTimeout(s.name)
}

// nearExpiry reports whether fresh e has less than the prefetch fraction of its lifetime left:
// a query that finds it so starts a refresh ahead of expiry.
func (c *cache) nearExpiry(e *entry, now time.Time) bool {
	return e.expires().Sub(now) < time.Duration(float64(e.lifetime())*c.cfg.prefetch)
}

// usable reports whether e may still be served, fresh or stale.
func (c *cache) usable(e *entry, now time.Time) bool {
	return e != nil && now.Before(e.expires().Add(c.cfg.serveStale))
}

// claim returns the flight for s, starting one if none is in progress, and whether this call
// started it. The flight is put on the slot before it is launched: of callers racing for an idle
// slot, one wins the swap and resolves, the others join its flight. ctx gives the resolution the
// server to resolve through, not its lifetime: a flight outlives the client that started it, up
// to the timeout, and ends when the cache stops.
//
// A caller that found no usable entry may come just after a flight ended: run stores the entry
// before it takes the flight off the slot, so with enough (the entry it needs, nil for a refresh
// that is wanted whatever is stored) claim looks again once it finds no flight, and returns that
// entry as a flight already landed instead of asking upstream a second time.
func (c *cache) claim(ctx context.Context, s *slot, q *question, enough func(*entry) bool) (*flight, bool) {
	for {
		if fl := s.flight.Load(); fl != nil {
			return fl, false
		}
		if e := s.good.Load(); enough != nil && enough(e) {
			fl := &flight{done: make(chan struct{}), entry: e}
			close(fl.done)
			return fl, false
		}
		fl := &flight{done: make(chan struct{})}
		if s.flight.CompareAndSwap(nil, fl) {
			c.launch(ctx, s, fl, q)
			return fl, true
		}
	}
}

// launch starts fl, the resolution of s, in the background. Once the cache is stopping, the
// flight fails at once (and may stay on the slot, which this instance no longer resolves).
// A question without a tally counts in the block's own.
func (c *cache) launch(ctx context.Context, s *slot, fl *flight, q *question) {
	if q.tally == nil {
		q.tally = c.tally
	}
	q.tally.misses.Add(1)
	qc := *q // the caller's question goes on to the next target (pick)
	if !c.bg.spawn(func() { c.run(context.WithoutCancel(ctx), s, fl, qc) }) {
		fl.err = errStopped
		close(fl.done)
	}
}

// errStopped is the failure of a resolution asked for while the instance shuts down.
var errStopped = &resolveError{dns.ExtendedErrorCodeNotReady, "stopped", "shutting down"}

// refreshAsync starts a background resolution of s unless one is in progress.
func (c *cache) refreshAsync(ctx context.Context, s *slot, q *question) {
	if c.bg.done() {
		return
	}
	if _, started := c.claim(ctx, s, q, nil); started {
		q.tally.refreshes.Add(1)
	}
}

// run resolves s for q and publishes the outcome to the slot and the flight's waiters.
func (c *cache) run(ctx context.Context, s *slot, fl *flight, q question) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.timeout)
	defer cancel()
	defer context.AfterFunc(c.bg.ctx, cancel)()

	q.key = s.key()
	q.sub = networkFor(s, q.sub)
	start := time.Now()
	ch, err := c.resolve(ctx, q)
	q.tally.lookup.Observe(time.Since(start).Seconds())

	now := c.now()
	prev, before := s.fail.Load(), s.good.Load()
	if err != nil {
		re := asResolveError(s.name, err)
		f := &failure{err: re, at: now, until: now.Add(failureTTL), since: now}
		if prev != nil {
			f.since = prev.since
		}
		s.fail.Store(f)
		fl.err = re
	} else {
		fl.entry = c.newEntry(ch, now)
		c.shareHops(s, fl.entry) // before the entry is published: entries are never modified after
		c.store(s, fl.entry, ch, q.sub)
		s.fail.Store(nil)
	}
	if s.scope == nil { // a client network's failures are its target's, logged once there
		targetEvents.resolved(now, s, prev, before, fl.entry, fl.err, c.cfg.serveStale)
	}
	// After the outcome is stored: whoever finds no flight on the slot finds the outcome.
	s.flight.CompareAndSwap(fl, nil)
	close(fl.done)
}

// newEntry makes the entry for ch, resolved at now. Its address RRset and the names its hops
// lead to become the shared copies (ch's hops are taken over), and its TTL, clamped by `ttl MIN
// MAX`, the lifetime.
func (c *cache) newEntry(ch *chain, now time.Time) *entry {
	e := &entry{fetched: since(now), ttl: c.cfg.clampTTL(ch.ttl), nxdomain: ch.nxdomain, set: shared.addrs(ch.addrs), validated: ch.validated}
	if len(ch.hops) > 0 {
		for i := range ch.hops {
			ch.hops[i].target = shared.name(ch.hops[i].target)
		}
		e.path = &path{hops: ch.hops}
	}
	return e
}

// shareHops lets the A and AAAA entries of a pinned target share one copy of their CNAME hops
// when they are the same (the usual case: the chain's CNAMEs do not depend on the type asked).
// e is new and not yet stored; the sibling's entry is only read.
func (c *cache) shareHops(s *slot, e *entry) {
	if e.path == nil || !s.pinned {
		return
	}
	sib := &c.pinned(s.name).slots[1-s.qi]
	if se := sib.good.Load(); se != nil && se.path != nil && slices.Equal(se.path.hops, e.path.hops) {
		e.path = se.path
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
	return c.cfg.clampTTL(uint32(max(time.Duration(e.ttl)-elapsed, 0)))
}

// adopt takes over the entries of old, the cache of a pool that a reload replaces: same
// listener, view and upstreams (answers resolved elsewhere are not kept).
func (c *cache) adopt(old *cache) {
	entries := map[cacheKey]*entry{}
	keep := func(s *slot) {
		// With `dnssec_targets secure`, an answer the old pool took without validation must not
		// be served, even stale.
		if e := s.good.Load(); e != nil && (e.validated || !c.cfg.secureTargets()) {
			entries[s.key()] = e
		}
	}
	for _, p := range old.pins {
		keep(&p.slots[0])
		keep(&p.slots[1])
	}
	old.mu.RLock()
	for _, s := range old.slots {
		keep(s)
	}
	old.mu.RUnlock()
	for k, e := range entries {
		// This cache's own slot (pinned for its aliases), or one on demand within its capacity.
		c.slotFor(k).good.Store(e)
	}
}
