package flatten

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"
)

// fakeClock is an injected clock: TTL tests move it instead of sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeResolver answers keys with a programmable chain or error and counts calls.
type fakeResolver struct {
	mu    sync.Mutex
	calls map[cacheKey]int
	ttl   uint32
	err   error
	gate  chan struct{} // when set, resolutions wait for it to close
}

func newFakeResolver(ttl uint32) *fakeResolver {
	return &fakeResolver{calls: map[cacheKey]int{}, ttl: ttl}
}

func (r *fakeResolver) resolve(ctx context.Context, q question) (*chain, error) {
	k := q.key
	r.mu.Lock()
	r.calls[k]++
	n, ttl, err, gate := r.calls[k], r.ttl, r.err, r.gate
	r.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	rr := &dns.A{Hdr: dns.RR_Header{Name: k.name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}}
	rr.A = []byte{192, 0, 2, byte(n)} // each resolution gives a new address, to tell them apart
	return &chain{addrs: []dns.RR{rr}, ttl: ttl}, nil
}

func (r *fakeResolver) count(k cacheKey) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[k]
}

func (r *fakeResolver) set(ttl uint32, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ttl, r.err = ttl, err
}

// newTestCache returns a cache in front of r on clk, whose configured targets are pins.
func newTestCache(r *fakeResolver, clk *fakeClock, pins ...string) *cache {
	c := newCache(newConfig(), r.resolve, pinnedTargets(pins...), newBackground())
	c.now = clk.now
	c.cfg.timeout = 5 * time.Second
	return c
}

var keyA = cacheKey{name: "target.example.net.", qtype: dns.TypeA}

func lastOctet(e *entry) byte { return e.addrs()[0].(*dns.A).A[3] }

func TestCacheTTLCountsDownAndIsClamped(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(100)
	c := newTestCache(r, clk)
	c.cfg.ttlMin, c.cfg.ttlMax = 5, 3600
	s := c.slotFor(keyA)

	e, src, _ := c.get(context.Background(), s, &question{key: s.key()})
	if src != srcResolved || c.ttl(e, src, clk.now()) != 100 {
		t.Fatalf("first answer: src %d ttl %d, want fresh 100", src, c.ttl(e, src, clk.now()))
	}
	for _, tc := range []struct {
		advance time.Duration
		want    uint32
	}{
		{30 * time.Second, 70},
		{60 * time.Second, 10},
		{7 * time.Second, 5}, // 3 left, raised to MIN
	} {
		clk.advance(tc.advance)
		e, src, _ = c.get(context.Background(), s, &question{key: s.key()})
		if got := c.ttl(e, src, clk.now()); got != tc.want {
			t.Errorf("after %v more: TTL %d, want %d", tc.advance, got, tc.want)
		}
	}
	if n := r.count(keyA); n != 1 {
		t.Errorf("%d resolutions before expiry, want 1", n)
	}

	// A chain TTL above MAX lives MAX seconds.
	r.set(86400, nil)
	s2 := c.slotFor(cacheKey{name: "long.example.net.", qtype: dns.TypeA})
	e, src, _ = c.get(context.Background(), s2, &question{key: s2.key()})
	if e.lifetime() != time.Hour || c.ttl(e, src, clk.now()) != 3600 {
		t.Errorf("chain TTL 86400: lifetime %v TTL %d, want 1h and 3600", e.lifetime(), c.ttl(e, src, clk.now()))
	}
}

func TestCacheExpiryResolvesAgain(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(60)
	c := newTestCache(r, clk)
	c.cfg.prefetch = 0.01
	s := c.slotFor(keyA)
	e, _, _ := c.get(context.Background(), s, &question{key: s.key()})
	first := lastOctet(e)

	clk.advance(59 * time.Second)
	if e, _, _ = c.get(context.Background(), s, &question{key: s.key()}); lastOctet(e) != first || r.count(keyA) != 1 {
		t.Fatalf("before expiry: a new resolution happened")
	}
	clk.advance(2 * time.Second)
	e, src, _ := c.get(context.Background(), s, &question{key: s.key()})
	if src != srcResolved || lastOctet(e) == first || r.count(keyA) != 2 {
		t.Errorf("after expiry: src %d, address .%d (first .%d), %d resolutions; want a fresh new answer from a 2nd resolution",
			src, lastOctet(e), first, r.count(keyA))
	}
}

