// Command herd sends many queries for one name at the same moment, each from its own UDP socket,
// and reports how they were answered and how long they took. bench/run.sh uses it for the
// thundering herd (1000 concurrent first queries for a name nobody asked for yet) and, with
// -n 1, for the latency of a single query (the cold path right after start, then the warm one).
//
//	herd -server 127.0.0.1:1053 -name www.example.test. -n 1000 -qtypes A,AAAA
//	herd -server 127.0.0.1:1053 -name example.test. -n 1 -qtypes A -wait-zone example.test.
//
// With -wait-zone it first asks for the zone's SOA every 5 ms until the server answers (the
// SOA goes to the zone's own data, never upstream), so that the measured queries are the first
// A/AAAA questions the server gets, sent the moment it is up. Queries are built and their sockets
// opened before the start; the goroutines then all send at once (or, with -spread, one every
// spread/n). A query not answered within
// -timeout is sent again (up to -tries times in all), and its latency counts from its first send.
//
// It prints key=value lines: sent_over_ms (from the first send to the last first send),
// sent_before_first_answer (queries sent before any reply arrived), n, answered, unanswered, retried, rcodes, empty (answered with no
// records), answer_sets (how many different answers were seen: 1 per type for a consistent
// server), latency min, p50, p99 and max in milliseconds, and one sample answer per type.
package main

import (
	"errors"
	"flag"
	"fmt"
	"github.com/flattendns/flatten/internal/loopback"
	"math"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

func main() {
	server := flag.String("server", "", "address to query (127.0.0.0/8 only)")
	name := flag.String("name", "", "name to ask for")
	qtypes := flag.String("qtypes", "A,AAAA", "types to ask for, in turn")
	n := flag.Int("n", 1000, "queries, each from its own socket")
	timeout := flag.Duration("timeout", 2*time.Second, "how long to wait for a reply before sending again")
	tries := flag.Int("tries", 3, "sends per query at most")
	waitZone := flag.String("wait-zone", "", "ask for this zone's SOA until answered before starting")
	spread := flag.Duration("spread", 0, "send the queries evenly over this time instead of all at once")
	flag.Parse()

	if err := run(*server, dns.Fqdn(*name), *qtypes, *n, *timeout, *tries, *waitZone, *spread); err != nil {
		fmt.Fprintln(os.Stderr, "herd:", err)
		os.Exit(1)
	}
}

// result is what became of one query.
type result struct {
	qtype   uint16
	sent    time.Time // the first send
	latency time.Duration
	tries   int
	resp    *dns.Msg // nil: never answered
}

func run(server, name, qtypes string, n int, timeout time.Duration, tries int, waitZone string, spread time.Duration) error {
	if err := loopback.Check(server); err != nil {
		return err
	}
	if name == "." || n < 1 || tries < 1 {
		return errors.New("need -name, -n >= 1 and -tries >= 1")
	}
	var types []uint16
	for _, s := range strings.Split(qtypes, ",") {
		t, ok := dns.StringToType[strings.ToUpper(strings.TrimSpace(s))]
		if !ok {
			return fmt.Errorf("unknown type %q", s)
		}
		types = append(types, t)
	}

	if waitZone != "" {
		waited, err := waitFor(server, dns.Fqdn(waitZone), 30*time.Second)
		if err != nil {
			return err
		}
		fmt.Printf("waited_ms=%.1f\n", ms(waited))
	}

	conns := make([]net.Conn, n)
	queries := make([][]byte, n)
	for i := range n {
		c, err := net.Dial("udp", server)
		if err != nil {
			return err
		}
		defer c.Close()
		conns[i] = c
		q := new(dns.Msg)
		q.SetQuestion(name, types[i%len(types)])
		if queries[i], err = q.Pack(); err != nil {
			return err
		}
	}

	results := make([]result, n)
	start := make(chan struct{})
	var began time.Time
	var step time.Duration
	if spread > 0 {
		// One query every spread/n: still all in flight together when the server's first
		// resolution takes longer than spread, without filling its socket buffer at once.
		step = spread / time.Duration(n)
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if step > 0 {
				time.Sleep(time.Until(began.Add(time.Duration(i) * step)))
			}
			results[i] = ask(conns[i], queries[i], types[i%len(types)], timeout, tries)
		}()
	}
	began = time.Now()
	close(start)
	wg.Wait()
	first, last := results[0].sent, results[0].sent
	for _, r := range results {
		first, last = minTime(first, r.sent), maxTime(last, r.sent)
	}
	fmt.Printf("sent_over_ms=%.2f\n", ms(last.Sub(first)))
	// The queries sent before any answer came back were certainly all waiting on the first
	// resolution together.
	var firstAnswer time.Time
	for _, r := range results {
		if r.resp != nil {
			at := r.sent.Add(r.latency)
			if firstAnswer.IsZero() || at.Before(firstAnswer) {
				firstAnswer = at
			}
		}
	}
	before := 0
	for _, r := range results {
		if !firstAnswer.IsZero() && r.sent.Before(firstAnswer) {
			before++
		}
	}
	fmt.Printf("sent_before_first_answer=%d\n", before)
	report(results)
	return nil
}

