package flatten

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	cacheplugin "github.com/coredns/coredns/plugin/cache"
	"github.com/coredns/coredns/plugin/file"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
)

// The benchmarks answer the same question, example.org. A, with the same two addresses, three
// ways, so that their ratio can be read in one run:
//
//	BenchmarkFlattenHit      flatten from its cache (the warm path of a configured alias)
//	BenchmarkFileStatic      the *file* plugin serving the addresses as static records
//	BenchmarkCachePluginHit  the *cache* plugin's hit, over *file* (CoreDNS's fastest answer)
//
// Each reply is packed, as the server does before it sends it, so that a path that builds a
// cheap message and one that builds an expensive one are told apart.

const benchZone = `$ORIGIN example.org.
@ 3600 IN SOA ns1.example.org. hostmaster.example.org. 1 7200 3600 1209600 300
@ 3600 IN NS ns1.example.org.
@ 300 IN A 192.0.2.10
@ 300 IN A 192.0.2.11
ns1 3600 IN A 192.0.2.53
`

type packWriter struct{ test.ResponseWriter }

func (w *packWriter) WriteMsg(m *dns.Msg) error {
	_, err := m.Pack()
	return err
}

func benchQuery() *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion("example.org.", dns.TypeA)
	return q
}

func benchFile(b *testing.B) file.File {
	z, err := file.Parse(strings.NewReader(benchZone), "example.org.", "bench", 0)
	if err != nil {
		b.Fatal(err)
	}
	return file.File{Next: test.ErrorHandler(), Zones: file.Zones{Z: map[string]*file.Zone{"example.org.": z}, Names: []string{"example.org."}}}
}

// benchUpstream answers any A question with the two addresses and a one-hop chain.
func benchUpstream() exchanger {
	return exchangerFunc(func(_ context.Context, name string, qtype uint16) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Response = true
		if qtype == dns.TypeA {
			for _, ip := range []byte{10, 11} {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: []byte{192, 0, 2, ip}})
			}
		}
		return m, nil
	})
}

func benchServe(b *testing.B, h interface {
	ServeDNS(context.Context, dns.ResponseWriter, *dns.Msg) (int, error)
}) {
	ctx := context.Background()
	w := &packWriter{}
	q := benchQuery()
	if _, err := h.ServeDNS(ctx, w, q); err != nil { // warm
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		h.ServeDNS(ctx, w, q)
	}
}

func BenchmarkFlattenHit(b *testing.B) {
	f := newLadderFlatten(benchUpstream(), newFakeClock(), false)
	f.Next = benchFile(b)
	benchServe(b, f)
}

func BenchmarkFileStatic(b *testing.B) {
	benchServe(b, benchFile(b))
}

func BenchmarkCachePluginHit(b *testing.B) {
	c := cacheplugin.New()
	c.Zones = []string{"example.org."}
	c.Next = benchFile(b)
	benchServe(b, c)
}

// BenchmarkFlattenMiss resolves the chain for every query (the entry is dropped each time): the
// cost of a miss without the network, i.e. flatten's own overhead on the cold path.
func BenchmarkFlattenMiss(b *testing.B) {
	f := newLadderFlatten(benchUpstream(), newFakeClock(), false)
	f.Next = benchFile(b)
	a, _ := f.aliases.get("example.org.")
	s := a.slots(0, nil)[0]
	ctx := context.Background()
	w := &packWriter{}
	q := benchQuery()
	b.ReportAllocs()
	for b.Loop() {
		s.good.Store(nil)
		f.ServeDNS(ctx, w, q)
	}
}

// BenchmarkManyAliases measures what 100,000 configured aliases cost: the live heap once every
// alias's A and AAAA are resolved (reported as MB-heap), and a hit's time over random names of
// the 100,000 against the same for one alias (BenchmarkFlattenHit), for the cost of a big map
// and of entries that are not in the CPU's caches. Targets tNNNNN CNAME one of 256 servers, as
// bench/run.sh's fake target answers; each answer is unpacked from the wire, as an upstream's is.
// manyAliases configures n aliases, aNNN.example.org to tNNN.agency.test, each a CNAME to one of
// 256 servers with two A records and one AAAA, resolves them all, and returns the plugin and the
// heap it takes (live bytes after a collection, before and after).
func manyAliases(tb testing.TB, n int) (*Flatten, uint64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	var cf strings.Builder
	cf.WriteString("flatten example.org {\n")
	for i := range n {
		fmt.Fprintf(&cf, "alias a%d t%d.agency.test.\n", i, i)
	}
	cf.WriteString("}\n")
	f, err := parse(newSetupController(cf.String(), nil))
	if err != nil {
		tb.Fatal(err)
	}
	ex := exchangerFunc(func(_ context.Context, name string, qtype uint16) (*dns.Msg, error) {
		var id int
		fmt.Sscanf(name, "t%d.", &id)
		server := fmt.Sprintf("s%d.agency.test.", id%256)
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Response = true
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 3600}, Target: server})
		if qtype == dns.TypeA {
			for _, ip := range []byte{10, 11} {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: server, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: []byte{192, 0, 2, ip}})
			}
		} else {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: server, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 3600}, AAAA: net.ParseIP("2001:db8::10")})
		}
		wire, err := m.Pack()
		if err != nil {
			return nil, err
		}
		out := new(dns.Msg)
		return out, out.Unpack(wire)
	})
	w := &walker{ex: ex, maxDepth: defaultMaxDepth}
	f.build(w.resolve)
	f.aliases.each(func(_ string, a alias) {
		for i := range 2 {
			for _, s := range a.slots(i, nil) {
				// As the refresher does: the slot's flight (run) stores the entry.
				fl := &flight{done: make(chan struct{})}
				f.pool.cache.run(context.Background(), s, fl, question{tally: f.pool.cache.tally})
				if fl.err != nil {
					tb.Fatal(fl.err)
				}
			}
		}
	})
	runtime.GC()
	runtime.ReadMemStats(&after)
	return f, after.HeapAlloc - before.HeapAlloc
}

