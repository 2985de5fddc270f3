# syntax=docker/dockerfile:1
# Multi-stage build of the same `switchboard` binary the tests build (release profile).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The bundled SQLite's compile-time options (LIBSQLITE3_FLAGS).
COPY .cargo ./.cargo
COPY crates ./crates
COPY src ./src
COPY config ./config
COPY migrations ./migrations
COPY connectors ./connectors
COPY tests ./tests
# A workspace member (the benchmark's floor): cargo needs its manifest to load the workspace.
COPY bench/floor ./bench/floor
RUN cargo build --release --locked --bin switchboard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin switchboard \
 && mkdir -p /app/data \
 && chown switchboard /app/data
WORKDIR /app
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
COPY connectors ./connectors
USER switchboard
ENV SWITCHBOARD__SERVER__BIND=0.0.0.0:8080
EXPOSE 8080
VOLUME ["/app/data"]
HEALTHCHECK --interval=30s --timeout=3s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"]
ENTRYPOINT ["switchboard"]
CMD ["serve"]
