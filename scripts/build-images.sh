#!/usr/bin/env bash
# Build every fti image from the one lockfile:
#
#   bash scripts/build-images.sh            # wheelhouse + `docker compose build`
#
# On hosts without registry access, first run scripts/build-base-images.sh and export the
# variables it prints (FTI_BASE_IMAGE, FTI_POSTGRES_IMAGE); builds then use only local images
# and the wheelhouse (FTI_PIP_NO_INDEX=1), never the network.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/build-wheelhouse.sh
export FTI_PIP_NO_INDEX="${FTI_PIP_NO_INDEX:-1}"
export FTI_LOCK_SHA256="$(sha256sum uv.lock | cut -d' ' -f1)"
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ "$commit" != unknown ]] && [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit+dirty"
fi
export FTI_CODE_COMMIT="$commit"
echo "build-images: base ${FTI_BASE_IMAGE:-python:3.11-slim-bookworm}, commit $FTI_CODE_COMMIT"
docker compose ${FTI_COMPOSE_FILES:-} build "$@"
docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^fti/' | sort
