# ProcessFlow: one image for every process (serve, relay, migrate, ...).
#   docker build -t processflow .
#   docker run processflow                 # processflow serve on 0.0.0.0:50051
#   docker run processflow relay           # any other sub-command
# docs/operations.md describes the options and compose.yaml a whole deployment.

FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY tools/build_venv.sh tools/
COPY processflow/ processflow/
COPY server/ server/
COPY outbox_relay/ outbox_relay/
COPY migrations/ migrations/
RUN sh tools/build_venv.sh /opt/processflow


FROM python:3.11.14-slim-bookworm

# A fixed numeric id, so that volume ownership and Kubernetes' runAsNonRoot
# work without looking the name up.
RUN groupadd --system --gid 10001 processflow \
    && useradd --system --uid 10001 --gid processflow --no-create-home \
        --home-dir /var/lib/processflow --shell /usr/sbin/nologin processflow \
    && install -d -o processflow -g processflow -m 0750 /var/lib/processflow

COPY --from=builder /opt/processflow /opt/processflow

ENV PATH=/opt/processflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROCESSFLOW_LISTEN=0.0.0.0:50051 \
    PROCESSFLOW_METRICS_LISTEN=0.0.0.0:9464 \
    PROCESSFLOW_LOG_FORMAT=json

# The SQLite default (sqlite:///processflow.db) lands here; production sets
# PROCESSFLOW_DATABASE_URL to PostgreSQL.
WORKDIR /var/lib/processflow
USER 10001:10001

# gRPC, Prometheus metrics.
EXPOSE 50051 9464

# SERVING only once the database is reachable and migrated. A relay container
# has no gRPC port: compose.yaml replaces this check for the relays.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["processflow", "health", "--target", "127.0.0.1:50051"]

ENTRYPOINT ["processflow"]
CMD ["serve"]
