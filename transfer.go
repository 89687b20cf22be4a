package flatten

import (
	"context"
	"encoding/hex"
	"fmt"
	"hash"
	"hash/fnv"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/transfer"

	"github.com/miekg/dns"
)

// Zone transfers of a flattened zone (with *transfer* in the block). *transfer* asks the plugins
// of the block that transfer zones, in plugin order, and flatten comes before *file*, *auto* and
// *secondary*: it takes their zone and hands on what its queries answer, so that secondaries
// (RFC 2182: every zone has some) serve the flattened names like the primary:
//
//   - at each flattened name (`alias`, and ALIAS records with `zone_alias`), the A and AAAA records a
//     query gets now, with its TTL, in place of the zone's own; no ALIAS (TYPE65401) records, which
//     secondaries would serve as opaque data. With `transfer_alias` the other way round: the
//     ALIAS records, and one for each `alias` line, for secondaries that flatten themselves.
//   - a serial that moves when those addresses change, so that secondaries fetch them, and NOTIFY
//     (RFC 1996) through *transfer* when it does.

// serialEpoch is 2026-01-01T00:00:00Z: the serial a flattened zone shows is the zone's own plus
// the seconds from it to the last change of the flattened addresses (zoneVersions.update).
const serialEpoch = 1767225600

// xfr is a block's part in zone transfers: what *transfer* needs from it, found at OnStartup.
type xfr struct {
	notifier *transfer.Transfer    // the block's *transfer*, which sends NOTIFY to its `to`
	sources  []transfer.Transferer // the plugins below flatten that transfer zones, in order
}

// startTransfers sets up the block's part in zone transfers, if *transfer* is in the block. Its
// zones are watched for changes of the flattened addresses once the instance has started
// (instanceStarted): the watch asks the plugins below, whose own OnStartup may not have run yet.
func (f *Flatten) startTransfers() {
	if f.server == nil {
		return
	}
	t, ok := f.server.Handler("transfer").(*transfer.Transfer)
	if !ok {
		return
	}
	x := &xfr{notifier: t}
	for _, h := range f.server.Handlers() {
		if src, ok := h.(transfer.Transferer); ok && h != plugin.Handler(f) {
			x.sources = append(x.sources, src)
		}
	}
	f.xfr = x
}

// stopTransfers ends the watch of the block's zones.
func (f *Flatten) stopTransfers() {
	if f.xfr != nil {
		watched.remove(f)
	}
}

// watchInterval is how often the zones with transfers are looked at for changes of their
// flattened addresses.
const watchInterval = time.Second

// watched holds the blocks with transfers, whose zones one goroutine for the process looks at
// every second (watchAll), while there are any.
var watched = watchList{ticking: ticking{interval: watchInterval}}

func init() { watched.fn = watched.watchAll }

type watchList struct {
	ticking
	mu     sync.Mutex
	blocks []*Flatten
}

func (l *watchList) add(f *Flatten) {
	l.mu.Lock()
	l.blocks = append(l.blocks, f)
	l.mu.Unlock()
	l.acquire()
}

// remove takes f off the list; the last one out waits for the goroutine to end.
func (l *watchList) remove(f *Flatten) {
	l.mu.Lock()
	n := len(l.blocks)
	l.blocks = slices.DeleteFunc(l.blocks, func(g *Flatten) bool { return g == f })
	removed := len(l.blocks) < n
	l.mu.Unlock()
	if removed {
		l.release()
	}
}

// watchAll looks at the zones of the blocks: when their flattened addresses (or their own
// serial) changed, the serial moves, and secondaries are notified, at most once every `ttl MIN`
// per zone however often addresses flap (the last change is notified when that time is up).
func (l *watchList) watchAll() {
	l.mu.Lock()
	blocks := slices.Clone(l.blocks)
	l.mu.Unlock()
	for _, f := range blocks {
		f.watchZones()
	}
}

// watchZones brings the block's zones up to date, and notifies their secondaries when due.
func (f *Flatten) watchZones() {
	for _, zone := range f.cfg.zones {
		if _, err := f.version(zone, 0, true); err != nil {
			continue
		}
		if versions.notifyDue(f.zoneKey(zone), time.Now(), time.Duration(f.cfg.ttlMin)*time.Second) {
			if err := f.xfr.notifier.Notify(zone); err != nil {
				log.Warningf("%s: NOTIFY of its secondaries: %v", zone, err)
			}
		}
	}
}

