package flatten

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Linux routes all of 127.0.0.0/8 to loopback, so every address below is a distinct local
// address a test can listen on, or leave closed (the connection is refused at once).

// round probes every address once and publishes the new states, as the prober's loop does; it
// does nothing once the checker is stopped, and a round cut short by ctx or stop publishes nothing.
func (h *healthChecker) round(ctx context.Context) {
	done := make(chan struct{})
	if !h.bg.spawn(func() {
		defer close(done)
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(h.bg.ctx, cancel)()
		h.probeRound(ctx)
	}) {
		return
	}
	<-done
}

// healthy reports whether a may be served: not marked down (filter's rule for one address).
func (h *healthChecker) healthy(a netip.Addr) bool {
	s := h.snap.Load()
	return s == nil || !s.isDownAddr(a)
}

// healthAddrs is a list of addresses a test changes between rounds.
type healthAddrs struct {
	mu sync.Mutex
	l  []netip.Addr
}

func (a *healthAddrs) get() []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.l)
}

func (a *healthAddrs) set(l ...netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.l = l
}

// sharedPort returns a port free on every address of addrs, found by listening on the first
// with port 0 and on the others with the port it got, again with another port on a collision.
// The returned listeners are open (the caller closes some to make their address fail).
func sharedPort(t *testing.T, addrs []netip.Addr, listen func(netip.AddrPort) (net.Listener, error)) (int, []net.Listener) {
	t.Helper()
	for range 20 {
		var ls []net.Listener
		closeAll := func() {
			for _, l := range ls {
				l.Close()
			}
		}
		first, err := listen(netip.AddrPortFrom(addrs[0], 0))
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, first)
		port := first.Addr().(*net.TCPAddr).Port
		for _, a := range addrs[1:] {
			l, err := listen(netip.AddrPortFrom(a, uint16(port)))
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
		if len(ls) == len(addrs) {
			t.Cleanup(closeAll)
			return port, ls
		}
		closeAll()
	}
	t.Fatal("no port free on every address")
	return 0, nil
}

// listenTCP is an ordinary listener; connections stay in its accept queue until it is closed,
// which is all a connect probe needs.
func listenTCP(ap netip.AddrPort) (net.Listener, error) {
	return net.Listen("tcp", ap.String())
}

// listenBlackHole returns a listener that drops every SYN: its accept queue has room for one
// connection (backlog 0), which it fills and never accepts. Linux drops a SYN to a listener with
// a full accept queue (tcp_conn_request), so a connect hangs as it does to a filtered port.
func listenBlackHole(ap netip.AddrPort) (net.Listener, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	if err := syscall.Listen(fd, 0); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "blackhole")
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	filler, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		l.Close()
		return nil, err
	}
	return &blackHole{Listener: l, filler: filler}, nil
}

type blackHole struct {
	net.Listener
	filler net.Conn
}

func (b *blackHole) Close() error {
	return errors.Join(b.filler.Close(), b.Listener.Close())
}

func lo4(last byte) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, last}) }

// probingGoroutines counts goroutines running a round of a health checker (the loop, a round
// called directly, and the probe workers). debug=2 lists every goroutine on its own.
func probingGoroutines() int {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 2)
	n := 0
	for g := range strings.SplitSeq(b.String(), "\n\n") {
		if strings.Contains(g, "flatten.(*healthChecker).probeRound(") ||
			strings.Contains(g, "flatten.(*healthChecker).probeRound.func") ||
			strings.Contains(g, "flatten.(*healthChecker).loop(") {
			n++
		}
	}
	return n
}

func TestHealthOpenPortIsUp(t *testing.T) {
	open := lo4(2)
	port, _ := sharedPort(t, []netip.Addr{open}, listenTCP)
	h := newHealthChecker(port, time.Hour, func() []netip.Addr { return []netip.Addr{open} }, tallyOf(metricLabels{server: "test-open"}), newBackground())
	defer h.stop()
	h.round(context.Background())

	st := h.status(open)
	if st.state != healthUp || st.fails != 0 || st.lastProbe.IsZero() || st.lastErr != "" {
		t.Errorf("status = %+v, want up with a probe time and no error", st)
	}
	if !h.healthy(open) {
		t.Error("an address with an open port is not healthy")
	}
}

