#!/usr/bin/env bash
# System packages and daemons for the heavy test layers (run as root by .ci/run's second step).
# Each section is idempotent: a machine that already has the package or the running daemon is left as is.
set -euo pipefail
cd "$(dirname "$0")/../.."

# --- browser layer (marker `browser`): Debian's chromium, driven by Playwright through executable_path
# (Playwright's own browser download cannot reach its host; the Python package comes from the `dev` extra).
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
chromium --version

# --- container layer (marker `container`): Debian's docker.io daemon on host networking, debootstrap
# (docker/build_base.sh builds the base image from Debian packages: no container registry is reachable.)
# The daemon runs without a bridge or iptables rules: containers and builds use host networking only.
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  setsid dockerd --bridge=none --iptables=false >/var/log/expctr-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/expctr-dockerd.log >&2; echo "dockerd did not start" >&2; exit 1; }
fi
docker version --format 'docker daemon {{.Server.Version}}'
bash docker/build_base.sh  # cached: rebuilt only when missing or its recipe changed