// Transfer implements transfer.Transferer: the zone as the plugins below flatten transfer it, with
// the flattened names materialized (see above), under the serial that moves with them. An IXFR
// (serial not 0) from a secondary that has this serial gets the SOA alone. The addresses are what
// queries get now: a target that is not fresh is resolved first, all of them together within
// `timeout`; a target that fails gives what a query would (stale addresses, the zone's own, or
// none), and the transfer goes on.
func (f *Flatten) Transfer(zone string, serial uint32) (<-chan []dns.RR, error) {
	zone = strings.ToLower(zone)
	if f.xfr == nil || !slices.Contains(f.cfg.zones, zone) {
		return nil, transfer.ErrNotAuthoritative
	}
	rrs, err := f.zoneData(zone)
	if err != nil {
		return nil, err
	}
	names := f.flatNames(zone, rrs)
	f.warm(names, false)
	flat, sum := f.materialize(zone, names)
	soa := dns.Copy(rrs[0]).(*dns.SOA)
	now := time.Now()
	shown, held := versions.update(f.zoneKey(zone), soa.Serial, names, sum, now)
	if held {
		// Changed within the second the serial last moved: the records must not go out under
		// the serial of other records, so the transfer waits for the next second (at most one).
		time.Sleep(time.Unix(now.Unix()+1, 0).Sub(now))
		shown, _ = versions.update(f.zoneKey(zone), soa.Serial, names, sum, time.Now())
	}
	soa.Serial = shown

	ch := make(chan []dns.RR, 1)
	if serial != 0 && !serialLess(serial, soa.Serial) {
		ch <- []dns.RR{soa}
		close(ch)
		return ch, nil
	}
	out := []dns.RR{soa}
	flatNamed := map[string]bool{}
	for _, n := range names {
		flatNamed[n.name] = true
	}
	for _, rr := range rrs[1:] {
		h := rr.Header()
		switch {
		case h.Rrtype == dns.TypeSOA:
			continue // the last record; ours follows
		case h.Rrtype == typeALIAS && !f.cfg.transferAlias:
			continue
		case flatNamed[strings.ToLower(h.Name)] && isAddress(rr) && !f.cfg.transferAlias:
			continue // the zone's own addresses (and their signatures): the flattened ones stand in their place
		}
		out = append(out, rr)
	}
	out = append(out, flat...)
	out = append(out, soa)
	ch <- out
	close(ch)
	return ch, nil
}

// isAddress reports whether rr is an A or AAAA record, or a signature over either.
func isAddress(rr dns.RR) bool {
	t := rr.Header().Rrtype
	if sig, ok := rr.(*dns.RRSIG); ok {
		t = sig.TypeCovered
	}
	return t == dns.TypeA || t == dns.TypeAAAA
}

// zoneData returns the records of zone from the first plugin below flatten that transfers it,
// SOA first (and last, as a transfer ends).
func (f *Flatten) zoneData(zone string) ([]dns.RR, error) {
	for _, src := range f.xfr.sources {
		ch, err := src.Transfer(zone, 0)
		if err == transfer.ErrNotAuthoritative {
			continue
		}
		if err != nil {
			return nil, err
		}
		var rrs []dns.RR
		for batch := range ch {
			rrs = append(rrs, batch...)
		}
		if len(rrs) == 0 || rrs[0].Header().Rrtype != dns.TypeSOA {
			return nil, errNoZoneData(zone)
		}
		return rrs, nil
	}
	return nil, transfer.ErrNotAuthoritative
}

func errNoZoneData(zone string) error {
	return fmt.Errorf("no zone data for %s below flatten", zone)
}

// zoneKey names zone as the block serves it, for versions: a zone is served once per listener
// and view.
func (f *Flatten) zoneKey(zone string) string {
	return f.cfg.labels.server + " " + f.cfg.labels.view + " " + zone
}

// flatName is a flattened name of a zone, and what its records come from: the slots of its
// targets for A, for AAAA and (with `https`, unless the zone has its own) HTTPS, in order, and
// the bound on their TTL (an ALIAS record's TTL).
type flatName struct {
	name    string
	targets []string
	slots   [3][]*slot // by qtypeIndex
	ttlCap  uint32
}