func TestHealthDownAfterTwoFailures(t *testing.T) {
	a := lo4(2)
	port, ls := sharedPort(t, []netip.Addr{a}, listenTCP)
	ap := netip.AddrPortFrom(a, uint16(port))
	const server = "test-damping"
	h := newHealthChecker(port, time.Hour, func() []netip.Addr { return []netip.Addr{a} }, tallyOf(metricLabels{server: server}), newBackground())
	defer h.stop()
	ctx := context.Background()
	upBefore := metric(t, "health_probes_total", server, "", "", "up")
	downBefore := metric(t, "health_probes_total", server, "", "", "down")

	open := func() {
		t.Helper()
		l, err := listenTCP(ap)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		ls[0] = l
	}
	closePort := func() { ls[0].Close() }

	for i, step := range []struct {
		what    string
		change  func()
		state   healthState
		fails   int
		healthy bool
	}{
		{"open", func() {}, healthUp, 0, true},
		{"one failure", closePort, healthUp, 1, true},
		{"success again", open, healthUp, 0, true},
		{"one failure after a success", closePort, healthUp, 1, true}, // flapping is damped
		{"second failure in a row", func() {}, healthDown, 2, false},
		{"third failure", func() {}, healthDown, 3, false},
		{"one success", open, healthUp, 0, true},
	} {
		step.change()
		h.round(ctx)
		st := h.status(a)
		if st.state != step.state || st.fails != step.fails || h.healthy(a) != step.healthy {
			t.Fatalf("step %d (%s): state %v, fails %d, healthy %v; want %v, %d, %v",
				i, step.what, st.state, st.fails, h.healthy(a), step.state, step.fails, step.healthy)
		}
		if step.fails > 0 && !strings.Contains(st.lastErr, "refused") {
			t.Errorf("step %d (%s): last error %q, want the connection refusal", i, step.what, st.lastErr)
		}
	}
	// The last error is kept after the recovery, for explain.
	if st := h.status(a); st.lastErr == "" || st.lastFail.IsZero() || st.lastFail.After(st.lastProbe) {
		t.Errorf("after recovery: %+v, want the last failure kept", st)
	}

	if got := metric(t, "health_probes_total", server, "", "", "up") - upBefore; got != 3 {
		t.Errorf("probes up = %v, want 3", got)
	}
	if got := metric(t, "health_probes_total", server, "", "", "down") - downBefore; got != 4 {
		t.Errorf("probes down = %v, want 4", got)
	}
}

func TestHealthNeverProbedIsHealthy(t *testing.T) {
	a, b := lo4(2), lo4(3)
	port, ls := sharedPort(t, []netip.Addr{a}, listenTCP)
	ls[0].Close()
	h := newHealthChecker(port, time.Hour, func() []netip.Addr { return []netip.Addr{a} }, tallyOf(metricLabels{server: "test-never"}), newBackground())
	defer h.stop()

	if !h.healthy(a) || h.status(a) != (addrHealth{}) || h.status(a).state.String() != "unknown" {
		t.Errorf("before any round: healthy %v, status %+v; want usable and unknown", h.healthy(a), h.status(a))
	}
	h.round(context.Background())
	h.round(context.Background())
	if h.healthy(a) {
		t.Fatal("a closed port is healthy after two rounds")
	}
	if !h.healthy(b) || h.status(b) != (addrHealth{}) {
		t.Errorf("an address never listed: healthy %v, status %+v; want usable and unknown", h.healthy(b), h.status(b))
	}
	// One failure is not enough to know.
	a2 := lo4(4)
	h.addrs = func() []netip.Addr { return []netip.Addr{a, a2} }
	h.round(context.Background())
	if st := h.status(a2); st.state != healthUnknown || st.fails != 1 || !h.healthy(a2) {
		t.Errorf("after one failure: %+v, healthy %v; want unknown and usable", st, h.healthy(a2))
	}
}

