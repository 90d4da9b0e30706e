# turnd container image. Build:  docker build -t turnd .
# Run with host networking (a relay port range through Docker's proxy is a known trap: one
# proxy/iptables rule per port, slow start-up, client addresses hidden):
#   docker run -d --name turnd --network host -v /etc/turnd:/etc/turnd:ro turnd
# Mount a directory holding turnd.toml (and certificates, secret files) at /etc/turnd.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY web ./web
RUN cargo build --release --locked --bin turnd --bin turnctl

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --uid 10001 turnd
COPY --from=build /src/target/release/turnd /src/target/release/turnctl /usr/local/bin/
# A default that loads but listens on loopback only; mount your own /etc/turnd.
COPY config/turnd.toml /etc/turnd/turnd.toml
USER turnd
# STUN/TURN over UDP and TCP, TURN over TLS, signaling and pages, admin (metrics).
EXPOSE 3478/udp 3478/tcp 5349/tcp 8080/tcp 9641/tcp
# Relay ports (49152-65535/udp by default) need no EXPOSE with --network host.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["turnctl", "probe", "--server", "turn:127.0.0.1:3478", "--stun-only", "--timeout", "3s"]
ENTRYPOINT ["turnd"]
CMD ["--config", "/etc/turnd/turnd.toml"]