// flatNames returns the flattened names of zone, sorted: its `alias` names, and with `zone_alias`
// the owners of its ALIAS records (rrs, the zone's records) that no `alias` line names.
func (f *Flatten) flatNames(zone string, rrs []dns.RR) []flatName {
	var names []flatName
	f.aliases.each(func(name string, a alias) {
		if !dns.IsSubDomain(zone, name) {
			return
		}
		n := flatName{name: name, targets: a.targets(), ttlCap: math.MaxUint32}
		for qi := range qtypes {
			n.slots[qi] = a.slots(qi, nil)
		}
		names = append(names, n)
	})
	var ownHTTPS map[string]bool // the names whose HTTPS records the zone has
	if f.cfg.https {
		ownHTTPS = map[string]bool{}
		for _, rr := range rrs {
			if rr.Header().Rrtype == dns.TypeHTTPS {
				ownHTTPS[strings.ToLower(rr.Header().Name)] = true
			}
		}
	}
	if f.zoneAliases != nil {
		seen := map[string]bool{}
		for _, n := range names {
			seen[n.name] = true
		}
		for _, rr := range rrs {
			h := rr.Header()
			owner := strings.ToLower(h.Name)
			if h.Rrtype != typeALIAS || seen[owner] {
				continue
			}
			target, err := aliasTarget(rr)
			if err != nil {
				continue // zoneAliasFor logs it when the name is asked for
			}
			seen[owner] = true
			n := flatName{name: owner, targets: []string{target}, ttlCap: h.Ttl}
			if f.cfg.targetAllowed(target) { // else no slot: the zone's own records (policy.go)
				for qi, qtype := range qtypes {
					n.slots[qi] = []*slot{f.pool.cache.slotFor(cacheKey{name: target, qtype: qtype})}
				}
			}
			names = append(names, n)
		}
	}
	for i := range names {
		if n := &names[i]; f.cfg.https && !ownHTTPS[n.name] {
			for _, t := range n.targets {
				if f.cfg.targetAllowed(t) {
					n.slots[httpsIndex] = append(n.slots[httpsIndex], f.pool.cache.slotFor(cacheKey{name: t, qtype: dns.TypeHTTPS}))
				}
			}
		}
	}
	slices.SortFunc(names, func(a, b flatName) int { return strings.Compare(a.name, b.name) })
	return names
}

// warm resolves, as a query would, the targets of names that have no fresh answer: all of them
// together, at most `timeout` in all, at most warmers at a time. For a transfer it is what a query
// does; in the background (paced) each resolution waits its turn under `refresh_rate` first.
func (f *Flatten) warm(names []flatName, paced bool) {
	const warmers = 64
	c := f.pool.cache
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.timeout)
	defer cancel()
	sem := make(chan struct{}, warmers)
	var wg sync.WaitGroup
	now := c.now()
	for _, n := range names {
		for _, slots := range n.slots {
			for _, s := range slots {
				if e := s.good.Load(); e != nil && now.Before(e.expires()) {
					continue
				}
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					wg.Wait()
					return
				}
				q := &question{key: s.key()}
				if paced {
					if c.limiter.Wait(ctx) != nil {
						<-sem
						wg.Wait()
						return
					}
					q.pace = c.limiter
				}
				wg.Go(func() {
					defer func() { <-sem }()
					c.get(ctx, s, q)
				})
			}
		}
	}
	wg.Wait()
}

