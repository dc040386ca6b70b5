"""The locks in requirements/: fresh against pyproject.toml, and the audit's three outcomes.

CI runs ``requirements/locks.py check`` and ``requirements/audit.py`` itself; these tests
show that both fail when they must (a stale lock, a vulnerable pin) and that an audit
service nobody can reach is reported as such, not as a pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "requirements"))
import locks  # noqa: E402


def test_the_committed_locks_match_pyproject_and_each_other() -> None:
    assert locks.check() == []


def test_every_lock_is_hashed_and_made_by_lock_sh() -> None:
    for name in locks.LOCKS:
        text = (REPO_ROOT / "requirements" / f"{name}.lock").read_text(encoding="utf-8")
        assert text.startswith(f"# inputs-sha256: {locks.digest(name)}\n")
        pins = [line for line in text.splitlines() if "==" in line and not line.startswith("#")]
        assert pins and all(line.endswith("\\") for line in pins), f"{name}.lock: no --hash"
    # The lock tool is pinned, and the tools lock is what installs it.
    assert "uv==" in (REPO_ROOT / "requirements" / "tools.in").read_text(encoding="utf-8")
    assert "uv" in locks.pins("tools") and "pip-audit" in locks.pins("tools")


def copy_of_the_repo(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    (copy / "requirements").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "pyproject.toml", copy)
    for path in (REPO_ROOT / "requirements").iterdir():
        if path.is_file():
            shutil.copy(path, copy / "requirements")
    return copy


def run_check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(repo / "requirements" / "locks.py"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_fails_when_a_dependency_is_added_without_relocking(tmp_path: Path) -> None:
    repo = copy_of_the_repo(tmp_path)
    assert run_check(repo).returncode == 0
    pyproject = repo / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(
        text.replace('"aiosqlite>=0.19",', '"aiosqlite>=0.19",\n    "emoji>=2",'), "utf-8"
    )
    result = run_check(repo)
    assert result.returncode == 1
    assert "runtime.lock was compiled from other requirements" in result.stderr
    assert "pins no emoji" in result.stderr
    assert "run requirements/lock.sh" in result.stderr


def test_check_fails_on_a_hand_edited_pin_or_a_missing_digest(tmp_path: Path) -> None:
    repo = copy_of_the_repo(tmp_path)
    lock = repo / "requirements" / "runtime.lock"
    text = lock.read_text(encoding="utf-8")
    (version,) = [v for v, _ in locks.pins("runtime")["pillow"]]
    lock.write_text(text.replace(f"pillow=={version}", "pillow==10.0.0"), "utf-8")
    result = run_check(repo)
    assert result.returncode == 1 and "pins Pillow==10.0.0, outside" in result.stderr
    lock.write_text("\n".join(text.splitlines()[1:]), "utf-8")
    result = run_check(repo)
    assert result.returncode == 1 and "has no '# inputs-sha256:' line" in result.stderr


# -- the audit --------------------------------------------------------------------------------

FAKE_PIP_AUDIT = textwrap.dedent(
    """
    import json, os, sys
    args = sys.argv[1:]
    source = open(args[args.index("-r") + 1]).read().split()
    service = args[args.index("--vulnerability-service") + 1]
    scenario = os.environ["SCENARIO"]
    deps = []
    for line in source:
        name, version = line.split("==")
        if scenario == "unreachable" or (scenario == "osv-only" and service == "pypi"):
            deps.append({"name": name, "skip_reason": "Dependency not found on PyPI"})
            continue
        vulns = []
        if line == "aiohttp==3.9.0" or (scenario == "vulnerable" and name == "pillow"):
            vulns = [{"id": "CVE-2099-0001", "fix_versions": ["99.0"]}]
        deps.append({"name": name, "version": version, "vulns": vulns})
    out = args[args.index("--output") + 1]
    json.dump({"dependencies": deps, "fixes": []}, open(out, "w"))
    """
)


def run_audit(tmp_path: Path, scenario: str, **env: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "fake_pip_audit.py"
    fake.write_text(FAKE_PIP_AUDIT, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k != "AUDIT_REQUIRED"}
    environ.update(KREABOT_PIP_AUDIT=f"{sys.executable} {fake}", SCENARIO=scenario, **env)
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "requirements" / "audit.py")],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def test_audit_passes_when_the_database_answers_and_nothing_is_vulnerable(
    tmp_path: Path,
) -> None:
    result = run_audit(tmp_path, "clean")
    assert result.returncode == 0, result.stderr
    assert "no known vulnerabilities in" in result.stdout and "(pypi)" in result.stdout


def test_audit_fails_on_a_vulnerable_pin(tmp_path: Path) -> None:
    result = run_audit(tmp_path, "vulnerable")
    assert result.returncode == 1
    assert "VULNERABLE pillow==" in result.stderr and "CVE-2099-0001 (99.0)" in result.stderr


def test_audit_falls_back_to_osv(tmp_path: Path) -> None:
    result = run_audit(tmp_path, "osv-only")
    assert result.returncode == 0, result.stderr
    assert "(osv)" in result.stdout


@pytest.mark.parametrize("required", ["", "1"])
def test_an_unreachable_database_is_reported_not_passed(tmp_path: Path, required: str) -> None:
    """pip-audit itself exits 0 here ("skipped"): the canary tells the difference."""
    result = run_audit(tmp_path, "unreachable", AUDIT_REQUIRED=required)
    assert "audit: NOT RUN" in result.stderr and "NOT checked" in result.stderr
    assert "no known vulnerabilities" not in result.stdout
    assert result.returncode == (1 if required else 0)


def test_the_audit_covers_every_pin_whatever_its_marker() -> None:
    sys.path.insert(0, str(REPO_ROOT / "requirements"))
    import audit

    pinned = audit.locked_set()
    for name in locks.LOCKS:
        for package, branches in locks.pins(name).items():
            for version, _ in branches:
                assert f"{package}=={version}" in pinned
    assert any(p.startswith("audioop-lts==") for p in pinned)  # Python 3.13 only
