#!/usr/bin/env bash
# Builds the container image of a Bento: `bentoml containerize` on the Debian base image, with host
# networking for the build (the daemon runs with --bridge=none; pip/uv inside reach PyPI through the host).
#
#   bash docker/containerize.sh [BENTO_TAG] [IMAGE_TAG]     defaults: expctr:latest, the Bento's own tag
#
# It builds the base image first if it is missing (docker/build_base.sh, cached). BentoML's docker backend
# builds with BuildKit (DOCKER_BUILDKIT=1): this picks a docker client that can, i.e. one with the buildx
# plugin or an older (< 23) client with BuildKit built in such as Debian's docker.io; a newer static client
# without buildx earlier on PATH fails with "BuildKit is enabled but the buildx component is missing".
set -euo pipefail
cd "$(dirname "$0")/.."
BENTO=${1:-expctr:latest}
BENTOML=${BENTOML:-.venv/bin/bentoml}

client_dir=""
for candidate in $(type -ap docker); do
  major=$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
  if "$candidate" buildx version >/dev/null 2>&1 || { [ -n "$major" ] && [ "$major" -lt 23 ]; }; then
    client_dir=$(dirname "$candidate"); break
  fi
done
[ -n "$client_dir" ] || { echo "containerize: no docker client with BuildKit (install docker.io or buildx)" >&2; exit 1; }
export PATH="$client_dir:$PATH"

bash docker/build_base.sh
resolved=$("$BENTOML" get "$BENTO" -o json 2>/dev/null \
  | python3 -c 'import json, sys; b = json.load(sys.stdin); print(b["name"] + ":" + b["version"])') \
  || { echo "containerize: no Bento $BENTO in the store (build one: expctr bento)" >&2; exit 1; }
IMAGE=${2:-$resolved}
"$BENTOML" containerize "$BENTO" --backend docker --opt network=host -t "$IMAGE"
echo "containerize: built $IMAGE ($(docker image inspect "$IMAGE" --format '{{.Size}}') bytes)"
