package flatten

import (
	"bytes"
	"context"
	"fmt"
	"io"
	golog "log"
	"strings"
	"sync"
	"testing"
	"time"
)

// logLines captures what is logged until the test ends.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// lines returns the lines logged that contain sub.
func (l *logLines) lines(sub string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.buf.String(), "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return out
}

func captureLog(t *testing.T) *logLines {
	l := &logLines{}
	golog.SetOutput(l)
	t.Cleanup(func() { golog.SetOutput(io.Discard) })
	// Every test starts its own minute of the rate limit.
	targetEvents.mu.Lock()
	targetEvents.start, targetEvents.logged, targetEvents.suppressed = time.Time{}, 0, 0
	targetEvents.mu.Unlock()
	return l
}

// TestEventsRateLimited: in one minute the first events are logged one by one and the rest
// summed up once the minute is over; the next minute logs one by one again.
func TestEventsRateLimited(t *testing.T) {
	logged := captureLog(t)
	var ev events
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for i := range 25 {
		ev.log(t0.Add(time.Duration(i)*time.Second), "target t%d.example.net. A fails: timeout", i)
	}
	if n := len(logged.lines("fails: timeout")); n != eventsPerMinute {
		t.Errorf("%d lines in the first minute, want %d", n, eventsPerMinute)
	}
	if n := len(logged.lines("more target failures")); n != 0 {
		t.Errorf("a summary before the minute is over")
	}
	ev.flush(t0.Add(61 * time.Second))
	if got := logged.lines("more target failures"); len(got) != 1 || !strings.Contains(got[0], "15 more target failures and recoveries in the last minute") {
		t.Errorf("summary %q, want one line for the 15 not logged", got)
	}
	ev.log(t0.Add(62*time.Second), "target again.example.net. A fails: timeout")
	if n := len(logged.lines("again.example.net.")); n != 1 {
		t.Errorf("the next minute logged %d lines of its first event, want 1", n)
	}
	ev.flush(t0.Add(200 * time.Second))
	if n := len(logged.lines("more target failures")); n != 1 {
		t.Errorf("%d summaries, want only the one with something in it", n)
	}
}

// TestEventsFailureAndRecovery: with a fake clock, a configured target's first failure is logged
// once, with what clients get meanwhile; the failures after it are not; its recovery is logged
// once, with how long it failed; and a target that does not exist is logged once.
func TestEventsFailureAndRecovery(t *testing.T) {
	logged := captureLog(t)
	clk := newFakeClock()
	r := newFakeResolver(60)
	c := newTestCache(r, clk, keyA.name)
	defer c.stop()
	s := c.pin(keyA)
	get := func() { c.get(context.Background(), s, &question{key: s.key()}) }

	get()
	if n := len(logged.lines(keyA.name)); n != 0 {
		t.Errorf("a success logged: %q", logged.lines(keyA.name))
	}
	r.set(60, errTimeout(keyA.name))
	clk.advance(61 * time.Second) // expired: the next query resolves, and fails
	get()
	fails := logged.lines("fails")
	want := fmt.Sprintf("target %s A fails: timeout resolving %s; its aliases answer stale until 2026-11-22T13:01:00Z (serve_stale)", keyA.name, keyA.name)
	if len(fails) != 1 || !strings.Contains(fails[0], want) {
		t.Errorf("first failure logged as %q, want one line with %q", fails, want)
	}
	settled := func(n int) func() bool {
		return func() bool { return r.count(keyA) == n && s.flight.Load() == nil }
	}
	for i := range 5 {
		clk.advance(failureTTL + time.Second)
		get() // answered stale, and retried in the background: it fails again
		waitFor(t, "the retry", settled(3+i))
	}
	if n := len(logged.lines("fails")); n != 1 {
		t.Errorf("%d failure lines after 6 failures in a row, want 1", n)
	}
	r.set(60, nil)
	clk.advance(failureTTL + time.Second)
	get()
	waitFor(t, "the recovery", settled(8))
	rec := logged.lines("resolves again")
	if len(rec) != 1 || !strings.Contains(rec[0], "after failing for 36s") {
		t.Errorf("recovery logged as %q, want one line, after failing for 36s", rec)
	}

	// A target that does not exist: logged once, not on every resolution.
	nx := newTestCache(&fakeResolver{calls: map[cacheKey]int{}}, clk, "gone.example.net.")
	defer nx.stop()
	nx.resolve = func(context.Context, question) (*chain, error) { return &chain{nxdomain: true, ttl: 1}, nil }
	gone := nx.pin(cacheKey{name: "gone.example.net.", qtype: keyA.qtype})
	for range 3 {
		nx.get(context.Background(), gone, &question{key: gone.key()})
		clk.advance(10 * time.Second)
	}
	if got := logged.lines("gone.example.net."); len(got) != 1 || !strings.Contains(got[0], "does not exist (NXDOMAIN): its aliases answer NODATA") {
		t.Errorf("NXDOMAIN target logged as %q, want one line", got)
	}
}