func TestCachePrefetchAtThreshold(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(100)
	c := newTestCache(r, clk)
	c.cfg.prefetch = 0.10
	s := c.slotFor(keyA)
	c.get(context.Background(), s, &question{key: s.key()})

	clk.advance(89 * time.Second) // 11% left: not yet
	c.get(context.Background(), s, &question{key: s.key()})
	c.bg.settle()
	if n := r.count(keyA); n != 1 {
		t.Fatalf("prefetch fired with 11%% of the TTL left (%d resolutions)", n)
	}
	clk.advance(2 * time.Second) // 9% left
	e, src, _ := c.get(context.Background(), s, &question{key: s.key()})
	if src != srcFresh || lastOctet(e) != 1 {
		t.Errorf("the query that triggers a prefetch is answered from the entry it has: src %d .%d", src, lastOctet(e))
	}
	c.bg.settle()
	if n := r.count(keyA); n != 2 {
		t.Fatalf("prefetch did not fire with 9%% left (%d resolutions)", n)
	}
	if e, _, _ := c.get(context.Background(), s, &question{key: s.key()}); lastOctet(e) != 2 {
		t.Errorf("after the prefetch the new answer is served: .%d", lastOctet(e))
	}
}

func TestCachePinnedRefreshedBeforeExpiry(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(100)
	c := newTestCache(r, clk, keyA.name)
	c.cfg.prefetch = 0.10
	s := c.pin(keyA)
	c.start()
	defer c.stop()
	waitFor(t, "startup round", c.ready)
	if r.count(keyA) != 1 || s.good.Load() == nil {
		t.Fatalf("startup round: %d resolutions", r.count(keyA))
	}

	clk.advance(89 * time.Second)
	c.wake()
	time.Sleep(20 * time.Millisecond) // give a wrongly early refresh the chance to show
	if n := r.count(keyA); n != 1 {
		t.Fatalf("refreshed at 89%% of the TTL (%d resolutions)", n)
	}
	clk.advance(time.Second) // 90%: due
	c.wake()
	waitFor(t, "scheduled refresh", func() bool { return r.count(keyA) == 2 })

	// A client never waits: the entry was replaced before it expired.
	clk.advance(15 * time.Second)
	if _, src, _ := c.get(context.Background(), s, &question{key: s.key()}); src != srcFresh {
		t.Errorf("after the scheduled refresh: src %d, want fresh", src)
	}
}

func TestCacheConcurrentMissesCoalesce(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(300)
	r.gate = make(chan struct{})
	c := newTestCache(r, clk)
	s := c.slotFor(keyA)

	var wg sync.WaitGroup
	var fresh atomic.Int32
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, src, _ := c.get(context.Background(), s, &question{key: s.key()}); src == srcResolved {
				fresh.Add(1)
			}
		}()
	}
	waitFor(t, "the first resolution to start", func() bool { return r.count(keyA) == 1 })
	time.Sleep(20 * time.Millisecond) // let the other 99 arrive and join
	close(r.gate)
	wg.Wait()
	if n := r.count(keyA); n != 1 {
		t.Errorf("100 concurrent misses caused %d resolutions, want 1", n)
	}
	if fresh.Load() != 100 {
		t.Errorf("%d of 100 waiters got the answer", fresh.Load())
	}
}

