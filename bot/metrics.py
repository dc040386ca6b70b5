"""A few Prometheus metrics, rendered in the text exposition format. No dependencies."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Cumulative buckets, a sum and a count."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.counts = [0] * len(BUCKETS)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.total += seconds
        self.count += 1
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[index] += 1

    def render(self) -> list[str]:
        """Prometheus text lines."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for bound, count in zip(BUCKETS, self.counts, strict=True):
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {count}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self.total:.6f}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class Metrics:
    """kreabot's metrics: gateway latency and errors, delivery lag, jobs by state."""

    def __init__(self) -> None:
        self.submit_seconds = Histogram("kreabot_submit_seconds", "Time of submit calls")
        self.poll_seconds = Histogram("kreabot_poll_seconds", "Time of status calls")
        self.delivery_lag = Histogram(
            "kreabot_delivery_lag_seconds", "From the gateway finishing a job to its result posted"
        )
        self.gateway_errors: dict[str, int] = defaultdict(int)
        self.webhooks: dict[str, int] = defaultdict(int)
        self.jobs_by_state: Callable[[], dict[str, int]] | None = None

    def gateway_call(self, kind: str, status: int | None, seconds: float) -> None:
        """Record one gateway call (``status`` None for a connection failure)."""
        if kind == "submit":
            self.submit_seconds.observe(seconds)
        elif kind == "status":
            self.poll_seconds.observe(seconds)
        if status is None or status >= 400:
            self.gateway_errors[str(status or "connection")] += 1

    def render(self, states: dict[str, int]) -> str:
        """The whole exposition."""
        lines = ["# HELP kreabot_jobs Jobs by state", "# TYPE kreabot_jobs gauge"]
        for state, count in sorted(states.items()):
            lines.append(f'kreabot_jobs{{state="{state}"}} {count}')
        lines += [
            "# HELP kreabot_gateway_errors_total Gateway errors by status",
            "# TYPE kreabot_gateway_errors_total counter",
        ]
        for status, count in sorted(self.gateway_errors.items()):
            lines.append(f'kreabot_gateway_errors_total{{status="{status}"}} {count}')
        lines += [
            "# HELP kreabot_webhooks_total Webhook deliveries by outcome",
            "# TYPE kreabot_webhooks_total counter",
        ]
        for outcome, count in sorted(self.webhooks.items()):
            lines.append(f'kreabot_webhooks_total{{outcome="{outcome}"}} {count}')
        for histogram in (self.submit_seconds, self.poll_seconds, self.delivery_lag):
            lines += histogram.render()
        return "\n".join(lines) + "\n"