func TestHealthFilter(t *testing.T) {
	up, down := lo4(2), lo4(3)
	v6 := netip.MustParseAddr("::1")
	addrs := []netip.Addr{up, down}
	haveV6 := true
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		haveV6 = false
	} else {
		l.Close()
		addrs = append(addrs, v6)
	}
	port, ls := sharedPort(t, addrs, listenTCP)
	ls[1].Close() // down
	if haveV6 {
		ls[2].Close()
	}
	h := newHealthChecker(port, time.Hour, func() []netip.Addr { return addrs }, tallyOf(metricLabels{server: "test-filter"}), newBackground())
	defer h.stop()

	a := func(ip net.IP) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: ip}
	}
	aaaa := func(ip net.IP) dns.RR {
		return &dns.AAAA{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60}, AAAA: ip}
	}
	cname := &dns.CNAME{Hdr: dns.RR_Header{Name: "www.example.org.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: "example.org."}
	upA := a(net.IP(up.AsSlice()))              // 4-byte form
	downA16 := a(net.IP(down.AsSlice()).To16()) // 16-byte form, as miekg/dns unpacks A records
	downA4 := a(net.IP(down.AsSlice()))         // 4-byte form
	otherA := a(net.ParseIP("127.0.0.9"))       // never probed
	v6AAAA := aaaa(net.ParseIP("::1"))          // down when ::1 is there
	healthyOnly := []dns.RR{cname, upA, otherA} // nothing to drop
	mixed := []dns.RR{downA16, cname, upA, downA4, otherA, v6AAAA}

	// Before any probe, and while nothing is down, filter returns its argument.
	for _, rrs := range [][]dns.RR{mixed, healthyOnly} {
		if got := h.filter(rrs); &got[0] != &rrs[0] || len(got) != len(rrs) {
			t.Errorf("nothing probed: filter made a new slice %v", got)
		}
	}
	h.round(context.Background())
	h.round(context.Background())
	if h.healthy(down) || !h.healthy(up) {
		t.Fatalf("setup: down healthy %v, up healthy %v", h.healthy(down), h.healthy(up))
	}

	want := []dns.RR{cname, upA, otherA}
	if !haveV6 {
		want = append(want, v6AAAA)
	}
	if got := h.filter(mixed); !slices.Equal(got, want) {
		t.Errorf("filter(mixed) = %v, want %v", got, want)
	}
	if len(mixed) != 6 || mixed[0] != downA16 {
		t.Error("filter modified its argument")
	}
	if got := h.filter([]dns.RR{downA4}); len(got) != 0 {
		t.Errorf("filter of only down addresses = %v, want empty", got)
	}
	if got := h.filter(nil); got != nil {
		t.Errorf("filter(nil) = %v", got)
	}

	// With an address down, a set without it is returned as is, without allocating: this is
	// the answer path of every flattened query.
	if got := h.filter(healthyOnly); &got[0] != &healthyOnly[0] || len(got) != len(healthyOnly) {
		t.Errorf("filter(healthy) = %v, want its argument", got)
	}
	if n := testing.AllocsPerRun(100, func() { h.filter(healthyOnly) }); n != 0 {
		t.Errorf("filter of healthy records allocates %v times, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { h.healthy(up) }); n != 0 {
		t.Errorf("healthy allocates %v times, want 0", n)
	}
}

func TestHealthForgetsUnlistedAddresses(t *testing.T) {
	kept, gone := lo4(2), lo4(3)
	port, ls := sharedPort(t, []netip.Addr{kept, gone}, listenTCP)
	ls[1].Close()
	list := &healthAddrs{}
	list.set(kept, gone)
	const server = "test-forget"
	h := newHealthChecker(port, time.Hour, list.get, tallyOf(metricLabels{server: server}), newBackground())
	defer h.stop()
	ctx := context.Background()

	h.round(ctx)
	h.round(ctx)
	if h.healthy(gone) {
		t.Fatal("setup: closed port healthy")
	}
	if got := h.downAddrs(); got != 1 {
		t.Errorf("%d addresses down, want 1", got)
	}

	list.set(kept)
	h.round(ctx)
	if st := h.status(gone); st != (addrHealth{}) || !h.healthy(gone) {
		t.Errorf("unlisted address: %+v, healthy %v; want forgotten", st, h.healthy(gone))
	}
	if n := len(h.snap.Load().addrs); n != 1 {
		t.Errorf("%d addresses remembered, want 1", n)
	}
	if got := h.downAddrs(); got != 0 {
		t.Errorf("%d addresses down, want 0", got)
	}

	// Listed again, it starts over: one failure does not mark it down.
	list.set(kept, gone, kept, netip.AddrFrom16(kept.As16())) // duplicates are probed once
	d := &countingDial{}
	h.dial = d.dial
	h.round(ctx)
	if n := d.started.Load(); n != 2 {
		t.Errorf("%d probes for 2 distinct addresses, want 2", n)
	}
	if st := h.status(gone); st.fails != 1 || !h.healthy(gone) {
		t.Errorf("listed again: %+v, healthy %v; want one failure and usable", st, h.healthy(gone))
	}
	if n := len(h.snap.Load().addrs); n != 2 {
		t.Errorf("%d addresses remembered, want 2", n)
	}
}

func TestHealthBlackHoleTimesOut(t *testing.T) {
	a := lo4(2)
	port, _ := sharedPort(t, []netip.Addr{a}, listenBlackHole)
	h := newHealthChecker(port, time.Hour, func() []netip.Addr { return []netip.Addr{a} }, tallyOf(metricLabels{server: "test-blackhole"}), newBackground())
	defer h.stop()
	h.timeout = 50 * time.Millisecond
	h.round(context.Background())
	h.round(context.Background())
	if st := h.status(a); st.state != healthDown || !strings.Contains(st.lastErr, "timeout") {
		t.Errorf("black hole: %+v, want down by timeout", st)
	}
}

// countingDial dials for real and counts the dials in flight.
type countingDial struct {
	inflight, started, peak atomic.Int64
}

func (c *countingDial) dial(ctx context.Context, network, address string) (net.Conn, error) {
	n := c.inflight.Add(1)
	c.started.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	defer c.inflight.Add(-1)
	return (&net.Dialer{}).DialContext(ctx, network, address)
}

func TestHealthConcurrencyBound(t *testing.T) {
	before := probingGoroutines()
	addrs := make([]netip.Addr, 100)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{127, 0, 1, byte(i + 1)})
	}
	port, _ := sharedPort(t, addrs, listenBlackHole)
	h := newHealthChecker(port, time.Hour, func() []netip.Addr { return addrs }, tallyOf(metricLabels{server: "test-bound"}), newBackground())
	h.timeout = time.Hour // the probes hang until stop cancels them
	d := &countingDial{}
	h.dial = d.dial
	h.start()

	// Once the round has started all the dials it can, the black holes keep them in flight:
	// from then on nothing changes until stop. An unbounded round would get there with 100
	// dials and 100 goroutines.
	waitFor(t, "the bounded round to settle", func() bool {
		return d.inflight.Load() == maxHealthProbes && probingGoroutines() == before+1+maxHealthProbes
	})
	if p, s := d.peak.Load(), d.started.Load(); p != maxHealthProbes || s != maxHealthProbes {
		t.Errorf("peak %d dials in flight, %d started; want %d", p, s, maxHealthProbes)
	}

	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }()
	waitFor(t, "stop", func() bool {
		select {
		case <-stopped:
			return true
		default:
			return false
		}
	})
	if n := probingGoroutines(); n != before {
		t.Errorf("%d probing goroutines after stop, want %d", n, before)
	}
	if d.inflight.Load() != 0 {
		t.Errorf("%d dials in flight after stop", d.inflight.Load())
	}
	// The cut round published nothing: cancelled dials say nothing about the addresses.
	if st := h.status(addrs[0]); st != (addrHealth{}) {
		t.Errorf("after a cancelled round: %+v, want unknown", st)
	}
}