// materialize returns the address records that queries for names get now, from the cache alone,
// and a sum of them that does not change with their TTLs counting down or their order. With
// `transfer_alias`, the ALIAS records of the `alias` lines instead (the zone's own are in the zone
// data).
func (f *Flatten) materialize(zone string, names []flatName) ([]dns.RR, uint64) {
	sum := fnv.New64a()
	var out []dns.RR
	for _, n := range names {
		if f.cfg.transferAlias {
			if n.ttlCap != math.MaxUint32 {
				continue // an ALIAS record of the zone, transferred as it is
			}
			for _, t := range n.targets {
				rr := newALIAS(n.name, t, f.cfg.ttlMax)
				out = append(out, rr)
				sum.Write([]byte(rr.String()))
			}
			continue
		}
		for qi, qtype := range qtypes {
			r := new(dns.Msg)
			r.SetQuestion(n.name, qtype)
			// A name with a TTL cap is an ALIAS record of the zone: zone data chose its target.
			q := &question{peek: true, policy: f.cfg.policyFor(n.ttlCap != math.MaxUint32)}
			v := f.decide(context.Background(), selfWriter, r, q, n.slots[qi])
			var rrs []dns.RR
			switch c := v.candidate; {
			case c.e != nil && !c.e.negative():
				rrs = renamed(c.entry().addrs(), n.name, f.answerTTL(c.e, c.src, n.ttlCap))
			case c.e == nil:
				rrs = v.fallback
			}
			keys := make([]string, 0, len(rrs))
			for _, rr := range rrs {
				if a, ok := rrAddr(rr); ok {
					keys = append(keys, n.name+" "+a.String())
				}
			}
			sumOf(sum, keys)
			out = append(out, rrs...)
		}
		if https := n.slots[httpsIndex]; len(https) > 0 {
			rrs := f.materializeHTTPS(n, https)
			keys := make([]string, 0, len(rrs))
			for _, rr := range rrs {
				keys = append(keys, n.name+" "+strings.TrimPrefix(rr.String(), rr.Header().String()))
			}
			sumOf(sum, keys)
			out = append(out, rrs...)
		}
	}
	return out, sum.Sum64()
}

// materializeHTTPS returns the HTTPS records a query for n gets now, from the cache alone: those
// of the target that answers its addresses (https holds each target's HTTPS slot).
func (f *Flatten) materializeHTTPS(n flatName, https []*slot) []dns.RR {
	i := f.answering(context.Background(), [2][]*slot{n.slots[0], n.slots[1]}, true)
	if i >= len(https) {
		return nil // a target outside allow_targets has no slot
	}
	c, _ := f.pick(context.Background(), &question{peek: true}, https[i:i+1])
	if c.e == nil || c.e.negative() {
		return nil
	}
	rrs := renamed(c.e.addrs(), n.name, f.answerTTL(c.e, c.src, n.ttlCap))
	f.trimHints(rrs, f.cfg.policyFor(n.ttlCap != math.MaxUint32))
	return rrs
}

// sumOf adds keys to sum in sorted order, so that it does not change with the records' order.
func sumOf(sum hash.Hash64, keys []string) {
	slices.Sort(keys)
	for _, k := range keys {
		sum.Write([]byte(k))
		sum.Write([]byte{0})
	}
}

// newALIAS is the ALIAS record (PowerDNS's TYPE65401, in RFC 3597 form) of name to target.
func newALIAS(name, target string, ttl uint32) dns.RR {
	wire := make([]byte, 256)
	n, _ := dns.PackDomainName(target, wire, 0, nil, false)
	return &dns.RFC3597{Hdr: dns.RR_Header{Name: name, Rrtype: typeALIAS, Class: dns.ClassINET, Ttl: ttl, Rdlength: uint16(n)},
		Rdata: hex.EncodeToString(wire[:n])}
}

// version brings what zone shows up to date and returns its serial: when the zone's own serial
// (zoneSerial; 0: ask the plugins below) moved, the zone's flattened names are read again; when
// warm, targets that are not fresh are resolved first, as the watch does.
func (f *Flatten) version(zone string, zoneSerial uint32, warm bool) (uint32, error) {
	if zoneSerial == 0 {
		r := new(dns.Msg)
		r.SetQuestion(zone, dns.TypeSOA)
		soa := f.zoneSOA(context.Background(), selfWriter, r, zone)
		if soa == nil {
			return 0, errNoZoneData(zone)
		}
		zoneSerial = soa.Serial
	}
	names, ok := versions.names(f.zoneKey(zone), zoneSerial)
	if !ok {
		rrs, err := f.zoneData(zone)
		if err != nil {
			return 0, err
		}
		zoneSerial = rrs[0].(*dns.SOA).Serial
		names = f.flatNames(zone, rrs)
	}
	if warm {
		f.warm(names, true)
	}
	_, sum := f.materialize(zone, names)
	serial, _ := versions.update(f.zoneKey(zone), zoneSerial, names, sum, time.Now())
	return serial, nil
}

// serialWriter shows a flattened zone's serial in the SOA records of answers from the zone.
type serialWriter struct {
	dns.ResponseWriter
	f    *Flatten
	zone string
}

