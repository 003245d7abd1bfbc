#!/usr/bin/env bash
# Builds the base image of the ExpCTR container (default tag expctr-base:bookworm) from Debian packages,
# because no container registry is reachable from these machines: a `debootstrap --variant=minbase` root
# filesystem of Debian bookworm (python3 3.11, python3-venv, ca-certificates) imported with `docker import`.
#
# Baked in:
#   - this machine's CA bundle (/etc/ssl/certs/ca-certificates.crt): package registries are reached through
#     a TLS proxy whose CA only the host bundle holds; without it pip/uv inside a build fail with
#     "self-signed certificate in certificate chain". SSL_CERT_FILE/PIP_CERT/REQUESTS_CA_BUNDLE point at it.
#   - uv (the project's pinned version, requirements/bootstrap.txt): BentoML's Dockerfile installs the
#     Bento's packages with uv and would otherwise need pip inside the image to fetch it.
#
# The image is cached: it is rebuilt only when missing or when its recipe (this script, the CA bundle, the
# uv binary) changed, recorded in the label expctr.base.recipe. Needs root (debootstrap) and a running
# Docker daemon (scripts/ci/system_deps.sh starts one).
#
# Usage: bash docker/build_base.sh [--force]      env: EXPCTR_BASE_IMAGE (tag), DEBIAN_MIRROR, UV_BIN
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."
IMAGE=${EXPCTR_BASE_IMAGE:-expctr-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
UV_BIN=${UV_BIN:-.venv/bin/uv}
DOCKER=${DOCKER:-docker}

[ -f "$CA_BUNDLE" ] || { echo "build_base: no CA bundle at $CA_BUNDLE (apt-get install ca-certificates)" >&2; exit 1; }
[ -x "$UV_BIN" ] || { echo "build_base: no uv binary at $UV_BIN (run scripts/setup.sh first or set UV_BIN)" >&2; exit 1; }
recipe=$(cat "$SELF" "$CA_BUNDLE" "$UV_BIN" | sha256sum | cut -c1-16)
current=$($DOCKER image inspect "$IMAGE" --format '{{ index .Config.Labels "expctr.base.recipe" }}' 2>/dev/null || true)
if [ "${1:-}" != "--force" ] && [ "$current" = "$recipe" ]; then
  echo "build_base: $IMAGE is up to date (recipe $recipe)"
  exit 0
fi

command -v debootstrap >/dev/null || { echo "build_base: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d "${TMPDIR:-/tmp}/expctr-rootfs-XXXXXX")
trap 'rm -rf "$root"' EXIT
echo "build_base: debootstrap bookworm into $root (a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$MIRROR" \
  > "$root.debootstrap.log" 2>&1 || { tail -20 "$root.debootstrap.log" >&2; exit 1; }
rm -f "$root.debootstrap.log"
cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0755 "$UV_BIN" "$root/usr/local/bin/uv"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*

tar -C "$root" -c . | $DOCKER import \
  --change "ENV SSL_CERT_FILE=$CA_BUNDLE PIP_CERT=$CA_BUNDLE REQUESTS_CA_BUNDLE=$CA_BUNDLE LANG=C.UTF-8" \
  --change "LABEL expctr.base.recipe=$recipe" \
  --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "build_base: built $IMAGE (recipe $recipe, $($DOCKER image inspect "$IMAGE" --format '{{.Size}}') bytes)"
