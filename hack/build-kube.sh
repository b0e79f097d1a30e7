#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager v1.20.2 offline from Debian's source package
# (the only way to get a real control plane here: no registry ships the binaries).
# Results are cached under $HALFFULL_CACHE (default ~/.cache/halffull) and reused when present.
set -euo pipefail

CACHE="${HALFFULL_CACHE:-$HOME/.cache/halffull}"
BIN="$CACHE/kube/bin"
if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" ]]; then
  echo "build-kube: cached binaries in $BIN"
  exit 0
fi

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
need=()
for pkg in golang-go etcd-server rsync golang-github-modern-go-reflect2-dev dpkg-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

WORK="$CACHE/kube/work"
rm -rf "$WORK"
mkdir -p "$WORK/sources" "$WORK/lists/partial" "$WORK/src" "$BIN"

# A private deb-src index: the system's apt configuration is left untouched.
sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$WORK/sources/src.sources"
APT_OPTS=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$WORK/sources"
          -o "Dir::State::Lists=$WORK/lists")
apt-get "${APT_OPTS[@]}" update -qq
(cd "$WORK/src" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes)

GOPATH="$WORK/gopath"
TREE="$GOPATH/src/k8s.io/kubernetes"
mkdir -p "$TREE"
tar -xf "$(ls "$WORK"/src/kubernetes_*.orig.tar.* | head -n1)" -C "$TREE" --strip-components=1

# The vendored reflect2 1.0.1 crashes the apiserver on the first custom-resource write under Go 1.19.
rm -rf "$TREE/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$TREE/vendor/github.com/modern-go/reflect2"

export GOPATH GO111MODULE=off CGO_ENABLED=0 GOFLAGS="" GOCACHE="$CACHE/kube/gocache"
cd "$TREE"
# The generated OpenAPI definitions are not shipped in the source package.
make gen_openapi >/dev/null
LDFLAGS="-s -w -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitVersion=v1.20.2
 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMajor=1
 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMinor=20"
for cmd in kube-apiserver kube-controller-manager; do
  go build -ldflags "$LDFLAGS" -o "$BIN/$cmd.tmp" "./cmd/$cmd"
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
done
# Keep the binaries; drop the 1+ GB tree and build cache.
rm -rf "$WORK" "$CACHE/kube/gocache"
echo "build-kube: built $BIN/kube-apiserver and $BIN/kube-controller-manager"
