#!/usr/bin/env bash
# Copy the LLMService CRD (crds/, the source of truth) into the Helm chart's crds/ directory.
# A copy rather than a symlink: a packaged chart (helm package, OCI push) and checkouts on
# systems without symlinks must carry the file itself. tests/chart/test_render.py fails when the
# two differ; run this script after every CRD change. `--check` only reports a difference.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/crds/llmservices.serving.halffull.dev.yaml"
DST="$ROOT/charts/halffull/crds/llmservices.serving.halffull.dev.yaml"

if [[ "${1:-}" == "--check" ]]; then
  if cmp -s "$SRC" "$DST"; then
    echo "sync-crd: chart CRD matches $SRC"
    exit 0
  fi
  echo "sync-crd: $DST differs from $SRC; run hack/sync-crd.sh" >&2
  exit 1
fi
cp "$SRC" "$DST"
echo "sync-crd: copied $SRC to $DST"
