# syntax=docker/dockerfile:1
# Build stage: build a wheel of kreabot and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Run stage: only the wheels, a non-root user and the /data volume.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATABASE_PATH=/data/kreabot.sqlite3
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 kreabot \
    && mkdir -p /data && chown kreabot:kreabot /data
USER kreabot
WORKDIR /home/kreabot
VOLUME ["/data"]
CMD ["python", "-m", "bot"]
