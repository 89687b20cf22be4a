package main

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// serve answers A queries on loopback, ignoring the first `drop` queries it gets.
func serve(t *testing.T, drop int32) (string, *atomic.Int32) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var seen atomic.Int32
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if seen.Add(1) <= drop {
			return
		}
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: net.IPv4(192, 0, 2, 1)}}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String(), &seen
}

func packed(t *testing.T, name string) []byte {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A query the server dropped is sent again on the same socket, and its latency counts from the
// first send.
func TestAskRetries(t *testing.T) {
	addr, seen := serve(t, 1)
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const timeout = 100 * time.Millisecond
	r := ask(c, packed(t, "example.test."), dns.TypeA, timeout, 3)
	if r.resp == nil || r.tries != 2 || seen.Load() != 2 {
		t.Fatalf("answered %v after %d tries (%d seen)", r.resp != nil, r.tries, seen.Load())
	}
	if r.latency < timeout {
		t.Errorf("latency %v does not count from the first send", r.latency)
	}
	if got := answerText(r.resp); got != "example.test. IN A 192.0.2.1" {
		t.Errorf("answer %q", got)
	}
}

func TestAskGivesUp(t *testing.T) {
	addr, seen := serve(t, 100)
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := ask(c, packed(t, "example.test."), dns.TypeA, 20*time.Millisecond, 2)
	if r.resp != nil || r.tries != 2 || seen.Load() != 2 {
		t.Errorf("resp %v, tries %d, seen %d", r.resp, r.tries, seen.Load())
	}
}

func TestPercentile(t *testing.T) {
	var v []time.Duration
	for i := 1; i <= 100; i++ {
		v = append(v, time.Duration(i))
	}
	if percentile(v, 50) != 50 || percentile(v, 99) != 99 || percentile(v, 100) != 100 || percentile(nil, 50) != 0 {
		t.Error("nearest-rank percentiles")
	}
}

func TestLoopbackOnly(t *testing.T) {
	if err := run("192.0.2.1:53", "example.test.", "A", 1, time.Second, 1, "", 0); err == nil {
		t.Error("a non-loopback server was accepted")
	}
}
