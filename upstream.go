package flatten

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin/pkg/proxy"
	"github.com/coredns/coredns/plugin/pkg/transport"
	"github.com/coredns/coredns/plugin/pkg/upstream"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
)

// udpSize is the EDNS0 buffer size we advertise upstream: the DNS flag day 2020 value, small
// enough to avoid IP fragmentation (RFC 6891 6.2.5).
const udpSize = 1232

// newQuery builds the question we send upstream: RD set, EDNS0 with a 1232-byte buffer, no DO
// (we never copy upstream signatures: *dnssec* above us signs what we answer).
func newQuery(name string, qtype uint16) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = true
	q.SetEdns0(udpSize, false)
	return q
}

// checkAnswer discards an answer that is not a response to q: not a response, another opcode,
// another question. Answers with the wrong ID never get here (the transport drops them).
func checkAnswer(q, resp *dns.Msg) error {
	if !resp.Response || resp.Opcode != dns.OpcodeQuery {
		return errMalformed(q.Question[0].Name, "not a response to a query")
	}
	if len(resp.Question) != 1 {
		return errMalformed(q.Question[0].Name, "answer has no single question")
	}
	aq, qq := resp.Question[0], q.Question[0]
	if aq.Qtype != qq.Qtype || aq.Qclass != qq.Qclass || !strings.EqualFold(aq.Name, qq.Name) {
		return errMalformed(qq.Name, "answer is for another question ("+aq.Name+" "+dns.TypeToString[aq.Qtype]+")")
	}
	return checkECS(q, resp)
}

// selfExchanger resolves through this CoreDNS server's own plugin chain (plugin/pkg/upstream), so
// a target served by another server block on the same listener needs no outside resolver.
//
// upstream.Lookup needs the *dnsserver.Server in the context. A client's query carries it; a
// background refresh does not, so the server seen on the last intercepted query is kept.
type selfExchanger struct {
	up     *upstream.Upstream
	server atomic.Pointer[dnsserver.Server]
}

func newSelfExchanger() *selfExchanger { return &selfExchanger{up: upstream.New()} }

// observe remembers the server a query came through, for lookups made outside any query. It
// reports whether this was the first server seen.
func (s *selfExchanger) observe(ctx context.Context) bool {
	srv, ok := ctx.Value(dnsserver.Key{}).(*dnsserver.Server)
	return ok && s.server.CompareAndSwap(nil, srv)
}

var errNoServer = &resolveError{dns.ExtendedErrorCodeNotReady, reasonNoServer, "no query has reached this server yet to resolve through"}

func (s *selfExchanger) exchange(ctx context.Context, q question, name string) (*dns.Msg, error) {
	if _, ok := ctx.Value(dnsserver.Key{}).(*dnsserver.Server); !ok {
		srv := s.server.Load()
		if srv == nil {
			return nil, errNoServer
		}
		ctx = context.WithValue(ctx, dnsserver.Key{}, srv)
	}
	// The lookup goes through the whole server and reaches flatten again (a target flattened
	// here, or a chain that comes back): the path of targets crosses the server in the context.
	ctx = withPath(ctx, &resolvePath{target: q.key.name, parent: q.path})
	m := newQuery(name, q.key.qtype)
	addECS(m, q.sub)
	upstreamQueries.WithLabelValues(q.server).Inc()
	resp, err := s.up.Lookup(ctx, request.Request{W: selfWriter, Req: m}, name, q.key.qtype)
	if err == nil && resp == nil {
		err = errMalformed(name, "no answer from the plugin chain")
	}
	if err == nil {
		err = checkAnswer(m, resp)
	}
	if err != nil {
		re := asResolveError(name, err)
		upstreamErrors.WithLabelValues(q.server, re.reason).Inc()
		return nil, re
	}
	return resp, nil
}

// resolvePath is the list of targets being resolved by the lookups through this server that led
// to the current one, to find loops between them. It is the one value flatten puts in a context:
// only there does it cross the server to the nested query (ServeDNS reads it back).
type resolvePath struct {
	target string
	parent *resolvePath
}

type pathKey struct{}

func withPath(ctx context.Context, p *resolvePath) context.Context {
	return context.WithValue(ctx, pathKey{}, p)
}

// pathFrom returns the path of a nested lookup's query; nil for a client's.
func pathFrom(ctx context.Context) *resolvePath {
	p, _ := ctx.Value(pathKey{}).(*resolvePath)
	return p
}

func (p *resolvePath) contains(target string) bool {
	for ; p != nil; p = p.parent {
		if p.target == target {
			return true
		}
	}
	return false
}

func (p *resolvePath) len() int {
	n := 0
	for ; p != nil; p = p.parent {
		n++
	}
	return n
}

