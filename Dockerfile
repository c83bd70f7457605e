# autodev in a container. Build: docker build -t autodev .
# Run: see deploy/compose.yaml (it also says which container settings bubblewrap needs).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY templates templates
COPY roles roles
COPY config config
COPY benches benches
COPY tests tests
RUN cargo build --release --locked --bin autodev && strip target/release/autodev

FROM debian:bookworm-slim
# git for autodev's own git, bubblewrap for the sandbox, tini to reap and pass signals on,
# curl for the health check, Node.js for the agent CLIs (install them in an image of your own:
# `FROM autodev` then `RUN npm install -g @anthropic-ai/claude-code`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      git bubblewrap ca-certificates tini curl nodejs npm \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/autodev /usr/local/bin/autodev
COPY config/config.yaml /etc/autodev/config.yaml
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/autodev autodev
USER autodev
ENV AUTODEV_CONFIG=/etc/autodev/config.yaml \
    AUTODEV_DATA_DIR=/var/lib/autodev \
    AUTODEV_BIND=0.0.0.0:8000 \
    HOME=/var/lib/autodev
VOLUME /var/lib/autodev
EXPOSE 8000
# On SIGTERM autodev drains for workers.drain_seconds (30) plus about 15 s: give `docker stop`
# at least 60 s (`--time 60`, or `stop_grace_period` in compose).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/autodev"]
CMD ["serve"]
