"""kreabot's Prometheus metrics: the one object the services call, over a registry of its own.

:class:`Metrics` is a thin facade over a :class:`prometheus_client.CollectorRegistry` made
for it (never the library's global one), so several bots in one process (the tests) keep
their numbers apart. Services record what happens as it happens (a gateway call, a job
that ended, a webhook, a Discord 429, the event loop's lag); what is a state rather than an
event (jobs in the database by state, the queue, the breaker, the Discord connection) is
read when Prometheus scrapes, handed over as a :class:`Snapshot` by :meth:`Metrics.render`.

Every family is documented in the README (Operations, "Metrics"); ``deploy/`` holds a
Grafana dashboard and alert rules built on them.
"""

from __future__ import annotations

import asyncio
import math
import platform
import re
import tomllib
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from bot.admission import BALANCE, OUTAGE, UNAUTHORIZED
from bot.storage.jobs import ACTIVE_STATES

#: Gateway (Pixazo) call durations, in seconds.
GATEWAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: From the gateway finishing an image to its message posted, in seconds.
DELIVERY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: How late the event loop wakes a sleeper, in seconds (a healthy loop: about a millisecond).
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: How often the event-loop monitor sleeps (and so measures).
LOOP_LAG_INTERVAL = 0.5

#: Why the breaker can be open.
BREAKER_REASONS = (BALANCE, OUTAGE, UNAUTHORIZED)
#: Error kinds of a failed job known today, exposed at 0 from the start (so that rate() and
#: increase() see the first one); another kind appears when it first happens.
FAILURE_KINDS = (
    "refused",
    "failed",
    "error",
    "timeout",
    "gateway_down",
    "bad_request",
    "download",
    "delivery",
    "internal",
    "balance",
    "unauthorized",
)
#: Why a job ended interrupted (its paid submit may have reached the gateway).
INTERRUPTED_KINDS = ("interrupted", "uncertain")
#: What a webhook call came to.
WEBHOOK_OUTCOMES = ("woke", "ignored", "forged", "throttled")

# No ``*_created`` series beside every counter and histogram: they double the series and no
# dashboard here reads them (process-wide, as the client library only has a global switch).
disable_created_metrics()

_API_PREFIX = re.compile(r"^.*?/api/v\d+(?=/)")
_LITERAL = re.compile(r"[a-z@][a-z0-9_-]{0,31}")


def discord_route(method: str, path: str) -> str:
    """A Discord REST request as its route template: ``PATCH /webhooks/{id}/{token}/messages/
    @original``. Ids, tokens and emoji never reach a label (they would leak a secret, and
    make a series per message)."""
    parts = _API_PREFIX.sub("", path, count=1).strip("/").split("/")
    template: list[str] = []
    for part in parts:
        if part.isdigit():
            template.append("{id}")
        elif template[-2:] in (["webhooks", "{id}"], ["interactions", "{id}"]):
            template.append("{token}")  # an interaction or webhook token: a secret
        elif template[-1:] == ["reactions"]:
            template.append("{emoji}")
        elif _LITERAL.fullmatch(part):
            template.append(part)
        else:
            template.append("{param}")
    return f"{method.upper()} /{'/'.join(template)}"


def kreabot_version() -> str:
    """The installed kreabot's version, or the clone's (``python -m bot`` from a checkout)."""
    try:
        return metadata.version("kreabot")
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Snapshot:
    """What is read at scrape time: states, not events.

    ``active_jobs`` is None when the database did not answer (the gauges are then left out
    rather than shown stale, and ``kreabot_database_up`` is 0).
    """

    active_jobs: Mapping[str, int] | None
    queue_depth: int
    in_flight: int
    breaker_reason: str | None
    discord_connected: bool
    #: (shard id, heartbeat latency in seconds); a shard without a measure yet is left out.
    discord_latencies: Sequence[tuple[int, float]] = field(default_factory=tuple)
    #: (shard id, servers on it) for the shards this process runs.
    guilds_by_shard: Sequence[tuple[int, int]] = field(default_factory=tuple)
    #: Bot processes alive on the database (this one included), at the last heartbeat.
    cluster_processes: int = 1


