# turnflow serve in a container: built in a full Rust image, run from a slim Debian one as an
# unprivileged user. Build: docker build -t turnflow .
# Run:   docker run --rm -p 8080:8080 turnflow            (the embedded default, offline)
#        docker run --rm -p 8080:8080 -p 3478:3478/udp turnflow serve --listen 0.0.0.0:8080 \
#            --webrtc-udp 0.0.0.0:3478 --webrtc-candidate 127.0.0.1   (WebRTC; docs/webrtc.md)
#        docker run --rm -p 8080:8080 -e DEEPGRAM_API_KEY -e OPENAI_API_KEY turnflow \
#            serve --listen 0.0.0.0:8080 --stt flux --llm openai --llm-model gpt-4o-mini --tts aura

FROM rust:1.95-slim-bookworm AS build
# libopus for WebRTC's Opus (the webrtc feature).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Manifests first, so the dependency build is cached until they change.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
COPY tests tests
COPY scenarios scenarios
# Without the default `virtual-clock` feature: a production server carries no test machinery
# (tokio's paused clock); simulate, replay and bench run on the real clock here.
RUN cargo build --release --locked --bin turnflow --no-default-features --features cli,otel,webrtc \
    && strip target/release/turnflow

FROM debian:bookworm-slim
# espeak-ng is the offline voice behind --tts espeak, libopus0 WebRTC's codec; TLS roots are
# compiled into the binary.
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng libopus0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin turnflow
COPY --from=build /src/target/release/turnflow /usr/local/bin/turnflow
USER 10001
EXPOSE 8080
# WebRTC media, when serve is given --webrtc-udp 0.0.0.0:3478 and the address clients use.
EXPOSE 3478/udp
# SIGTERM starts the drain: readiness turns 503, running sessions go on up to --drain-timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/turnflow"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