func TestHealthStopCancelsHangingProbes(t *testing.T) {
	before := probingGoroutines()
	addrs := []netip.Addr{lo4(2), lo4(3), lo4(4)}
	port, _ := sharedPort(t, addrs, listenBlackHole)
	h := newHealthChecker(port, time.Hour, func() []netip.Addr { return addrs }, tallyOf(metricLabels{server: "test-stop"}), newBackground())
	h.timeout = time.Hour // only cancellation ends these probes
	d := &countingDial{}
	h.dial = d.dial

	// A background round hanging in its dials, and one called directly waiting for it to end
	// (rounds take turns).
	h.start()
	direct := make(chan struct{})
	go func() { h.round(context.Background()); close(direct) }()
	waitFor(t, "both rounds to hang", func() bool {
		return d.inflight.Load() == int64(len(addrs)) && probingGoroutines() == before+1+len(addrs)+1
	})

	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }()
	waitFor(t, "stop and the direct round to return", func() bool {
		select {
		case <-stopped:
		default:
			return false
		}
		select {
		case <-direct:
			return true
		default:
			return false
		}
	})
	if n := probingGoroutines(); n != before {
		t.Errorf("%d probing goroutines after stop, want %d", n, before)
	}
}

func TestHealthStartStopIdempotent(t *testing.T) {
	before := probingGoroutines()
	a := lo4(2)
	port, _ := sharedPort(t, []netip.Addr{a}, listenTCP)
	d := &countingDial{}

	var asked atomic.Int64
	never := newHealthChecker(port, time.Hour, func() []netip.Addr { asked.Add(1); return []netip.Addr{a} }, tallyOf(metricLabels{server: "test-idem"}), newBackground())
	never.stop() // never started: returns at once
	never.stop()
	never.start() // after stop: does nothing
	never.dial = d.dial
	never.round(context.Background()) // after stop: does nothing
	if n := probingGoroutines(); n != before || asked.Load() != 0 || d.started.Load() != 0 || never.snap.Load() != nil {
		t.Errorf("stopped checker: %d goroutines (want %d), addresses asked %d times, %d dials",
			n, before, asked.Load(), d.started.Load())
	}

	h := newHealthChecker(port, time.Hour, func() []netip.Addr { return []netip.Addr{a} }, tallyOf(metricLabels{server: "test-idem"}), newBackground())
	h.dial = d.dial
	h.start()
	h.start()
	// start probes at once, then every interval (an hour here): one round, one loop.
	waitFor(t, "the first round", func() bool { return h.status(a).state == healthUp })
	if n := probingGoroutines(); n != before+1 {
		t.Errorf("%d probing goroutines after two starts, want %d", n, before+1)
	}
	if n := d.started.Load(); n != 1 {
		t.Errorf("%d probes after two starts, want 1", n)
	}
	h.stop()
	h.stop()
	if n := probingGoroutines(); n != before {
		t.Errorf("%d probing goroutines after stop, want %d", n, before)
	}
}

