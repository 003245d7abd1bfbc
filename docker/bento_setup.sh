#!/usr/bin/env bash
# BentoML `docker.setup_script` of the ExpCTR image: runs as root at the end of the image build, in the Bento
# directory ($BENTO_PATH), after the locked packages are in /app/.venv. It makes the image able to run the
# pipeline too, not only serve: the project package (`expctr <stage>`, `orchestration` for Dagster) and DVC.
set -euxo pipefail
src="$BENTO_PATH/src"
# the project itself, built from the packaged checkout; its dependencies are the locked ones already installed
uv pip install --python /app/.venv/bin/python --no-deps "$src"/wheels/expctr-*.whl
# DVC in its own tool venv from the DVC lock (DVC pins antlr4 4.9, Dagster needs 4.13), linked onto PATH
uv venv -q /app/.venv-dvc
uv pip install --python /app/.venv-dvc/bin/python -r "$src/requirements/dvc.lock.txt"
ln -sf /app/.venv-dvc/bin/dvc /app/.venv/bin/dvc
uv cache clean -q || true
/app/.venv/bin/expctr --help >/dev/null
/app/.venv/bin/dvc --version