class Metrics:
    """kreabot's metrics: what the runner, the web server and Discord's HTTP client record,
    and the exposition of them all. One per bot, each with its own registry."""

    def __init__(self, *, max_in_flight: int = 0, status_polls_per_second: float = 0.0) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        # Standard families under their usual names (process_*, python_*), as every
        # Prometheus dashboard expects them: memory, CPU, open files; the interpreter; GC.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        Info("kreabot_build", "kreabot, discord.py and Python versions", registry=registry).info(
            {
                "version": kreabot_version(),
                "discord_py": _version_of("discord.py"),
                "python": platform.python_version(),
            }
        )

        # -- jobs ------------------------------------------------------------------------
        self.active_jobs = Gauge(
            "kreabot_active_jobs",
            "Unfinished jobs in the database, by state (read at scrape time)",
            ["state"],
            registry=registry,
        )
        self.jobs_completed = Counter(
            "kreabot_jobs_completed",
            "Jobs whose image was posted in Discord",
            registry=registry,
        )
        self.jobs_failed = Counter(
            "kreabot_jobs_failed",
            "Jobs that ended without an image, by error kind",
            ["kind"],
            registry=registry,
        )
        self.jobs_interrupted = Counter(
            "kreabot_jobs_interrupted",
            "Jobs stopped while their paid submit may have reached the gateway (never re-sent)",
            ["kind"],
            registry=registry,
        )
        self.jobs_cancelled = Counter(
            "kreabot_jobs_cancelled",
            "Jobs cancelled while waiting in line (never sent, never paid)",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "kreabot_queue_depth", "Jobs waiting in line for a gateway slot", registry=registry
        )
        self.delivery_lag = Histogram(
            "kreabot_delivery_lag_seconds",
            "From the gateway finishing an image to its message posted",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        for kind in FAILURE_KINDS:
            self.jobs_failed.labels(kind)
        for kind in INTERRUPTED_KINDS:
            self.jobs_interrupted.labels(kind)

        # -- the Pixazo gateway ------------------------------------------------------------
        self.in_flight = Gauge(
            "kreabot_pixazo_in_flight_jobs",
            "Jobs submitted to the gateway and not finished there",
            registry=registry,
        )
        Gauge(
            "kreabot_pixazo_max_in_flight_jobs",
            "MAX_CONCURRENT_JOBS: jobs allowed at the gateway at once",
            registry=registry,
        ).set(max_in_flight)
        self.gateway_seconds = Histogram(
            "kreabot_pixazo_request_duration_seconds",
            "Duration of gateway calls (submit, status), answered or not",
            ["call"],
            buckets=GATEWAY_BUCKETS,
            registry=registry,
        )
        self.gateway_errors = Counter(
            "kreabot_pixazo_errors",
            "Gateway calls that failed, by call and HTTP status ('connection': no answer)",
            ["call", "status"],
            registry=registry,
        )
        self.status_polls = Counter(
            "kreabot_pixazo_status_polls",
            "Status requests sent to the gateway (compare with the limit)",
            registry=registry,
        )
        Gauge(
            "kreabot_pixazo_status_poll_limit_per_second",
            "STATUS_POLLS_PER_SECOND: the gateway's status rate limit",
            registry=registry,
        ).set(status_polls_per_second)
        self.breaker_open = Gauge(
            "kreabot_breaker_open",
            "1 while submissions are paused, for the breaker's reason",
            ["reason"],
            registry=registry,
        )
        for call in ("submit", "status"):
            self.gateway_seconds.labels(call)

        # -- Discord, webhooks, the process --------------------------------------------------
        self.discord_connected = Gauge(
            "kreabot_discord_connected",
            "1 while the gateway connection to Discord is open and logged in",
            registry=registry,
        )
        self.discord_latency = Gauge(
            "kreabot_discord_gateway_latency_seconds",
            "Discord gateway heartbeat latency, by shard",
            ["shard"],
            registry=registry,
        )
        self.discord_guilds = Gauge(
            "kreabot_discord_guilds",
            "Servers on each shard this process runs",
            ["shard"],
            registry=registry,
        )
        self.cluster_processes = Gauge(
            "kreabot_cluster_processes",
            "Bot processes alive on the shared database (this one included)",
            registry=registry,
        )
        self.jobs_taken_over = Counter(
            "kreabot_jobs_taken_over",
            "Jobs this process took over from a process that stopped or died",
            registry=registry,
        )
        self.discord_rate_limited = Counter(
            "kreabot_discord_rate_limited",
            "Discord REST answers 429, by route template and X-RateLimit-Scope",
            ["route", "scope"],
            registry=registry,
        )
        self.database_up = Gauge(
            "kreabot_database_up", "1 when the database answered at scrape time", registry=registry
        )
        self._webhooks = Counter(
            "kreabot_webhooks",
            "Pixazo webhook calls, by outcome (woke a job, ignored, forged token)",
            ["outcome"],
            registry=registry,
        )
        for outcome in WEBHOOK_OUTCOMES:
            self._webhooks.labels(outcome)
        self.loop_lag = Histogram(
            "kreabot_event_loop_lag_seconds",
            "How late the event loop wakes a sleeping task",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )

    # -- events ------------------------------------------------------------------------

    def gateway_call(self, kind: str, status: int | None, seconds: float) -> None:
        """Record one gateway call (``status`` None for a connection failure)."""
        self.gateway_seconds.labels(kind).observe(seconds)
        if kind == "status":
            self.status_polls.inc()
        if status is None or status >= 400:
            self.gateway_errors.labels(kind, str(status or "connection")).inc()

    def job_finished(self, state: str, kind: str | None = None, count: int = 1) -> None:
        """Jobs reached a final state (``kind``: their error kind)."""
        if state == "completed":
            self.jobs_completed.inc(count)
        elif state == "failed":
            self.jobs_failed.labels(kind or "unknown").inc(count)
        elif state == "interrupted":
            self.jobs_interrupted.labels(kind or "interrupted").inc(count)
        elif state == "cancelled":
            self.jobs_cancelled.inc(count)

    def webhook(self, outcome: str) -> None:
        """A webhook call: ``woke`` a job, was ``ignored`` (nothing to wake) or ``forged``."""
        self._webhooks.labels(outcome).inc()

    @property
    def webhooks(self) -> Tally[str]:
        """Webhook calls so far by outcome (those that happened), e.g. ``{"woke": 1}``."""
        counts: Tally[str] = Tally()
        for outcome in WEBHOOK_OUTCOMES:
            value = self.registry.get_sample_value("kreabot_webhooks_total", {"outcome": outcome})
            if value:
                counts[outcome] = int(value)
        return counts

    def discord_response(self, method: str, path: str, status: int, scope: str | None) -> None:
        """A Discord REST answer; a 429 is counted by route."""
        if status == 429:
            self.discord_rate_limited.labels(discord_route(method, path), scope or "none").inc()

    def discord_trace(self) -> aiohttp.TraceConfig:
        """An aiohttp trace for discord.py's HTTP session (``Client(http_trace=...)``): every
        answer goes through :meth:`discord_response`."""

        async def on_request_end(
            session: aiohttp.ClientSession,
            context: SimpleNamespace,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:
            response = params.response
            scope = response.headers.get("X-RateLimit-Scope")
            self.discord_response(params.method, params.url.raw_path, response.status, scope)

        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(on_request_end)
        return trace

    async def watch_event_loop(self, interval: float = LOOP_LAG_INTERVAL) -> None:
        """Measure, until cancelled, how late ``asyncio.sleep(interval)`` wakes: the time
        every ready callback (an interaction, a poll, a webhook) waits for the loop."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - started - interval))

    # -- the exposition ------------------------------------------------------------------

    def update(self, snapshot: Snapshot) -> None:
        """Set the scrape-time gauges from ``snapshot``."""
        self.active_jobs.clear()
        if snapshot.active_jobs is not None:
            for state in ACTIVE_STATES:
                self.active_jobs.labels(state.value).set(snapshot.active_jobs.get(state.value, 0))
        self.database_up.set(snapshot.active_jobs is not None)
        self.queue_depth.set(snapshot.queue_depth)
        self.in_flight.set(snapshot.in_flight)
        reasons = list(BREAKER_REASONS)
        if snapshot.breaker_reason is not None and snapshot.breaker_reason not in reasons:
            reasons.append(snapshot.breaker_reason)
        for reason in reasons:
            self.breaker_open.labels(reason).set(reason == snapshot.breaker_reason)
        self.discord_connected.set(snapshot.discord_connected)
        self.discord_latency.clear()
        for shard, seconds in snapshot.discord_latencies:
            if math.isfinite(seconds):
                self.discord_latency.labels(str(shard)).set(seconds)
        self.discord_guilds.clear()
        for shard, count in snapshot.guilds_by_shard:
            self.discord_guilds.labels(str(shard)).set(count)
        self.cluster_processes.set(snapshot.cluster_processes)

    def render(self, snapshot: Snapshot, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (body, content type): the text format, or OpenMetrics when the
        scraper's ``Accept`` asks for it."""
        self.update(snapshot)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
