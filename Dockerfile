# syntax=docker/dockerfile:1
# The product image: chat-server and loadtest-agent in one image, the image the Helm chart
# (charts/chat-loadtest) and `ltops --type kubernetes` run.
#
#   docker build -t REGISTRY/chat-loadtest:0.1.0 .
#   docker push REGISTRY/chat-loadtest:0.1.0
#
# The build is the one `ltops` runs for these binaries (release profile, the committed
# Cargo.lock). Needs BuildKit (the default builder) for the cache mounts.

FROM rust:1.95-slim-bookworm AS build
# Nothing to install: the slim Rust image has gcc and libc6-dev, and these two binaries need no
# more (ring and the bundled SQLite are plain C; TLS roots are compiled in from webpki-roots; the
# AWS SDK's aws-lc, which wants cmake, is only in ltops-aws and is not built here).
WORKDIR /src
# The whole workspace: cargo reads every member's manifest even to build two packages.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p chat-server -p loadtest-agent --bins \
    && install -D -m 0755 -t /out target/release/chat-server target/release/loadtest-agent

FROM debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="chat-loadtest" \
      org.opencontainers.image.description="chat-server (Mattermost API v4 subset) and loadtest-agent (simulated chat users)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# The binaries need only libc (no OpenSSL, no CA bundle), so nothing is installed; the base keeps
# sh for `kubectl exec` / `ltops ssh`. A named user for uid 10001, the uid the chart runs as.
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /bin/sh chat
COPY --from=build /out/chat-server /out/loadtest-agent /usr/local/bin/
USER 10001:10001
WORKDIR /tmp
# 8065 chat-server API and WebSocket, 8067 chat-server metrics, 8070 loadtest-agent control API.
EXPOSE 8065 8067 8070
# No HTTP client in the image to probe with: Kubernetes's readiness and liveness probes (the
# chart's and ltops's) check /api/v4/system/ping and the agent's control port instead.
HEALTHCHECK NONE
CMD ["/usr/local/bin/chat-server", "--listen", "0.0.0.0:8065", "--metrics-listen", "0.0.0.0:8067", "--data-dir", "/tmp/chat-data"]
