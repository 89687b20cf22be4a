package flatten

import (
	"container/heap"
	"math"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

const (
	// minRefresh and maxBackoff bound the background refresh of configured aliases.
	minRefresh = time.Second
	maxBackoff = time.Minute
	// refreshWorkers bounds the background resolutions of the process at a time.
	refreshWorkers = 16
	// maxFailures is where a slot stops counting failed refreshes: its backoff reached
	// maxBackoff long before.
	maxFailures = 32
)

// schedule is when each pinned slot of one cache is refreshed next: the startup round first,
// then before each entry expires, or with backoff after a failure. A timer per cache fires when
// the earliest is due (tick) and hands the due slots to the process's refresh queue. A cache
// costs a timer, not a goroutine: with 10,000 server blocks, a goroutine each took 80 MB of
// stacks. Guarded by cache.mu, as the slots' schedule fields are.
type schedule struct {
	heap    refreshHeap
	pending int         // pinned slots the startup round has not tried yet
	started bool        // start has run
	timer   *time.Timer // runs tick; nil until start
}

// start begins the startup round and the background refresh of pinned slots, once. The startup
// round goes to the refresh queue at once, not from the timer: 10,000 blocks starting together
// would otherwise each fire a timer goroutine at the same moment.
func (c *cache) start() {
	now := since(c.now())
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sched.started || c.bg.done() {
		return
	}
	c.sched.started = true
	for _, p := range c.pins {
		for i := range p.slots {
			s := &p.slots[i]
			s.due = now
			c.sched.pending++
			refreshes.add(c, s)
		}
	}
	c.sched.timer = time.AfterFunc(time.Duration(math.MaxInt64), c.tick)
}

// close stops the schedule's timer: a stopped cache is not kept alive by it until it fires.
func (c *cache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sched.timer != nil {
		c.sched.timer.Stop()
	}
}

// ready reports whether the startup round has tried every configured alias once.
func (c *cache) ready() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.sched.started && c.sched.pending == 0
}

// wake makes the schedule look at what is due now (a clock moved by a test, or a slot due
// earlier than the timer).
func (c *cache) wake() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sched.timer != nil {
		c.sched.timer.Reset(0)
	}
}

// tick hands every pinned slot that is due to the refresh queue, and sets the timer for the
// next one.
func (c *cache) tick() {
	if c.bg.done() {
		return
	}
	targetEvents.flush(c.now())
	now := since(c.now())
	var due []*slot
	c.mu.Lock()
	for len(c.sched.heap) > 0 && c.sched.heap[0].due <= now {
		due = append(due, heap.Pop(&c.sched.heap).(*slot))
	}
	c.resetLocked(now)
	c.mu.Unlock()
	for _, s := range due {
		refreshes.add(c, s)
	}
}

// resetLocked sets the timer for the earliest slot due; c.mu is held.
func (c *cache) resetLocked(now int64) {
	if len(c.sched.heap) > 0 {
		c.sched.timer.Reset(time.Duration(max(c.sched.heap[0].due-now, 0)))
	}
}

// refreshes is the queue of the process's background refreshes: the due slots of every cache,
// resolved by at most refreshWorkers goroutines at a time, which exist only while there is work.
// 10,000 blocks due at once wait in the queue, not as 10,000 goroutines.
var refreshes refreshQueue

type refreshQueue struct {
	mu      sync.Mutex
	jobs    []refreshJob
	workers int
}

type refreshJob struct {
	c *cache
	s *slot
}

// add queues the refresh of s, a pinned slot of c.
func (q *refreshQueue) add(c *cache, s *slot) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.jobs = append(q.jobs, refreshJob{c, s})
	if q.workers < refreshWorkers {
		q.workers++
		go q.work()
	}
}

// work refreshes queued slots until the queue is empty. Each refresh runs in its cache's
// background, which a shutdown stops and waits for; a stopped cache's slots are dropped.
func (q *refreshQueue) work() {
	for {
		q.mu.Lock()
		if len(q.jobs) == 0 {
			q.workers--
			q.mu.Unlock()
			return
		}
		j := q.jobs[0]
		q.jobs[0] = refreshJob{}
		q.jobs = q.jobs[1:]
		q.mu.Unlock()
		done := make(chan struct{})
		if j.c.bg.spawn(func() {
			defer close(done)
			j.c.refreshPinned(j.s)
		}) {
			<-done
		}
	}
}

