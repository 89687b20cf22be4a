#!/usr/bin/env bash
# Builds the container image of CoreDNS with flatten (Dockerfile) with docker or podman, checks
# it, and runs the example in it:
#
#   release/image.sh [VERSION]
#
# 1. builds ./cmd/coredns for the host's architecture (static, -trimpath, VERSION stamped in as
#    release/build.sh does), gives it cap_net_bind_service with setcap, and builds the image
#    ${IMAGE:-coredns-flatten}:VERSION from it;
# 2. checks the image: user 65532:65532, ENTRYPOINT /coredns, ports 53/tcp and 53/udp, the
#    capability on /coredns, `-plugins` lists flatten and `-version` prints flatten-VERSION;
# 3. runs example/Corefile in it (example/ mounted read-only, host network: it listens on
#    127.0.0.1:1053 only) and checks with dig that example.com A is flattened to 192.0.2.10 and
#    192.0.2.11; the container is removed at the end, whatever happens.
#
# VERSION defaults to `git describe --tags --always --dirty`. The tool is $CONTAINER_TOOL if set
# (a command with its global options: "podman --runtime runc"), else docker if its daemon answers,
# else podman. $CONTAINER_RUN_OPTS are added to each `run`: in a sandbox that may not raise
# rlimits, "--ulimit nofile=1024:4096 --ulimit nproc=4096:4096" (.ci/run passes both). Needs go,
# setcap (libcap2-bin), tar and dig (bind9-dnsutils); .ci/run installs them.
set -euo pipefail

cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1; then
	export PATH="/usr/local/go/bin:$PATH"
fi
export PATH="$PATH:/usr/sbin:/sbin" # setcap and getcap live there

version="${1:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
if ! [[ "$version" =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]]; then
	echo "release/image.sh: version \"$version\" must be letters, digits and . _ + - only" >&2
	exit 2
fi
image="${IMAGE:-coredns-flatten}:$version"

read -ra tool <<<"${CONTAINER_TOOL:-}"
read -ra runopts <<<"${CONTAINER_RUN_OPTS:-}"
if [ "${#tool[@]}" -eq 0 ]; then
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
		tool=(docker)
	elif command -v podman >/dev/null 2>&1; then
		tool=(podman)
	else
		echo "release/image.sh: neither docker (with a running daemon) nor podman found; install one (Debian: apt-get install podman)" >&2
		exit 3
	fi
fi
for c in setcap tar dig; do
	if ! command -v "$c" >/dev/null 2>&1; then
		echo "release/image.sh: $c not found (Debian: libcap2-bin, tar, bind9-dnsutils)" >&2
		exit 3
	fi
done
echo "--- ${tool[*]}: $("${tool[@]}" --version)"

