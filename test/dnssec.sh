#!/usr/bin/env bash
# End-to-end DNSSEC check: flattened answers, signed on the fly by *dnssec* (which sits above
# flatten in cmd/coredns), must validate as secure in real validators from Debian:
#
#   * unbound, a validating resolver with the zone's key (its DS) as the only trust anchor,
#     stub-zoned to CoreDNS; `dig +dnssec` through it must show NOERROR and the AD flag;
#   * BIND's delv, asking CoreDNS directly with the same anchor; it must say "fully validated".
#
# Checked: example.com A, AAAA and HTTPS (flattened from client1.agency.example), NODATA
# (v4only.example.com AAAA and HTTPS: its target has neither), the apex MX (from *file*), a CNAME to the
# flattened apex, no record or signature of the agency's zone in CoreDNS's answers, and that the
# checks can fail: with a wrong trust anchor the same question must come back SERVFAIL (bogus).
#
# One PASS/FAIL line per check; exits non-zero on any FAIL. Everything listens on 127.0.0.1
# only: unbound forwards anything outside example.com to CoreDNS too, so it never contacts the
# root servers. Installs what is missing with apt-get (as root, or with sudo): unbound,
# bind9-utils (dnssec-keygen, dnssec-dsfromkey), bind9-dnsutils (dig, delv). Where no
# /usr/sbin/policy-rc.d exists, one that denies service starts is put in place during the
# install, so that the unbound package does not start a system resolver (or touch resolv.conf).
#
# Run from anywhere: test/dnssec.sh
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1; then
	export PATH="/usr/local/go/bin:$PATH"
fi
export PATH="$PATH:/usr/sbin:/sbin" # unbound lives there, outside a normal user's PATH

# --- Tools -------------------------------------------------------------------------------------

