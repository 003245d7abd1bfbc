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