func BenchmarkManyAliases(b *testing.B) {
	const n = 100_000
	f, heapBytes := manyAliases(b, n)
	f.Next = benchFile(b)

	qs := make([]*dns.Msg, 4096)
	for i := range qs {
		qs[i] = new(dns.Msg)
		qs[i].SetQuestion(fmt.Sprintf("a%d.example.org.", rand.IntN(n)), dns.TypeA)
	}
	ctx := context.Background()
	pw := &packWriter{}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		f.ServeDNS(ctx, pw, qs[i%len(qs)])
		i++
	}
	b.ReportMetric(float64(heapBytes)/1e6, "MB-heap")
	runtime.KeepAlive(f)
}

// TestMemoryPerBlock bounds what a server block with its own flatten costs beyond the same block
// without it (issue: 10,000 client zones, two aliases each, in at most 24 MB): its aliases and a
// few hundred bytes, with everything per process (refresh queue and pacing, resolvers,
// interning, metrics) shared, and each target resolved once for the blocks of a pool. Measured as
// live heap after a GC, the same blocks without flatten subtracted: about 2,960 bytes with a
// cache, schedule timer and Prometheus series per block; 928 with pools and tallies; 735 since a
// block's few aliases are kept in a slice instead of a map. FLATTEN_MEMPROFILE=FILE writes the heap profile of the blocks with flatten, every
// allocation sampled.
func TestMemoryPerBlock(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 2,000 server blocks twice")
	}
	const blocks, targets = 2000, 64
	var records []string
	for i := range targets {
		records = append(records, fmt.Sprintf("s%d.agency.test. 3600 IN A 192.0.2.%d", i, i+1),
			fmt.Sprintf("s%d.agency.test. 3600 IN AAAA 2001:db8::%d", i, i+1))
	}
	u := newFakeUpstream(t, records...)
	zone := writeZone(t, "@", "@ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300", "@ 3600 IN NS ns1", "ns1 3600 IN A 192.0.2.53")
	corefile := func(flat bool) string {
		var b strings.Builder
		for i := range blocks {
			fmt.Fprintf(&b, "client%d.test:0 {\n bind 127.0.0.1\n", i)
			if flat {
				fmt.Fprintf(&b, " flatten {\n  alias @ s%d.agency.test\n  alias www s%d.agency.test\n  upstream %s\n  refresh_rate 100000\n }\n",
					i%targets, (i+targets/2)%targets, u.Addr)
			}
			fmt.Fprintf(&b, " file %s client%d.test\n}\n", zone, i)
		}
		return b.String()
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}

	inst := startReloadable(t, corefile(false))
	base := heap()
	stopInstance(t, inst)

	if os.Getenv("FLATTEN_MEMPROFILE") != "" {
		defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	inst = startReloadable(t, corefile(true))
	defer stopInstance(t, inst)
	deadline := time.Now().Add(time.Minute)
	for !allReady() {
		if time.Now().After(deadline) {
			t.Fatal("the startup round did not end within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	flat := heap()
	if p := os.Getenv("FLATTEN_MEMPROFILE"); p != "" {
		out, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		pprof.Lookup("heap").WriteTo(out, 0)
		out.Close()
	}
	per := (int64(flat) - int64(base)) / blocks
	t.Logf("%d blocks: %d bytes of heap without flatten, %d with, %d per block", blocks, base, flat, per)
	// About 625 bytes measured; a block's own copy of its pool's settings would add about 125.
	if per > 680 {
		t.Errorf("a block with flatten costs %d bytes of heap more than without; want at most 680", per)
	}
}

// allReady reports whether every running pool has ended its startup round.
func allReady() bool {
	for _, p := range running() {
		if !p.cache.ready() {
			return false
		}
	}
	return true
}