func TestProbeTimeout(t *testing.T) {
	for _, c := range []struct{ interval, want time.Duration }{
		{defaultHealthInterval, 2500 * time.Millisecond},
		{time.Minute, maxProbeTimeout},
		{100 * time.Millisecond, minProbeTimeout},
	} {
		if got := probeTimeout(c.interval); got != c.want {
			t.Errorf("probeTimeout(%v) = %v, want %v", c.interval, got, c.want)
		}
	}
}

func TestHealthBackgroundRounds(t *testing.T) {
	before := probingGoroutines()
	a := lo4(2)
	port, ls := sharedPort(t, []netip.Addr{a}, listenTCP)
	h := newHealthChecker(port, 10*time.Millisecond, func() []netip.Addr { return []netip.Addr{a} }, tallyOf(metricLabels{server: "test-background"}), newBackground())
	h.start()
	defer func() {
		h.stop()
		if n := probingGoroutines(); n != before {
			t.Errorf("%d probing goroutines after stop, want %d", n, before)
		}
	}()
	waitFor(t, "the first round", func() bool { return h.status(a).state == healthUp })
	ls[0].Close()
	// Only later rounds, run by the ticker, can see the port closed twice.
	waitFor(t, "the address to go down", func() bool { return !h.healthy(a) })
	if st := h.status(a); st.fails < downAfter {
		t.Errorf("down after %d failures", st.fails)
	}
}

// BenchmarkHealthFilter measures the answer path: a healthy answer while another address is down.
func BenchmarkHealthFilter(b *testing.B) {
	up, down := lo4(2), lo4(3)
	h := newHealthChecker(53, time.Hour, nil, tallyOf(metricLabels{server: "bench"}), newBackground())
	h.snap.Store(&healthSnapshot{addrs: map[netip.Addr]addrHealth{up: {state: healthUp}, down: {state: healthDown}}, down: 1})
	rrs := []dns.RR{
		&dns.A{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IP(up.AsSlice()).To16()},
		&dns.A{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.ParseIP("192.0.2.1")},
	}
	b.ReportAllocs()
	for b.Loop() {
		h.filter(rrs)
	}
}
