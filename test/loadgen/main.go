// Command loadgen is the load generator and probe of test/soak.sh. It only talks to loopback
// addresses.
//
//	loadgen run -server 127.0.0.1:1053 -names example.test. -rate 2000 -duration 4m
//	loadgen probe -server 127.0.0.1:1054 -name client1.agency.test. -wait 10s
//	loadgen metric -url http://127.0.0.1:9153/metrics -name go_goroutines
//	loadgen freeport
//
// `run` sends A and AAAA queries in turn (with EDNS0, so that stale answers carry EDE 3) at a
// fixed rate from several UDP sockets, matches every reply to its query by ID, and prints a
// summary as key=value lines: queries sent, answered, unanswered (no reply within -timeout),
// rcodes, stale answers, empty answers, and the worst latency. Every -report it prints the
// counts of the last interval to stderr, so that a failure can be placed on the timeline.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/flattendns/flatten/internal/loopback"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen run|probe|metric|freeport [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = run(os.Args[2:])
	case "probe":
		err = probe(os.Args[2:])
	case "metric":
		err = metric(os.Args[2:])
	case "freeport":
		err = freeport()
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// counts are the outcomes of one interval or of the whole run.
type counts struct {
	sent, answered, unanswered, stale, empty atomic.Int64
	rcodes                                   [24]atomic.Int64
	maxLatency                               atomic.Int64 // nanoseconds
}

func (c *counts) add(o *counts) {
	c.sent.Add(o.sent.Load())
	c.answered.Add(o.answered.Load())
	c.unanswered.Add(o.unanswered.Load())
	c.stale.Add(o.stale.Load())
	c.empty.Add(o.empty.Load())
	for i := range c.rcodes {
		c.rcodes[i].Add(o.rcodes[i].Load())
	}
	for {
		cur, l := c.maxLatency.Load(), o.maxLatency.Load()
		if l <= cur || c.maxLatency.CompareAndSwap(cur, l) {
			break
		}
	}
}

func (c *counts) latency(d time.Duration) {
	for {
		cur := c.maxLatency.Load()
		if int64(d) <= cur || c.maxLatency.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

func (c *counts) rcodeString() string {
	var parts []string
	for i := range c.rcodes {
		if n := c.rcodes[i].Load(); n > 0 {
			parts = append(parts, fmt.Sprintf("%s:%d", dns.RcodeToString[i], n))
		}
	}
	return strings.Join(parts, ",")
}

type pending struct {
	sent time.Time
}

// worker owns one connected UDP socket and a share of the rate.
type worker struct {
	conn  net.Conn
	mu    sync.Mutex
	out   map[uint16]pending
	next  uint16
	stats func() *counts // the current interval's counts
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	server := fs.String("server", "", "address to query (127.0.0.0/8 only)")
	names := fs.String("names", "", "comma-separated names to ask for, in turn")
	rate := fs.Int("rate", 2000, "queries per second")
	duration := fs.Duration("duration", 4*time.Minute, "how long to send")
	timeout := fs.Duration("timeout", 2*time.Second, "how long a query may wait for its reply")
	sockets := fs.Int("sockets", 8, "UDP sockets to send from")
	report := fs.Duration("report", 10*time.Second, "interval of the progress lines on stderr")
	fs.Parse(args)
	if err := loopback.Check(*server); err != nil {
		return err
	}
	qnames := strings.Split(*names, ",")
	if *names == "" || *rate < 1 || *sockets < 1 {
		return errors.New("need -names, a positive -rate and -sockets")
	}

	var cur atomic.Pointer[counts]
	cur.Store(&counts{})
	total := &counts{}
	stats := func() *counts { return cur.Load() }

	var workers []*worker
	for range *sockets {
		c, err := net.Dial("udp", *server)
		if err != nil {
			return err
		}
		w := &worker{conn: c, out: map[uint16]pending{}, stats: stats}
		workers = append(workers, w)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	start := time.Now()
	var readers, senders sync.WaitGroup
	for i, w := range workers {
		readers.Add(1)
		go func() { defer readers.Done(); w.read() }()
		senders.Add(1)
		go func() {
			defer senders.Done()
			w.send(ctx, i, len(workers), *rate, qnames)
		}()
	}
	// Expire queries that waited too long; roll the interval counts over.
	tick := time.NewTicker(100 * time.Millisecond)
	lastReport := time.Now()
	roll := func(final bool) {
		if final || time.Since(lastReport) >= *report {
			c := cur.Swap(&counts{})
			total.add(c)
			fmt.Fprintf(os.Stderr, "loadgen: t=%4.0fs sent=%d answered=%d unanswered=%d stale=%d rcodes=%s max_latency=%v\n",
				time.Since(start).Seconds(), c.sent.Load(), c.answered.Load(), c.unanswered.Load(), c.stale.Load(),
				c.rcodeString(), time.Duration(c.maxLatency.Load()).Round(time.Millisecond))
			lastReport = time.Now()
		}
	}
	expire := func(all bool) {
		now := time.Now()
		for _, w := range workers {
			w.mu.Lock()
			for id, p := range w.out {
				if all || now.Sub(p.sent) > *timeout {
					delete(w.out, id)
					stats().unanswered.Add(1)
				}
			}
			w.mu.Unlock()
		}
	}
	func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				expire(false)
				roll(false)
			}
		}
	}()
	senders.Wait()
	// Give the last queries their time to be answered.
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		left := 0
		for _, w := range workers {
			w.mu.Lock()
			left += len(w.out)
			w.mu.Unlock()
		}
		if left == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	expire(true)
	for _, w := range workers {
		w.conn.Close()
	}
	readers.Wait()
	roll(true)
	tick.Stop()

	elapsed := time.Since(start)
	fmt.Printf("duration_s=%.1f\n", elapsed.Seconds())
	fmt.Printf("rate_target=%d\n", *rate)
	fmt.Printf("rate_achieved=%.0f\n", float64(total.sent.Load())/duration.Seconds())
	fmt.Printf("sent=%d\n", total.sent.Load())
	fmt.Printf("answered=%d\n", total.answered.Load())
	fmt.Printf("unanswered=%d\n", total.unanswered.Load())
	fmt.Printf("stale=%d\n", total.stale.Load())
	fmt.Printf("empty=%d\n", total.empty.Load())
	for i := range total.rcodes {
		if n := total.rcodes[i].Load(); n > 0 {
			fmt.Printf("rcode_%s=%d\n", dns.RcodeToString[i], n)
		}
	}
	fmt.Printf("servfail=%d\n", total.rcodes[dns.RcodeServerFailure].Load())
	fmt.Printf("max_latency_ms=%d\n", time.Duration(total.maxLatency.Load()).Milliseconds())
	return nil
}

