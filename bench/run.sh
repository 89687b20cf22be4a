#!/usr/bin/env bash
# Side-by-side benchmark of flatten against what users would run instead. One command:
#
#   bench/run.sh                 # the full run (about 20 minutes on 2 cores); writes bench/RESULTS.md
#   QUICK=1 bench/run.sh         # about 5 minutes: checks the script, numbers not worth quoting
#
# It installs dnsperf, pdns-server, pdns-backend-bind, pdns-recursor, nsd and bind9 from Debian if
# they are missing (without letting the packages start their services), builds cmd/coredns into
# bench/out/coredns and the helpers (bench/target, bench/herd, bench/harness) into bench/out/bin,
# and runs bench/harness, which starts every server on 127.0.0.1 on its own port, pinned to one
# core (SERVER_CPU) with the load generator on the other (LOAD_CPU), runs the load, stops every
# process it started by PID (also on Ctrl-C), prints the results and writes bench/RESULTS.md.
# Raw output goes to bench/out (not in git).
#
# Rows (all answer example.test A/AAAA; all but row 0 with the addresses at the end of
# client1.agency.test CNAME server1.agency.test, which a CoreDNS *file* instance serves):
#   0  erratic { drop 0 }: the limit, CoreDNS answering with a record it synthesizes (A
#      192.0.2.53, AAAA 2001:db8::53) without any lookup; "vs 0" is a row's share of it
#   1  flatten (+ file), cache warm        3  file, static apex A/AAAA
#   2  cache + flatten (+ file)            3b cache + file, static apex A/AAAA
#   4  PowerDNS ALIAS, default caches      5  PowerDNS ALIAS, packet and query caches off
# Also: the cold path (upstream COLD_DELAY away), a thundering herd (HERD_N concurrent first
# queries), ALIASES configured aliases (startup, upstream rate, memory, hit-path QPS), BLOCKS
# server blocks on one listener, each with its own flatten (memory and startup against the same
# Corefile without flatten, upstream rate, QPS), zone transfers (how long an NSD secondary of a
# flattened zone takes to serve new addresses after the target changes, over XFR_CHANGES changes;
# two AXFRs of a zone of XFR_NAMES ALIAS records, with the primary's memory), agency changes (an
# agency zone, server1 A and client0..client99 CNAME server1, followed by 100 client zones, each a
# server block of one CoreDNS flattening its apex to clientN.agency.test, with an NSD secondary of
# the 100 zones; AGENCY_CHANGES changes of server1's address, timed until every apex serves it on
# CoreDNS and on NSD, with the questions they cost: case 1 with BIND 9 as the agency's primary,
# sending NOTIFY to a `flatten { notify_from }` block, questions counted in its query log; case 2
# with the agency zone a *file* block of the same CoreDNS, followed by flatten's serial watch;
# about 3 minutes), and the Go benchmarks of the plugin (bench_test.go) pinned to the server core.
#
# Settings (environment):
#   ROUNDS=5         rounds alternating between rows (at least 3); medians are reported
#   DURATION=6       seconds of each dnsperf run (one max-QPS run and one fixed-rate run per row
#                    per round)
#   FIXED_QPS=       offered rate for the latency percentiles; default: half the slowest row's
#   CLIENTS=8 OUTSTANDING=500   dnsperf -c and -q of every run
#   TTL=30           TTL of the chain and of the static records
#   ALIASES=100000   aliases of the big case; SAMPLE=10000 of them are queried
#   RATE=5000        refresh_rate written into the big case's Corefile (upstream queries per
#                    second of background resolution); RATE=0 writes none (the plugin's default)
#   BIG_DELAY=0s     the fake target's delay in the big case
#   BLOCKS=10000     server blocks of the blocks case (clientN.test, two aliases each); SAMPLE of
#                    them are queried; BLOCKS_ROUNDS=3 max-QPS runs of each of its two servers;
#                    BLOCKS_STARTS=5 starts of each server, in turn, for the memory (its medians);
#                    BLOCKS_TIMEOUT=900 seconds from exec to ready before it gives up on a server
#                    (the run then reports what it measured and ends with an error)
#   COLD_DELAY=20ms  the fake target's delay for the cold path and the herd; COLD_REPS=5 repetitions
#   HERD_N=1000      queries in the herd
#   XFR_CHANGES=10   address changes of the transfer case; XFR_NAMES=10000 ALIAS records of its
#                    big zone (about a minute in all)
#   AGENCY_CHANGES=10  address changes of each agency case
#   GOBENCH_COUNT=5  -count of the Go benchmarks
#   SERVER_CPU=0 LOAD_CPU=1     the cores
#   FOREIGN_MAX=10   the machine may be shared: each run first waits up to QUIET_WAIT=10 seconds
#                    for both cores to be under FOREIGN_MAX% busy, and a run during which other
#                    processes took more than FOREIGN_MAX% of either core is repeated up to
#                    RETRIES=2 times; all waits and repeats together stop after EXTRA_BUDGET=180 s
#   PHASES=rows,cold,herd,big,blocks,transfer,agency,gobench   which parts to run
#   QUICK=1          ROUNDS=3 DURATION=2 ALIASES=10000 BLOCKS=1000 BLOCKS_TIMEOUT=180 BLOCKS_STARTS=2
#                    GOBENCH_COUNT=1 COLD_REPS=3 RETRIES=1 QUIET_WAIT=2 EXTRA_BUDGET=20
#                    AGENCY_CHANGES=3 unless set
#   RESULTS=bench/RESULTS.md    where the table goes
set -euo pipefail

cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1; then
	export PATH="/usr/local/go/bin:$PATH"
fi
OUT="${OUT:-bench/out}"
mkdir -p "$OUT/bin"
pidfile="$OUT/pids"
: >"$pidfile"

log() { echo "bench: [$(date +%T)] $*" >&2; }

# --- dependencies ---------------------------------------------------------------------------
need_pkgs=()
command -v dnsperf >/dev/null 2>&1 || need_pkgs+=(dnsperf)
command -v pdns_server >/dev/null 2>&1 || need_pkgs+=(pdns-server)
dpkg-query -W -f='${Status}' pdns-backend-bind 2>/dev/null | grep -q "install ok installed" || need_pkgs+=(pdns-backend-bind)
command -v pdns_recursor >/dev/null 2>&1 || need_pkgs+=(pdns-recursor)
command -v taskset >/dev/null 2>&1 || need_pkgs+=(util-linux)
# The secondary of the transfer case; Debian puts it in /usr/sbin, which not every PATH has.
[ -x /usr/sbin/nsd ] || command -v nsd >/dev/null 2>&1 || need_pkgs+=(nsd)
# The agency primary of the agency case (named and rndc, also in /usr/sbin).
[ -x /usr/sbin/named ] && [ -x /usr/sbin/rndc ] || command -v named >/dev/null 2>&1 || need_pkgs+=(bind9)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
	log "installing ${need_pkgs[*]}"
	# Debian's maintainer scripts start pdns, pdns-recursor, nsd and named as services (on port 53, for
	# every address). policy-rc.d answering 101 ("action forbidden") stops invoke-rc.d and
	# deb-systemd-invoke from starting anything; one that already exists is left as it is.
	made_policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
	if [ -n "$made_policy" ]; then
		rm -f /usr/sbin/policy-rc.d
	fi
	# Where systemd runs, keep the units this install added from starting at boot (and stop
	# them, should anything have started them).
	if [ -d /run/systemd/system ]; then
		systemctl disable --now pdns.service pdns-recursor.service nsd.service named.service 2>/dev/null || true
	fi
fi

# --- build ----------------------------------------------------------------------------------
log "building cmd/coredns and the helpers"
go build -o "$OUT/coredns" ./cmd/coredns
go build -o "$OUT/bin/target" ./bench/target
go build -o "$OUT/bin/herd" ./bench/herd
go build -o "$OUT/bin/harness" ./bench/harness

# refresh_rate is only written into the big case's Corefile when the plugin knows it.
if grep -q '"refresh_rate"' setup.go; then
	export RATE="${RATE:-5000}"
else
	log "this build of flatten has no refresh_rate option: the big case runs without it"
	export RATE=0
fi

# --- run ------------------------------------------------------------------------------------
harness_pid=""
cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if [ -n "$harness_pid" ] && kill -0 "$harness_pid" 2>/dev/null; then
		kill -TERM "$harness_pid" 2>/dev/null || true
		wait "$harness_pid" 2>/dev/null || true
	fi
	# Whatever the harness could not stop (it was killed, say): the PIDs it recorded, each only
	# if it is still the same process (same start time in /proc/PID/stat).
	if [ -s "$pidfile" ]; then
		same() { [ -r "/proc/$1/stat" ] && [ "$(awk '{sub(/.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null)" = "$2" ]; }
		while read -r pid start name; do
			if same "$pid" "$start"; then
				log "stopping $name (PID $pid)"
				kill -TERM "$pid" 2>/dev/null || true
				for _ in 1 2 3 4 5 6 7 8 9 10; do
					same "$pid" "$start" || break
					sleep 0.5
				done
				if same "$pid" "$start"; then
					kill -KILL "$pid" 2>/dev/null || true
				fi
			fi
		done <"$pidfile"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export OUT CLK_TCK="$(getconf CLK_TCK)" REPO="$PWD" COREDNS="$OUT/coredns" TARGET="$OUT/bin/target" HERD="$OUT/bin/herd"
# The harness waits most of the time; it shares the load core with dnsperf, not the servers'.
taskset -c "${LOAD_CPU:-1}" "$OUT/bin/harness" &
harness_pid=$!
wait "$harness_pid"