ctx="$(mktemp -d)"
cid=""
cleanup() {
	if [ -n "$cid" ]; then
		"${tool[@]}" rm -f "$cid" >/dev/null 2>&1 || true
	fi
	rm -rf "$ctx"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

echo "--- build ./cmd/coredns ($version, $(go env GOOS)/$(go env GOARCH), static)"
CGO_ENABLED=0 GOOS=linux GOFLAGS=-mod=readonly go build -trimpath -buildvcs=false \
	-ldflags "-s -w -buildid= -X github.com/flattendns/flatten.Version=$version" \
	-o "$ctx/coredns" ./cmd/coredns
setcap cap_net_bind_service=+ep "$ctx/coredns"
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
	cp "$ca" "$ctx/ca-certificates.crt"
else
	echo "warning: no $ca on this host; the image has no CA certificates" >&2
	: >"$ctx/ca-certificates.crt"
fi
cp Dockerfile "$ctx/Dockerfile"

echo "--- ${tool[*]} build -t $image"
"${tool[@]}" build -q -t "$image" -f "$ctx/Dockerfile" "$ctx"

echo "--- checks"
user="$("${tool[@]}" image inspect --format '{{.Config.User}}' "$image")"
[ "$user" = "65532:65532" ] || fail "image user is \"$user\", want 65532:65532"
echo "PASS user $user"
entry="$("${tool[@]}" image inspect --format '{{json .Config.Entrypoint}}' "$image")"
[ "$entry" = '["/coredns"]' ] || fail "image entrypoint is $entry, want [\"/coredns\"]"
echo "PASS entrypoint $entry"
ports="$("${tool[@]}" image inspect --format '{{json .Config.ExposedPorts}}' "$image")"
for p in 53/tcp 53/udp; do
	[[ "$ports" == *"\"$p\""* ]] || fail "image exposes $ports, want $p among them"
done
echo "PASS exposed $ports"

# The capability, as the image holds it: the file's xattr in the exported filesystem.
cid="$("${tool[@]}" create "$image")"
mkdir "$ctx/fs"
"${tool[@]}" export "$cid" | tar -C "$ctx/fs" --xattrs --xattrs-include='security.capability' -xf - coredns
"${tool[@]}" rm -f "$cid" >/dev/null
cid=""
caps="$(getcap "$ctx/fs/coredns")"
[[ "$caps" == *cap_net_bind_service* ]] || fail "/coredns in the image has no cap_net_bind_service (getcap: \"$caps\")"
echo "PASS capability: $caps"

plugins="$("${tool[@]}" run "${runopts[@]}" --rm --network none "$image" -plugins)"
grep -qx 'flatten' <<<"$plugins" || fail "coredns -plugins in the image does not list flatten:
$plugins"
echo "PASS -plugins lists flatten"
ver="$("${tool[@]}" run "${runopts[@]}" --rm --network none "$image" -version)"
grep -qx "flatten-$version" <<<"$ver" || fail "coredns -version in the image does not say flatten-$version:
$ver"
echo "PASS -version: $(tr '\n' ' ' <<<"$ver")"

# Port 53 as user 65532, by the capability alone: with unprivileged ports above 1023 in the
# container's network namespace (docker and podman may lower that limit to 0), and, as the
# control, failing once the capability is out of the container's bounding set.
printf '.:53 {\n    bind 127.0.0.1\n    whoami\n}\n' >"$ctx/Corefile.53"
chmod 0644 "$ctx/Corefile.53"
port53() {
	local id out
	id="$("${tool[@]}" run "${runopts[@]}" -d --network none --sysctl net.ipv4.ip_unprivileged_port_start=1024 \
		-v "$ctx/Corefile.53:/Corefile.53:ro" "$@" "$image" -conf /Corefile.53 2>&1)" || {
		echo "$id"
		return
	}
	cid="$id"
	sleep 1
	out="$("${tool[@]}" logs "$cid" 2>&1)"
	if [ "$("${tool[@]}" inspect --format '{{.State.Running}}' "$cid")" = true ]; then
		out="$out (running)"
	fi
	"${tool[@]}" rm -f "$cid" >/dev/null
	cid=""
	echo "$out"
}
out53="$(port53)"
[[ "$out53" == *CoreDNS-*"(running)" ]] || fail "CoreDNS as 65532 in the image did not listen on port 53:
$out53"
echo "PASS listens on port 53 as 65532"
out53="$(port53 --cap-drop NET_BIND_SERVICE)"
[[ "$out53" != *"(running)" && ("$out53" == *"permission denied"* || "$out53" == *"not permitted"*) ]] ||
	fail "CoreDNS in the image ran on port 53 without cap_net_bind_service, so the check above proves nothing:
$out53"
echo "PASS (control: without the capability, port 53 is refused)"

echo "--- run example/Corefile in the image"
cid="$("${tool[@]}" run "${runopts[@]}" -d --network host -v "$PWD/example:/example:ro" "$image" -conf /example/Corefile)"
answer=""
for _ in $(seq 50); do
	answer="$(dig @127.0.0.1 -p 1053 example.com A +short +time=1 +tries=1 2>/dev/null | sort | tr '\n' ' ')" || true
	if [ -n "$answer" ] && [[ "$answer" != *";;"* ]]; then
		break
	fi
	sleep 0.2
done
if [ "$answer" != "192.0.2.10 192.0.2.11 " ]; then
	"${tool[@]}" logs "$cid" >&2 || true
	fail "example.com A from the example in the image is \"$answer\", want 192.0.2.10 192.0.2.11"
fi
echo "PASS example.com A: $answer"
"${tool[@]}" logs "$cid" 2>&1 | grep -q "flatten $version: " || fail "the container's log has no \"flatten $version: \" line:
$("${tool[@]}" logs "$cid" 2>&1)"
echo "PASS startup log names flatten $version"
echo "--- ok: $image"
