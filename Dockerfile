# The image of CoreDNS with flatten, made as CoreDNS makes its own: the binary is built outside the
# image, then copied into a minimal final image that runs it as a non-root user.
#
# Build it with release/image.sh, which builds ./cmd/coredns (static, CGO_ENABLED=0, for the
# host's architecture), gives the binary cap_net_bind_service with setcap (CoreDNS's own
# Dockerfile does this in a Debian build stage), and puts it beside this file and the host's CA
# bundle in the build context. No base image is pulled.
#
# The capability travels as the file's security.capability attribute, which podman (buildah)
# and BuildKit keep on COPY; release/image.sh checks that the built image still has it.

FROM scratch

# CA certificates, for the plugins that talk TLS (forward tls://, ...), as in CoreDNS's image.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY coredns /coredns

# Numeric, so that Kubernetes' runAsNonRoot can check it without an /etc/passwd (65532 is
# distroless' "nonroot", CoreDNS's user).
USER 65532:65532
WORKDIR /
EXPOSE 53 53/udp
ENTRYPOINT ["/coredns"]
