# pgsplit container image: build with `docker build -t pgsplit .`
FROM rust:1-bookworm AS build
# protoc and the well-known .proto files build the etcd client (several instances on etcd).
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY config ./config
COPY tests ./tests
COPY benches ./benches
RUN cargo build --release --locked --features etcd

FROM debian:bookworm-slim
RUN useradd --system --no-create-home pgsplit \
    && mkdir -p /var/lib/pgsplit && chown pgsplit /var/lib/pgsplit
COPY --from=build /src/target/release/pgsplit /usr/local/bin/pgsplit
COPY config/pgsplit.toml /etc/pgsplit/pgsplit.toml
# The failover state (failover.state_dir): keep it across container restarts.
VOLUME /var/lib/pgsplit
USER pgsplit
EXPOSE 6432 9930
# Listen on all interfaces inside the container, so clients prove a password (SCRAM): mount a
# config with your [[users]] over /etc/pgsplit/pgsplit.toml and point --primary/--replica (or the
# config file) at your servers. pgsplit refuses auth = "trust" on a network address unless the
# config says trust_network = true.
ENTRYPOINT ["pgsplit", "--config", "/etc/pgsplit/pgsplit.toml", "--auth", "scram-sha-256", "--listen", "0.0.0.0:6432", "--metrics-listen", "0.0.0.0:9930"]