// refreshPinned resolves a pinned slot (joining a flight a client may have started) and puts it
// back on the schedule: before it expires after a success, with backoff after a failure.
func (c *cache) refreshPinned(s *slot) {
	// The resolution's first question waits for its turn here, outside the resolution's timeout;
	// further hops of a chain wait in the walker.
	if c.limiter.Wait(c.bg.ctx) != nil {
		return // stopping
	}
	// A query may have resolved it since it was scheduled (at startup, typically): then it is
	// not due yet, and claim returns that answer instead of asking again.
	q := question{key: s.key(), pace: c.limiter, tally: c.tally}
	fl, started := c.claim(c.bg.ctx, s, &q, func(e *entry) bool {
		return e != nil && c.now().Before(e.expires().Add(-c.refreshLead(e)))
	})
	if started {
		q.tally.refreshes.Add(1)
	}
	select {
	case <-fl.done:
	case <-c.bg.ctx.Done():
		return
	}

	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !s.tried {
		s.tried = true
		c.sched.pending--
	}
	if fl.err == nil {
		s.failures = 0
		s.due = since(fl.entry.expires().Add(-c.refreshLead(fl.entry)))
	} else {
		s.failures = min(s.failures+1, maxFailures)
		retry := now.Add(backoff(s.failures))
		s.due = since(retry)
		// The refresher retries then: until then the failure stands for clients too, so that
		// none of them waits on an upstream known to fail (and an alias's next target answers
		// at once). RFC 9520 3.2 allows up to 5 minutes; the backoff stays under one.
		if f := s.fail.Load(); f != nil && f.until.Before(retry) {
			s.fail.CompareAndSwap(f, &failure{err: f.err, at: f.at, until: retry, since: f.since})
		}
	}
	heap.Push(&c.sched.heap, s)
	if s.index == 0 {
		// Due before anything the timer waits for (nothing, when the schedule was empty as
		// tick took the last slot out).
		c.resetLocked(since(now))
	}
}

// paces holds the limiters of background resolution, one for each place it asks (an upstream
// address, or this server), shared by every block that asks there: `refresh_rate` bounds what
// one resolver receives, whatever the number of blocks. Blocks that give different rates for one
// place share the lowest of them.
var paces = struct {
	sync.Mutex
	m map[string]*pace
}{m: map[string]*pace{}}

type pace struct {
	l     *rate.Limiter
	rates []int // of the blocks that use it
}

// refreshLimit is the limit of a limiter that paces questions at refresh_rate qps. The token
// bucket (burst 1) lets one question out per interval; the interval is 2% longer than 1/qps, so
// that any one-second window holds qps questions and not qps+1, and questions that leave up to
// 20 ms late (a busy core, the Go scheduler) still do not crowd more than qps into any second as
// they arrive upstream: the resolver sees the rate it was promised.
func refreshLimit(qps int) rate.Limit {
	return rate.Every(time.Second * 102 / time.Duration(100*qps))
}

// acquirePace returns the limiter of background resolution through where, for a block whose
// refresh_rate is qps.
func acquirePace(where string, qps int) *rate.Limiter {
	paces.Lock()
	defer paces.Unlock()
	p := paces.m[where]
	if p == nil {
		p = &pace{l: rate.NewLimiter(refreshLimit(qps), 1)}
		paces.m[where] = p
	}
	p.rates = append(p.rates, qps)
	p.l.SetLimit(refreshLimit(slices.Min(p.rates)))
	return p.l
}

// releasePace gives back what acquirePace(where, qps) took.
func releasePace(where string, qps int) {
	paces.Lock()
	defer paces.Unlock()
	p := paces.m[where]
	if p == nil {
		return
	}
	p.rates = slices.Delete(p.rates, slices.Index(p.rates, qps), slices.Index(p.rates, qps)+1)
	if len(p.rates) == 0 {
		delete(paces.m, where)
		return
	}
	p.l.SetLimit(refreshLimit(slices.Min(p.rates)))
}

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
	return min(time.Duration(float64(e.lifetime())*c.cfg.prefetch), max(e.lifetime()-minRefresh, 0))
}

// refreshHeap orders pinned slots by when they are due (slot.due, slot.index).
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
