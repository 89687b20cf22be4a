#!/usr/bin/env bash
# Load and outage soak for flatten. Not a unit test: it runs for minutes.
#
#   test/soak.sh                      # 4 minutes at 2000 queries per second
#   DURATION=600 RATE=3000 test/soak.sh
#   RELOAD_DURING_OUTAGE=1 test/soak.sh   # also reload while the target is down
#
# It builds ./cmd/coredns and test/loadgen, then starts on loopback:
#   * the target: an authoritative CoreDNS (file plugin) serving agency.test, where
#     client1 -> client2 -> server1 (two A records, one AAAA record);
#   * the flattening CoreDNS: example.test, whose apex is flattened to client1.agency.test through
#     the target (`upstream`), `ttl 5 5` (so it is refreshed every 4.5 s), `serve_stale 1h`, with
#     the *reload* plugin (every 2 s) and *prometheus*.
# loadgen sends A and AAAA queries for example.test at RATE per second for DURATION seconds
# while the script stops the target and starts it again twice (each outage far longer than the
# 5 s TTL, so the answers go stale) and edits the flattening Corefile four times (reloads).
#
# It reports queries sent and answered, rcodes, stale answers (loadgen's count of EDE 3, and
# coredns_flatten_stale_answers_total), SERVFAILs, and the flattening server's resident memory
# and goroutines (go_goroutines) at the start and the end of the load. It fails when a query was
# not answered or was answered with SERVFAIL: the outages are all within the stale window.
# Every process it starts is stopped by PID when it exits. Only 127.0.0.1 is used.
set -euo pipefail

DURATION="${DURATION:-240}"
RATE="${RATE:-2000}"
RELOAD_DURING_OUTAGE="${RELOAD_DURING_OUTAGE:-0}"

cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1; then
	export PATH="/usr/local/go/bin:$PATH"
fi

work="$(mktemp -d)"
target_pid=""
flat_pid=""
load_pid=""

stop_pid() {
	local pid="$1"
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
}

