#!/usr/bin/env bash
# Install checkov (the manifest scanner the chart tests run) into its own virtual environment.
#
# checkov pins old versions of common libraries (packaging<24, networkx<2.7, cachetools<6,
# python-dateutil<3 through botocore) that conflict with the project's dev dependencies (pytest 9
# needs packaging>=24, the kubernetes client python-dateutil>=3): installed into the project venv
# it downgrades them and breaks that venv. So it lives apart, under
# $HALFFULL_CACHE/checkov (default cache ~/.cache/halffull), linked as $HALFFULL_CACHE/bin/checkov,
# where the tests look (or set HALFFULL_CHECKOV). Running it again is a no-op.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=hack/versions.env
source "$ROOT/hack/versions.env"

CACHE="${HALFFULL_CACHE:-$HOME/.cache/halffull}"
VENV="$CACHE/checkov/$CHECKOV_VERSION"
BIN="$CACHE/bin"

if [[ -x "$VENV/bin/checkov" ]] && [[ "$("$VENV/bin/checkov" --version 2>/dev/null)" == "$CHECKOV_VERSION" ]]; then
  mkdir -p "$BIN" && ln -sfn "$VENV/bin/checkov" "$BIN/checkov"
  echo "install-checkov: cached checkov $CHECKOV_VERSION in $VENV"
  exit 0
fi

rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
"$VENV/bin/checkov" --version >/dev/null
mkdir -p "$BIN" && ln -sfn "$VENV/bin/checkov" "$BIN/checkov"
echo "install-checkov: checkov $CHECKOV_VERSION in $VENV; linked as $BIN/checkov"
