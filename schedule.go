package flatten

import (
	"container/heap"
	"time"
)

const (
	// minRefresh and maxBackoff bound the background refresh of configured aliases.
	minRefresh = time.Second
	maxBackoff = time.Minute
	// refreshWorkers bounds concurrent background resolutions.
	refreshWorkers = 16
	// maxFailures is where a slot stops counting failed refreshes: its backoff reached
	// maxBackoff long before.
	maxFailures = 32
)

// schedule is when each pinned slot is refreshed next: the startup round first, then before each
// entry expires, or with backoff after a failure. One goroutine (refresher) starts the refreshes
// that are due, at most refreshWorkers at a time, each waiting its turn on the cache's limiter.
// Guarded by cache.mu, as the slots' schedule fields are.
type schedule struct {
	heap    refreshHeap
	pending int  // pinned slots the startup round has not tried yet
	started bool // start has run
	kick    chan struct{}
	sem     chan struct{}
}

func newSchedule() schedule {
	return schedule{kick: make(chan struct{}, 1), sem: make(chan struct{}, refreshWorkers)}
}

// start begins the startup round and the background refresh of pinned slots, once.
func (c *cache) start() {
	now := since(c.now())
	c.mu.Lock()
	if c.sched.started || c.bg.done() {
		c.mu.Unlock()
		return
	}
	c.sched.started = true
	for _, p := range c.pins {
		for i := range p.slots {
			s := &p.slots[i]
			s.due = now
			heap.Push(&c.sched.heap, s)
			c.sched.pending++
		}
	}
	c.countLocked()
	c.mu.Unlock()
	c.bg.spawn(c.refresher)
}

// ready reports whether the startup round has tried every configured alias once.
func (c *cache) ready() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.sched.started && c.sched.pending == 0
}

// wake makes the refresher look at its schedule now.
func (c *cache) wake() {
	select {
	case c.sched.kick <- struct{}{}:
	default:
	}
}

func (c *cache) refresher() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		t.Reset(c.runDue())
		select {
		case <-c.bg.ctx.Done():
			return
		case <-c.sched.kick:
		case <-t.C:
		}
	}
}

// runDue starts the refresh of every pinned slot that is due, at most refreshWorkers at a time,
// and returns how long until the next one is due.
func (c *cache) runDue() time.Duration {
	targetEvents.flush(c.now())
	for {
		now := since(c.now())
		c.mu.Lock()
		if len(c.sched.heap) == 0 {
			c.mu.Unlock()
			return time.Hour
		}
		s := c.sched.heap[0]
		if wait := time.Duration(s.due - now); wait > 0 {
			c.mu.Unlock()
			return wait
		}
		heap.Pop(&c.sched.heap)
		c.mu.Unlock()

		select {
		case c.sched.sem <- struct{}{}:
		case <-c.bg.ctx.Done():
			return time.Hour
		}
		if !c.bg.spawn(func() {
			defer func() { <-c.sched.sem }()
			c.refreshPinned(s)
		}) {
			<-c.sched.sem
			return time.Hour
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
	// The flight first, then the entry: run stores the entry before it takes its flight off the
	// slot, so a client's resolution that ended meanwhile is seen here and not resolved again.
	fl := s.flight.Load()
	if e := s.good.Load(); fl == nil && e != nil && c.now().Before(e.expires().Add(-c.refreshLead(e))) {
		// A query resolved it since it was scheduled (at startup, typically): not due yet.
		fl = &flight{entry: e}
	} else {
		if fl == nil {
			var started bool
			q := question{key: s.key(), pace: c.limiter, labels: c.cfg.labels}
			if fl, started = c.claim(c.bg.ctx, s, &q); started {
				l := q.labels
				refreshes.WithLabelValues(l.server, l.zones, l.view).Inc()
			}
		}
		select {
		case <-fl.done:
		case <-c.bg.ctx.Done():
			return
		}
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
		// Due before anything the refresher's timer waits for (an hour, when the schedule was
		// empty as it took the last slot out): it must look again.
		c.wake()
	}
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