// TestCacheLateCallerJoinsLandedFlight: a client that found no answer, and whose claim comes just
// after another resolution of the slot ended (the startup round's, say), gets that resolution's
// answer: it does not ask upstream a second time. A refresh that is wanted anyway still asks.
func TestCacheLateCallerJoinsLandedFlight(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(300)
	c := newTestCache(r, clk)
	s := c.slotFor(keyA)
	first, _, _ := c.get(context.Background(), s, &question{key: s.key()})
	if r.count(keyA) != 1 || s.flight.Load() != nil {
		t.Fatalf("setup: %d resolutions, flight %v; want 1 and none", r.count(keyA), s.flight.Load())
	}

	// Where get goes when it looked before the entry was stored.
	e, err := c.await(context.Background(), s, &question{key: s.key()})
	if err != nil || e != first {
		t.Errorf("late caller: entry %v, error %v; want the landed flight's entry", e, err)
	}
	if n := r.count(keyA); n != 1 {
		t.Errorf("late caller caused %d resolutions in all, want 1", n)
	}

	// Once that entry has expired, the caller resolves.
	clk.advance(301 * time.Second)
	if e, err = c.await(context.Background(), s, &question{key: s.key()}); err != nil || e == first || r.count(keyA) != 2 {
		t.Errorf("after expiry: same entry %v, error %v, %d resolutions; want a new entry and 2", e == first, err, r.count(keyA))
	}

	// A refresh ahead of expiry asks although the entry is fresh.
	c.refreshAsync(context.Background(), s, &question{key: s.key(), tally: c.tally})
	waitFor(t, "the refresh", func() bool { return r.count(keyA) == 3 })
}

func TestCacheCapacityNeverExceeded(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(300)
	c := newTestCache(r, clk, "pinned.example.net.")
	c.cfg.capacity = 10
	pinned := c.pin(cacheKey{name: "pinned.example.net.", qtype: dns.TypeA})
	for i := range 100 {
		s := c.slotFor(cacheKey{name: fmt.Sprintf("n%d.example.net.", i), qtype: dns.TypeA})
		c.get(context.Background(), s, &question{key: s.key()})
		// The pinned target has an A and an AAAA slot.
		if n := c.len(); n > 12 {
			t.Fatalf("after %d names: %d entries, capacity 10 (+2 pinned)", i+1, n)
		}
	}
	if c.existing(pinned.key()) != pinned {
		t.Errorf("a configured alias's entry was evicted")
	}
}

func TestCacheNegativeUsesSOAMinimum(t *testing.T) {
	// The walker takes the negative TTL from the SOA (RFC 2308 5: min of its TTL and MINIMUM).
	w := &walker{maxDepth: 8, ex: exchangerFunc(func(_ context.Context, name string, qtype uint16) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Response, m.Rcode = true, dns.RcodeNameError
		m.Ns = []dns.RR{mustRR(t, "example.net. 900 IN SOA ns. host. 1 2 3 4 120")}
		return m, nil
	})}
	clk := newFakeClock()
	c := newCache(newConfig(), w.resolve, nil, newBackground())
	c.now = clk.now
	c.cfg.ttlMin = 5
	s := c.slotFor(keyA)
	e, _, _ := c.get(context.Background(), s, &question{key: s.key()})
	if !e.negative() || !e.nxdomain || e.lifetime() != 120*time.Second {
		t.Fatalf("negative entry: negative %v nxdomain %v lifetime %v, want true true 2m0s", e.negative(), e.nxdomain, e.lifetime())
	}
	c.cfg.ttlMax = 60 // clamped by ttl MAX too
	c.slots = map[cacheKey]*slot{}
	e, _, _ = c.get(context.Background(), c.slotFor(keyA), &question{key: c.slotFor(keyA).key()})
	if e.lifetime() != 60*time.Second {
		t.Errorf("negative lifetime %v with ttl MAX 60", e.lifetime())
	}
}