// send sends this worker's share of the rate: worker i of n sends the queries whose sequence
// number is i modulo n, each at its time on the fixed schedule, so that a stall is caught up.
func (w *worker) send(ctx context.Context, i, n, rate int, names []string) {
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for seq := i; ; seq += n {
		at := start.Add(time.Duration(seq) * interval)
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		} else if ctx.Err() != nil {
			return
		}
		qtype := dns.TypeA
		if seq%2 == 1 {
			qtype = dns.TypeAAAA
		}
		m := new(dns.Msg)
		m.SetQuestion(names[(seq/2)%len(names)], qtype)
		m.SetEdns0(1232, false)
		w.mu.Lock()
		id := w.next
		for _, busy := w.out[id]; busy; _, busy = w.out[id] {
			id++
		}
		w.next = id + 1
		m.Id = id
		b, err := m.Pack()
		if err != nil {
			w.mu.Unlock()
			continue
		}
		w.out[id] = pending{sent: time.Now()}
		w.mu.Unlock()
		w.stats().sent.Add(1)
		if _, err := w.conn.Write(b); err != nil {
			// Loopback writes fail only while nothing listens (ICMP port unreachable); the query
			// counts as sent, and as unanswered when it expires.
			continue
		}
	}
}

func (w *worker) read() {
	buf := make([]byte, 65536)
	for {
		n, err := w.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED while the server is away
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			continue
		}
		w.mu.Lock()
		p, ok := w.out[m.Id]
		if ok {
			delete(w.out, m.Id)
		}
		w.mu.Unlock()
		if !ok {
			continue // a late reply to a query already counted as unanswered
		}
		c := w.stats()
		c.answered.Add(1)
		c.latency(time.Since(p.sent))
		if m.Rcode >= 0 && m.Rcode < len(c.rcodes) {
			c.rcodes[m.Rcode].Add(1)
		}
		if m.Rcode == dns.RcodeSuccess && len(m.Answer) == 0 {
			c.empty.Add(1)
		}
		if o := m.IsEdns0(); o != nil {
			for _, opt := range o.Option {
				if e, ok := opt.(*dns.EDNS0_EDE); ok && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer {
					c.stale.Add(1)
				}
			}
		}
	}
}

// probe waits until server answers name with NOERROR and at least one record.
func probe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	server := fs.String("server", "", "address to query (127.0.0.0/8 only)")
	name := fs.String("name", "", "name to ask for")
	qtype := fs.String("type", "A", "type to ask for")
	wait := fs.Duration("wait", 10*time.Second, "how long to keep trying")
	fs.Parse(args)
	if err := loopback.Check(*server); err != nil {
		return err
	}
	t, ok := dns.StringToType[strings.ToUpper(*qtype)]
	if !ok {
		return fmt.Errorf("unknown type %q", *qtype)
	}
	deadline := time.Now().Add(*wait)
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	var last error
	for time.Now().Before(deadline) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(*name), t)
		r, _, err := c.Exchange(m, *server)
		switch {
		case err != nil:
			last = err
		case r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0:
			last = fmt.Errorf("%s, %d records", dns.RcodeToString[r.Rcode], len(r.Answer))
		default:
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no answer from %s for %s %s within %v: %v", *server, *name, *qtype, *wait, last)
}

// metric prints the sum of the samples of a metric family from a Prometheus text endpoint.
func metric(args []string) error {
	fs := flag.NewFlagSet("metric", flag.ExitOnError)
	url := fs.String("url", "", "the /metrics URL (127.0.0.0/8 only)")
	name := fs.String("name", "", "metric name (samples with any labels are summed)")
	fs.Parse(args)
	host := strings.TrimPrefix(*url, "http://")
	if i := strings.IndexByte(host, '/'); i >= 0 {
		host = host[:i]
	}
	if err := loopback.Check(host); err != nil {
		return err
	}
	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(*url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sum, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		series := fields[0]
		if i := strings.IndexByte(series, '{'); i >= 0 {
			series = series[:i]
		}
		if series != *name {
			continue
		}
		v, err := strconv.ParseFloat(fields[1], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	if !found {
		fmt.Println(0)
		return nil
	}
	fmt.Println(strconv.FormatFloat(sum, 'f', -1, 64))
	return sc.Err()
}

// freeport prints a port that is free on 127.0.0.1 for both UDP and TCP.
func freeport() error {
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		pc.Close()
		if err != nil {
			continue
		}
		l.Close()
		fmt.Println(port)
		return nil
	}
	return errors.New("no free port")
}
