# syntax=docker/dockerfile:1
# permd container image: a static-ish Rust binary on distroless, running as non-root (65532).
#   docker build -t permd:dev .
#   docker run --rm -p 7766:7766 -e PERMD_HTTP_ADDR=0.0.0.0:7766 -e PERMD_AUTH_KEYS=$KEY \
#     -v $PWD/permd.yaml:/etc/permd/permd.yaml:ro permd:dev
# (beyond loopback permd needs client keys or mTLS, or --insecure-listen: SECURITY.md)

FROM rust:1-bookworm AS build
# build.rs compiles the protos with the protoc vendored by protoc-bin-vendored: no apt step.
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin permd \
 && install -D -m 0755 target/release/permd /out/permd

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="permd" \
      org.opencontainers.image.description="Sidecar policy decision point" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/permd /usr/local/bin/permd
USER 65532:65532
# HTTP checks, gRPC, and the admin listener (probes, status). permd listens on loopback
# unless PERMD_HTTP_ADDR / PERMD_GRPC_ADDR / PERMD_ADMIN_ADDR (or the config file) say otherwise.
EXPOSE 7766 7767 7768
ENTRYPOINT ["/usr/local/bin/permd"]
CMD ["serve", "--config", "/etc/permd/permd.yaml"]
