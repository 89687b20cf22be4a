// Command target is the fake upstream of bench/run.sh: an authoritative server for agency.test on
// a loopback address that counts every question it is asked, so that the benchmark can say how
// many upstream queries flatten sent, per name, type and hop.
//
//	target -listen 127.0.0.1:5300 -delay 20ms        # serve (prints "listening ADDR")
//	target -stats 127.0.0.1:5300                     # print the counters of a running target
//	target -reset 127.0.0.1:5300                     # zero them
//
// Zone data (TTL -ttl, 30 s by default):
//
//	client1.agency.test. CNAME server1.agency.test.
//	server1.agency.test. A 192.0.2.10, A 192.0.2.11, AAAA 2001:db8::10
//	client2.agency.test. CNAME server2.agency.test.   (for names flattened on demand)
//	server2.agency.test. A 192.0.2.20, AAAA 2001:db8::20
//
// and, synthetically, for the 100,000-alias case (TTL -synth-ttl), any number N of 1 to 7 digits:
//
//	tN.agency.test. CNAME sK.agency.test.   (K = N mod 256)
//	sK.agency.test. A 198.51.100.K, AAAA 2001:db8:1::K
//
// Every answer is delayed by -delay (an upstream that far away; no network tools needed). With
// -chase, an answer that starts with a CNAME also carries the records of its target, as an
// authoritative server that follows CNAMEs inside its zone does (CoreDNS's file plugin, BIND);
// without it each hop of a chain is a question of its own, which is what lets the counters tell
// hops apart.
//
// The counters (class IN questions only) are read with a CH TXT question for "stats.target."
// (over TCP: the answer can be long) and zeroed with "reset.target."; the same summary is printed
// to stdout on SIGTERM, SIGINT and SIGUSR1. They hold the total, the count per (name, type) for
// the fixed names and the synthetic ones (these summarised: how many distinct names, the most
// questions any one of them got), the times of the first and last question since the last reset,
// and the most questions answered in any 1 s window (counted in 10 ms buckets, so the window
// slides in 10 ms steps).
package main

import (
	"flag"
	"fmt"
	"github.com/flattendns/flatten/internal/loopback"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

const zone = "agency.test."

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "UDP and TCP address to serve on (127.0.0.0/8 only)")
	delay := flag.Duration("delay", 0, "added before every answer")
	ttl := flag.Uint("ttl", 30, "TTL of client1, client2, server1 and server2")
	synthTTL := flag.Uint("synth-ttl", 3600, "TTL of the synthetic tN and sK names")
	chase := flag.Bool("chase", false, "answer a CNAME together with the records of its target")
	stats := flag.String("stats", "", "print the counters of the target at this address and exit")
	reset := flag.String("reset", "", "zero the counters of the target at this address and exit")
	flag.Parse()

	switch {
	case *stats != "":
		exitOn(printControl(*stats, "stats."+zoneCtl))
		return
	case *reset != "":
		exitOn(printControl(*reset, "reset."+zoneCtl))
		return
	}
	if err := loopback.Check(*listen); err != nil {
		exitOn(err)
	}
	t := newTarget(*delay, uint32(*ttl), uint32(*synthTTL), *chase)
	addr, stop, err := t.serve(*listen)
	exitOn(err)
	fmt.Printf("listening %s\n", addr)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	for s := range sig {
		fmt.Print(t.summary())
		if s != syscall.SIGUSR1 {
			break
		}
	}
	stop()
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "target:", err)
		os.Exit(1)
	}
}

// zoneCtl is the CH zone of the control questions.
const zoneCtl = "target."

// key is one counted question.
type key struct {
	name  string
	qtype uint16
}

// bucket is the width of the rate buckets; window/bucket buckets make the 1 s window.
const (
	bucket = 10 * time.Millisecond
	window = time.Second
)

type target struct {
	delay    time.Duration
	ttl      uint32
	synthTTL uint32
	chase    bool

	mu      sync.Mutex
	counts  map[key]int
	total   int
	epoch   time.Time // the last reset; buckets count from here
	first   time.Time
	last    time.Time
	buckets []int
}

func newTarget(delay time.Duration, ttl, synthTTL uint32, chase bool) *target {
	return &target{delay: delay, ttl: ttl, synthTTL: synthTTL, chase: chase, counts: map[key]int{}, epoch: time.Now()}
}

