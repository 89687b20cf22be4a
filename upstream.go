package flatten

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
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

// newQuery builds the question we send upstream: RD set, EDNS0 with a 1232-byte buffer. No DO
// (we never copy upstream signatures: *dnssec* above us signs what we answer), unless dnssec
// (`dnssec_targets secure`) asks the upstream to validate: then DO and AD (validate.go).
func newQuery(name string, qtype uint16, dnssec bool) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = true
	q.SetEdns0(udpSize, dnssec)
	q.AuthenticatedData = dnssec
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
// background refresh does not, so the server seen on the first query is kept: at startup the
// block asks its own listener for that (findServer).
type selfExchanger struct {
	up     *upstream.Upstream
	server atomic.Pointer[dnsserver.Server]
	probed atomic.Bool // findServer has asked the block's own listeners
}

func newSelfExchanger() *selfExchanger { return &selfExchanger{up: upstream.New()} }

// observe remembers the server a query came through, for lookups made outside any query. It
// reports whether this was the first server seen.
func (s *selfExchanger) observe(ctx context.Context) bool {
	srv, ok := ctx.Value(dnsserver.Key{}).(*dnsserver.Server)
	return ok && s.server.CompareAndSwap(nil, srv)
}

var errNoServer = &resolveError{dns.ExtendedErrorCodeNotReady, reasonNoServer, "the server to resolve through is not known yet: no query has reached it"}

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
	m := newQuery(name, q.key.qtype, q.dnssec)
	addECS(m, q.sub)
	q.tally.upstream.Add(1)
	resp, err := s.up.Lookup(ctx, request.Request{W: selfWriter, Req: m}, name, q.key.qtype)
	if err == nil && resp == nil {
		err = errMalformed(name, "no answer from the plugin chain")
	}
	if err == nil {
		err = checkAnswer(m, resp)
	}
	if err != nil {
		re := asResolveError(name, err)
		q.tally.failed(re.reason)
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
	addrs     []string
	perTry    time.Duration
	resolvers []*resolver // the shared resolvers of addrs, from start to stop
}

// resolver is one upstream address and what flatten remembers of it, shared by every block that
// asks it with the same read timeout (resolvers). The proxy package would probe a resolver that
// failed with `. IN NS` questions until it answers; flatten never asks it to (it asks upstream
// only about the names it flattens), and keeps this memory instead.
type resolver struct {
	proxy *proxy.Proxy
	key   resolverKey
	users int // blocks that hold it; guarded by resolvers' lock
	// downUntil is when a resolver that did not answer (a timeout, a network error, an answer
	// that is not one) is asked in configured order again; until then it is asked after the
	// others. Nanoseconds since clockBase; 0 when it answered last.
	downUntil atomic.Int64
	// plainUntil is until when a resolver that answered FORMERR or NOTIMP to a question with
	// EDNS, and answered it without, is asked without EDNS (RFC 6891 7).
	plainUntil atomic.Int64
}

type resolverKey struct {
	addr        string
	readTimeout time.Duration
}

// resolvers holds the resolvers of the running blocks: one proxy (with its connection manager
// goroutine, its pooled connections and the memory above) per address and read timeout, however
// many blocks ask it. The first block to start with it starts it, the last to stop stops it; a
// reload starts the new blocks first, so it keeps what the old ones learnt.
var resolvers = struct {
	sync.Mutex
	m map[resolverKey]*resolver
}{m: map[resolverKey]*resolver{}}

func acquireResolver(k resolverKey) *resolver {
	resolvers.Lock()
	defer resolvers.Unlock()
	r := resolvers.m[k]
	if r == nil {
		p := proxy.NewProxy("flatten", k.addr, transport.DNS)
		p.SetReadTimeout(k.readTimeout)
		p.Start(time.Second) // the probe interval is never used: nothing calls Healthcheck
		r = &resolver{proxy: p, key: k}
		resolvers.m[k] = r
	}
	r.users++
	return r
}

func (r *resolver) release() {
	resolvers.Lock()
	defer resolvers.Unlock()
	if r.users--; r.users == 0 {
		delete(resolvers.m, r.key)
		r.proxy.Stop()
	}
}

