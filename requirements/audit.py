"""Audit every locked package for known vulnerabilities, with pip-audit (tools.lock).

    <tools venv>/bin/python requirements/audit.py

Three outcomes, told apart on purpose:

* the vulnerability database answered and no pinned release has a known vulnerability:
  exit 0;
* it answered and a pinned release is vulnerable (or could not be looked up): the list and
  exit 1. Fix: raise the floor in pyproject.toml (citing the advisory), then
  ``requirements/lock.sh --upgrade-package NAME``;
* it could not be asked (no network to it): a loud notice and exit 0, so an unreachable
  service never turns CI red; ``AUDIT_REQUIRED=1`` makes that exit 1 instead.

"Answered" is not taken on trust: pip-audit reports an unreachable PyPI per package as
"skipped" and still exits 0, so first a release with published advisories (the canary) is
looked up; only a database that reports it is counted as reachable. Each service is tried:
PyPI's JSON API, then OSV.

Every pin of every lock is audited, whatever its environment marker (so the Python 3.13
only packages too), as ``name==version`` lines.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import locks  # requirements/locks.py, beside this file

#: A release with published advisories (CVE-2024-23334, CVE-2024-23829, ...).
CANARY = "aiohttp==3.9.0"
SERVICES = ("pypi", "osv")
TIMEOUT = int(os.environ.get("AUDIT_TIMEOUT", "20"))


def pip_audit() -> list[str]:
    override = os.environ.get("KREABOT_PIP_AUDIT")  # tests substitute a stand-in
    return shlex.split(override) if override else [sys.executable, "-m", "pip_audit"]


def ask(requirements: list[str], service: str, work: Path) -> dict[str, object] | None:
    """pip-audit's JSON report for ``requirements`` from ``service``; None if it failed."""
    source, report = work / f"{service}-in.txt", work / f"{service}-report.json"
    source.write_text("\n".join(requirements) + "\n", encoding="utf-8")
    report.unlink(missing_ok=True)
    command = [
        *pip_audit(),
        *("-r", str(source), "--no-deps", "--disable-pip", "--vulnerability-service", service),
        *("--format", "json", "--output", str(report), "--progress-spinner", "off"),
        *("--timeout", str(TIMEOUT)),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        print(f"audit: pip-audit ({service}) did not finish in 600 s", file=sys.stderr)
        return None
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"audit: pip-audit ({service}) failed: {tail}", file=sys.stderr)
        return None
    return data if isinstance(data, dict) else None


def dependencies(report: dict[str, object]) -> list[dict[str, object]]:
    found = report.get("dependencies", [])
    return [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []


def reachable_service(work: Path) -> str | None:
    """The first service that reports the canary's advisories, or None."""
    for service in SERVICES:
        report = ask([CANARY], service, work)
        if report and any(d.get("vulns") for d in dependencies(report)):
            return service
        print(f"audit: {service}: no answer about {CANARY} (unreachable from here?)")
    return None


def locked_set() -> list[str]:
    pinned = set()
    for name in locks.LOCKS:
        for package, branches in locks.pins(name).items():
            pinned.update(f"{package}=={version}" for version, _ in branches)
    return sorted(pinned)


def main() -> int:
    required = os.environ.get("AUDIT_REQUIRED", "") not in ("", "0")
    pinned = locked_set()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        service = reachable_service(work)
        if service is None:
            print(
                "audit: NOT RUN: no vulnerability database could be reached (PyPI's JSON API"
                " per release, api.osv.dev), so the locked set was NOT checked. Run"
                " requirements/audit.py (or .ci/run) where one is reachable.",
                file=sys.stderr,
            )
            return 1 if required else 0
        report = ask(pinned, service, work)
    if report is None:
        print(f"audit: FAIL: {service} answered the canary but not the full audit", file=sys.stderr)
        return 1
    vulnerable, skipped = [], []
    for dep in dependencies(report):
        for vuln in dep.get("vulns") or []:
            if isinstance(vuln, dict):
                fixes = ", ".join(vuln.get("fix_versions") or []) or "no fix yet"
                vulnerable.append(
                    f"{dep.get('name')}=={dep.get('version')} {vuln.get('id')} ({fixes})"
                )
        if dep.get("skip_reason"):
            skipped.append(f"{dep.get('name')}: {dep.get('skip_reason')}")
    for line in vulnerable:
        print(f"audit: VULNERABLE {line}", file=sys.stderr)
    for line in skipped:
        print(f"audit: NOT AUDITED {line}", file=sys.stderr)
    if vulnerable or skipped:
        print(
            "audit: FAIL: raise the floor in pyproject.toml (cite the advisory), then"
            " requirements/lock.sh --upgrade-package NAME",
            file=sys.stderr,
        )
        return 1
    print(f"ok    no known vulnerabilities in {len(pinned)} locked releases ({service})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
