package flatten

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

const (
	// defaultHealthInterval is the time between two probes of an address (`health_check tcp
	// PORT [INTERVAL]`).
	defaultHealthInterval = 10 * time.Second
	// minHealthInterval keeps probing from turning into a flood (and lets tests run quickly).
	minHealthInterval = 100 * time.Millisecond
	// maxHealthProbes bounds the probes in flight, however many addresses there are: a target
	// that resolves to hundreds of black-holed addresses must not open hundreds of sockets at once.
	maxHealthProbes = 32
	// downAfter is the number of failed probes in a row that mark an address down, so that one
	// lost SYN does not drop a working address from answers; one success marks it up again.
	downAfter = 2
	// minProbeTimeout and maxProbeTimeout bound the time a probe waits for its connection.
	// A handshake with a working server takes a few round trips; 5 s is already generous
	// for any of them, and a longer wait would only delay marking a black hole down.
	minProbeTimeout = 100 * time.Millisecond
	maxProbeTimeout = 5 * time.Second
)

// probeTimeout is the time a probe waits for its connection: a quarter of the interval, so that
// a round of up to maxHealthProbes black-holed addresses ends well before the next one is due.
func probeTimeout(interval time.Duration) time.Duration {
	return min(max(interval/4, minProbeTimeout), maxProbeTimeout)
}

// healthState is what the probes say of an address.
type healthState uint8

const (
	healthUnknown healthState = iota // never succeeded nor failed downAfter times: usable
	healthUp
	healthDown
)

func (s healthState) String() string {
	switch s {
	case healthUp:
		return "up"
	case healthDown:
		return "down"
	}
	return "unknown"
}

// addrHealth is what is known about one address. Values are copied, never shared.
type addrHealth struct {
	state     healthState
	fails     int       // failed probes in a row
	lastProbe time.Time // when the last probe ended; zero if never probed
	lastErr   string    // the error of the last failed probe, kept after a success so it can be explained
	lastFail  time.Time // when that failure happened
}

// healthSnapshot is the state of every listed address after a round. It is never modified once
// published, so the answer path reads it without a lock.
type healthSnapshot struct {
	addrs map[netip.Addr]addrHealth
	down  int // addresses in state down
}

// healthChecker probes addresses with a TCP connect to one port, in the background only: queries
// read the result of the last round and never wait for a probe.
type healthChecker struct {
	port     uint16
	interval time.Duration
	timeout  time.Duration
	addrs    func() []netip.Addr // the addresses to probe, asked once per round
	tally    *tally
	dial     func(ctx context.Context, network, address string) (net.Conn, error)
	now      func() time.Time
	bg       *background // the instance's: stop ends the loop and every dial in flight

	snap atomic.Pointer[healthSnapshot]
	// roundMu serializes rounds: each builds the next snapshot from the one before.
	roundMu sync.Mutex
	started atomic.Bool
}

// newHealthChecker returns a checker that, once started, connects to every address addrs returns
// on TCP port every interval, in bg, counting them in t.
func newHealthChecker(port int, interval time.Duration, addrs func() []netip.Addr, t *tally, bg *background) *healthChecker {
	if interval <= 0 {
		interval = defaultHealthInterval
	}
	return &healthChecker{
		port:     uint16(port), // setup checks that PORT is in 1-65535
		interval: interval,
		timeout:  probeTimeout(interval),
		addrs:    addrs,
		tally:    t,
		dial:     (&net.Dialer{}).DialContext,
		now:      time.Now,
		bg:       bg,
	}
}

// start starts the background prober: a round now, then one every interval. Calling it again,
// or after stop, does nothing.
func (h *healthChecker) start() {
	if !h.started.Swap(true) {
		h.bg.spawn(h.loop)
	}
}

// stop stops the prober (with the rest of the instance's background work), cancels the probes
// in flight and waits until they have ended. It may be called more than once, and without start.
func (h *healthChecker) stop() {
	h.bg.stop()
}