const (
	// downFor is how long a resolver that did not answer is asked last: as long as a failure
	// is remembered (failureTTL).
	downFor = failureTTL
	// plainFor is how long a resolver that does not speak EDNS is asked without it: as long as
	// Unbound remembers a server's EDNS lameness (infra-host-ttl, 900 s).
	plainFor = 15 * time.Minute
)

func newProxyExchanger(addrs []string, timeout time.Duration) *proxyExchanger {
	// Give each resolver a fair share of the budget so the next one is still tried in time.
	perTry := max(timeout/time.Duration(min(len(addrs), 3)), 100*time.Millisecond)
	return &proxyExchanger{addrs: addrs, perTry: perTry}
}

// start takes the block's resolvers from the shared ones.
func (pe *proxyExchanger) start() {
	for _, a := range pe.addrs {
		pe.resolvers = append(pe.resolvers, acquireResolver(resolverKey{a, pe.perTry}))
	}
}

func (pe *proxyExchanger) stop() {
	for _, r := range pe.resolvers {
		r.release()
	}
}

func (pe *proxyExchanger) exchange(ctx context.Context, q question, name string) (*dns.Msg, error) {
	// Resolvers that answered last first, in configured order, then the ones that did not:
	// when none answers we still try them all rather than fail without asking.
	now := since(time.Now())
	order := make([]*resolver, 0, len(pe.resolvers))
	for _, r := range pe.resolvers {
		if r.downUntil.Load() <= now {
			order = append(order, r)
		}
	}
	for _, r := range pe.resolvers {
		if r.downUntil.Load() > now {
			order = append(order, r)
		}
	}

	var last error
	for _, r := range order {
		if ctx.Err() != nil {
			break
		}
		resp, err := r.try(ctx, q, name)
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

// try asks r for name. A resolver that answers FORMERR or NOTIMP to a question with EDNS is asked
// once more without it (RFC 6891 7: a responder that does not implement EDNS answers FORMERR,
// and the requester retries without the OPT record), and is asked so for plainFor when that
// succeeds.
func (r *resolver) try(ctx context.Context, q question, name string) (*dns.Msg, error) {
	plain := r.plainUntil.Load() > since(time.Now())
	resp, err := r.ask(ctx, q, name, plain)
	if err == nil && !plain && (resp.Rcode == dns.RcodeFormatError || resp.Rcode == dns.RcodeNotImplemented) {
		if p, perr := r.ask(ctx, q, name, true); perr == nil && p.Rcode != dns.RcodeFormatError && p.Rcode != dns.RcodeNotImplemented {
			r.plainUntil.Store(since(time.Now().Add(plainFor)))
			resp = p
		}
	}
	if err == nil && (resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused ||
		resp.Rcode == dns.RcodeNotImplemented || resp.Rcode == dns.RcodeFormatError) {
		err = errRcode(name, resp)
	}
	if err != nil {
		re := asResolveError(name, err)
		q.tally.failed(re.reason)
		if re.reason != reasonRcode {
			// A resolver that answers, even with SERVFAIL, is alive.
			r.downUntil.Store(since(time.Now().Add(downFor)))
		}
		return nil, re
	}
	r.downUntil.Store(0)
	return resp, nil
}

// ask sends r one question for name, over UDP and then over TCP if the UDP answer was truncated
// (RFC 7766, RFC 1035 4.2.1): with EDNS and the question's client network, or plain.
func (r *resolver) ask(ctx context.Context, q question, name string, plain bool) (*dns.Msg, error) {
	m := newQuery(name, q.key.qtype, q.dnssec)
	if plain {
		m.Extra = nil
	} else {
		addECS(m, q.sub)
	}
	state := request.Request{W: proxyWriter, Req: m}
	opts := proxy.Options{PreferUDP: true}
	for {
		q.tally.upstream.Add(1)
		resp, _, _, err := r.proxy.Connect(ctx, state, opts)
		if errors.Is(err, proxy.ErrCachedClosed) {
			// A pooled connection the resolver had closed: dial a new one, as forward does.
			continue
		}
		if err == nil {
			err = checkAnswer(m, resp)
		}
		if err == nil && resp.Truncated && !opts.ForceTCP {
			opts = proxy.Options{ForceTCP: true}
			continue
		}
		if err == nil && resp.Truncated {
			err = errMalformed(name, "truncated answer over TCP")
		}
		return resp, err
	}
}
