# Builds Tally's two services from this workspace.
#
#   docker build --target adder   -t tally-adder   .
#   docker build --target totaler -t tally-totaler .
#
# Stages: `recipe` keeps only manifests, Cargo.lock, build scripts and .proto
# files; `deps` compiles every dependency from that recipe against stub sources,
# so its layer is reused until the recipe changes; `build` compiles the real
# sources; `runtime` is a slim Debian with a non-root user; `adder` and
# `totaler` are the two final images. No BuildKit-only syntax, so
# the classic builder works too. Cargo downloads crates, so builds need network
# (compose.yml sets `network: host`).

ARG RUST_IMAGE=rust:1.95-slim-trixie
ARG RUNTIME_IMAGE=debian:trixie-slim

# ---------------------------------------------------------------------------
# What decides the dependency build, and nothing else: the manifests, the lock
# file, build scripts and .proto files of every workspace member, and the
# build settings (.cargo/config.toml).
FROM ${RUST_IMAGE} AS recipe
WORKDIR /src
COPY . .
RUN find . -type f ! \( -name Cargo.toml -o -name Cargo.lock -o -name build.rs -o -name '*.proto' -o -path ./.cargo/config.toml \) -delete \
    && find . -depth -type d -empty -delete

# ---------------------------------------------------------------------------
# Every dependency, compiled against stub sources: this layer is reused until
# the recipe changes.
FROM ${RUST_IMAGE} AS deps
WORKDIR /src
# Containers do not need the profiling symbols the workspace profile keeps;
# without them the build is faster and the images smaller.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_TERM_COLOR=never
# jemalloc (the services' allocator) is built with make, which the slim
# Rust images do not carry.
RUN command -v make >/dev/null || { apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*; }
COPY --from=recipe /src ./
# A stub for each member's lib, bin and any target path its manifest names;
# the stubs are deleted again so that none can outlive the real sources.
RUN set -eu; : > /tmp/stubs; \
    for manifest in $(find . -mindepth 2 -name Cargo.toml); do \
        dir=$(dirname "$manifest"); \
        for file in src/lib.rs src/main.rs \
            $(sed -n 's/^path *= *"\(.*\.rs\)".*/\1/p' "$manifest"); do \
            [ -e "$dir/$file" ] && continue; \
            mkdir -p "$(dirname "$dir/$file")"; \
            case "$file" in */main.rs|src/bin/*) echo 'fn main() {}' ;; *) echo '// stub' ;; esac > "$dir/$file"; \
            echo "$dir/$file" >> /tmp/stubs; \
        done; \
    done; \
    cargo build --release --locked -p adder -p totaler; \
    xargs rm -f < /tmp/stubs; rm /tmp/stubs

# ---------------------------------------------------------------------------
# The real sources. Touching them makes them newer than the stubs' build, so
# Cargo rebuilds the workspace crates (and only them).
FROM deps AS build
COPY . .
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p adder -p totaler \
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
