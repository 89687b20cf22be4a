#!/usr/bin/env bash
# Release build: CoreDNS with flatten (./cmd/coredns) for linux/amd64 and linux/arm64, each in a
# tgz archive with its SHA-256 sum, in dist/:
#
#   release/build.sh [VERSION]
#
#   dist/coredns-flatten_VERSION_linux_amd64.tgz         the binary "coredns", LICENSE, README.md, CHANGELOG.md
#   dist/coredns-flatten_VERSION_linux_amd64.tgz.sha256  "HASH  NAME", for sha256sum -c
#   (and the same for arm64)
#
# VERSION defaults to `git describe --tags --always --dirty`. It is stamped into the binary
# (github.com/flattendns/flatten.Version), which `coredns -version` prints and logs at startup.
#
# Reproducible: the same commit, VERSION and Go version give the same bytes. Builds are static
# (CGO_ENABLED=0) with -trimpath, no VCS stamp and an empty build id; archive members have the
# commit's time, owner 0:0 and fixed modes, in name order, and gzip stores no name or time.
#
# Environment: PLATFORMS (default "linux/amd64 linux/arm64"), OUT (default dist),
# SOURCE_DATE_EPOCH (default: the commit's time).
set -euo pipefail

cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1; then
	export PATH="/usr/local/go/bin:$PATH"
fi

version="${1:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
if ! [[ "$version" =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]]; then
	echo "release/build.sh: version \"$version\" must be letters, digits and . _ + - only" >&2
	exit 2
fi
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
out="${OUT:-dist}"
platforms="${PLATFORMS:-linux/amd64 linux/arm64}"
mkdir -p "$out"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

for platform in $platforms; do
	os="${platform%/*}"
	arch="${platform#*/}"
	name="coredns-flatten_${version}_${os}_${arch}"
	dir="$stage/$name"
	mkdir -p "$dir"
	echo "--- $name"
	CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" GOFLAGS=-mod=readonly \
		go build -trimpath -buildvcs=false \
		-ldflags "-s -w -buildid= -X github.com/flattendns/flatten.Version=$version" \
		-o "$dir/coredns" ./cmd/coredns
	cp LICENSE README.md CHANGELOG.md "$dir/"
	chmod 0755 "$dir/coredns"
	chmod 0644 "$dir/LICENSE" "$dir/README.md" "$dir/CHANGELOG.md"
	tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=gnu \
		-C "$dir" -cf - coredns LICENSE README.md CHANGELOG.md | gzip -n -9 >"$out/$name.tgz"
	(cd "$out" && sha256sum "$name.tgz" >"$name.tgz.sha256")
	cat "$out/$name.tgz.sha256"
done
