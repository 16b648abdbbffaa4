# syntax=docker/dockerfile:1
# The tracing-operator image: a static (musl) release binary on distroless
# static, running as the distroless nonroot user 65532.
#
#   docker build -t ghcr.io/caas/tracing-operator:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... .
#
# The builder runs on the target platform (no cross-compiling): on Alpine the
# host target is <arch>-unknown-linux-musl, so the same file works for amd64 and
# arm64. Static linking is asked for explicitly (+crt-static) rather than relying
# on the musl default; with --target given, RUSTFLAGS reach only the binary, not
# build scripts and proc-macros (which must stay dynamic).

FROM rust:1.95-alpine AS builder
# ring (rustls' crypto) compiles C and assembly.
RUN apk add --no-cache musl-dev
WORKDIR /src
# .dockerignore admits only the Cargo manifests and Rust sources.
COPY . .
# Cache mounts keep the registry and target directory between builds; the
# binary is copied out because the target mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(rustc -vV | sed -n 's/^host: //p')" \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked --target "$target" --bin tracing-operator \
    && cp "target/$target/release/tracing-operator" /tracing-operator

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="tracing-operator" \
      org.opencontainers.image.description="Rolls OpenTelemetry tracing out across a Kubernetes cluster from TracingPolicies" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /tracing-operator /usr/local/bin/tracing-operator
# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# The metrics, /healthz and /readyz port.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tracing-operator"]
CMD ["run"]
