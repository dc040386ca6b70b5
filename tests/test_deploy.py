"""``deploy/``: the Grafana dashboard and the Prometheus alert rules never drift from /metrics.

Both files are parsed (JSON, YAML), every metric name their PromQL uses is looked up in
what a real bot's /metrics exposes, and the rules are checked for the shape Prometheus
loads. Where ``promtool`` is installed, it checks the rules and the example configuration
and runs the rules' unit tests (deploy/rules.test.yml) too. Every kreabot family /metrics
exposes is documented in the README.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.bot.test_web import free_port, http
from tests.support.world import World

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
#: Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
#: PromQL's functions, aggregations and keywords used in deploy/ (a new one is added here).
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "rate",
    "increase",
    "deriv",
    "min_over_time",
    "histogram_quantile",
    "and",
    "unless",
    "label_values",
}
#: Where the brief's dashboard and alerts come from: each must be there.
DASHBOARD_MUST_SHOW = {
    "kreabot_active_jobs",  # jobs by state
    "kreabot_jobs_completed_total",  # outcomes
    "kreabot_jobs_failed_total",
    "kreabot_queue_depth",
    "kreabot_breaker_open",
    "kreabot_pixazo_status_polls_total",  # the poll budget...
    "kreabot_pixazo_status_poll_limit_per_second",  # ...against its limit
    "kreabot_event_loop_lag_seconds_bucket",
    "kreabot_pixazo_request_duration_seconds_bucket",
    "kreabot_discord_rate_limited_total",
    "process_resident_memory_bytes",
}
ALERTS_MUST_WATCH = {
    "kreabot_breaker_open",
    "kreabot_queue_depth",
    "kreabot_event_loop_lag_seconds_bucket",
    "kreabot_discord_connected",
}


def dashboard() -> dict[str, Any]:
    parsed = json.loads((DEPLOY / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert isinstance(parsed, dict)
    return parsed


def rules() -> dict[str, Any]:
    parsed = yaml.safe_load((DEPLOY / "rules.yml").read_text(encoding="utf-8"))
    assert isinstance(parsed, dict)
    return parsed


def dashboard_queries(node: Any) -> Iterator[str]:
    """Every PromQL query in the dashboard: panel targets and template variables."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_queries(item)


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in rules()["groups"] for rule in group["rules"]]


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL query reads (label names, strings, ranges and Grafana
    variables taken out first)."""
    query = re.sub(r"\$\{?\w+\}?", "", query)  # Grafana: $__rate_interval, ${datasource}
    query = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
    query = re.sub(r"\{[^}]*\}", "", query)
    query = re.sub(r"\[[^\]]*\]", "", query)
    query = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", query)
    query = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r"\1", query)
    names = set(re.findall(r"(?<![\w.])[a-zA-Z_:][\w:]*", query))
    return names - PROMQL_WORDS


def test_metric_names_are_read_out_of_promql() -> None:
    query = (
        "histogram_quantile(0.99, sum by (instance, le) (rate(kreabot_event_loop_lag_seconds_"
        'bucket{instance=~"$instance"}[$__rate_interval]))) > 0.5 unless on (instance) '
        '(max by (instance) (kreabot_breaker_open{reason="a b"}) == 1)'
    )
    assert metric_names(query) == {
        "kreabot_event_loop_lag_seconds_bucket",
        "kreabot_breaker_open",
    }
    assert metric_names("label_values(kreabot_build_info, instance)") == {"kreabot_build_info"}


@pytest.fixture
async def exposed(world: World) -> tuple[set[str], dict[str, str]]:
    """What a real bot's /metrics exposes: every name a query can use, and the family
    types by name (kreabot families only)."""
    port = free_port()
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1"):
        status, _, text = await http("GET", f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    names: set[str] = set()
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        if family.name.startswith("kreabot_"):
            types[family.name] = family.type
    return names, types


async def test_every_metric_the_dashboard_and_the_rules_use_is_exposed(
    exposed: tuple[set[str], dict[str, str]],
) -> None:
    names, _ = exposed
    panels = {name for query in dashboard_queries(dashboard()) for name in metric_names(query)}
    alerts = {name for expr in rule_expressions() for name in metric_names(expr)}

    assert panels - names == set(), "the dashboard reads metrics /metrics does not expose"
    assert alerts - names - PROMETHEUS_SERIES == set(), "the rules read unexposed metrics"
    assert DASHBOARD_MUST_SHOW <= panels, DASHBOARD_MUST_SHOW - panels
    assert ALERTS_MUST_WATCH <= alerts, ALERTS_MUST_WATCH - alerts


async def test_every_kreabot_family_is_documented_in_the_readme(
    exposed: tuple[set[str], dict[str, str]],
) -> None:
    _, types = exposed
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, kind in types.items():
        shown = f"{name}_total" if kind == "counter" else name
        assert f"`{shown}" in readme, f"{shown} is not documented in the README"


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable() -> None:
    parsed = dashboard()
    assert parsed["title"] == "kreabot" and parsed["uid"] == "kreabot"
    variables = {v["name"]: v for v in parsed["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in parsed["panels"] if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in parsed["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


def test_the_rules_have_the_shape_prometheus_loads() -> None:
    parsed = rules()
    assert set(parsed) == {"groups"}
    seen: set[str] = set()
    for group in parsed["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= RULE_KEYS, rule
            name = rule["alert"]
            assert re.fullmatch(r"Kreabot[A-Z][A-Za-z0-9]+", name), name
            assert name not in seen, f"{name} twice"
            seen.add(name)
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert DURATION.fullmatch(rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert set(rule["annotations"]) == {"summary", "description"}
            for text in rule["annotations"].values():
                assert text.count("{{") == text.count("}}"), text
    # The example configuration loads these rules and names the job they expect.
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "kreabot"
    assert 'up{job="kreabot"}' in rule_expressions()[0]


def test_the_readme_links_the_dashboard_and_the_rules() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("grafana-dashboard.json", "rules.yml", "prometheus.yml", "rules.test.yml"):
        assert f"(deploy/{name})" in readme, name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", "rules.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "rules.test.yml"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_promtool_accepts_the_rules_and_their_unit_tests_pass(args: list[str]) -> None:
    result = subprocess.run(
        ["promtool", *args],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