func (w serialWriter) WriteMsg(m *dns.Msg) error {
	var soa *dns.SOA
	for _, rr := range slices.Concat(m.Answer, m.Ns) {
		if s, ok := rr.(*dns.SOA); ok && strings.EqualFold(s.Hdr.Name, w.zone) {
			soa = s
		}
	}
	if soa == nil {
		return w.ResponseWriter.WriteMsg(m)
	}
	serial, err := w.f.version(w.zone, soa.Serial, false)
	if err != nil {
		return w.ResponseWriter.WriteMsg(m)
	}
	m = m.Copy() // the message is the plugin's below; never change it (plugin.md)
	for _, rr := range slices.Concat(m.Answer, m.Ns) {
		if s, ok := rr.(*dns.SOA); ok && strings.EqualFold(s.Hdr.Name, w.zone) {
			s.Serial = serial
		}
	}
	return w.ResponseWriter.WriteMsg(m)
}

// versions holds what each flattened zone with transfers shows, by zoneKey, for the
// life of the process: a reloaded block goes on from its serial.
var versions = zoneVersions{m: map[string]*zoneVersion{}}

type zoneVersions struct {
	mu sync.Mutex
	m  map[string]*zoneVersion
}

// zoneVersion is what a zone shows: the serial, and what it was derived from.
type zoneVersion struct {
	zoneSerial uint32     // the zone's own serial
	names      []flatName // its flattened names, read at zoneSerial
	sum        uint64     // of the materialized addresses
	serial     uint32     // the serial shown
	changed    int64      // when serial last moved, in seconds since serialEpoch
	notified   uint32     // the serial secondaries were last told of
	notifiedAt time.Time
	first      bool // serial is the first shown, which the zone's plugin notified
}

// names returns the flattened names of the zone (by zoneKey) read at zoneSerial, if they are known.
func (v *zoneVersions) names(key string, zoneSerial uint32) ([]flatName, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	z := v.m[key]
	if z == nil || z.zoneSerial != zoneSerial || z.names == nil {
		return nil, false
	}
	return z.names, true
}

// update records what zone holds now (its own serial, its flattened names, the sum of their
// addresses) and returns the serial it shows: the zone's own plus the seconds from serialEpoch to
// the last change. So it grows (RFC 1982) with every change of the zone's serial or of the
// addresses, and never goes back, across reloads (kept here) and restarts (the clock has moved
// on since the last change). It moves at most once a second: a change within the second of the
// last one is taken the next second, and held reports it.
func (v *zoneVersions) update(key string, zoneSerial uint32, names []flatName, sum uint64, now time.Time) (serial uint32, held bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	z := v.m[key]
	secs := now.Unix() - serialEpoch
	if z == nil {
		z = &zoneVersion{zoneSerial: zoneSerial, names: names, sum: sum, serial: zoneSerial + uint32(secs), changed: secs, first: true}
		v.m[key] = z
		return z.serial, false
	}
	if z.zoneSerial == zoneSerial && z.sum == sum {
		return z.serial, false
	}
	if secs <= z.changed {
		return z.serial, true // too soon after the last change: taken next second
	}
	next := zoneSerial + uint32(secs)
	if !serialLess(z.serial, next) {
		next = z.serial + 1 // the zone's own serial went back: never go back with it
	}
	*z = zoneVersion{zoneSerial: zoneSerial, names: names, sum: sum, serial: next, changed: secs,
		notified: z.notified, notifiedAt: z.notifiedAt}
	return z.serial, false
}

// notifyDue reports whether the secondaries of zone are to be told of its serial now: it moved
// since they were last told, and that was at least every ago. It then records them told. The
// first serial shown is not told (the zone's plugin notified its load), nor does it start the
// interval: the first change is told at once.
func (v *zoneVersions) notifyDue(key string, now time.Time, every time.Duration) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	z := v.m[key]
	if z == nil || z.notified == z.serial {
		return false
	}
	if z.first {
		z.notified, z.first = z.serial, false
		return false
	}
	if now.Sub(z.notifiedAt) < every {
		return false
	}
	z.notified, z.notifiedAt = z.serial, now
	return true
}

// serialLess reports whether a comes before b in RFC 1982 serial number arithmetic.
func serialLess(a, b uint32) bool {
	return a != b && ((a < b && b-a < 1<<31) || (a > b && a-b > 1<<31))
}
