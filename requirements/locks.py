"""The locks in requirements/: what each is compiled from, and whether it still matches.

    python3 requirements/locks.py check          # CI: every lock matches its inputs
    python3 requirements/locks.py digest NAME    # the digest lock.sh writes into NAME.lock
    python3 requirements/locks.py inputs NAME    # NAME's requirements, one a line

Each lock's first lines carry ``# inputs-sha256: <hex>``, a digest of the requirement lists
it was compiled from (for runtime.lock: requires-python and [project].dependencies; for
test.lock: those and the test extra; build.lock: [build-system].requires; tools.lock:
requirements/tools.in). ``check`` fails when a digest is missing or differs (someone changed
pyproject.toml without running requirements/lock.sh), when a pin does not satisfy a
requirement (a hand edit), or when test.lock and runtime.lock pin a package differently.
Standard library only, plus ``packaging`` (pip's own copy will do), so it runs before any
install, on a fresh machine, offline.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # no packaging installed: pip vendors it
    from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "requirements"
LOCKS = ("runtime", "test", "build", "tools")
#: The Pythons CI runs on: every lock must hold a pin for each of their requirements.
PYTHONS = ("3.11", "3.13")
DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.MULTILINE)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SystemExit(f"locks.py: {where} is not a list of strings")
    return [v.strip() for v in value]


def inputs(name: str) -> dict[str, list[str]]:
    """The requirement lists ``name``.lock is compiled from, by where they come from."""
    data = pyproject()
    project = data.get("project")
    if not isinstance(project, dict):
        raise SystemExit("locks.py: pyproject.toml has no [project]")
    runtime = {
        "requires-python": [str(project.get("requires-python", "")).strip()],
        "dependencies": _strings(project.get("dependencies", []), "[project].dependencies"),
    }
    if name == "runtime":
        return runtime
    if name == "test":
        extras = project.get("optional-dependencies", {})
        test = extras.get("test", []) if isinstance(extras, dict) else []
        return {**runtime, "optional-dependencies.test": _strings(test, "the test extra")}
    if name == "build":
        system = data.get("build-system", {})
        requires = system.get("requires", []) if isinstance(system, dict) else []
        return {"build-system.requires": _strings(requires, "[build-system].requires")}
    if name == "tools":
        lines = (HERE / "tools.in").read_text(encoding="utf-8").splitlines()
        return {"tools.in": [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]}
    raise SystemExit(f"locks.py: no lock named {name!r} (one of {', '.join(LOCKS)})")


def digest(name: str) -> str:
    text = json.dumps(inputs(name), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def requirements(name: str) -> list[Requirement]:
    found = inputs(name)
    return [
        Requirement(r) for key, values in found.items() if key != "requires-python" for r in values
    ]


def pins(name: str) -> dict[str, list[tuple[str, Marker | None]]]:
    """``name``.lock's pins: canonical name -> [(version, marker)] (one per marker branch)."""
    result: dict[str, list[tuple[str, Marker | None]]] = {}
    for line in (HERE / f"{name}.lock").read_text(encoding="utf-8").splitlines():
        found = PIN.match(line)
        if found:
            marker = Marker(found[3]) if found[3] else None
            result.setdefault(canonicalize_name(found[1]), []).append((found[2], marker))
    return result


def environment(python: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0"}


def pinned_version(
    locked: dict[str, list[tuple[str, Marker | None]]], package: str, python: str
) -> str | None:
    for version, marker in locked.get(canonicalize_name(package), []):
        if marker is None or marker.evaluate(environment(python)):
            return version
    return None


def check() -> list[str]:
    """Every problem with the locks, as lines to print (none: all fresh and consistent)."""
    problems: list[str] = []
    for name in LOCKS:
        path = HERE / f"{name}.lock"
        if not path.exists():
            problems.append(f"{path.name} is missing")
            continue
        found = DIGEST_LINE.search(path.read_text(encoding="utf-8"))
        if not found:
            problems.append(f"{path.name} has no '# inputs-sha256:' line: not made by lock.sh")
        elif found[1] != digest(name):
            where = "requirements/tools.in" if name == "tools" else "pyproject.toml"
            problems.append(f"{path.name} was compiled from other requirements than {where} lists")
        locked = pins(name)
        for requirement in requirements(name):
            for python in PYTHONS:
                env = environment(python)
                if requirement.marker and not requirement.marker.evaluate(env):
                    continue
                version = pinned_version(locked, requirement.name, python)
                if version is None:
                    problems.append(f"{path.name} pins no {requirement.name} for Python {python}")
                elif not requirement.specifier.contains(version, prereleases=True):
                    problems.append(
                        f"{path.name} pins {requirement.name}=={version}, outside '{requirement}'"
                    )
    if not problems:  # the tested set is the shipped set
        runtime, test = pins("runtime"), pins("test")
        for package, branches in runtime.items():
            if package in test and sorted(map(str, test[package])) != sorted(map(str, branches)):
                problems.append(f"test.lock and runtime.lock pin {package} differently")
    return sorted(set(problems))


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        problems = check()
        for problem in problems:
            print(f"lock: {problem}", file=sys.stderr)
        if problems:
            print("lock: run requirements/lock.sh and commit requirements/*.lock", file=sys.stderr)
            return 1
        print(f"ok    requirements/*.lock match pyproject.toml and tools.in ({', '.join(LOCKS)})")
        return 0
    if len(argv) == 2 and argv[0] in ("digest", "inputs"):
        if argv[0] == "digest":
            print(digest(argv[1]))
        else:
            for requirement in requirements(argv[1]):
                print(requirement)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
