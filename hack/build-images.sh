#!/usr/bin/env bash
# Build the images the local node runs, with buildah, offline from any image registry:
#
#   hack/build-images.sh [NAME...]      NAME: pause base operator router fake-engine vllm-cpu
#                                       (default: all; each builds what it needs first)
#
# Each image is tagged with the hash of its inputs (Dockerfile, the files it copies, build
# arguments, its base's tag) and cached as an OCI archive under $HALFFULL_CACHE/images: an image
# whose inputs did not change is not rebuilt. The node (dev/halffull_dev/cluster/images.py)
# imports the archives into containerd's k8s.io namespace.
#
# The Python base comes from Debian packages (mmdebstrap); the operator, router and fake-engine
# images are the same Dockerfiles users build from the public python image, with PYTHON_IMAGE
# pointing at that base. A failed build names the Dockerfile step that failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HALFFULL_CACHE:-$HOME/.cache/halffull}"
OUT="$CACHE/images"
# Bump when the way images are built changes: every image is rebuilt.
RECIPE=1
BUILDAH=(buildah --root "$CACHE/buildah/storage" --runroot /run/halffull-buildah
         --storage-driver "${HALFFULL_STORAGE_DRIVER:-overlay}")
BASE_PACKAGES="python3,python3-venv,ca-certificates"
# The CPU torch wheel: pip's find-links on this machine (the build does not see pip's config).
TORCH_WHEELS="${TORCH_WHEELS:-$(pip3 config get global.find-links 2>/dev/null || true)}"
TORCH_WHEELS="${TORCH_WHEELS:-${PIP_FIND_LINKS:-}}"
PIP_CERT="${PIP_CERT:-$(pip3 config get global.cert 2>/dev/null || true)}"

mkdir -p "$OUT"
cd "$ROOT"

need() {
  command -v "$1" >/dev/null || { echo "build-images: $1 is missing ($2)" >&2; exit 1; }
}
need buildah "apt-get install buildah"

