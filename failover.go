package flatten

import "github.com/miekg/dns"

// candidate is one target's answer to a query, as the failover ladder ranks it.
type candidate struct {
	i     int      // the target's index in the alias's targets
	e     *entry   // nil: no candidate
	src   source   // where e comes from
	addrs []dns.RR // the addresses to answer with: e's, less the ones health checks found down
}

// entry returns the entry to answer with: c.e, or a copy holding only c.addrs when health checks
// dropped some of its addresses (the cached entry is shared and never modified).
func (c candidate) entry() *entry {
	if len(c.addrs) == len(c.e.addrs()) {
		return c.e
	}
	e := *c.e
	e.set = &addrSet{rrs: c.addrs}
	return &e
}

// picker ranks the answers of an alias's targets, offered in the configured order. The best is
// the first fresh answer with a healthy address; then, because every target is worse off, the
// first stale answer with a healthy address (RFC 8767); then the first answer whose addresses are
// all down (health checks fail open: answering with addresses that may be down beats answering
// with none); then the first target that has no address of the type (NODATA). A target that
// failed without a usable answer is not ranked; its error explains a SERVFAIL.
type picker struct {
	fresh, stale, down, negative candidate
	err                          *resolveError // the first failure seen
}

// add offers target i's answer. policy drops the addresses the query may not be answered with
// (`deny_addresses`, `max_addresses`): an answer left with none is a failure (EDE 18), and the
// ladder goes on. health, when health checks are on (not nil), drops addresses that are down. add
// reports true when the answer is the best possible, so later targets need not be asked.
func (p *picker) add(i int, e *entry, src source, err *resolveError, policy *addrPolicy, health *healthChecker) bool {
	if err != nil {
		p.fail(err)
	}
	if e == nil || src == srcNone {
		return false
	}
	c := candidate{i: i, e: e, src: src, addrs: e.addrs()}
	if e.negative() {
		if p.negative.e == nil {
			p.negative = c
		}
		return false
	}
	if policy != nil {
		if c.addrs = policy.apply(c.addrs); len(c.addrs) == 0 {
			p.fail(errAllDenied)
			return false
		}
	}
	if health != nil {
		allowed := c.addrs
		if c.addrs = health.filter(allowed); len(c.addrs) == 0 {
			if p.down.e == nil {
				c.addrs = allowed
				p.down = c
			}
			return false
		}
	}
	if src == srcStale {
		if p.stale.e == nil {
			p.stale = c
		}
		return false
	}
	p.fresh = c
	return true
}

// errAllDenied is the failure of a target whose every address `deny_addresses` drops.
var errAllDenied = errProhibited("every address of the target is inside deny_addresses")

// fail records a target's failure; the first one is what a SERVFAIL reports.
func (p *picker) fail(err *resolveError) {
	if p.err == nil {
		p.err = err
	}
}

// best returns the best answer offered; its e is nil when no target has one.
func (p *picker) best() candidate {
	switch {
	case p.fresh.e != nil:
		return p.fresh
	case p.stale.e != nil:
		return p.stale
	case p.down.e != nil:
		return p.down
	}
	return p.negative
}