status=1
cleanup() {
	trap - EXIT INT TERM
	stop_pid "$load_pid"
	stop_pid "$flat_pid"
	stop_pid "$target_pid"
	if [ "$status" -eq 0 ] && [ -z "${KEEP:-}" ]; then
		rm -rf "$work"
	else
		echo "soak: logs kept in $work"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'status=130; exit 130' INT TERM

log() { echo "soak: [$(date +%T)] $*"; }

log "building into $work"
go build -o "$work/coredns" ./cmd/coredns
go build -o "$work/loadgen" ./test/loadgen
lg="$work/loadgen"

target_port="$("$lg" freeport)"
flat_port="$("$lg" freeport)"
metrics_port="$("$lg" freeport)"
while [ "$flat_port" = "$target_port" ]; do flat_port="$("$lg" freeport)"; done
while [ "$metrics_port" = "$target_port" ] || [ "$metrics_port" = "$flat_port" ]; do metrics_port="$("$lg" freeport)"; done

cat >"$work/db.agency.test" <<'EOF'
$ORIGIN agency.test.
@       3600 IN SOA ns1.agency.test. hostmaster.agency.test. 1 7200 3600 1209600 300
@       3600 IN NS  ns1.agency.test.
ns1     3600 IN A   192.0.2.54
client1  300 IN CNAME client2.agency.test.
client2  120 IN CNAME server1.agency.test.
server1  600 IN A   192.0.2.10
server1  600 IN A   192.0.2.11
server1   60 IN AAAA 2001:db8::10
EOF
cat >"$work/db.example.test" <<'EOF'
$ORIGIN example.test.
@    3600 IN SOA ns1.example.test. hostmaster.example.test. 1 7200 3600 1209600 300
@    3600 IN NS  ns1.example.test.
@    3600 IN MX  10 mail.example.test.
ns1  3600 IN A   192.0.2.53
mail 3600 IN A   192.0.2.25
EOF
cat >"$work/Corefile.target" <<EOF
agency.test:$target_port {
    bind 127.0.0.1
    file $work/db.agency.test
}
EOF

reloads=0
write_flat_corefile() {
	# The reload plugin compares the parsed Corefile, not its text: each edit changes a setting
	# (the cache capacity, far above what the one alias uses).
	cat >"$work/Corefile.flat" <<EOF
example.test:$flat_port {
    bind 127.0.0.1
    reload 2s 1s
    prometheus 127.0.0.1:$metrics_port
    errors
    flatten {
        alias @ client1.agency.test.
        upstream 127.0.0.1:$target_port
        ttl 5 5
        serve_stale 1h
        cache $((10000 + reloads))
    }
    file $work/db.example.test
}
EOF
}

start_target() {
	"$work/coredns" -conf "$work/Corefile.target" >>"$work/target.log" 2>&1 &
	target_pid=$!
	"$lg" probe -server "127.0.0.1:$target_port" -name client1.agency.test. -wait 10s
}

stop_target() {
	stop_pid "$target_pid"
	target_pid=""
}

metric() { "$lg" metric -url "http://127.0.0.1:$metrics_port/metrics" -name "$1"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$flat_pid/status"; }

completed_reloads() { grep -c "Reloading complete" "$work/flat.log" || true; }

reload() {
	local before
	before="$(completed_reloads)"
	reloads=$((reloads + 1))
	write_flat_corefile
	log "edited the Corefile (edit $reloads)"
	for _ in $(seq 100); do
		[ "$(completed_reloads)" -gt "$before" ] && { log "reload $reloads complete"; return 0; }
		sleep 0.1
	done
	log "reload $reloads not seen within 10 s"
}

# at SECONDS: sleep until that many seconds after the load started.
at() {
	local t="$1" now
	now="$(($(date +%s) - load_start))"
	if [ "$t" -gt "$now" ]; then sleep "$((t - now))"; fi
}

log "target on 127.0.0.1:$target_port, flatten on 127.0.0.1:$flat_port, metrics on 127.0.0.1:$metrics_port"
start_target
write_flat_corefile
"$work/coredns" -conf "$work/Corefile.flat" >"$work/flat.log" 2>&1 &
flat_pid=$!
"$lg" probe -server "127.0.0.1:$flat_port" -name example.test. -wait 10s
"$lg" probe -server "127.0.0.1:$flat_port" -name example.test. -type AAAA -wait 10s

log "load: $RATE queries/s for ${DURATION}s"
load_start="$(date +%s)"
"$lg" run -server "127.0.0.1:$flat_port" -names example.test. -rate "$RATE" -duration "${DURATION}s" \
	>"$work/load.out" 2>"$work/load.err" &
load_pid=$!

# The schedule, in fractions of DURATION.
d="$DURATION"
at "$((d * 4 / 100))"
start_rss="$(rss_kb)"
start_goroutines="$(metric go_goroutines)"
log "start: RSS ${start_rss} kB, ${start_goroutines} goroutines"

at "$((d * 10 / 100))"
log "outage 1: stopping the target"
stop_target
at "$((d * 25 / 100))"
log "outage 1 over: starting the target"
start_target

at "$((d * 33 / 100))"
reload
at "$((d * 40 / 100))"
reload
at "$((d * 47 / 100))"
reload

at "$((d * 55 / 100))"
log "outage 2: stopping the target"
stop_target
if [ "$RELOAD_DURING_OUTAGE" = 1 ]; then
	at "$((d * 62 / 100))"
	reload
fi
at "$((d * 70 / 100))"
log "outage 2 over: starting the target"
start_target

at "$((d * 80 / 100))"
reload

at "$((d * 96 / 100))"
end_rss="$(rss_kb)"
end_goroutines="$(metric go_goroutines)"
log "end: RSS ${end_rss} kB, ${end_goroutines} goroutines"

wait "$load_pid"
load_pid=""
cat "$work/load.err"

stale_metric="$(metric coredns_flatten_stale_answers_total)"
refreshes="$(metric coredns_flatten_refreshes_total)"
upstream_queries="$(metric coredns_flatten_upstream_queries_total)"
idle_goroutines="$(metric go_goroutines)"
idle_rss="$(rss_kb)"

echo
echo "=== soak summary (${DURATION}s at ${RATE} queries/s, 2 outages, $reloads reloads) ==="
cat "$work/load.out"
echo "stale_answers_metric=$stale_metric"
echo "refreshes_metric=$refreshes"
echo "upstream_queries_metric=$upstream_queries"
echo "reloads_completed=$(completed_reloads)"
echo "rss_kb_start=$start_rss"
echo "rss_kb_end=$end_rss"
echo "rss_kb_after_load=$idle_rss"
echo "goroutines_start=$start_goroutines"
echo "goroutines_end=$end_goroutines"
echo "goroutines_after_load=$idle_goroutines"
panics="$(grep -c -i "panic" "$work/flat.log" || true)"
echo "panics_in_log=$panics"

unanswered="$(awk -F= '$1=="unanswered" {print $2}' "$work/load.out")"
servfail="$(awk -F= '$1=="servfail" {print $2}' "$work/load.out")"
fail=0
if [ "${unanswered:-1}" -ne 0 ]; then
	echo "soak: FAIL: $unanswered queries were not answered" >&2
	fail=1
fi
if [ "${servfail:-1}" -ne 0 ]; then
	echo "soak: FAIL: $servfail SERVFAILs for a configured name within the stale window" >&2
	fail=1
fi
if [ "$(completed_reloads)" -lt "$reloads" ]; then
	echo "soak: FAIL: $reloads Corefile edits, $(completed_reloads) reloads completed" >&2
	fail=1
fi
if [ "$panics" -ne 0 ]; then
	echo "soak: FAIL: panics in the flattening server's log" >&2
	fail=1
fi
if [ "$((end_goroutines - start_goroutines))" -gt 50 ]; then
	echo "soak: WARN: goroutines grew from $start_goroutines to $end_goroutines" >&2
fi
if [ "$fail" -eq 0 ]; then
	echo "soak: ok"
	status=0
fi