func TestCacheFailureLadder(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(10)
	c := newTestCache(r, clk)
	c.cfg.serveStale = time.Hour
	s := c.slotFor(keyA)
	c.get(context.Background(), s, &question{key: s.key()})

	r.set(10, errTimeout("target.example.net."))
	clk.advance(11 * time.Second) // expired
	e, src, err := c.get(context.Background(), s, &question{key: s.key()})
	if src != srcStale || e == nil || err == nil || err.reason != reasonTimeout {
		t.Fatalf("upstream down after expiry: src %d err %v, want stale with the timeout", src, err)
	}
	if ttl := c.ttl(e, src, clk.now()); ttl != staleTTL {
		t.Errorf("stale TTL %d, want %d (RFC 8767)", ttl, staleTTL)
	}
	calls := r.count(keyA)
	for range 50 {
		c.get(context.Background(), s, &question{key: s.key()})
	}
	if n := r.count(keyA); n != calls {
		t.Errorf("50 queries during a remembered failure caused %d resolutions, want 0", n-calls)
	}

	// After the failure is no longer remembered, one query retries in the background and is
	// answered stale at once.
	clk.advance(failureTTL + time.Second)
	if _, src, _ = c.get(context.Background(), s, &question{key: s.key()}); src != srcStale {
		t.Errorf("retry after the failure memory: src %d, want stale without waiting", src)
	}
	c.bg.settle()
	if n := r.count(keyA); n != calls+1 {
		t.Errorf("retry after the failure memory: %d resolutions, want 1", n-calls)
	}

	// Past the stale window: nothing to serve, and the reason.
	clk.advance(time.Hour)
	if e, src, err = c.get(context.Background(), s, &question{key: s.key()}); src != srcNone || e != nil || err == nil {
		t.Errorf("past the stale window: src %d entry %v err %v, want none with an error", src, e, err)
	}

	// serve_stale 0: straight to none.
	c2 := newTestCache(newFakeResolver(10), clk)
	c2.cfg.serveStale = 0
	s2 := c2.slotFor(keyA)
	c2.get(context.Background(), s2, &question{key: s2.key()})
	c2.resolve = func(context.Context, question) (*chain, error) { return nil, errors.New("down") }
	clk.advance(11 * time.Second)
	if _, src, _ = c2.get(context.Background(), s2, &question{key: s2.key()}); src != srcNone {
		t.Errorf("serve_stale 0: src %d, want none", src)
	}
}

func TestCacheClientWaitsAtMostTimeout(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(10)
	r.gate = make(chan struct{}) // never opens: the upstream hangs
	c := newTestCache(r, clk)
	c.cfg.timeout = 50 * time.Millisecond
	defer c.stop()
	_, src, err := c.get(context.Background(), c.slotFor(keyA), &question{key: c.slotFor(keyA).key()})
	if src != srcNone || err == nil || err.reason != reasonTimeout {
		t.Errorf("hung upstream: src %d err %v, want none with a timeout", src, err)
	}
}

// refresherGoroutines counts live background goroutines of flatten caches: the refresh queue's
// workers and the resolutions they run. debug=2 lists every goroutine on its own (debug=1 would
// merge identical stacks into one entry).
func refresherGoroutines() int {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 2)
	n := 0
	for g := range strings.SplitSeq(b.String(), "\n\n") {
		if strings.Contains(g, "flatten.(*refreshQueue).work(") || strings.Contains(g, "flatten.(*cache).refreshPinned(") ||
			strings.Contains(g, "flatten.(*cache).run(") {
			n++
		}
	}
	return n
}

func TestCacheStopEndsBackgroundWork(t *testing.T) {
	before := refresherGoroutines()
	r := newFakeResolver(1)
	r.gate = make(chan struct{}) // resolutions hang until cancelled
	c := newCache(newConfig(), r.resolve, pinnedTargets(keyA.name), newBackground())
	c.pin(keyA)
	c.start()
	waitFor(t, "the refresh", func() bool { return refresherGoroutines() > before && r.count(keyA) == 1 })
	c.stop() // must not hang on the stuck resolution
	// The queue's worker ends once the refresh it waited for has (stop waited for that).
	waitFor(t, "no refresh goroutine left", func() bool { return refresherGoroutines() == before })
}

type exchangerFunc func(ctx context.Context, name string, qtype uint16) (*dns.Msg, error)

// questionFunc is an exchanger that sees the whole question (its client network, its label).
type questionFunc func(ctx context.Context, q question, name string) (*dns.Msg, error)

func (f questionFunc) exchange(ctx context.Context, q question, name string) (*dns.Msg, error) {
	return f(ctx, q, name)
}

func (f exchangerFunc) exchange(ctx context.Context, q question, name string) (*dns.Msg, error) {
	return f(ctx, name, q.key.qtype)
}

