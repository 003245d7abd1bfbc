#!/usr/bin/env bash
# Sets up ExpCTR on a fresh machine from the committed lock files: the project venv (.venv) from
# requirements/project.lock.txt and DVC in its own tool venv (.venv-dvc) from requirements/dvc.lock.txt.
# Re-running it after a lock change brings both venvs to the new pins (upgrade: see scripts/lock.sh).
#
# Why two venvs: dvc pins antlr4-python3-runtime 4.9 (via hydra-core/omegaconf) while Dagster's
# asset-selection parser needs 4.13. DVC lives in .venv-dvc and is linked into .venv/bin, so
# `source .venv/bin/activate` gives both `dagster` and `dvc` without sharing site-packages.
#
# Env: EXPCTR_TORCH_SPEC   torch requirement installed first (default torch==2.13.0, the CPU wheel here);
#                          on a CUDA machine PyPI's own Linux wheel of torch==2.13.0 is a CUDA build already;
#                          extra pip options may follow the requirement to pick another build
#      PYTHON              interpreter used to create the venvs (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${EXPCTR_TORCH_SPEC:-torch==2.13.0}
LOCK=requirements/project.lock.txt
DVC_LOCK=requirements/dvc.lock.txt

# uv installs without bytecode, and where PYTHONDONTWRITEBYTECODE is set (CI here) none is ever written: every
# process then recompiles what it imports (Great Expectations alone: ~10 s instead of ~5 s per stage run).
# Compiling once at setup (~40 s) is what pip does by default. A file that does not compile under this Python
# (torch ships Python 3.12-only test helpers) is left to compile lazily, as before, so errors are not fatal.
compile_site_packages() {
  "$1/bin/python" -m compileall -q -j 0 "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    >/dev/null 2>&1 || true
}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -r requirements/bootstrap.txt  # pinned pip and uv
# torch first, with pip (it finds the CPU wheel on this machine's disk; uv would pull a CUDA build); its own
# dependencies (sympy, networkx, ...) at the locked versions.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q $TORCH_SPEC -c "$LOCK"
# Everything else exactly as locked (uv, about 6x faster than pip; torch is already satisfied and stays),
# then the project itself without dependencies, so nothing outside the lock is installed.
.venv/bin/uv pip install -q --python .venv/bin/python -r "$LOCK"
.venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
.venv/bin/uv pip check -q --python .venv/bin/python
compile_site_packages .venv

[ -x .venv-dvc/bin/python ] || "$PY" -m venv .venv-dvc
.venv/bin/uv pip install -q --python .venv-dvc/bin/python -r "$DVC_LOCK"
compile_site_packages .venv-dvc
ln -sf ../../.venv-dvc/bin/dvc .venv/bin/dvc
.venv/bin/dvc --version >/dev/null
echo "setup done: source .venv/bin/activate  (expctr, dagster, dvc on PATH)"
