# deltallmd on Debian bookworm-slim. Build:  docker build -t deltallmd .
# Run:   docker run -p 8080:8080 -v /path/to/models:/models:ro \
#          -e DELTALLM_MODEL=/models/model.gguf deltallmd
# Every configuration key is an environment variable DELTALLM_<KEY> (see deltallmd --help).

# --- build: the same packages and Makefile as .ci/run ----------------------------------------
FROM debian:bookworm-slim AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      build-essential pkg-config libmicrohttpd-dev libcjson-dev libuv1-dev check \
      libcurl4-openssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" all \
 && make install PREFIX=/usr/local DESTDIR=/out

# --- run: runtime libraries only, non-root -----------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      libmicrohttpd12 libcjson1 libuv1 curl ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin deltallm
COPY --from=build /out/ /
ENV DELTALLM_HOST=0.0.0.0 \
    DELTALLM_PORT=8080 \
    DELTALLM_MODEL=/models/model.gguf \
    DELTALLM_LOG_FORMAT=json
VOLUME ["/models"]
EXPOSE 8080
USER deltallm
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${DELTALLM_PORT}/health" || exit 1
# SIGTERM drains in-flight requests (drain-timeout, 30 s): give `docker stop -t 40`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/deltallmd"]