func TestCachePinnedBackoffOnFailure(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(100)
	r.set(100, errTimeout("target.example.net."))
	c := newTestCache(r, clk, keyA.name)
	c.pin(keyA)
	c.start()
	defer c.stop()
	waitFor(t, "startup round", c.ready)

	// Retries come after 1s, then 2s, then 4s: not with every tick.
	for i, step := range []struct {
		advance time.Duration
		want    int
	}{
		{900 * time.Millisecond, 1},
		{100 * time.Millisecond, 2}, // 1s after the first failure
		{1900 * time.Millisecond, 2},
		{100 * time.Millisecond, 3}, // 2s after the second
		{3900 * time.Millisecond, 3},
		{100 * time.Millisecond, 4}, // 4s after the third
	} {
		clk.advance(step.advance)
		c.wake()
		if step.want > r.count(keyA) {
			waitFor(t, fmt.Sprintf("retry %d", step.want), func() bool { return r.count(keyA) == step.want })
		} else {
			time.Sleep(20 * time.Millisecond)
		}
		if n := r.count(keyA); n != step.want {
			t.Fatalf("step %d: %d resolutions, want %d", i, n, step.want)
		}
	}
}

// TestCachePinnedFailureStandsUntilRetry: after the refresher's retries of a pinned slot have
// failed long enough for the backoff to pass the 5 s failure memory, a client still does not start
// a resolution of its own (and wait on it) before the next scheduled retry: an alias's next target
// answers at once instead.
func TestCachePinnedFailureStandsUntilRetry(t *testing.T) {
	clk := newFakeClock()
	r := newFakeResolver(100)
	r.set(100, errTimeout("target.example.net."))
	c := newTestCache(r, clk, keyA.name)
	s := c.pin(keyA)
	c.start()
	defer c.stop()
	waitFor(t, "startup round", c.ready)
	scheduled := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return s.index >= 0
	}
	// Failures 2, 3 and 4: the backoff is now 8 s. The clock moves only once the slot is back on
	// the schedule, so that each backoff counts from the failure it follows.
	for n, step := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		waitFor(t, "the retry to be scheduled", scheduled)
		clk.advance(step)
		c.wake()
		waitFor(t, fmt.Sprintf("retry %d", n+2), func() bool { return r.count(keyA) == n+2 })
	}
	waitFor(t, "the retry to be scheduled", scheduled)
	clk.advance(6 * time.Second) // past failureTTL, before the retry at 8 s
	e, src, err := c.get(context.Background(), s, &question{key: s.key()})
	if e != nil || src != srcNone || err == nil || err.reason != reasonTimeout {
		t.Errorf("get = %v, %v, %v; want nothing, with the remembered timeout", e, src, err)
	}
	if n := r.count(keyA); n != 4 {
		t.Errorf("a client query started a resolution (%d, want 4) before the scheduled retry", n)
	}
}

