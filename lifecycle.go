package flatten

import (
	"context"
	"maps"
	"slices"
	"sync"
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

// live holds the running instances by identity (the listener, zones and upstreams of a server
// block). A Corefile reload starts the new instance before it shuts the old one down; the new one
// takes over what the old one knows, so that an upstream outage that spans a reload is still
// answered stale, a reload costs no resolution of what is fresh, and an address that health
// checks found down stays out of answers.
var live = struct {
	sync.Mutex
	m map[string]*Flatten
}{m: map[string]*Flatten{}}

// register records f as the running instance of its identity and returns the one it replaces,
// if any.
func register(f *Flatten) *Flatten {
	live.Lock()
	defer live.Unlock()
	old := live.m[f.identity]
	live.m[f.identity] = f
	if old == f {
		return nil
	}
	return old
}

// running returns the running instances.
func running() []*Flatten {
	live.Lock()
	defer live.Unlock()
	return slices.Collect(maps.Values(live.m))
}

// unregister removes f, unless another instance has replaced it already.
func unregister(f *Flatten) {
	live.Lock()
	defer live.Unlock()
	if live.m[f.identity] == f {
		delete(live.m, f.identity)
	}
}
