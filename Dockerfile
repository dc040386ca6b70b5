# syntax=docker/dockerfile:1
# kreabot: `docker build -t kreabot .`, or `docker compose up -d` (see docker-compose.yml).
# No Docker engine runs where kreabot is developed: tests/test_main.py checks what this file
# refers to and runs (the files it copies, `python -m bot`, the health check's code).

# Build stage: wheels of kreabot and of every dependency.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip wheel --wheel-dir /wheels .

# Run stage: the wheels installed from a bind mount (so no layer keeps them), a non-root
# user, the database on the /data volume, the HTTP server on for the health check.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_PATH=/data/kreabot.sqlite3 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels kreabot \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/kreabot kreabot \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001
WORKDIR /home/kreabot
VOLUME ["/data"]
EXPOSE 8080
# SIGTERM: stop taking commands, let in-flight submits learn their request id (up to 10 s),
# close the gateway and the database. Give it time: `stop_grace_period` in compose.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8080') + '/healthz', timeout=4)"]
CMD ["python", "-m", "bot", "run"]
