package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// perf is what one dnsperf run measured.
type perf struct {
	Sent      int     `json:"sent"`
	Completed int     `json:"completed"`
	Lost      int     `json:"lost"`
	QPS       float64 `json:"qps"`
	AvgLatMs  float64 `json:"avg_latency_ms"`
	NoError   int     `json:"noerror"`
	RespSize  float64 `json:"response_size"`
	// Verbose runs only: per-query latencies, lost queries counted as +Inf (so that a lost query
	// is never better than a slow one), and their percentiles.
	// dnsperf's own CPU time over its wall time: near 1 means the load generator was the limit.
	LoadCPU float64 `json:"dnsperf_cpu"`
	// dnsperf's user+system CPU time, in seconds.
	CPUSeconds float64 `json:"dnsperf_cpu_s"`
	// The share of the server core used by processes that are not the row's during the run
	// (set by the caller).
	Foreign float64 `json:"server_core_foreign"`
	// The share of the load core used by processes other than dnsperf (set by the caller).
	LoadForeign float64 `json:"load_core_foreign"`
	P50Ms       float64 `json:"p50_ms,omitempty"`
	P99Ms       float64 `json:"p99_ms,omitempty"`
	P999Ms      float64 `json:"p999_ms,omitempty"`
	MaxMs       float64 `json:"max_ms,omitempty"`
}

// dnsperfArgs are the arguments of one run: max QPS when qps is 0, else a fixed offered rate
// with per-query output (-v).
func dnsperfArgs(port int, file string, seconds, clients, outstanding, qps int) []string {
	a := []string{"-s", "127.0.0.1", "-p", strconv.Itoa(port), "-d", file, "-l", strconv.Itoa(seconds),
		"-c", strconv.Itoa(clients), "-q", strconv.Itoa(outstanding), "-T", "1", "-t", "2"}
	if qps > 0 {
		a = append(a, "-Q", strconv.Itoa(qps), "-v")
	}
	return a
}

// runDnsperf runs dnsperf pinned to cpu, keeps its summary in raw (the per-query lines are parsed
// as they stream, not kept), and returns what it measured.
func runDnsperf(ctx context.Context, cpu int, raw string, args []string) (perf, error) {
	cmd := exec.CommandContext(ctx, "taskset", append([]string{"-c", strconv.Itoa(cpu), "dnsperf"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return perf{}, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return perf{}, err
	}
	began := time.Now()
	f, ferr := os.Create(raw)
	if ferr != nil {
		f = nil
	}
	p, lines, perr := parseDnsperf(out)
	if f != nil {
		fmt.Fprintf(f, "# dnsperf %s\n%s", strings.Join(args, " "), strings.Join(lines, "\n")+"\n")
		f.Close()
	}
	if err := cmd.Wait(); err != nil {
		return p, fmt.Errorf("dnsperf %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if wall := time.Since(began); wall > 0 {
		ps := cmd.ProcessState
		p.CPUSeconds = (ps.UserTime() + ps.SystemTime()).Seconds()
		p.LoadCPU = float64(ps.UserTime()+ps.SystemTime()) / float64(wall)
	}
	if perr != nil {
		return p, perr
	}
	if p.Sent == 0 {
		return p, fmt.Errorf("dnsperf %s sent nothing: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
	}
	return p, nil
}

// parseDnsperf reads dnsperf's output: the "> RCODE NAME TYPE SECONDS" line of each answered
// query (with -v; "> T ..." is a timeout) and the Statistics block. It returns the summary lines
// too, for the raw log.
func parseDnsperf(r io.Reader) (perf, []string, error) {
	var p perf
	var lat []float64
	var summary []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "> "); ok {
			f := strings.Fields(rest)
			if len(f) >= 2 && f[0] != "T" && f[0] != "I" {
				if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
					lat = append(lat, v*1000)
				}
			}
			continue
		}
		summary = append(summary, line)
		t := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(t, "Queries sent:"):
			p.Sent = firstInt(t)
		case strings.HasPrefix(t, "Queries completed:"):
			p.Completed = firstInt(t)
		case strings.HasPrefix(t, "Queries lost:"):
			p.Lost = firstInt(t)
		case strings.HasPrefix(t, "Queries per second:"):
			p.QPS = firstFloat(t)
		case strings.HasPrefix(t, "Average Latency (s):"):
			p.AvgLatMs = firstFloat(t) * 1000
		case strings.HasPrefix(t, "Response codes:"):
			f := strings.Fields(strings.TrimPrefix(t, "Response codes:"))
			for i := 0; i+1 < len(f); i++ {
				if f[i] == "NOERROR" {
					p.NoError, _ = strconv.Atoi(f[i+1])
				}
			}
		case strings.HasPrefix(t, "Average packet size:"):
			// "Average packet size:  request 30, response 106"
			if _, after, ok := strings.Cut(t, "response "); ok {
				p.RespSize, _ = strconv.ParseFloat(strings.TrimSpace(after), 64)
			}
		}
	}
	if len(lat) > 0 || p.Lost > 0 {
		for range p.Lost {
			lat = append(lat, math.Inf(1))
		}
		slices.Sort(lat)
		p.P50Ms = percentile(lat, 50)
		p.P99Ms = percentile(lat, 99)
		p.P999Ms = percentile(lat, 99.9)
		p.MaxMs = lat[len(lat)-1]
	}
	return p, summary, sc.Err()
}

// firstInt is the first whole number in s after its colon.
func firstInt(s string) int {
	_, after, _ := strings.Cut(s, ":")
	f := strings.Fields(after)
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

func firstFloat(s string) float64 {
	_, after, _ := strings.Cut(s, ":")
	f := strings.Fields(after)
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// percentile is the nearest-rank percentile p (0 < p <= 100) of sorted values: the smallest
// value that at least p% of the values are less than or equal to.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// median of the values (the mean of the middle two for an even count); NaN for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
