# The MLflow tracking server: MLflow with the PostgreSQL driver (backend store) and boto3 (artifacts
# in S3-compatible storage). Versions pinned: the server's database schema follows MLflow's version.
FROM python:3.11.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
RUN pip install "mlflow==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.40.0" \
    && groupadd --gid 1000 mlflow && useradd --uid 1000 --gid mlflow --create-home mlflow
USER mlflow
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"
