# One image for every component: the four services, the gateway, their migrations
# (and, for the dev overlay only, the local WeChat fakes). The component is the argument:
#
#   make image                                  # docker or podman, tag mall:<git sha>
#   docker run --rm mall:TAG members            # python -m members  (serve)
#   docker run --rm mall:TAG members migrate    # python -m members migrate
#   docker run --rm mall:TAG gateway            # python -m gateway
#
# The base is a build argument: pin it (tag, and digest in production) where you build.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---- build: the virtual environment, the generated protos, bytecode ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY requirements.txt ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY protos/ protos/
# Same protoc invocation as `make protos`; grpcio-tools (protoc) is removed afterwards.
RUN SITE="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && mkdir -p gen/python \
 && find protos/mall -name '*.proto' -exec /opt/venv/bin/python -m grpc_tools.protoc -I protos -I "$SITE" \
      --python_out=gen/python --pyi_out=gen/python --grpc_python_out=gen/python {} + \
 && find protos/mall -name '*.proto' -exec /opt/venv/bin/python -m grpc_tools.protoc -I protos -I "$SITE" \
      --include_imports --include_source_info --descriptor_set_out=gen/python/mall/descriptors.binpb {} + \
 && find gen/python/mall -type d -exec touch {}/__init__.py \; \
 && /opt/venv/bin/pip uninstall --yes grpcio-tools \
 && rm -rf protos
COPY mallkit/ mallkit/
COPY gateway/ gateway/
COPY services/ services/
COPY fakes/ fakes/
COPY scripts/healthcheck.py scripts/
# The source roots on the venv's path (as `make install` does), then bytecode, since
# the root filesystem is read-only at run time.
RUN SITE="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && printf '%s\n' /app /app/gen/python /app/gateway /app/services/members /app/services/points \
      /app/services/orders /app/services/community > "$SITE/mall-sources.pth" \
 && /opt/venv/bin/python -m compileall -q /app /opt/venv \
 && find /app /opt/venv -name '*.pyi' -delete

# checkov:skip=CKV_DOCKER_7: the base is the PYTHON_IMAGE build argument above, pinned to a version tag (never latest)
# ---- run: the base, a non-root user, the venv and the code; no compiler, no cache ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mall" \
      org.opencontainers.image.description="Private-domain mall backend: members, points, orders, community, gateway"
RUN groupadd --system --gid 10001 mall \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mall
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALL_LOG_FORMAT=json
WORKDIR /app
USER 10001:10001
EXPOSE 8080 50051 50052 50053 50054 9464
# gRPC health of the service (or the gateway's /healthz) of the process this container runs.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["python", "/app/scripts/healthcheck.py"]
ENTRYPOINT ["python", "-m"]
CMD ["gateway"]
