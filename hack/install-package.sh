#!/bin/sh
# Install this repository's Python package with pip: the one command the images run and the dev
# and CI venv should run too, so that what the tests exercise is what the images ship.
#
#   hack/install-package.sh [--editable] [EXTRAS]      e.g.  hack/install-package.sh engine
#                                                            hack/install-package.sh --editable dev,bench
#   hack/install-package.sh --deps-only [EXTRAS]       only what pyproject.toml requires
#   hack/install-package.sh --no-deps [EXTRAS]         only the package
#
# The images run the last two as two layers: the dependencies change rarely and take minutes to
# install, the package changes with every commit and takes seconds, so a code change rebuilds
# only the second layer. --deps-only reads pyproject.toml alone (the build context of that layer
# holds nothing else), with tomllib (Python 3.11 or later).
# PYTHON: the interpreter whose pip installs (default: python3 on PATH).
# Extra pip options come from the environment (PIP_NO_CACHE_DIR, PIP_INDEX_URL, ...).
set -eu

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

mode=""
case "${1:-}" in
  --editable | --deps-only | --no-deps) mode="$1"; shift ;;
esac
extras="${1:-}"

if [ "$mode" = "--deps-only" ]; then
  reqs="$(mktemp)"
  trap 'rm -f "$reqs"' EXIT
  "$PYTHON" - "$ROOT/pyproject.toml" "$extras" >"$reqs" <<'PYEOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
wanted = list(project["dependencies"])
for extra in filter(None, sys.argv[2].split(",")):
    if extra not in project.get("optional-dependencies", {}):
        sys.exit(f"install-package: pyproject.toml has no extra {extra!r}")
    wanted += project["optional-dependencies"][extra]
print("\n".join(wanted))
PYEOF
  "$PYTHON" -m pip install --no-input --requirement "$reqs"
  exit 0
fi

target="$ROOT"
if [ -n "$extras" ]; then
  target="$ROOT[$extras]"
fi
# shellcheck disable=SC2086  # $mode is empty or one word
"$PYTHON" -m pip install --no-input $mode "$target"
