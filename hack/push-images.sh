#!/usr/bin/env bash
# Build the three images and push them to your registry: what `REGISTRY=... make images` runs.
#
#   REGISTRY=registry.example.com/halffull make images
#   helm install halffull charts/halffull -n halffull-system --create-namespace \
#     --set image.registry=registry.example.com/halffull
#
# Each image is images/<name>/Dockerfile built from the repository root and pushed as
# $REGISTRY/<name>:$TAG, the names the chart derives from image.registry. Settings (environment):
#   REGISTRY          required: host[:port][/path] the nodes can pull from (logged in already:
#                     `buildah login`, `podman login` or `docker login`)
#   TAG               default: the chart's appVersion, which the chart uses when no tag is set
#   IMAGES            default: "operator=halffull router=halffull vllm-larry"; NAME=DIR pushes images/DIR's
#                     Dockerfile as NAME (one Dockerfile may serve two names)
#   IMAGES_DIR        where <name>/Dockerfile lives; default: images/ (the context stays the root)
#   BUILD_ARGS        extra build arguments, e.g. "--build-arg VLLM_IMAGE=my.mirror/vllm-openai:v0.32.0"
#   TOOL              buildah, podman or docker; default: the first of these that works here
#   TLS_VERIFY        false for a plain-HTTP registry (buildah and podman only)
#   PUSH              0: build and tag only
# A failed build stops the script with the Dockerfile step the tool printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "push-images: $*" >&2; exit 1; }

[[ -n "${REGISTRY:-}" ]] || die "REGISTRY is not set: REGISTRY=registry.example.com/halffull make images"
REGISTRY="${REGISTRY%/}"
[[ "$REGISTRY" =~ ^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*$ ]] \
  || die "REGISTRY '$REGISTRY' must be host[:port][/path] in lower case, without a tag"
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/halffull/Chart.yaml")"
TAG="${TAG:-$APP_VERSION}"
[[ -n "$TAG" ]] || die "no TAG given and no appVersion in charts/halffull/Chart.yaml"
IMAGES="${IMAGES:-operator=halffull router=halffull vllm-larry}"
IMAGES_DIR="${IMAGES_DIR:-$ROOT/images}"
PUSH="${PUSH:-1}"

pick_tool() {
  if [[ -n "${TOOL:-}" ]]; then echo "$TOOL"; return; fi
  if command -v buildah >/dev/null; then echo buildah; return; fi
  if command -v podman >/dev/null; then echo podman; return; fi
  # A docker CLI alone is not enough: it needs a running engine.
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  die "none of buildah, podman or a running docker found (Debian: apt-get install buildah)"
}
TOOL="$(pick_tool)"
tls=()
if [[ "${TLS_VERIFY:-true}" == false && "$TOOL" != docker ]]; then tls=(--tls-verify=false); fi

read -r -a build_args <<<"${BUILD_ARGS:-}"
for item in $IMAGES; do
  name="${item%%=*}"
  dockerfile="$IMAGES_DIR/${item#*=}/Dockerfile"
  [[ -f "$dockerfile" ]] || die "no Dockerfile for image '$name' at $dockerfile"
  ref="$REGISTRY/$name:$TAG"
  # A Dockerfile with a stage named like the image (images/halffull: operator, router) builds
  # that target.
  target=()
  if grep -qiE "^FROM .* AS $name\$" "$dockerfile"; then target=(--target "$name"); fi
  echo "push-images: building $ref with $TOOL"
  case "$TOOL" in
    buildah) buildah bud --layers -f "$dockerfile" -t "$ref" "${target[@]}" "${build_args[@]}" "$ROOT" ;;
    podman | docker) "$TOOL" build -f "$dockerfile" -t "$ref" "${target[@]}" "${build_args[@]}" "$ROOT" ;;
    *) die "TOOL must be buildah, podman or docker, not '$TOOL'" ;;
  esac || die "building $name failed (see the step above); nothing pushed for it"
  if [[ "$PUSH" != 0 ]]; then
    echo "push-images: pushing $ref"
    case "$TOOL" in
      buildah) buildah push "${tls[@]}" "$ref" "docker://$ref" ;;
      podman) podman push "${tls[@]}" "$ref" ;;
      docker) docker push "$ref" ;;
    esac || die "pushing $ref failed: is the registry reachable and are you logged in?"
  fi
done
install="helm install halffull charts/halffull -n halffull-system --create-namespace"
install+=" --set image.registry=$REGISTRY"
if [[ "$TAG" != "$APP_VERSION" ]]; then
  install+=" --set image.tag=$TAG --set engineImage.tag=$TAG --set routerImage.tag=$TAG"
fi
echo "push-images: done. Install with: $install"
