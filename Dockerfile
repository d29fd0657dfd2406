# syntax=docker/dockerfile:1
# BuildKit syntax: cache mounts and COPY --chmod below need it (the default builder since Docker 23).
#
#   docker build -t oauth-relay .
#   docker run --rm -p 8000:8000 oauth-relay
#
# The binary is built for x86_64 (scripts/build-static.sh names that target), so both stages are
# pinned to linux/amd64: on an arm64 host the build then runs emulated instead of producing an
# image whose binary cannot run.

# ---- build ------------------------------------------------------------------------------------
# The toolchain the project is developed and tested with; bookworm matches the Debian 12 base of
# the final image (not that it matters for a static binary, but it keeps one Debian in play).
# hadolint ignore=DL3029
FROM --platform=linux/amd64 rust:1.95-bookworm AS build
WORKDIR /src

# Only what `cargo build` needs: a change to tests, docs or deployment files leaves this stage
# cached, and nothing else from the work tree (.git, target/, secrets) can reach the image.
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
COPY scripts/ scripts/

# The same script tests/container.rs runs, so the image and the test cannot build different
# binaries. It prints the binary's path as its last stdout line; the target dir is a cache mount
# (fast rebuilds), so the binary is copied out of it within the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    scripts/build-static.sh > /tmp/build-static.out; \
    bin="$(tail -n 1 /tmp/build-static.out)"; \
    mkdir -p /out /out/state; \
    cp "$bin" /out/oauth-relay

# ---- runtime ----------------------------------------------------------------------------------
# distroless/static: no shell, no package manager, no libc (the binary is static): CA
# certificates, /etc/passwd with `nonroot`, tzdata, and nothing else to patch or exploit.
# The :nonroot tag already defaults to uid 65532; USER below says so explicitly.
# hadolint ignore=DL3029
FROM --platform=linux/amd64 gcr.io/distroless/static-debian12:nonroot

# Owned by root and not writable: the unprivileged process cannot replace its own binary.
COPY --from=build --chown=0:0 --chmod=0555 /out/oauth-relay /oauth-relay

# Never root: 65532:65532 is distroless's `nonroot:nonroot`, written as numbers because a kubelet
# enforcing runAsNonRoot cannot verify a user *name* (it refuses to start the container unless the
# pod also sets runAsUser). Matches runAsUser/runAsGroup 65532 in deploy/base/deployment.yaml.
USER 65532:65532

# Kept connections (broker mode with OAUTH_RELAY_ENCRYPTION_KEY, without Redis) live in a redb
# file in this directory, owned by the relay's user; a volume, so it outlives the container
# (`docker run -v oauth-relay-state:/var/lib/oauth-relay ...`; in Kubernetes,
# deploy/overlays/single mounts a PersistentVolumeClaim there, the root filesystem read-only).
COPY --from=build --chown=65532:65532 /out/state /var/lib/oauth-relay
ENV OAUTH_RELAY_CONNECTIONS_FILE=/var/lib/oauth-relay/connections.redb
VOLUME /var/lib/oauth-relay

# Listen on every interface inside the container (127.0.0.1 would be unreachable through a
# published port) on the unprivileged port 8000, which a non-root user may bind.
ENV OAUTH_CALLBACK_HOST=0.0.0.0 OAUTH_CALLBACK_PORT=8000
EXPOSE 8000

# Exec form because there is no shell; the subcommand GETs http://127.0.0.1:$OAUTH_CALLBACK_PORT/health
# and exits 0 on 200, 1 otherwise (its own request timeout is 3 s).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/oauth-relay", "healthcheck"]

# SIGTERM (docker stop's default) makes the relay stop accepting, finish in-flight requests and
# exit 0. Exec-form ENTRYPOINT makes the relay PID 1 itself, so the signal reaches it directly;
# it handles SIGTERM/SIGINT itself, so no init wrapper is needed. Arguments given to
# `docker run IMAGE ...` are passed to it (e.g. `--log-level debug`, or `wait STATE --server URL`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/oauth-relay"]
