# The velora image used by compose.yaml (query node, ingest service, operator commands).
# The Kafka broker runs from the official apache/kafka image, not from this one.

# The portal's chart library, from the npm registry at the version and integrity that
# query_api/portal_routes.py pins (tests/test_compose.py keeps the two in step).
FROM node:20-slim AS portal-assets
ARG UPLOT_VERSION=1.6.32
ARG UPLOT_INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
WORKDIR /fetch
RUN npm pack "uplot@${UPLOT_VERSION}" --silent \
 && node -e "const c=require('crypto'),f=require('fs');const d=f.readFileSync(process.argv[1]);if('sha512-'+c.createHash('sha512').update(d).digest('base64')!==process.argv[2]){console.error('integrity mismatch');process.exit(1)}" "uplot-${UPLOT_VERSION}.tgz" "${UPLOT_INTEGRITY}" \
 && tar -xzf "uplot-${UPLOT_VERSION}.tgz" \
 && mkdir -p "/assets/npm/uplot-${UPLOT_VERSION}" \
 && cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css "/assets/npm/uplot-${UPLOT_VERSION}/" \
 && cp package/LICENSE "/assets/npm/uplot-${UPLOT_VERSION}/uPlot.LICENSE"

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY velora ./velora
COPY schemas ./schemas
COPY phi ./phi
COPY ingest ./ingest
COPY ledger ./ledger
COPY webhooks ./webhooks
COPY query_api ./query_api
COPY sidecar ./sidecar
COPY cli ./cli
RUN pip install . && rm -rf /src

# The portal's assets where the node looks for them (VELORA_CACHE_DIR/npm/...).
COPY --from=portal-assets /assets /opt/velora/cache

# An unprivileged user; its home holds the DuckDB ledger (a volume in compose.yaml).
RUN useradd --system --uid 10001 --home-dir /var/lib/velora --create-home velora
USER velora
WORKDIR /var/lib/velora
ENV VELORA_STATE_DIR=/var/lib/velora \
    VELORA_DUCKDB_PATH=/var/lib/velora/velora.duckdb \
    VELORA_CACHE_DIR=/opt/velora/cache

EXPOSE 8080 8081 8082
CMD ["velora", "--help"]
