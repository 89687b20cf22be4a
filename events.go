package flatten

import (
	"fmt"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// eventsPerMinute is how many failures and recoveries of targets are logged one by one in a
// minute; the rest are summed up in one line when the minute is over. An upstream that goes
// down fails every target at once: with 10,000 aliases, a line each would bury everything else.
const eventsPerMinute = 10

// targetEvents are the events of every block: the rate limit is the process's, as the log is.
var targetEvents events

// events logs what an operator must hear of the targets: the first failure of each (what fails,
// why, and what clients get meanwhile) and its recovery, each once, never a line per query.
type events struct {
	mu         sync.Mutex
	start      time.Time // of the current minute
	logged     int       // lines logged in it
	suppressed int       // events not logged one by one in it
}

// log logs one event at now, or counts it for the minute's summary.
func (ev *events) log(now time.Time, format string, args ...any) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.flushLocked(now)
	if ev.logged < eventsPerMinute {
		ev.logged++
		log.Warningf(format, args...)
		return
	}
	ev.suppressed++
}

// flush ends the minute that began before now, with the summary of what was not logged.
func (ev *events) flush(now time.Time) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.flushLocked(now)
}

func (ev *events) flushLocked(now time.Time) {
	if now.Sub(ev.start) < time.Minute {
		return
	}
	if ev.suppressed > 0 {
		log.Warningf("%d more target failures and recoveries in the last minute (the first %d were logged)", ev.suppressed, eventsPerMinute)
	}
	ev.start, ev.logged, ev.suppressed = now, 0, 0
}

// resolved notes the outcome of a resolution of s, a slot for every client, at now: prev is the
// failure remembered before it (nil: none), e the entry it left, or err why it failed. It logs a
// target's first failure, its recovery, and a target that does not exist.
func (ev *events) resolved(now time.Time, s *slot, prev *failure, before, e *entry, err *resolveError, stale time.Duration) {
	typ := dns.TypeToString[s.qtype()]
	switch {
	case err != nil && prev == nil:
		meanwhile := "its aliases answer with the zone's own records or SERVFAIL"
		if before != nil && now.Before(before.expires().Add(stale)) {
			meanwhile = fmt.Sprintf("its aliases answer stale until %s (serve_stale)", before.expires().Add(stale).UTC().Format(time.RFC3339))
		}
		ev.log(now, "target %s %s fails: %s; %s", s.name, typ, err.text, meanwhile)
	case err == nil && prev != nil:
		ev.log(now, "target %s %s resolves again, after failing for %s", s.name, typ, now.Sub(prev.since).Round(time.Second))
	case err == nil && e.nxdomain && (before == nil || !before.nxdomain):
		ev.log(now, "target %s %s does not exist (NXDOMAIN): its aliases answer NODATA", s.name, typ)
	}
}
