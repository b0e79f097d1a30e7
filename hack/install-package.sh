#!/bin/sh
# Install this repository's Python package with pip: the one command the images run and the dev
# and CI venv should run too, so that what the tests exercise is what the images ship.
#
#   hack/install-package.sh [--editable] [EXTRAS]      e.g.  hack/install-package.sh engine
#                                                            hack/install-package.sh --editable dev,bench
# PYTHON: the interpreter whose pip installs (default: python3 on PATH).
# Extra pip options come from the environment (PIP_NO_CACHE_DIR, PIP_INDEX_URL, ...).
set -eu

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

editable=""
if [ "${1:-}" = "--editable" ]; then
  editable="--editable"
  shift
fi
extras="${1:-}"
target="$ROOT"
if [ -n "$extras" ]; then
  target="$ROOT[$extras]"
fi

# shellcheck disable=SC2086  # $editable is empty or one word
"$PYTHON" -m pip install --no-input $editable "$target"
