# The velora image used by compose.yaml (query node, ingest service, operator commands).
# The Kafka broker runs from the official apache/kafka image, not from this one.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY velora ./velora
COPY schemas ./schemas
COPY ingest ./ingest
COPY ledger ./ledger
COPY webhooks ./webhooks
COPY query_api ./query_api
COPY cli ./cli
RUN pip install . && rm -rf /src

# An unprivileged user; its home holds the DuckDB ledger (a volume in compose.yaml).
RUN useradd --system --uid 10001 --home-dir /var/lib/velora --create-home velora
USER velora
WORKDIR /var/lib/velora
ENV VELORA_STATE_DIR=/var/lib/velora \
    VELORA_DUCKDB_PATH=/var/lib/velora/velora.duckdb

EXPOSE 8080 8081 8082
CMD ["velora", "--help"]
