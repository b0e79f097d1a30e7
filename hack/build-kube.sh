#!/usr/bin/env bash
# Build the control plane (kube-apiserver, kube-controller-manager, kube-scheduler) and the node
# (kubelet, kube-proxy) v1.20.2 offline from Debian's source package (the only way to get real
# Kubernetes binaries here: no registry ships them).
# Results are cached under $HALFFULL_CACHE (default ~/.cache/halffull) and reused when present.
set -euo pipefail

CACHE="${HALFFULL_CACHE:-$HOME/.cache/halffull}"
BIN="$CACHE/kube/bin"
# Bump RECIPE when the way the binaries are built changes: cached binaries of another recipe are
# rebuilt.
RECIPE="v1.20.2-3"
CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
cached=1
for cmd in "${CMDS[@]}"; do [[ -x "$BIN/$cmd" ]] || cached=0; done
if ((cached)) && [[ "$(cat "$BIN/RECIPE" 2>/dev/null)" == "$RECIPE" ]]; then
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
# The tarball was made by `git archive`, which left "v0.0.0-master+<commit>" as the version, and
# -X linker flags do not reach it through the vendor/ symlinks into staging/: set it in the source.
for base in staging/src/k8s.io/component-base/version/base.go \
            staging/src/k8s.io/client-go/pkg/version/base.go; do
  sed -i -E \
    -e 's/^(\s+gitVersion\s+(string\s+)?= )"v0\.0\.0-master\+[0-9a-f]*"/\1"v1.20.2"/' \
    -e 's/^(\s+gitMajor string)( = "")?( *\/\/)/\1 = "1"\3/' \
    -e 's/^(\s+gitMinor string)( = "")?( *\/\/)/\1 = "20"\3/' \
    -e 's/^(\s+gitTreeState\s+(string\s+)?= )""/\1"clean"/' "$base"
  grep -q '"v1.20.2"' "$base" || { echo "build-kube: could not set the version in $base" >&2; exit 1; }
done
# The generated OpenAPI definitions are not shipped in the source package.
make gen_openapi >/dev/null
for cmd in "${CMDS[@]}"; do
  go build -ldflags "-s -w" -o "$BIN/$cmd.tmp" "./cmd/$cmd"
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
done
echo "$RECIPE" > "$BIN/RECIPE"
# Keep the binaries; drop the 1+ GB tree and build cache.
rm -rf "$WORK" "$CACHE/kube/gocache"
echo "build-kube: built ${CMDS[*]} in $BIN"
