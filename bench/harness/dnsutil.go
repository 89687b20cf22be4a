package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ask sends one question over UDP to 127.0.0.1:port.
func ask(port int, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	r, _, err := (&dns.Client{Timeout: timeout}).Exchange(q, fmt.Sprintf("127.0.0.1:%d", port))
	return r, err
}

// answerSet is the answer section as "OWNER TYPE RDATA" strings, sorted, without TTLs.
func answerSet(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		h := rr.Header()
		rdata := strings.TrimPrefix(rr.String(), h.String())
		out = append(out, strings.ToLower(h.Name)+" "+dns.TypeToString[h.Rrtype]+" "+strings.TrimSpace(rdata))
	}
	slices.Sort(out)
	return out
}

// waitAnswer asks until the answer is want (or the time is up) and returns the last answer.
func (h *harness) waitAnswer(port int, name string, qtype uint16, want []string, limit time.Duration) ([]string, error) {
	deadline := time.Now().Add(limit)
	var got []string
	var last error
	for time.Now().Before(deadline) {
		r, err := ask(port, name, qtype, 500*time.Millisecond)
		if err == nil {
			got = answerSet(r)
			if slices.Equal(got, want) {
				return got, nil
			}
			last = fmt.Errorf("%s %s on port %d: got %q (rcode %s), want %q", name, dns.TypeToString[qtype], port, got, dns.RcodeToString[r.Rcode], want)
		} else {
			last = err
		}
		if err := h.sleep(50 * time.Millisecond); err != nil {
			return got, err
		}
	}
	return got, last
}

// requestCounts reads CoreDNS's coredns_dns_requests_total from a prometheus endpoint, summed by
// server label and query type.
func requestCounts(ctx context.Context, port int) (map[string]map[string]int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", port), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		labels, ok := strings.CutPrefix(line, "coredns_dns_requests_total{")
		if !ok {
			continue
		}
		end := strings.LastIndexByte(labels, '}')
		if end < 0 {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(labels[end+1:]), 64)
		if err != nil {
			continue
		}
		l := parseLabels(labels[:end])
		if out[l["server"]] == nil {
			out[l["server"]] = map[string]int{}
		}
		out[l["server"]][l["type"]] += int(v)
	}
	return out, sc.Err()
}

// parseLabels reads `a="x",b="y"` (label values here hold no quotes or commas).
func parseLabels(s string) map[string]string {
	m := map[string]string{}
	for _, p := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(p, "=")
		if ok {
			m[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return m
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// targetStats asks the fake target (bench/target) for its counters, as key=value pairs.
func targetStats(port int) (map[string]string, error) {
	q := new(dns.Msg)
	q.SetQuestion("stats.target.", dns.TypeTXT)
	q.Question[0].Qclass = dns.ClassCHAOS
	r, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(q, fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			k, v, _ := strings.Cut(strings.Join(t.Txt, ""), "=")
			m[k] = v
		}
	}
	return m, nil
}

func targetReset(port int) error {
	q := new(dns.Msg)
	q.SetQuestion("reset.target.", dns.TypeTXT)
	q.Question[0].Qclass = dns.ClassCHAOS
	_, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(q, fmt.Sprintf("127.0.0.1:%d", port))
	return err
}

// keyValues parses herd's key=value lines.
func keyValues(s string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

func atof(s string) float64 {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0
	}
	return v
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