// stubWriter stands in for a client on the questions flatten sends. Only its addresses are ever
// read: by plugins such as acl or log on a lookup through this server (nothing is written to it:
// upstream.Lookup wraps it in a nonwriter), and by proxy.Connect, which takes the protocol and
// buffer size from it.
type stubWriter struct {
	dns.ResponseWriter
	addr net.Addr
}

func (w stubWriter) LocalAddr() net.Addr  { return w.addr }
func (w stubWriter) RemoteAddr() net.Addr { return w.addr }

var (
	// selfWriter is TCP: the server wraps the writer of a lookup through it in a scrub writer
	// that truncates for the "client", and a TCP client gets the whole answer.
	selfWriter  = stubWriter{addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}}
	proxyWriter = stubWriter{addr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}
)

// proxyExchanger resolves through a list of resolvers with plugin/pkg/proxy (the transport of
// *forward*): UDP first, TCP when the answer is truncated, the next resolver when one fails.
type proxyExchanger struct {
	proxies []*proxy.Proxy
}

// maxFails is how many consecutive failures mark a resolver down, so that it is tried last
// until its health check succeeds (forward's default).
const maxFails = 2

func newProxyExchanger(addrs []string, timeout time.Duration) *proxyExchanger {
	pe := &proxyExchanger{}
	// Give each resolver a fair share of the budget so the next one is still tried in time.
	perTry := max(timeout/time.Duration(min(len(addrs), 3)), 100*time.Millisecond)
	for _, a := range addrs {
		p := proxy.NewProxy("flatten", a, transport.DNS)
		p.SetReadTimeout(perTry)
		pe.proxies = append(pe.proxies, p)
	}
	return pe
}

func (pe *proxyExchanger) start() {
	for _, p := range pe.proxies {
		p.Start(500 * time.Millisecond)
	}
}

func (pe *proxyExchanger) stop() {
	for _, p := range pe.proxies {
		p.Stop()
	}
}

func (pe *proxyExchanger) exchange(ctx context.Context, q question, name string) (*dns.Msg, error) {
	m := newQuery(name, q.key.qtype)
	addECS(m, q.sub)
	state := request.Request{W: proxyWriter, Req: m}
	server := q.server

	// Resolvers that are up first, in configured order, then the ones marked down: when every
	// resolver is down we still try them rather than fail without asking.
	order := make([]*proxy.Proxy, 0, len(pe.proxies))
	for _, p := range pe.proxies {
		if !p.Down(maxFails) {
			order = append(order, p)
		}
	}
	for _, p := range pe.proxies {
		if p.Down(maxFails) {
			order = append(order, p)
		}
	}

	var last error
	for _, p := range order {
		if ctx.Err() != nil {
			break
		}
		resp, err := pe.try(ctx, p, state, server)
		if err == nil {
			return resp, nil
		}
		last = err
	}
	if last == nil {
		last = ctx.Err()
	}
	return nil, asResolveError(name, last)
}

// try asks one resolver, over UDP and then over TCP if the UDP answer was truncated.
func (pe *proxyExchanger) try(ctx context.Context, p *proxy.Proxy, state request.Request, server string) (*dns.Msg, error) {
	opts := proxy.Options{PreferUDP: true}
	for {
		upstreamQueries.WithLabelValues(server).Inc()
		resp, _, _, err := p.Connect(ctx, state, opts)
		if errors.Is(err, proxy.ErrCachedClosed) {
			// A pooled connection the resolver had closed: dial a new one, as forward does.
			continue
		}
		if err == nil {
			err = checkAnswer(state.Req, resp)
		}
		if err == nil && resp.Truncated && !opts.ForceTCP {
			// RFC 7766 / RFC 1035 4.2.1: a truncated UDP answer is retried over TCP.
			opts = proxy.Options{ForceTCP: true}
			continue
		}
		if err == nil && (resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused ||
			resp.Rcode == dns.RcodeNotImplemented || resp.Rcode == dns.RcodeFormatError) {
			err = errRcode(state.Name(), resp)
		}
		if err == nil && resp.Truncated {
			err = errMalformed(state.Name(), "truncated answer over TCP")
		}
		if err != nil {
			re := asResolveError(state.Name(), err)
			upstreamErrors.WithLabelValues(server, re.reason).Inc()
			var rerr *resolveError
			if !errors.As(err, &rerr) || rerr.reason != reasonRcode {
				// A resolver that answers, even with SERVFAIL, is alive; one that does not
				// is probed until it does (and is tried last meanwhile).
				p.Healthcheck()
			}
			return nil, re
		}
		return resp, nil
	}
}
