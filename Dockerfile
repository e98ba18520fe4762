# Builds Tally's two services from this workspace.
#
#   docker build --target adder   -t tally-adder   .
#   docker build --target totaler -t tally-totaler .
#
# Stages: `deps` compiles every dependency against stub sources, so that layer
# is reused until Cargo.toml, Cargo.lock or the .proto contract change; `build`
# compiles the real sources; `runtime` is a slim Debian with a non-root user;
# `adder` and `totaler` are the two final images. No BuildKit-only syntax, so
# the classic builder works too. Cargo downloads crates, so builds need network
# (compose.yml sets `network: host`).

ARG RUST_IMAGE=rust:1.95-slim-trixie
ARG RUNTIME_IMAGE=debian:trixie-slim

# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS deps
WORKDIR /src
# Containers do not need the profiling symbols the workspace profile keeps;
# without them the build is faster and the images smaller.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_TERM_COLOR=never \
    SQLX_OFFLINE=true
COPY Cargo.toml Cargo.lock ./
COPY proto/Cargo.toml proto/build.rs proto/
COPY proto/tally proto/tally
COPY adder/Cargo.toml adder/
COPY totaler/Cargo.toml totaler/
# Stub targets with the layout Cargo expects (lib + bin + integration test).
RUN set -eu; \
    mkdir -p proto/src; echo '// stub' > proto/src/lib.rs; \
    for crate in adder totaler; do \
        mkdir -p "$crate/src" "$crate/tests/it"; \
        echo '// stub' > "$crate/src/lib.rs"; \
        echo 'fn main() {}' > "$crate/src/main.rs"; \
        echo '// stub' > "$crate/tests/it/main.rs"; \
    done; \
    cargo build --release --locked -p adder -p totaler; \
    rm -rf proto/src adder totaler \
        target/release/adder target/release/totaler \
        target/release/deps/adder-* target/release/deps/totaler-* \
        target/release/deps/libadder-* target/release/deps/libtotaler-* \
        target/release/deps/proto-* target/release/deps/libproto-* \
        target/release/.fingerprint/adder-* target/release/.fingerprint/totaler-* \
        target/release/.fingerprint/proto-*

# ---------------------------------------------------------------------------
FROM deps AS build
COPY proto proto
COPY adder adder
COPY totaler totaler
RUN cargo build --release --locked -p adder -p totaler \
    && install -D -m 0755 target/release/adder /out/adder \
    && install -D -m 0755 target/release/totaler /out/totaler

# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
# curl is for the healthchecks; ca-certificates for TLS broker/database URLs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tally \
    && useradd --system --uid 10001 --gid tally --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin tally \
    && install -d -o tally -g tally -m 0750 /data
ENV LOG_FORMAT=json RUST_LOG=info
STOPSIGNAL SIGTERM

# ---------------------------------------------------------------------------
FROM runtime AS adder
COPY --from=build /out/adder /usr/local/bin/adder
USER tally:tally
ENV ADDER_GRPC_ADDR=0.0.0.0:50051 ADDER_HTTP_ADDR=0.0.0.0:8081
EXPOSE 50051 8081
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8081/readyz >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/adder"]

# ---------------------------------------------------------------------------
FROM runtime AS totaler
COPY --from=build /out/totaler /usr/local/bin/totaler
USER tally:tally
ENV TOTALER_HTTP_ADDR=0.0.0.0:8080 SUM_FILE=/data/sum.txt
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8080/readyz >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/totaler"]
