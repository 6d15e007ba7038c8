# syntax=docker/dockerfile:1
# oci-registry as one static-ish executable on distroless.
#   docker build -t oci-registry .
#   docker run -p 8080:8080 -v oci-cache:/data oci-registry
# The build stage needs the npm registry (dependencies) and dl.deno.land (deno compile's
# runtime base binary).

ARG DENO_VERSION=2.9.6

FROM denoland/deno:${DENO_VERSION} AS build
WORKDIR /src
COPY deno.json deno.lock ./
COPY src/ src/
# --frozen: fail instead of building from a deno.lock that does not match deno.json.
# Same permission and V8 flags as the `compile` task in deno.json (tests/chart_test.ts checks).
RUN deno compile --frozen --v8-flags=--expose-gc,--max-semi-space-size=1 --allow-net --allow-read --allow-write --allow-env --allow-sys --allow-ffi \
      -o /oci-registry src/main.ts \
 && /oci-registry --version \
 && mkdir -p /rootfs/data

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="oci-registry" \
      org.opencontainers.image.description="Pull-through caching OCI registry mirror" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /oci-registry /oci-registry
# An empty /data owned by the nonroot user, so a fresh volume mounted there is writable.
COPY --from=build --chown=65532:65532 /rootfs/data /data
USER 65532:65532
# Trust /etc/ssl/certs/ca-certificates.crt (mount your own bundle there), as the scratch image does.
ENV DENO_TLS_CA_STORE=system
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["/oci-registry"]
CMD ["--listen", "0.0.0.0:8080", "filesystem", "--root", "/data"]
