#!/usr/bin/env bash
# Prepare this host for `docker compose up -d --wait`, in one command; every step is a no-op when
# its result is already there:
#
#   bash scripts/docker-prepare.sh [--local-base-images | --public-base-images]
#
# 1. Docker Compose v2 (scripts/install-compose.sh: only if `docker compose version` fails);
# 2. the base images: the public python / postgres images if they are present or can be pulled,
#    else (no registry, as on fti's own build machine) the local stand-ins built by
#    scripts/build-base-images.sh (root, Debian; ~12 min the first time on a 2-core host);
# 3. the wheelhouse from uv.lock and the service images (scripts/build-images.sh; ~25 min the
#    first time on a 2-core host, a minute when only the code changed);
# 4. the base-image choice written to .env (FTI_BASE_IMAGE, FTI_POSTGRES_IMAGE), which compose
#    reads: a plain `docker compose up -d --wait` then uses exactly the images built here.
# Needs: a running Docker Engine, internet access to PyPI (wheelhouse), ~4 GB of disk.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'docker-prepare: %s\n' "$*" >&2; }

mode=auto
for arg in "$@"; do
    case "$arg" in
        --local-base-images) mode=local ;;
        --public-base-images) mode=public ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) log "unknown argument: $arg (try --help)"; exit 2 ;;
    esac
done

if ! timeout 30 docker info >/dev/null 2>&1; then
    log "ERROR: no Docker Engine answers (is the daemon running, and may this user use it?)"
    exit 3
fi

log "[1/4] Docker Compose v2"
bash scripts/install-compose.sh

public_base="python:3.11-slim-bookworm"
public_pg="postgres:15-bookworm"
have_public() {
    docker image inspect "$public_base" >/dev/null 2>&1 && docker image inspect "$public_pg" >/dev/null 2>&1 && return 0
    timeout 120 docker pull -q "$public_base" >/dev/null 2>&1 && timeout 120 docker pull -q "$public_pg" >/dev/null 2>&1
}
if [[ $mode == auto ]]; then
    if have_public; then mode=public; else mode=local; fi
fi

log "[2/4] base images ($mode)"
if [[ $mode == local ]]; then
    eval "$(bash scripts/build-base-images.sh --skip-compose)"
else
    export FTI_BASE_IMAGE="$public_base" FTI_POSTGRES_IMAGE="$public_pg"
fi

log "[3/4] wheelhouse and service images (FTI_BASE_IMAGE=$FTI_BASE_IMAGE)"
bash scripts/build-images.sh

log "[4/4] .env: FTI_BASE_IMAGE=$FTI_BASE_IMAGE FTI_POSTGRES_IMAGE=$FTI_POSTGRES_IMAGE"
touch .env
tmp="$(mktemp)"
grep -vE '^(FTI_BASE_IMAGE|FTI_POSTGRES_IMAGE)=' .env >"$tmp" || true
printf 'FTI_BASE_IMAGE=%s\nFTI_POSTGRES_IMAGE=%s\n' "$FTI_BASE_IMAGE" "$FTI_POSTGRES_IMAGE" >>"$tmp"
mv "$tmp" .env
log "done: now run  docker compose up -d --wait"