// serve answers on UDP and TCP at addr (a port of 0 picks one, the same for both) until stop.
func (t *target) serve(addr string) (string, func(), error) {
	for range 20 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return "", nil, err
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			if strings.HasSuffix(addr, ":0") {
				continue // the UDP port's TCP twin is taken: pick another
			}
			return "", nil, err
		}
		udp := &dns.Server{PacketConn: pc, Handler: t}
		tcp := &dns.Server{Listener: l, Handler: t}
		go udp.ActivateAndServe()
		go tcp.ActivateAndServe()
		return pc.LocalAddr().String(), func() { udp.Shutdown(); tcp.Shutdown() }, nil
	}
	return "", nil, fmt.Errorf("no free port pair on %s", addr)
}

func (t *target) count(k key, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts[k]++
	t.total++
	if t.first.IsZero() {
		t.first = now
	}
	t.last = now
	i := int(now.Sub(t.epoch) / bucket)
	if i >= len(t.buckets) {
		t.buckets = append(t.buckets, make([]int, i+1-len(t.buckets))...)
	}
	t.buckets[i]++
}

func (t *target) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts = map[key]int{}
	t.total = 0
	t.epoch = time.Now()
	t.first, t.last = time.Time{}, time.Time{}
	t.buckets = nil
}

// maxWindow is the most questions counted in any window-wide run of buckets.
func maxWindow(buckets []int) int {
	n := int(window / bucket)
	best, sum := 0, 0
	for i, b := range buckets {
		sum += b
		if i >= n {
			sum -= buckets[i-n]
		}
		best = max(best, sum)
	}
	return best
}

// synthetic reports whether name is one of the generated tN or sK names.
func synthetic(name string) bool {
	label, _, _ := strings.Cut(name, ".")
	return len(label) > 1 && (label[0] == 't' || label[0] == 's') && digits(label[1:])
}

func digits(s string) bool {
	if s == "" || len(s) > 7 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// summaryLines are the counters as key=value lines; fixed names are listed one by one, sorted.
func (t *target) summaryLines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := []string{
		"total=" + strconv.Itoa(t.total),
		"max1s=" + strconv.Itoa(maxWindow(t.buckets)),
	}
	if !t.first.IsZero() {
		lines = append(lines,
			"first_ms="+strconv.FormatInt(t.first.Sub(t.epoch).Milliseconds(), 10),
			"last_ms="+strconv.FormatInt(t.last.Sub(t.epoch).Milliseconds(), 10))
	}
	synthNames := map[string]bool{}
	synthMax := 0
	var fixed []string
	for k, n := range t.counts {
		if synthetic(k.name) {
			synthNames[k.name] = true
			synthMax = max(synthMax, n)
			continue
		}
		fixed = append(fixed, "q "+k.name+" "+dns.TypeToString[k.qtype]+"="+strconv.Itoa(n))
	}
	slices.Sort(fixed)
	lines = append(lines, "synthetic_names="+strconv.Itoa(len(synthNames)), "synthetic_max_per_name_type="+strconv.Itoa(synthMax))
	return append(lines, fixed...)
}

func (t *target) summary() string {
	return strings.Join(t.summaryLines(), "\n") + "\n"
}

// ServeDNS answers control questions (class CH) and zone questions (class IN, counted).
func (t *target) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	if len(r.Question) != 1 || r.Opcode != dns.OpcodeQuery {
		m.SetRcode(r, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	if q.Qclass == dns.ClassCHAOS {
		t.serveControl(w, r, name)
		return
	}
	if q.Qclass != dns.ClassINET || !dns.IsSubDomain(zone, name) {
		m.SetRcode(r, dns.RcodeRefused)
		w.WriteMsg(m)
		return
	}
	t.count(key{name, q.Qtype}, time.Now())
	if t.delay > 0 {
		time.Sleep(t.delay)
	}
	m.SetReply(r)
	m.Authoritative = true
	t.answer(m, name, q.Qtype)
	w.WriteMsg(m)
}

// serveControl answers the CH TXT control questions: stats and reset.
func (t *target) serveControl(w dns.ResponseWriter, r *dns.Msg, name string) {
	m := new(dns.Msg)
	m.SetReply(r)
	var lines []string
	switch name {
	case "stats." + zoneCtl:
		lines = t.summaryLines()
	case "reset." + zoneCtl:
		t.reset()
		lines = []string{"ok"}
	default:
		m.SetRcode(r, dns.RcodeNameError)
		w.WriteMsg(m)
		return
	}
	for _, l := range lines {
		m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassCHAOS}, Txt: []string{l}})
	}
	w.WriteMsg(m)
}

