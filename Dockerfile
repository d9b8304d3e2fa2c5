# Multi-stage build of the keyledger binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keyledger

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/keyledger --create-home keyledger
COPY --from=build /src/target/release/keyledger /usr/local/bin/keyledger
USER keyledger
WORKDIR /var/lib/keyledger
ENV KEYLEDGER_LISTEN=0.0.0.0:8080 \
    KEYLEDGER_DATA_DIR=/var/lib/keyledger
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["keyledger"]
CMD ["serve"]
