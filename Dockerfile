# syntax=docker/dockerfile:1
# kreabot: `docker build -t kreabot .` (the production image: the last stage), or
# `docker compose up -d` (see docker-compose.yml). `--target demo` adds the fake Pixazo
# gateway for `docker compose --profile demo`; the default image never contains it.
# No Docker engine runs where kreabot is developed: tests/test_main.py checks what this file
# refers to and runs (the files it copies, the pinned base, the lock it installs, the
# command, the health check's code).
#
# The base is pinned to a Python patch release and a Debian release (trixie, Debian 13, the
# current stable): bump both tags together, deliberately.

# Build stage: wheels of every locked dependency (hash-checked) and of kreabot itself.
FROM python:3.11.16-slim-trixie AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The dependencies first, so that a code change reuses this layer.
COPY requirements/runtime.lock requirements/build.lock ./requirements/
RUN pip install --require-hashes --no-deps -r requirements/build.lock \
    && pip download --require-hashes --no-deps --only-binary=:all: --dest /wheels \
        -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /dist .

# Runtime: the locked wheels installed from a bind mount (so no layer keeps them), checked
# against the lock's hashes again, then kreabot; a non-root user, the database on the
# /data volume, the HTTP server on (health check; webhooks when WEBHOOK_PUBLIC_URL is set).
FROM python:3.11.16-slim-trixie AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_PATH=/data/kreabot.sqlite3 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/dist,target=/dist \
    --mount=type=bind,from=build,source=/src/requirements,target=/requirements \
    pip install --no-cache-dir --no-index --find-links=/wheels --require-hashes --no-deps \
        -r /requirements/runtime.lock \
    && pip install --no-cache-dir --no-index --no-deps /dist/kreabot-*.whl \
    && pip check \
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
# Liveness, not readiness: /livez answers 200 whenever the process and its event loop do.
# Docker restarts an unhealthy container (with `restart:`), and a restart fixes only a hung
# process: an empty Pixazo wallet, a refused key or a Discord outage (what /readyz reports)
# survive it, and restarting in a loop would only drop the jobs' progress edits and re-login
# to Discord every few minutes. Watch /readyz and /metrics for those (deploy/rules.yml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8080') + '/livez', timeout=4)"]
CMD ["python", "-m", "bot", "run"]

# Demo: the production image plus the fake Pixazo gateway (a test double, top-level
# fake_pixazo/, not in the wheel), for `docker compose --profile demo` only.
FROM runtime AS demo
COPY fake_pixazo /opt/kreabot-demo/fake_pixazo
ENV PYTHONPATH=/opt/kreabot-demo
EXPOSE 8088
HEALTHCHECK --interval=5s --timeout=3s --retries=5 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 8088), 2).close()"]
CMD ["python", "-m", "fake_pixazo", "--host", "127.0.0.1", "--port", "8088", "--api-key", "demo-key"]

# Production: the last stage, so `docker build .` builds exactly `runtime`; no test double.
FROM runtime AS production
LABEL org.opencontainers.image.title="kreabot" \
      org.opencontainers.image.description="Krea 2 Large in Discord through the Pixazo gateway"
