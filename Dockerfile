# syntax=docker/dockerfile:1
#
# guardian: a static binary on distroless, running as an unprivileged user.
#
#   docker build -t guardian:local .
#   docker run --rm -e GUARDIAN_NATS_URL=nats://host:4222 guardian:local
#
# docker-compose.yml builds this image for its guardian replicas.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/guardian ./cmd/guardian
# The data directory (audit spool; the embedded server's store when no
# GUARDIAN_NATS_URL is set), owned by the distroless nonroot user.
RUN mkdir -p /out/data

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/guardian /usr/local/bin/guardian
COPY --from=build --chown=65532:65532 /out/data /var/lib/guardian
ENV GUARDIAN_DATA_DIR=/var/lib/guardian \
    GUARDIAN_HTTP_ADDR=0.0.0.0:8080 \
    GUARDIAN_LOG_FORMAT=json
USER 65532:65532
VOLUME ["/var/lib/guardian"]
# 8080: /healthz, /readyz and /metrics. There is no HEALTHCHECK: the image
# has no shell or HTTP client; orchestrators probe /readyz themselves.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/guardian"]
CMD ["serve"]
