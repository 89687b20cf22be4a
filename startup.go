package flatten

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coredns/caddy"

	"github.com/miekg/dns"
)

// What happens once a CoreDNS instance's servers listen (caddy's instance startup event, after
// every block's OnStartup, at start and at each reload): the totals are logged, the zones with
// transfers are watched, blocks that resolve through this server find it by asking their own
// listener, and the end of the startup round is logged.
func init() { caddy.RegisterEventHook("flatten", instanceStarted) }

// starting holds the instances started (OnStartup) since the last instance startup event.
var starting struct {
	sync.Mutex
	fs []*Flatten
}

func instanceStarted(event caddy.EventName, info any) error {
	if event != caddy.InstanceStartupEvent {
		return nil
	}
	starting.Lock()
	fs := starting.fs
	starting.fs = nil
	starting.Unlock()
	inst, _ := info.(*caddy.Instance)
	if len(fs) == 0 || inst == nil {
		return nil
	}
	logTotals(fs)
	for _, f := range fs {
		if f.xfr != nil {
			watched.add(f)
		}
	}
	var listeners []net.Addr
	for _, sl := range inst.Servers() {
		if a := sl.LocalAddr(); a != nil {
			listeners = append(listeners, a)
		}
	}
	// Not in the event's goroutine: caddy's Start waits for its hooks.
	go func() {
		for _, f := range fs {
			if f.pool.self != nil && f.pool.self.server.Load() == nil {
				f.findServer(listeners)
			}
		}
		awaitRound(fs, time.Now())
	}()
	return nil
}

// logTotals logs what the blocks started together flatten, in one line.
func logTotals(fs []*Flatten) {
	aliases, targets := 0, 0
	pools := map[*pool]bool{}
	var upstreams []string
	self := 0
	for _, f := range fs {
		aliases += f.aliases.len()
		if !pools[f.pool] {
			pools[f.pool] = true
			targets += len(f.pool.cache.pins)
		}
		upstreams = append(upstreams, f.cfg.upstreams...)
		if f.pool.self != nil {
			self++
		}
	}
	slices.Sort(upstreams)
	upstreams = slices.Compact(upstreams)
	via := []string{}
	if len(upstreams) > 0 {
		via = append(via, fmt.Sprintf("%d upstreams (%s)", len(upstreams), strings.Join(upstreams[:min(len(upstreams), 3)], ", ")))
	}
	if self > 0 {
		via = append(via, fmt.Sprintf("this server (%d blocks)", self))
	}
	log.Infof("flatten %s: %d server blocks flatten %d aliases to %d targets in %d pools, resolved through %s",
		FullVersion(), len(fs), aliases, targets, len(pools), strings.Join(via, " and "))
}

// findServer asks the block's own listeners for its zone's SOA, so that the query brings the
// server to resolve through (ServeDNS observes it) and the startup round starts without waiting
// for a client's query. A listener on every address is asked on loopback.
func (f *Flatten) findServer(listeners []net.Addr) {
	defer f.pool.self.probed.Store(true)
	q := new(dns.Msg)
	q.SetQuestion(f.cfg.zones[0], dns.TypeSOA)
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	var errs []string
	for _, a := range listeners {
		if f.pool.self.server.Load() != nil || f.pool.bg.done() {
			return
		}
		ap, ok := a.(*net.UDPAddr)
		if !ok {
			continue
		}
		ip := ap.IP
		if ip.IsUnspecified() {
			ip = net.IPv4(127, 0, 0, 1)
			if ap.IP.To4() == nil {
				ip = net.IPv6loopback
			}
		}
		if _, _, err := c.Exchange(q, net.JoinHostPort(ip.String(), fmt.Sprint(ap.Port))); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if f.pool.self.server.Load() == nil && !f.pool.bg.done() {
		log.Warningf("%s: could not ask this server's own listener to resolve through it (%s); the aliases are resolved from the first query on",
			f.cfg.labels.zones, strings.Join(errs, "; "))
	}
}

// awaitRound logs, once every block's startup round has ended (or cannot start), how many of
// their targets resolved and how many failed, and how long it took.
func awaitRound(fs []*Flatten, start time.Time) {
	for slices.IndexFunc(fs, func(f *Flatten) bool { return !f.roundOver() }) >= 0 {
		time.Sleep(20 * time.Millisecond)
	}
	var resolved, failed, total int
	var first string
	pools := map[*pool]bool{}
	stopped := true
	for _, f := range fs {
		if pools[f.pool] {
			continue
		}
		pools[f.pool] = true
		stopped = stopped && f.pool.bg.done()
		for _, p := range f.pool.cache.pins {
			for i := range p.slots {
				s := &p.slots[i]
				total++
				switch fl := s.fail.Load(); {
				case s.good.Load() != nil:
					resolved++
				case fl != nil:
					failed++
					if first == "" {
						first = fmt.Sprintf(" (first: %s %s: %s)", s.name, dns.TypeToString[s.qtype()], fl.err.text)
					}
				}
			}
		}
	}
	if stopped {
		return // shut down before its round ended: a reload's new instance tells its own
	}
	log.Infof("startup round done in %s: %d of %d targets and types resolved, %d failed%s",
		time.Since(start).Round(time.Millisecond), resolved, total, failed, first)
}

// roundOver reports whether the block's startup round has ended, or cannot start: stopped, or
// resolving through a server it could not find.
func (f *Flatten) roundOver() bool {
	return f.pool.cache.ready() || f.pool.bg.done() || (f.pool.self != nil && f.pool.self.server.Load() == nil && f.pool.self.probed.Load())
}