// waitFor asks for zone's SOA every 5 ms until the server answers, and returns how long that took.
func waitFor(server, zone string, limit time.Duration) (time.Duration, error) {
	q := new(dns.Msg)
	q.SetQuestion(zone, dns.TypeSOA)
	c := &dns.Client{Timeout: 50 * time.Millisecond}
	begin := time.Now()
	for time.Since(begin) < limit {
		if r, _, err := c.Exchange(q, server); err == nil && r.Rcode == dns.RcodeSuccess {
			return time.Since(begin), nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, fmt.Errorf("%s did not answer %s SOA within %v", server, zone, limit)
}

// ask sends one packed query on its own socket and waits for the reply with its ID, sending it
// again after each timeout.
func ask(c net.Conn, query []byte, qtype uint16, timeout time.Duration, tries int) result {
	id := uint16(query[0])<<8 | uint16(query[1])
	buf := make([]byte, 65535)
	begin := time.Now()
	for try := 1; try <= tries; try++ {
		if _, err := c.Write(query); err != nil {
			return result{qtype: qtype, sent: begin, tries: try}
		}
		deadline := time.Now().Add(timeout)
		c.SetReadDeadline(deadline)
		for {
			k, err := c.Read(buf)
			if err != nil {
				break // timeout (or an ICMP error): send again
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:k]) != nil || m.Id != id {
				continue
			}
			return result{qtype: qtype, sent: begin, latency: time.Since(begin), tries: try, resp: m}
		}
	}
	return result{qtype: qtype, sent: begin, tries: tries}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank percentile p (0 < p <= 100) of sorted values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// answerText is the answer section without TTLs (which count down between queries).
func answerText(m *dns.Msg) string {
	var parts []string
	for _, rr := range m.Answer {
		f := strings.Fields(rr.String())
		if len(f) > 1 {
			f = slices.Delete(f, 1, 2) // the TTL
		}
		parts = append(parts, strings.Join(f, " "))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func report(results []result) {
	var lat []time.Duration
	rcodes := map[string]int{}
	sets := map[string]bool{}
	samples := map[uint16]string{}
	unanswered, retried, empty := 0, 0, 0
	for _, r := range results {
		if r.tries > 1 {
			retried++
		}
		if r.resp == nil {
			unanswered++
			continue
		}
		lat = append(lat, r.latency)
		rcodes[dns.RcodeToString[r.resp.Rcode]]++
		if len(r.resp.Answer) == 0 {
			empty++
		}
		a := answerText(r.resp)
		sets[dns.TypeToString[r.qtype]+" "+a] = true
		if _, ok := samples[r.qtype]; !ok {
			samples[r.qtype] = a
		}
	}
	slices.Sort(lat)
	var rc []string
	for k, v := range rcodes {
		rc = append(rc, fmt.Sprintf("%s:%d", k, v))
	}
	sort.Strings(rc)
	fmt.Printf("n=%d\nanswered=%d\nunanswered=%d\nretried=%d\nrcodes=%s\nempty=%d\nanswer_sets=%d\n",
		len(results), len(lat), unanswered, retried, strings.Join(rc, ","), empty, len(sets))
	if len(lat) > 0 {
		fmt.Printf("lat_min_ms=%.2f\nlat_p50_ms=%.2f\nlat_p99_ms=%.2f\nlat_max_ms=%.2f\n",
			ms(lat[0]), ms(percentile(lat, 50)), ms(percentile(lat, 99)), ms(lat[len(lat)-1]))
	}
	var types []uint16
	for t := range samples {
		types = append(types, t)
	}
	slices.Sort(types)
	for _, t := range types {
		fmt.Printf("answer_%s=%s\n", dns.TypeToString[t], samples[t])
	}
}
