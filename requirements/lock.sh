#!/usr/bin/env bash
# Regenerate requirements/*.lock, with hashes, from pyproject.toml and requirements/tools.in.
#
#   requirements/lock.sh                          after adding or changing a dependency
#   requirements/lock.sh --upgrade                every pin to the newest allowed release
#   requirements/lock.sh --upgrade-package NAME   one package (and what it needs)
#
# Existing pins are kept where they still fit (uv reads the current lock as preferences),
# so adding a dependency changes only what it needs. The locks are universal: one file
# installs on every Python >= 3.11 and platform (markers pick the right pins), so CI's 3.11
# and 3.13 use the same files. The uv doing this is the one pinned in tools.lock, installed
# (hash-checked) into a cached virtual environment.
#
#   runtime.lock  [project].dependencies                  Docker image, README's run command
#   test.lock     the same plus the test extra            CI, README's test command
#   build.lock    [build-system].requires                 the Docker build stage
#   tools.lock    requirements/tools.in (uv, pip-audit)   this script, CI's audit
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# The machine's pip configuration (extra indexes, find-links, constraints) is not the
# project's: the locks and tools come from PyPI alone.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT PIP_REQUIRE_VIRTUALENV

tools_key=$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' requirements/tools.lock)
tools=${KREABOT_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kreabot/tools-$tools_key}
if [ ! -x "$tools/bin/uv" ]; then
  echo "== installing the pinned lock tools into $tools"
  rm -rf "$tools"
  "$PYTHON" -m venv "$tools"
  "$tools/bin/pip" install -q --require-hashes --no-deps -r requirements/tools.lock
fi
uv="$tools/bin/uv"
echo "== $("$uv" --version)"

# compile NAME [uv pip compile arguments...]: requirements/NAME.lock, its digest line first.
compile() {
  local name=$1 out=requirements/$1.lock tmp
  shift
  tmp=$(mktemp)
  if [ -f "$out" ]; then cp "$out" "$tmp"; fi
  "$uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command "requirements/lock.sh" --output-file "$tmp" "$@" "${extra_args[@]}"
  {
    echo "# inputs-sha256: $("$PYTHON" requirements/locks.py digest "$name")"
    echo "# Made by requirements/lock.sh from $(describe "$name"); do not edit by hand."
    cat "$tmp"
  } >"$out"
  rm -f "$tmp"
  echo "ok    $out ($(grep -c '==' "$out") pins)"
}
describe() {
  case $1 in
    runtime) echo "pyproject.toml [project].dependencies" ;;
    test) echo "pyproject.toml [project].dependencies + the test extra" ;;
    build) echo "pyproject.toml [build-system].requires" ;;
    tools) echo "requirements/tools.in" ;;
  esac
}

extra_args=("$@")
compile runtime pyproject.toml
# Constrained to runtime.lock: the tests run the very versions the image ships.
compile test pyproject.toml --extra test --constraint requirements/runtime.lock
"$PYTHON" requirements/locks.py inputs build | compile build -
compile tools requirements/tools.in
"$PYTHON" requirements/locks.py check