// TestRefreshRatePacesBackgroundQueries: with `refresh_rate`, the startup round of many aliases
// never sends more upstream questions in any one second than the rate allows, the further hops of
// a chain included; and every alias still gets resolved. Without pacing, the 80 questions arrive
// in one burst.
func TestRefreshRatePacesBackgroundQueries(t *testing.T) {
	const aliases, rate = 20, 40
	u := newFakeUpstream(t, "srv.agency.test. 300 IN A 192.0.2.10", "srv.agency.test. 300 IN AAAA 2001:db8::10")
	var arrived arrivals
	record := arrived.answering(u)
	lines := []string{"upstream " + u.Addr, fmt.Sprintf("refresh_rate %d", rate)}
	u.handle("srv.agency.test.", record)
	for i := range aliases {
		target := fmt.Sprintf("t%d.agency.test.", i)
		// An authoritative upstream: each alias takes two questions per type (t -> srv, srv).
		u.add(t, target+" 300 IN CNAME srv.agency.test.")
		u.handle(target, record)
		lines = append(lines, fmt.Sprintf("alias a%d %s", i, target))
	}
	srv, _ := startCoreDNS(t, flattenCorefile(exampleZone(t), lines...))

	const want = aliases * 2 * 2
	deadline := time.Now().Add(4 * want * time.Second / rate)
	for {
		n := arrived.count()
		if n >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d upstream questions of the startup round arrived", n, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The most questions in any window of one second, as they arrive: at most the rate. The
	// pacing leaves 20 ms of slack for questions that leave late and arrive close to the next
	// one. Without pacing all 80 arrive in one burst; paced at exactly the rate, a window that
	// starts with a question holds rate+1.
	most := arrived.busiestSecond()
	if most > rate {
		t.Errorf("%d upstream questions in one second, want at most %d (refresh_rate %d)", most, rate, rate)
	}
	// The paced round resolved everything.
	checkAddrs(t, query(t, srv, "udp", fmt.Sprintf("a%d.example.org.", aliases-1), dns.TypeA, 0), fmt.Sprintf("a%d.example.org.", aliases-1), "192.0.2.10")
}

// TestRefreshKeepsAliasFreshWithoutQueries: configured aliases are refreshed on schedule, once per
// TTL, with no client query to prompt it (real clock, TTL 1 s). The refresher used to sleep for
// an hour once it had taken every slot off the schedule, so entries expired and the next client
// waited for their resolution.
func TestRefreshKeepsAliasFreshWithoutQueries(t *testing.T) {
	u := newFakeUpstream(t, "client1.agency.test. 1 IN A 192.0.2.10", "client1.agency.test. 1 IN AAAA 2001:db8::10")
	u.setRecursive()
	startCoreDNS(t, flattenCorefile(exampleZone(t), "alias @ client1.agency.test.", "upstream "+u.Addr, "ttl 1 1"))
	deadline := time.Now().Add(10 * time.Second)
	for u.count("client1.agency.test.", dns.TypeA) < 4 || u.count("client1.agency.test.", dns.TypeAAAA) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %d A and %d AAAA questions, want a refresh every second",
				u.count("client1.agency.test.", dns.TypeA), u.count("client1.agency.test.", dns.TypeAAAA))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMemoryPerAlias bounds what a configured alias costs once resolved (the 100,000
// aliases in under 200 MB): its slots, entries and chain held in as few and as small objects as
// possible, names and address RRsets shared. It was about 1,130 bytes before the pinned slots
// left the on-demand map, entries took their chain by value and hops were shared; about 730
// after; about 610 since entries are 64 bytes and aliases are held by value in their map; about
// 580 since slots hold their client network in 18 bytes instead of 32; 484 since aliases are 24
// bytes and slots 80; 420 since entries are 32 bytes and hops 24; 388 since slots are 64; 354
// since the pinned targets are found by searching their sorted slice instead of by a map; 343
// since aliases are 16 bytes; 308 since the table of aliases keeps short names inline and holds
// no pointers; 448 since each short name has a cache line of its own in a table at most half
// full, holding the copy of its target's entries that a fresh answer reads (aliases.go): 140
// bytes more per alias for the answer path's speed with many aliases (README, Performance); 339
// since the cells are laid out by a perfect hash, one per name and none empty; 334 since the
// table is two Go maps (single targets by pointer) and an alias reads its target's slot, with no
// cells.
func TestMemoryPerAlias(t *testing.T) {
	if testing.Short() {
		t.Skip("resolves 50,000 aliases")
	}
	const n = 50_000
	f, heap := manyAliases(t, n)
	per := heap / n
	t.Logf("%d aliases take %d bytes of heap, %d each", n, heap, per)
	if per > 350 {
		t.Errorf("%d aliases take %d bytes of heap, %d each; want at most 350", n, heap, per)
	}
	runtime.KeepAlive(f)
}

// TestAnswerPathSizes: what a warm answer loads for a configured alias stays small. The entry is
// half a cache line, holding its shared address RRset and hops by pointer.
func TestAnswerPathSizes(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n > 32 {
		t.Errorf("entry is %d bytes, want at most 32", n)
	}
	if n := unsafe.Sizeof(hop{}); n > 24 {
		t.Errorf("hop is %d bytes, want at most 24", n)
	}
	// Not on the answer path but there per configured target and type: 100,000 aliases, 200,000.
	if n := unsafe.Sizeof(slot{}); n > 64 {
		t.Errorf("slot is %d bytes, want at most 64", n)
	}
}

// TestSubnetKey: a cache key's compact client network stands for the netip.Prefix it was made
// from, and equal networks make equal keys while different ones (IPv4 and its IPv4-mapped IPv6
// form, or another length) do not.
func TestSubnetKey(t *testing.T) {
	prefixes := []netip.Prefix{
		{},
		netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("::/0"),
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("192.0.2.0/25"),
		netip.MustParsePrefix("::ffff:192.0.2.0/120"),
		netip.MustParsePrefix("2001:db8::/56"),
		netip.MustParsePrefix("2001:db8::1/128"),
	}
	for i, p := range prefixes {
		s := subnetOf(p)
		if s.prefix() != p || s.IsValid() != p.IsValid() || s.Bits() != p.Bits() {
			t.Errorf("%v: subnet gives back %v (valid %v, bits %d)", p, s.prefix(), s.IsValid(), s.Bits())
		}
		for j, q := range prefixes {
			if (subnetOf(q) == s) != (i == j) {
				t.Errorf("subnets of %v and %v: equal %v, want %v", p, q, subnetOf(q) == s, i == j)
			}
		}
	}
}

// TestPinnedTargetSharesHops: the A and AAAA entries of a configured target hold one copy of
// their CNAME hops, and aliases whose chains lead to the same name hold one copy of that name.
func TestPinnedTargetSharesHops(t *testing.T) {
	f, _ := manyAliases(t, 257) // a0 and a256 both lead to s0
	var targets []string
	for _, name := range []string{"a0.example.org.", "a256.example.org."} {
		a, ok := f.aliases.get(name)
		if !ok {
			t.Fatalf("no alias %s", name)
		}
		ea, eaaaa := a.slots(0, nil)[0].good.Load(), a.slots(1, nil)[0].good.Load()
		if ea == nil || eaaaa == nil || len(ea.hops()) != 1 || len(eaaaa.hops()) != 1 {
			t.Fatalf("%s: entries %v %v, want one hop each", name, ea, eaaaa)
		}
		if ea.path != eaaaa.path {
			t.Errorf("%s: A and AAAA hold separate copies of the hop %v", name, ea.hops()[0])
		}
		targets = append(targets, ea.hops()[0].target)
	}
	if targets[0] != "s0.agency.test." || unsafe.StringData(targets[0]) != unsafe.StringData(targets[1]) {
		t.Errorf("hop targets %q and %q: want one copy of s0.agency.test.", targets[0], targets[1])
	}
}

// TestPinnedTargetsFoundByName: configured targets are pinned once each, whatever the order and
// repetition in which aliases name them, and a lookup by name (a chain in the zone that ends at
// a configured target, explain) finds the very slots the aliases answer from, while a name that
// is not a target is not taken for one.
func TestPinnedTargetsFoundByName(t *testing.T) {
	f, err := parse(newSetupController(`flatten example.org {
		alias a3 z.agency.test.
		alias a1 m.agency.test. b.agency.test.
		alias a2 b.agency.test.
		alias a4 m.agency.test. z.agency.test. q.agency.test.
	}`, nil))
	if err != nil {
		t.Fatal(err)
	}
	f.build(func(ctx context.Context, q question) (*chain, error) { return nil, errors.New("not asked") })
	c := f.pool.cache
	if n := c.len(); n != 8 {
		t.Errorf("%d slots, want 8: four targets, A and AAAA", n)
	}
	f.aliases.each(func(name string, a alias) {
		for qi, qtype := range qtypes {
			for i, s := range a.slots(qi, nil) {
				target := a.targets()[i]
				if s.name != target || s.qtype() != qtype || !s.pinned {
					t.Errorf("%s: slot %d is %s %d (pinned %v), want %s %d pinned", name, i, s.name, s.qtype(), s.pinned, target, qtype)
				}
				k := cacheKey{name: target, qtype: qtype}
				if c.existing(k) != s || c.slotFor(k) != s {
					t.Errorf("%s: looking up %s %d finds another slot than the alias's", name, target, qtype)
				}
			}
		}
	})

	for _, other := range []string{"a.agency.test.", "c.agency.test.", "n.agency.test.", "zz.agency.test."} {
		if s := c.existing(cacheKey{name: other, qtype: dns.TypeA}); s != nil {
			t.Errorf("%s is not a target, found slot %s", other, s.name)
		}
	}
	if n := c.len(); n != 8 {
		t.Errorf("%d slots after lookups, want 8: a lookup of a target made an on-demand slot", n)
	}
}
