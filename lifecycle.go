package flatten

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// background runs the goroutines of one instance (the cache's refreshes and resolutions, the
// health checker's prober) and ends them together. The *reload* plugin starts a new instance
// before it shuts the old one down, and a query can arrive while that happens: spawn and stop
// are ordered by mu, so nothing is added to wg once stop waits on it.
type background struct {
	ctx    context.Context // cancelled by stop: ends every background resolution and probe
	cancel context.CancelFunc

	mu      sync.Mutex
	wg      sync.WaitGroup
	stopped bool
}

func newBackground() *background {
	ctx, cancel := context.WithCancel(context.Background())
	return &background{ctx: ctx, cancel: cancel}
}

// spawn runs fn in a goroutine that stop waits for, unless stop has begun; it reports whether fn
// was started.
func (b *background) spawn(fn func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return false
	}
	b.wg.Go(fn)
	return true
}

// stop cancels the work in progress and waits for every goroutine spawned. It may be called more
// than once.
func (b *background) stop() {
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
}

// done reports whether stop has begun.
func (b *background) done() bool { return b.ctx.Err() != nil }

// live holds the running pools by origin (poolOrigin: their listener, view and upstreams). A
// Corefile reload starts the new instance before it shuts the old one down; a new pool takes over
// what the old instance's pools of the same origin know, so that an upstream outage that spans a
// reload is still answered stale, a reload costs no resolution of what is fresh, and an address
// that health checks found down stays out of answers.
var live = struct {
	sync.Mutex
	m map[string][]*pool
}{m: map[string][]*pool{}}

// register records p as running and returns the pools of its origin that another Corefile
// (the one a reload replaces) started.
func register(p *pool) []*pool {
	live.Lock()
	defer live.Unlock()
	var old []*pool
	for _, q := range live.m[p.origin] {
		if q.corefile != p.corefile {
			old = append(old, q)
		}
	}
	live.m[p.origin] = append(live.m[p.origin], p)
	return old
}

// running returns the running pools.
func running() []*pool {
	live.Lock()
	defer live.Unlock()
	return slices.Concat(slices.Collect(maps.Values(live.m))...)
}

// unregister removes p.
func unregister(p *pool) {
	live.Lock()
	defer live.Unlock()
	ps := slices.DeleteFunc(live.m[p.origin], func(q *pool) bool { return q == p })
	if len(ps) == 0 {
		delete(live.m, p.origin)
	} else {
		live.m[p.origin] = ps
	}
}

// ticking runs fn every interval in one goroutine for the process, while it has users: the first
// acquire starts it, the last release stops it and waits for it to end. The watch of the zones
// with transfers and that of the zones served here are each one.
type ticking struct {
	interval time.Duration
	fn       func()

	mu    sync.Mutex
	users int
	stop  chan struct{} // closed to end the goroutine; nil when none runs
	done  chan struct{} // closed when it has ended
}

func (t *ticking) acquire() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.users++; t.users == 1 {
		t.stop, t.done = make(chan struct{}), make(chan struct{})
		go t.run(t.stop, t.done)
	}
}

func (t *ticking) release() {
	t.mu.Lock()
	var done chan struct{}
	if t.users--; t.users == 0 {
		close(t.stop)
		done, t.stop, t.done = t.done, nil, nil
	}
	t.mu.Unlock()
	if done != nil {
		<-done
	}
}

func (t *ticking) run(stop, done chan struct{}) {
	defer close(done)
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		t.fn()
	}
}
