# r2v-bot: the chat bot, its HTTP server and job engine. The GPU worker has Dockerfile.gpu.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    R2V_DATA_DIR=/data \
    R2V_HTTP_HOST=0.0.0.0 \
    R2V_HTTP_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY adapters ./adapters
COPY storage ./storage
COPY worker ./worker
RUN pip install . && useradd --create-home --uid 10001 r2v && mkdir -p /data && chown r2v /data

USER r2v
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import json, sys, urllib.request; \
r = urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4); \
sys.exit(0 if json.load(r).get('ok') else 1)"
CMD ["r2v", "run"]
