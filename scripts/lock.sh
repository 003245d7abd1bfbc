#!/usr/bin/env bash
# Regenerates the committed lock files with uv:
#   requirements/project.lock.txt  <- pyproject.toml (dependencies + the `dev` and `containers` extras) for .venv
#                                     and the Bento
#   requirements/dvc.lock.txt      <- requirements/dvc.in for DVC's tool venv (.venv-dvc)
#
# Without options the versions already in the lock files are kept (uv prefers them) and only what
# pyproject.toml / dvc.in changed is re-resolved. Upgrade with:
#   bash scripts/lock.sh --upgrade                       # everything to the newest allowed version
#   bash scripts/lock.sh --upgrade-package transformers  # one package (repeatable)
# then `bash scripts/setup.sh` (installs the new pins), run the tests, commit the lock files.
#
# torch is resolved but not written to the lock: scripts/setup.sh installs it first with pip (the CPU wheel
# on these machines, a CUDA build elsewhere: EXPCTR_TORCH_SPEC), and the Bento ships the CPU wheel. Its
# dependencies (sympy, networkx, ...) are locked; they are resolved against the wheel pip finds for the
# torch version below, so the lock holds no CUDA-only packages.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
PY=${PYTHON_VERSION:-3.11}
TORCH_VERSION=${EXPCTR_TORCH_VERSION:-2.13.0}
wheels=$(mktemp -d "${TMPDIR:-/tmp}/expctr-lock-XXXXXX")
trap 'rm -rf "$wheels"' EXIT

# the torch wheel pip finds here (pip config: find-links / indexes), only to read its dependencies
.venv/bin/python -m pip download -q --no-deps --only-binary :all: -d "$wheels" "torch==$TORCH_VERSION"
echo "torch==$(ls "$wheels" | sed -n 's/^torch-\([^-]*\)-.*/\1/p')" > "$wheels/torch.txt"

common=(--python-version "$PY" --quiet --annotation-style line)
"$UV" pip compile pyproject.toml --extra dev --extra containers --find-links "$wheels" -c "$wheels/torch.txt" \
  --no-emit-package torch --custom-compile-command "bash scripts/lock.sh" "${common[@]}" \
  -o requirements/project.lock.txt "$@"
"$UV" pip compile requirements/dvc.in --custom-compile-command "bash scripts/lock.sh" "${common[@]}" \
  -o requirements/dvc.lock.txt "$@"
echo "lock: requirements/project.lock.txt ($(grep -c '^[a-zA-Z]' requirements/project.lock.txt) packages)," \
     "requirements/dvc.lock.txt ($(grep -c '^[a-zA-Z]' requirements/dvc.lock.txt) packages)"