// answer fills m for name and qtype: the CNAME (and with chase, what follows it in the zone), the
// records of the type, NODATA or NXDOMAIN with the SOA (RFC 2308).
func (t *target) answer(m *dns.Msg, name string, qtype uint16) {
	for range 8 {
		cname, rrs, exists := t.lookup(name)
		if !exists {
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{t.soa()}
			return
		}
		if cname != nil && qtype != dns.TypeCNAME {
			m.Answer = append(m.Answer, cname)
			if !t.chase {
				return
			}
			name = cname.(*dns.CNAME).Target
			continue
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype == qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		if len(m.Answer) == 0 {
			m.Ns = []dns.RR{t.soa()}
		}
		return
	}
}

func (t *target) soa() dns.RR {
	return &dns.SOA{Hdr: hdr(zone, dns.TypeSOA, 300), Ns: "ns1." + zone, Mbox: "hostmaster." + zone, Serial: 1, Refresh: 7200, Retry: 3600, Expire: 1209600, Minttl: 300}
}

func hdr(name string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

// lookup returns what the zone holds at name: a CNAME, or other records, and whether the name
// exists.
func (t *target) lookup(name string) (dns.RR, []dns.RR, bool) {
	switch name {
	case zone:
		return nil, []dns.RR{t.soa(), &dns.NS{Hdr: hdr(zone, dns.TypeNS, 300), Ns: "ns1." + zone}}, true
	case "ns1." + zone:
		return nil, []dns.RR{&dns.A{Hdr: hdr(name, dns.TypeA, 300), A: net.IPv4(192, 0, 2, 53)}}, true
	case "client1." + zone:
		return &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME, t.ttl), Target: "server1." + zone}, nil, true
	case "server1." + zone:
		return nil, []dns.RR{
			&dns.A{Hdr: hdr(name, dns.TypeA, t.ttl), A: net.IPv4(192, 0, 2, 10)},
			&dns.A{Hdr: hdr(name, dns.TypeA, t.ttl), A: net.IPv4(192, 0, 2, 11)},
			&dns.AAAA{Hdr: hdr(name, dns.TypeAAAA, t.ttl), AAAA: net.ParseIP("2001:db8::10")},
		}, true
	case "client2." + zone:
		return &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME, t.ttl), Target: "server2." + zone}, nil, true
	case "server2." + zone:
		return nil, []dns.RR{
			&dns.A{Hdr: hdr(name, dns.TypeA, t.ttl), A: net.IPv4(192, 0, 2, 20)},
			&dns.AAAA{Hdr: hdr(name, dns.TypeAAAA, t.ttl), AAAA: net.ParseIP("2001:db8::20")},
		}, true
	}
	label, rest, _ := strings.Cut(name, ".")
	if rest != zone || !synthetic(name) {
		return nil, nil, false
	}
	n, _ := strconv.Atoi(label[1:])
	if label[0] == 't' {
		return &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME, t.synthTTL), Target: "s" + strconv.Itoa(n%256) + "." + zone}, nil, true
	}
	if n > 255 {
		return nil, nil, false
	}
	return nil, []dns.RR{
		&dns.A{Hdr: hdr(name, dns.TypeA, t.synthTTL), A: net.IPv4(198, 51, 100, byte(n))},
		&dns.AAAA{Hdr: hdr(name, dns.TypeAAAA, t.synthTTL), AAAA: net.ParseIP("2001:db8:1::" + strconv.FormatInt(int64(n), 16))},
	}, true
}

// printControl asks a running target a control question over TCP and prints the answer's lines.
func printControl(addr, name string) error {
	lines, err := askControl(addr, name)
	if err != nil {
		return err
	}
	for _, l := range lines {
		fmt.Println(l)
	}
	return nil
}

// askControl asks the target at addr the CH TXT question name and returns the answer's strings.
func askControl(addr, name string) ([]string, error) {
	if err := loopback.Check(addr); err != nil {
		return nil, err
	}
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeTXT)
	q.Question[0].Qclass = dns.ClassCHAOS
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(q, addr)
	if err != nil {
		return nil, err
	}
	if resp.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("%s: %s", name, dns.RcodeToString[resp.Rcode])
	}
	var lines []string
	for _, rr := range resp.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			lines = append(lines, strings.Join(txt.Txt, ""))
		}
	}
	return lines, nil
}