// loop runs a round at start, so that states are known soon, then one every interval.
func (h *healthChecker) loop() {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		h.probeRound(h.bg.ctx)
		// A round longer than the interval makes the ticker drop ticks: rounds never overlap.
		select {
		case <-h.bg.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeRound probes every address once, at most maxHealthProbes at a time, and publishes the new
// states when all probes have ended. A round cut short by ctx publishes nothing, since its
// failures say nothing about the addresses.
func (h *healthChecker) probeRound(ctx context.Context) {
	h.roundMu.Lock()
	defer h.roundMu.Unlock()

	// Deduplicate: two aliases may resolve to the same address.
	var listed []netip.Addr
	if h.addrs != nil {
		listed = h.addrs()
	}
	addrs := make([]netip.Addr, 0, len(listed))
	seen := make(map[netip.Addr]struct{}, len(listed))
	for _, a := range listed {
		a = a.Unmap()
		if !a.IsValid() {
			continue
		}
		if _, dup := seen[a]; dup {
			continue
		}
		seen[a] = struct{}{}
		addrs = append(addrs, a)
	}

	errs := make([]error, len(addrs))
	ends := make([]time.Time, len(addrs))
	var cursor atomic.Int64
	var workers sync.WaitGroup
	for range min(len(addrs), maxHealthProbes) {
		workers.Go(func() {
			for {
				i := int(cursor.Add(1)) - 1
				if i >= len(addrs) || ctx.Err() != nil {
					return
				}
				errs[i] = h.probe(ctx, addrs[i])
				ends[i] = h.now()
			}
		})
	}
	workers.Wait()
	if ctx.Err() != nil {
		return
	}

	// The next snapshot holds only the listed addresses: the state of an address no alias
	// resolves to any more is forgotten, so memory is bounded by the current answers.
	prev := h.snap.Load()
	snap := &healthSnapshot{addrs: make(map[netip.Addr]addrHealth, len(addrs))}
	for i, a := range addrs {
		var st addrHealth
		if prev != nil {
			st = prev.addrs[a]
		}
		st.lastProbe = ends[i]
		if err := errs[i]; err != nil {
			h.tally.probed(false)
			st.fails++
			st.lastErr = err.Error()
			st.lastFail = ends[i]
			if st.fails >= downAfter && st.state != healthDown {
				st.state = healthDown
				log.Infof("%s is down: %d failed probes in a row, last: %s", a, st.fails, st.lastErr)
			}
		} else {
			h.tally.probed(true)
			if st.state == healthDown {
				log.Infof("%s is up again", a)
			}
			st.fails = 0
			st.state = healthUp
		}
		if st.state == healthDown {
			snap.down++
		}
		snap.addrs[a] = st
	}
	h.snap.Store(snap)
}

// downAddrs returns the number of addresses marked down.
func (h *healthChecker) downAddrs() int {
	if s := h.snap.Load(); s != nil {
		return s.down
	}
	return 0
}

// probe connects to a:port and closes the connection at once: a completed handshake is what
// says the address serves.
func (h *healthChecker) probe(ctx context.Context, a netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	c, err := h.dial(ctx, "tcp", netip.AddrPortFrom(a, h.port).String())
	if err != nil {
		return err
	}
	c.Close()
	return nil
}

// status returns what is known about a, for explain. An address not probed (or forgotten) is
// healthUnknown with zero values.
func (h *healthChecker) status(a netip.Addr) addrHealth {
	s := h.snap.Load()
	if s == nil {
		return addrHealth{}
	}
	return s.addrs[a.Unmap()]
}

// filter returns the records of rrs without the A and AAAA records of addresses marked down;
// other records are kept. When nothing is dropped it returns rrs itself and allocates nothing.
// It may return an empty slice: failing open is the caller's decision.
func (h *healthChecker) filter(rrs []dns.RR) []dns.RR {
	s := h.snap.Load()
	if s == nil || s.down == 0 {
		return rrs
	}
	first := -1
	for i, rr := range rrs {
		if s.isDown(rr) {
			first = i
			break
		}
	}
	if first < 0 {
		return rrs
	}
	out := make([]dns.RR, first, len(rrs)-1)
	copy(out, rrs[:first])
	for _, rr := range rrs[first+1:] {
		if !s.isDown(rr) {
			out = append(out, rr)
		}
	}
	return out
}

// downNow returns whether an address is marked down, by the last round; nil when none is.
func (h *healthChecker) downNow() func(netip.Addr) bool {
	s := h.snap.Load()
	if s == nil || s.down == 0 {
		return nil
	}
	return s.isDownAddr
}

// isDown reports whether rr is an address record of an address marked down.
func (s *healthSnapshot) isDown(rr dns.RR) bool {
	// rrAddr unmaps: A records unpack as 16-byte IPv4-mapped slices, and the checker was given
	// plain IPv4 addresses.
	a, ok := rrAddr(rr)
	return ok && s.isDownAddr(a)
}

// isDownAddr reports whether a is marked down.
func (s *healthSnapshot) isDownAddr(a netip.Addr) bool { return s.addrs[a.Unmap()].state == healthDown }

// adopt takes the states of old, the checker of a pool that a reload replaces, if it probes the
// same port: an address that is down stays out of answers across a reload instead of being served
// again until it has failed two more probes. Call it before start.
func (h *healthChecker) adopt(old *healthChecker) {
	if old.port != h.port {
		return
	}
	if s := old.snap.Load(); s != nil {
		h.snap.CompareAndSwap(nil, s)
	}
}
