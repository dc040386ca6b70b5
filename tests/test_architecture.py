"""The house's walls: data flows one way and no room reaches into another.

Read from the source with ``ast`` (every import, those under ``TYPE_CHECKING`` included),
so a cycle or a Discord import where none belongs fails here, whatever runs at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "cogs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports (absolute, resolved), wherever the import statement is."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def internal_imports(name: str) -> set[str]:
    """The project modules ``name`` imports (a package counts as its ``__init__``)."""
    return {m for m in imports_of(name) if m in MODULES and m != name}


def test_no_import_cycles_even_through_type_checking_imports() -> None:
    graph = {name: internal_imports(name) for name in MODULES}
    # A package importing its own submodules (re-exports) is not a cycle of rooms.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "name",
    [
        "bot.pixazo",
        "bot.pixazo.client",
        "bot.pixazo.models",
        "bot.pixazo.errors",
        "bot.runner",
        "bot.job_service",
        "bot.fair_use",
        "bot.events",
        "bot.storage.jobs",
        "bot.storage.config",
        "bot.storage.db",
        "bot.resolution",
        "bot.admission",
        "bot.polling",
    ],
)
def test_the_core_knows_nothing_of_discord(name: str) -> None:
    assert not {m for m in imports_of(name) if m.split(".")[0] == "discord"}


def test_the_pixazo_client_imports_nothing_else_of_the_bot() -> None:
    for name in MODULES:
        if name.startswith("bot.pixazo"):
            assert all(m.startswith("bot.pixazo") for m in internal_imports(name)), name


def test_no_cog_reaches_into_the_database_or_the_runner() -> None:
    for name in MODULES:
        if name.startswith("cogs."):
            reached = {
                m
                for m in imports_of(name)
                if m.split(".")[0] in ("aiosqlite", "sqlite3") or m.startswith("bot.runner")
            }
            assert not reached, f"{name} imports {reached}"


def test_the_web_server_knows_only_what_it_is_handed() -> None:
    assert not internal_imports("bot.web") & {"bot.app", "bot.runner", "bot.services"}


def test_the_bot_is_discord_wiring_only() -> None:
    source = MODULES["bot.app"].read_text(encoding="utf-8")
    assert len(source.splitlines()) < 200
    assert not internal_imports("bot.app") & {
        "bot.runner",
        "bot.storage.db",
        "bot.storage.jobs",
        "bot.pixazo",
        "bot.job_service",
    }


def test_the_fake_gateway_is_not_in_the_runtime_package() -> None:
    assert not (ROOT / "bot" / "fake_pixazo").exists()
    assert not any("fake_pixazo" in m for name in MODULES for m in imports_of(name))