# hash FILE_OR_DIR...: one hash of the contents of these paths (sorted; no caches).
hash_inputs() {
  {
    echo "recipe $RECIPE"
    find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
      | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}

cached() {  # cached NAME TAG: the archive of this exact build exists
  [[ -f "$OUT/$1.ref" && "$(cat "$OUT/$1.ref")" == "localhost/halffull/$1:$2" \
     && -f "$OUT/$1-$2.tar" ]]
}

# build NAME TAG DOCKERFILE CONTEXT [buildah bud options...]
build() {
  local name=$1 tag=$2 file=$3 context=$4
  shift 4
  local ref="localhost/halffull/$name:$tag" log="$OUT/$name.build.log"
  echo "build-images: building $ref"
  local start=$SECONDS
  local tls=()
  if [[ -n "${PIP_CERT:-}" ]]; then  # this machine's CA bundle (TLS to PyPI is intercepted)
    tls=(--volume "$PIP_CERT:/etc/ssl/build-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/build-ca.crt)
  fi
  if ! "${BUILDAH[@]}" bud --layers --network host --pull=never -f "$file" -t "$ref" \
      "${tls[@]}" "$@" "$context" >"$log" 2>&1; then
    echo "build-images: $name FAILED at $file step: $(grep -E '^STEP [0-9]+' "$log" | tail -n1)" >&2
    tail -n 25 "$log" >&2
    echo "build-images: full log: $log" >&2
    exit 1
  fi
  rm -f "$OUT/$name"-*.tar
  "${BUILDAH[@]}" push --disable-compression "$ref" "oci-archive:$OUT/$name-$tag.tar:$ref" >>"$log" 2>&1
  echo "$ref" > "$OUT/$name.ref"
  # Keep only this build of the image in buildah's storage (older tags free their layers).
  "${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' | grep "^localhost/halffull/$name:" \
    | grep -v ":$tag$" | xargs -r "${BUILDAH[@]}" rmi >/dev/null 2>&1 || true
  echo "build-images: $ref built in $((SECONDS - start)) s," \
    "$("${BUILDAH[@]}" images --format '{{.Size}}' "$ref" 2>/dev/null | head -n1)"
}

ensure_in_storage() {  # a cached image must also be in buildah's storage to be a base
  local name=$1 tag=$2
  "${BUILDAH[@]}" inspect "localhost/halffull/$name:$tag" >/dev/null 2>&1 \
    || "${BUILDAH[@]}" pull -q "oci-archive:$OUT/$name-$tag.tar" >/dev/null
}

image_pause() {
  local tag
  tag=$(hash_inputs images/pause)
  cached pause "$tag" && return 0
  need go "apt-get install golang-go"
  local ctx
  ctx=$(mktemp -d)
  cp images/pause/Dockerfile "$ctx/"
  (cd "$ctx" && CGO_ENABLED=0 GO111MODULE=off GOCACHE="$ctx/gocache" \
    go build -ldflags "-s -w" -o pause "$ROOT/images/pause/pause.go")
  rm -rf "$ctx/gocache"
  build pause "$tag" "$ctx/Dockerfile" "$ctx"
  rm -rf "$ctx"
}

BASE_TAG=""
image_base() {
  BASE_TAG=$(echo "$BASE_PACKAGES $(hash_inputs images/base)" | sha256sum | cut -c1-16)
  if cached base "$BASE_TAG"; then
    ensure_in_storage base "$BASE_TAG"
    return 0
  fi
  need mmdebstrap "apt-get install mmdebstrap"
  local ctx
  ctx=$(mktemp -d)
  echo "build-images: bootstrapping a Debian bookworm root filesystem ($BASE_PACKAGES)"
  if [[ -n "${BASE_ROOTFS:-}" ]]; then  # one made before by this same mmdebstrap command
    cp "$BASE_ROOTFS" "$ctx/rootfs.tar"
  elif ! mmdebstrap --variant=minbase --include="$BASE_PACKAGES" \
      --aptopt='Acquire::Languages "none"' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      bookworm "$ctx/rootfs.tar" >"$OUT/base.mmdebstrap.log" 2>&1; then
    echo "build-images: mmdebstrap failed; see $OUT/base.mmdebstrap.log" >&2
    tail -n 15 "$OUT/base.mmdebstrap.log" >&2
    exit 1
  fi
  build base "$BASE_TAG" images/base/Dockerfile "$ctx"
  rm -rf "$ctx"
}

# What the Python images copy, for their tags. README.md is copied too (pyproject.toml names it as
# the package's description) but left out here: an edit to it changes no behaviour, and would
# otherwise rebuild every Python image.
PY_SOURCES=(pyproject.toml operator hack/install-package.sh)

image_python() {  # operator, router: two targets of one Dockerfile
  local name=$1 tag
  image_base
  tag=$(echo "$BASE_TAG $name $(hash_inputs images/halffull "${PY_SOURCES[@]}")" | sha256sum | cut -c1-16)
  cached "$name" "$tag" && return 0
  build "$name" "$tag" images/halffull/Dockerfile . --target "$name" \
    --build-arg "PYTHON_IMAGE=localhost/halffull/base:$BASE_TAG"
}

image_fake_engine() {  # the router image plus dev/
  local tag
  image_python router
  local router
  router=$(cat "$OUT/router.ref")
  ensure_in_storage router "${router##*:}"
  tag=$(echo "$router $(hash_inputs images/fake-engine dev/pyproject.toml dev/halffull_dev/__init__.py dev/halffull_dev/py.typed dev/halffull_dev/testing)" | sha256sum | cut -c1-16)
  cached fake-engine "$tag" && return 0
  build fake-engine "$tag" images/fake-engine/Dockerfile . --build-arg "ROUTER_IMAGE=$router"
}

image_vllm_cpu() {
  local tag wheels
  image_base
  wheels=${TORCH_WHEELS%% *}
  [[ -d "$wheels" ]] || {
    echo "build-images: no local directory with the CPU torch wheel (TORCH_WHEELS=$wheels);" \
      "set TORCH_WHEELS to one" >&2
    exit 1
  }
  tag=$(echo "$BASE_TAG $(ls "$wheels" | grep '^torch-' | sort | tr '\n' ' ') $(hash_inputs images/vllm-larry/Dockerfile.cpu hack/make-tiny-model.py hack/versions.env hack/install-vllm.sh "${PY_SOURCES[@]}")" \
    | sha256sum | cut -c1-16)
  cached vllm-cpu "$tag" && return 0
  build vllm-cpu "$tag" images/vllm-larry/Dockerfile.cpu . \
    --build-arg "PYTHON_IMAGE=localhost/halffull/base:$BASE_TAG" \
    --build-arg "TORCH_FIND_LINKS=/torch-wheels" --volume "$wheels:/torch-wheels:ro"
}

names=("$@")
((${#names[@]})) || names=(pause operator router fake-engine vllm-cpu)
for name in "${names[@]}"; do
  case "$name" in
    pause) image_pause ;;
    base) image_base ;;
    operator | router) image_python "$name" ;;
    fake-engine) image_fake_engine ;;
    vllm-cpu) image_vllm_cpu ;;
    *) echo "build-images: unknown image $name" >&2; exit 2 ;;
  esac
done
for name in "${names[@]}"; do
  echo "build-images: $(cat "$OUT/$name.ref") ($(du -m "$OUT/$name-"*.tar | cut -f1) MB archive)"
done
