# Release tasks; everything else is plain `go` (see README.md).
#
#   make release [VERSION=v0.1.0]  release/build.sh: linux/amd64 and linux/arm64 tgz archives and
#                                  their SHA-256 sums in dist/, reproducibly
#   make image [VERSION=v0.1.0]    release/image.sh: the container image (docker or podman),
#                                  checked, with the example run in it
#   make clean                     removes dist/

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: release image clean

release:
	release/build.sh $(VERSION)

image:
	release/image.sh $(VERSION)

clean:
	rm -rf dist