missing=()
command -v unbound >/dev/null 2>&1 || missing+=(unbound)
command -v unbound-checkconf >/dev/null 2>&1 || missing+=(unbound)
command -v dnssec-keygen >/dev/null 2>&1 || missing+=(bind9-utils)
command -v dnssec-dsfromkey >/dev/null 2>&1 || missing+=(bind9-utils)
command -v dig >/dev/null 2>&1 || missing+=(bind9-dnsutils)
command -v delv >/dev/null 2>&1 || missing+=(bind9-dnsutils)
if [ "${#missing[@]}" -gt 0 ]; then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	echo "installing: ${missing[*]}"
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		sudo=(sudo -n)
	fi
	policy_made=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
		"${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
		policy_made=1
	fi
	rc=0
	{
		"${sudo[@]}" apt-get update -q &&
			"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	} </dev/null || rc=$?
	if [ -n "$policy_made" ]; then
		"${sudo[@]}" rm -f /usr/sbin/policy-rc.d
	fi
	if [ "$rc" -ne 0 ]; then
		echo "apt-get failed ($rc)" >&2
		exit "$rc"
	fi
fi

echo "unbound $(unbound -V | sed -n 's/^Version //p'), $(delv -v 2>&1), $(dig -v 2>&1)"

# --- Scratch space and cleanup -----------------------------------------------------------------

tmp="$(mktemp -d)"
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "building ./cmd/coredns"
go build -o "$tmp/coredns" ./cmd/coredns

# --- Keys and zones ----------------------------------------------------------------------------

keygen() { # zone -> base path of the new key files
	local base
	base="$(dnssec-keygen -q -K "$tmp" -a ECDSAP256SHA256 -n ZONE -f KSK "$1")"
	echo "$tmp/$base"
}
key="$(keygen example.com)"
agency_key="$(keygen agency.example)" # the agency's zone is signed too: nothing of it may leak
wrong_key="$(keygen example.com)"     # never used by CoreDNS: the wrong trust anchor

ds() { dnssec-dsfromkey -2 "$1.key"; } # SHA-256 DS record, one line
ds_good="$(ds "$key")"
ds_wrong="$(ds "$wrong_key")"

# delv's anchor files: trust-anchors { NAME static-ds TAG ALG DIGESTTYPE "DIGEST"; };
delv_anchor() {
	local name tag alg dt digest
	read -r name _ _ tag alg dt digest <<<"$1"
	printf 'trust-anchors {\n\t%s static-ds %s %s %s "%s";\n};\n' "$name" "$tag" "$alg" "$dt" "$digest"
}
delv_anchor "$ds_good" >"$tmp/anchor-good.conf"
delv_anchor "$ds_wrong" >"$tmp/anchor-wrong.conf"

cp example/db.example.com "$tmp/db.example.com"
cp example/db.agency.example "$tmp/db.agency.example"
cat >>"$tmp/db.agency.example" <<'EOF'

; v4only.example.com follows client3: an A record and no AAAA, so AAAA is NODATA.
client3 300 IN CNAME server3.agency.example.
server3 300 IN A     192.0.2.30

; server1's HTTPS record, which the flattened names follow (`https`); server3 has none.
server1 600 IN HTTPS 1 . alpn="h3,h2" ipv4hint=192.0.2.10,192.0.2.11 ipv6hint=2001:db8::10 ech=AEX+DQBBpQAgACBtaGVsbG8= key65333=opaque
EOF

# --- Servers -----------------------------------------------------------------------------------

random_port() { echo $((20000 + RANDOM % 30000)); }

# wait_ready PID PORT PATTERN: waits until the process's answer to example.com SOA on PORT
# matches PATTERN (true), or it has exited or 10 s have passed (false).
wait_ready() {
	for _ in $(seq 100); do
		if ! kill -0 "$1" 2>/dev/null; then
			return 1
		fi
		if dig @127.0.0.1 -p "$2" +time=1 +tries=1 example.com SOA 2>/dev/null | grep -qE "$3"; then
			kill -0 "$1" 2>/dev/null
			return
		fi
		sleep 0.1
	done
	return 1
}

start_coredns() {
	local try port pid
	for try in 1 2 3 4 5; do
		port="$(random_port)"
		cat >"$tmp/Corefile" <<EOF
example.com:$port {
    bind 127.0.0.1
    errors
    cache
    dnssec {
        key file $key
    }
    flatten {
        alias @ client1.agency.example.
        alias v4only client3.agency.example.
        alias shop client1.agency.example.
        https
    }
    file $tmp/db.example.com example.com
}

agency.example:$port {
    bind 127.0.0.1
    errors
    dnssec {
        key file $agency_key
    }
    file $tmp/db.agency.example agency.example
}
EOF
		"$tmp/coredns" -conf "$tmp/Corefile" >"$tmp/coredns.log" 2>&1 &
		pid=$!
		pids+=("$pid")
		if wait_ready "$pid" "$port" 'SOA[[:space:]]+ns1\.example\.com\. hostmaster\.example\.com\.'; then
			coredns_port=$port
			return
		fi
		kill "$pid" 2>/dev/null || true
		echo "CoreDNS did not start on port $port (try $try):" >&2
		cat "$tmp/coredns.log" >&2
	done
	exit 1
}

# start_unbound NAME "DS record": a validating unbound whose only trust anchor is the DS; sets
# unbound_port.
start_unbound() {
	local name=$1 anchor=$2 try port pid conf dir
	dir="$tmp/unbound-$name"
	mkdir -p "$dir"
	conf="$dir/unbound.conf"
	for try in 1 2 3 4 5; do
		port="$(random_port)"
		cat >"$conf" <<EOF
server:
    interface: 127.0.0.1@$port
    outgoing-interface: 127.0.0.1
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "$dir"
    pidfile: "$dir/unbound.pid"
    use-syslog: no
    logfile: "$dir/unbound.log"
    verbosity: 1
    val-log-level: 2
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "validator iterator"
    harden-referral-path: no
    target-fetch-policy: "0 0 0 0 0"
    trust-anchor-signaling: no
    trust-anchor: "$anchor"

stub-zone:
    name: "example.com"
    stub-addr: 127.0.0.1@$coredns_port

# Everything else goes to CoreDNS as well (which refuses it), so that unbound never primes
# the root from the Internet.
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$coredns_port
EOF
		unbound-checkconf "$conf" >/dev/null
		unbound -d -c "$conf" >"$dir/stderr.log" 2>&1 &
		pid=$!
		pids+=("$pid")
		# Any answer will do: with the wrong anchor it is SERVFAIL.
		if wait_ready "$pid" "$port" 'status: '; then
			unbound_port=$port
			return
		fi
		kill "$pid" 2>/dev/null || true
		echo "unbound ($name) did not start on port $port (try $try):" >&2
		cat "$dir/stderr.log" "$dir/unbound.log" >&2 2>/dev/null || true
	done
	exit 1
}

start_coredns
start_unbound good "$ds_good"
good_port=$unbound_port
start_unbound wrong "$ds_wrong"
wrong_port=$unbound_port
echo "CoreDNS on 127.0.0.1:$coredns_port, unbound on :$good_port (anchor: $ds_good), on :$wrong_port (wrong anchor)"

# --- Checks ------------------------------------------------------------------------------------

fails=0
pass() { echo "PASS $*"; }
fail() {
	echo "FAIL $*"
	fails=$((fails + 1))
}

# status and flags of a dig answer
status_of() { sed -n 's/.*status: \([A-Z]*\),.*/\1/p' <<<"$1" | head -1; }
has_ad() { grep -qE '^;; flags:[a-z ]* ad[ ;]' <<<"$1"; }
answers() { awk '/^;; ANSWER SECTION:/{a=1;next} /^$/{a=0} a' <<<"$1"; }

# secure LABEL NAME TYPE WANT...: through the good unbound, NOERROR, AD, and every WANT pattern
# in the answer section (none for a NODATA, whose answer section must be empty).
secure() {
	local label=$1 name=$2 type=$3 out st ans w
	shift 3
	out="$(dig @127.0.0.1 -p "$good_port" +dnssec +time=5 +tries=1 "$name" "$type" 2>&1)" || true
	st="$(status_of "$out")"
	ans="$(answers "$out")"
	if [ "$st" != NOERROR ]; then
		fail "$label: $name $type via unbound: status ${st:-none}, want NOERROR (secure)"
		printf '%s\n' "$out" | sed 's/^/    /'
		return
	fi
	if ! has_ad "$out"; then
		fail "$label: $name $type via unbound: no AD flag (insecure)"
		printf '%s\n' "$out" | sed 's/^/    /'
		return
	fi
	if [ "$#" -eq 0 ] && [ -n "$ans" ]; then
		fail "$label: $name $type via unbound: want NODATA, got an answer"
		printf '%s\n' "$ans" | sed 's/^/    /'
		return
	fi
	for w in "$@"; do
		if ! grep -qE "$w" <<<"$ans"; then
			fail "$label: $name $type via unbound: answer lacks /$w/"
			printf '%s\n' "$out" | sed 's/^/    /'
			return
		fi
	done
	pass "$label: $name $type via unbound: NOERROR, ad$( [ "$#" -eq 0 ] && echo ', no answer')"
}

# delv_check LABEL NAME TYPE WANT: delv straight to CoreDNS with the good anchor; WANT is the
# first line delv must print ("; fully validated" or "; negative response, fully validated").
delv_check() {
	local label=$1 name=$2 type=$3 want=$4 out first
	# The verdict is on standard output; standard error has notes such as "resolution failed:
	# ncache nxrrset" for a NODATA, shown only when the check fails.
	out="$(delv @127.0.0.1 -p "$coredns_port" -a "$tmp/anchor-good.conf" +root=example.com "$name" "$type" 2>"$tmp/delv.err")" || true
	first="$(head -1 <<<"$out")"
	if [ "$first" = "$want" ]; then
		pass "$label: delv $name $type: $first"
	else
		fail "$label: delv $name $type: '$first', want '$want'"
		cat "$tmp/delv.err" - <<<"$out" | sed 's/^/    /'
	fi
}

v4='example\.com\.[[:space:]]+[0-9]+[[:space:]]+IN[[:space:]]+A[[:space:]]+'
secure "flattened A" example.com A "${v4}192\.0\.2\.10\$" "${v4}192\.0\.2\.11\$" \
	'example\.com\.[[:space:]].*RRSIG[[:space:]]+A 13 2 .* example\.com\. '
secure "flattened AAAA" example.com AAAA 'example\.com\.[[:space:]]+[0-9]+[[:space:]]+IN[[:space:]]+AAAA[[:space:]]+2001:db8::10$' \
	'RRSIG[[:space:]]+AAAA 13 2 .* example\.com\. '
secure "NODATA" v4only.example.com AAAA
secure "flattened A (non-apex alias)" v4only.example.com A 'v4only\.example\.com\..*IN[[:space:]]+A[[:space:]]+192\.0\.2\.30$'
secure "apex MX" example.com MX 'example\.com\..*IN[[:space:]]+MX[[:space:]]+10 mail\.example\.com\.$'
secure "CNAME to the flattened apex" www.example.com A 'www\.example\.com\..*CNAME[[:space:]]+example\.com\.$' "${v4}192\.0\.2\.10\$"

# HTTPS records at flattened names (`https`): server1's, under the flattened name, signed by
# example.com; none at v4only (server3 has none): a proved NODATA.
https_data='1 \. alpn="h3,h2" ipv4hint="?192\.0\.2\.10,192\.0\.2\.11"? ech="?AEX\+DQBBpQAgACBtaGVsbG8="? ipv6hint="?2001:db8::10"? key65333="opaque"' # dig quotes only some values
secure "flattened HTTPS" example.com HTTPS "example\.com\.[[:space:]]+[0-9]+[[:space:]]+IN[[:space:]]+HTTPS[[:space:]]+${https_data}\$" \
	'RRSIG[[:space:]]+HTTPS 13 2 .* example\.com\. '
secure "flattened HTTPS, NODATA" v4only.example.com HTTPS
delv_check "flattened HTTPS" example.com HTTPS "; fully validated"
delv_check "flattened HTTPS, NODATA" v4only.example.com HTTPS "; negative response, fully validated"

delv_check "flattened A" example.com A "; fully validated"
delv_check "flattened AAAA" example.com AAAA "; fully validated"
delv_check "NODATA" v4only.example.com AAAA "; negative response, fully validated"
delv_check "apex MX" example.com MX "; fully validated"
# shop has no record in the zone file, only its alias: other types get NODATA (the name exists),
# proved as such, never NXDOMAIN.
secure "alias name absent from the zone, MX" shop.example.com MX
secure "alias name absent from the zone, A" shop.example.com A "shop\.example\.com\..*IN[[:space:]]+A[[:space:]]+192\.0\.2\.10\$"
delv_check "alias name absent from the zone, MX" shop.example.com MX "; negative response, fully validated"
delv_check "alias name absent from the zone, TXT" shop.example.com TXT "; negative response, fully validated"

# CoreDNS's own answers to DO queries: nothing owned by or signed by the agency's zone (which is
# signed, so a DO bit passed on by flatten's lookups would bring its RRSIGs along).
for q in "example.com A" "example.com AAAA" "v4only.example.com AAAA" "v4only.example.com A"; do
	# shellcheck disable=SC2086 # $q is "NAME TYPE"
	out="$(dig @127.0.0.1 -p "$coredns_port" +dnssec +norec +time=5 +tries=1 $q 2>&1)" || true
	if grep -v '^;' <<<"$out" | grep -qi 'agency\.example'; then
		fail "no upstream records: $q from CoreDNS holds agency.example data"
		printf '%s\n' "$out" | sed 's/^/    /'
	elif ! grep -qE 'RRSIG[[:space:]].* example\.com\. ' <<<"$out"; then
		fail "no upstream records: $q from CoreDNS is not signed by example.com"
		printf '%s\n' "$out" | sed 's/^/    /'
	else
		pass "no upstream records: $q from CoreDNS: only example.com data and signatures"
	fi
done

# The checks can fail: with the wrong trust anchor the answers are bogus.
out="$(dig @127.0.0.1 -p "$wrong_port" +dnssec +time=5 +tries=1 example.com A 2>&1)" || true
st="$(status_of "$out")"
if [ "$st" = SERVFAIL ] && ! has_ad "$out"; then
	pass "wrong trust anchor: example.com A via unbound: SERVFAIL (bogus), as it must be"
else
	fail "wrong trust anchor: example.com A via unbound: status ${st:-none}, want SERVFAIL"
	printf '%s\n' "$out" | sed 's/^/    /'
fi
out="$(delv @127.0.0.1 -p "$coredns_port" -a "$tmp/anchor-wrong.conf" +root=example.com example.com A 2>&1)" || true
if grep -q 'fully validated' <<<"$out"; then
	fail "wrong trust anchor: delv example.com A validated"
	printf '%s\n' "$out" | sed 's/^/    /'
else
	pass "wrong trust anchor: delv example.com A: $(grep -m1 -E 'resolution failed|^;;' <<<"$out" || head -1 <<<"$out")"
fi

if [ "$fails" -gt 0 ]; then
	echo "unbound's validation log (val-log-level 2):"
	grep -iE 'validat|bogus|insecure|failed' "$tmp/unbound-good/unbound.log" | tail -20 | sed 's/^/    /' || true
	echo "$fails check(s) failed"
	exit 1
fi
echo "all DNSSEC checks passed"
