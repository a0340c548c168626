#!/usr/bin/env bash
# Build the local stand-ins for the public base images, for Docker hosts that cannot pull
# from any registry (see docker/README.md). On a normal host this script is unnecessary.
#
#   bash scripts/build-base-images.sh [--force] [--no-cache] [--skip-compose]
#
# Builds (as root, on Debian 12):
#   ${FTI_BASE_IMAGE:-fti-local/python:3.11-bookworm}
#       Debian bookworm minbase rootfs (debootstrap) with Debian's python3 (3.11.2,
#       /usr/bin/python3, `python` -> python3), python3-venv, ca-certificates, tzdata;
#       single layer via `docker import`. Stands in for python:3.11-slim-bookworm.
#   ${FTI_POSTGRES_IMAGE:-fti-local/postgres:15}
#       docker/postgres/Dockerfile on top of the python base: Debian's postgresql-15 with
#       the official image's entrypoint contract. Stands in for postgres:15.
# and installs Docker Compose v2 if `docker compose version` fails (scripts/install-compose.sh).
# Progress goes to stderr; stdout is only `export FTI_BASE_IMAGE=... FTI_POSTGRES_IMAGE=...`
# lines, so `eval "$(bash scripts/build-base-images.sh)"` sets up the compose variables.
#
# Idempotent: an image that already exists is kept, unless what it was built from changed
# (python: the rootfs recipe in this script or the mirrors; postgres: its base image,
# docker/postgres/Dockerfile or docker-entrypoint.sh - a quick rebuild from the layer cache).
# The prepared rootfs tarball is cached under ${XDG_CACHE_HOME:-$HOME/.cache}/fti/rootfs/,
# so rebuilding an image does not re-run debootstrap.
#
# Options:
#   --force         rebuild both images even if they exist (reuses the cached rootfs)
#   --no-cache      also rebuild the rootfs (fresh debootstrap + security updates) and
#                   build the postgres image with `docker build --no-cache`; implies --force
#   --skip-compose  do not check/install Docker Compose
# Environment:
#   FTI_BASE_IMAGE, FTI_POSTGRES_IMAGE   image names (defaults above)
#   FTI_DEBIAN_MIRROR           default http://deb.debian.org/debian
#   FTI_DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#   XDG_CACHE_HOME              cache root (default ~/.cache)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

base_image="${FTI_BASE_IMAGE:-fti-local/python:3.11-bookworm}"
pg_image="${FTI_POSTGRES_IMAGE:-fti-local/postgres:15}"
suite=bookworm
mirror="${FTI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${FTI_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
python_packages="python3,python3-venv,python-is-python3,ca-certificates,tzdata"
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/fti/rootfs"

force=0
no_cache=0
skip_compose=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --no-cache) force=1; no_cache=1 ;;
        --skip-compose) skip_compose=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) printf 'build-base-images: unknown argument: %s (try --help)\n' "$arg" >&2; exit 2 ;;
    esac
done

started=$SECONDS
log() { printf 'build-base-images [%4ds]: %s\n' "$((SECONDS - started))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_id() { docker image inspect --format '{{.Id}}' "$1"; }
image_label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }
human_size() { awk -v b="$1" 'BEGIN { printf "%.0f MB", b / 1000000 }'; }

need_root() {
    [[ "$(id -u)" == 0 ]] || die "building the rootfs needs root (debootstrap, chroot): run with sudo"
}

ensure_debootstrap() {
    local -a missing=()
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
    if [[ ${#missing[@]} -gt 0 ]]; then
        command -v apt-get >/dev/null 2>&1 || die "please install: ${missing[*]}"
        log "installing ${missing[*]} (apt-get)"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# ------------------------------------------------------------------ the rootfs recipe
# Everything this function does is part of the cache key (declare -f), so editing it
# invalidates the cached tarball.
prepare_python_rootfs() {
    local r="$1"

    # APT sources as in the official debian image, with updates and security (plain HTTP:
    # containers here cannot verify TLS through the egress proxy; apt verifies signatures).
    rm -f "$r/etc/apt/sources.list"
    cat > "$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

    # The "slim" settings of the official debian:*-slim images: packages installed later
    # (e.g. in a Dockerfile FROM this image) leave out docs, man pages and translations.
    cat > "$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# Slim image: drop documentation and translations (as debian:*-slim does).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat > "$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' > "$r/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' > "$r/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
    # No service may start during package installation (in this chroot or in a docker build).
    printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d"
    chmod 0755 "$r/usr/sbin/policy-rc.d"

    # Security and point-release updates (debootstrap only sees the release itself).
    mount -t proc proc "$r/proc"
    mounted_proc="$r/proc"
    local apt_log="$r.apt.log"
    if ! chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
            sh -c 'apt-get update -q && apt-get -y -q -o Dpkg::Options::=--force-confold dist-upgrade && apt-get clean' \
            > "$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get dist-upgrade in the rootfs failed (log above)"
    fi
    grep -E '^(Setting up |[0-9]+ upgraded)' "$apt_log" | sed 's/^/    /' >&2 || true
    umount "$r/proc"
    mounted_proc=

    # Trim what the slim settings did not cover (files installed by debootstrap itself).
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
        "$r"/var/lib/dpkg/*-old "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.cache
    find "$r/var/log" -type f -delete
    find "$r/usr/share/doc" -mindepth 1 \( -type f -o -type l \) ! -name copyright -delete
    find "$r/usr/share/doc" -mindepth 1 -depth -type d -empty -delete
    rm -rf "$r"/usr/share/man/* "$r"/usr/share/groff/* "$r"/usr/share/info/* \
        "$r"/usr/share/lintian/* "$r"/usr/share/linda/*
    find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    # Docker provides these at run time; do not ship the build host's.
    : > "$r/etc/resolv.conf"
    echo localhost > "$r/etc/hostname"

    test -x "$r/usr/bin/python3" && test -L "$r/usr/bin/python"
}

rootfs_key() {
    { echo "$suite $mirror $security_mirror $python_packages $(dpkg --print-architecture)"
      declare -f prepare_python_rootfs; } | sha256sum | cut -c1-12
}

mounted_proc=
workdir=
cleanup() {
    if [[ -n "$mounted_proc" ]]; then umount "$mounted_proc" 2>/dev/null || umount -l "$mounted_proc" || true; fi
    if [[ -n "$workdir" ]]; then rm -rf "$workdir"; fi
}
trap cleanup EXIT

build_python_rootfs() {  # $1: output tarball
    local out="$1" rootfs
    need_root
    ensure_debootstrap
    workdir="$(mktemp -d "$cache_dir/.work.XXXXXX")"
    rootfs="$workdir/rootfs"
    log "debootstrap --variant=minbase $suite (+ $python_packages) from $mirror"
    # Per-package lines go to the log only; the phases are shown.
    if ! debootstrap --variant=minbase --include="$python_packages" --components=main \
            --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
            "$suite" "$rootfs" "$mirror" > "$workdir/debootstrap.log" 2>&1; then
        tail -n 30 "$workdir/debootstrap.log" >&2
        [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    fi
    log "debootstrap done ($(grep -c '^I: Extracting' "$workdir/debootstrap.log" || true) packages); applying updates and trimming"
    prepare_python_rootfs "$rootfs"
    dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f '${Version}' python3.11 > "$workdir/python-deb-version"
    tar --numeric-owner -C "$rootfs" -cf "$out.tmp" .
    mv -f "$workdir/python-deb-version" "$out.python-deb-version"
    mv -f "$out.tmp" "$out"
    rm -rf "$workdir"
    workdir=
    log "rootfs cached: $out ($(du -m "$out" | cut -f1) MB)"
}

postgres_context_hash() {
    cat "$root/docker/postgres/Dockerfile" "$root/docker/postgres/docker-entrypoint.sh" | sha256sum | cut -c1-12
}

build_python_image() {
    local key="$1" tarball deb_version py_version
    tarball="$cache_dir/python-$suite-$(dpkg --print-architecture)-$key.tar"
    if [[ $no_cache -eq 1 || ! -s "$tarball" || ! -s "$tarball.python-deb-version" ]]; then
        build_python_rootfs "$tarball"
        # Older recipes' tarballs are dead weight now.
        find "$cache_dir" -maxdepth 1 -name "python-$suite-*.tar*" ! -name "$(basename "$tarball")*" -delete
    else
        log "using cached rootfs $tarball (built $(date -r "$tarball" '+%Y-%m-%d %H:%M'); --no-cache to refresh)"
    fi
    deb_version="$(cat "$tarball.python-deb-version")"     # e.g. 3.11.2-6+deb12u6
    py_version="${deb_version%%-*}"
    log "docker import -> $base_image (python $deb_version)"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "ENV PYTHON_VERSION=$py_version" \
        --change "LABEL org.opencontainers.image.description=\"Debian $suite minbase + Debian python3 (local stand-in for python:3.11-slim-$suite)\"" \
        --change "LABEL fti.rootfs.key=$key fti.debian.python3.11=$deb_version" \
        --change 'CMD ["python3"]' \
        --message "fti: scripts/build-base-images.sh (rootfs $key)" \
        "$tarball" "$base_image" >/dev/null
}

build_postgres_image() {
    local base_id="$1" context_hash="$2"
    local -a args=(--tag "$pg_image" --build-arg "BASE_IMAGE=$base_image"
                   --label "fti.base.id=$base_id" --label "fti.context.sha256=$context_hash")
    [[ $no_cache -eq 1 ]] && args+=(--no-cache)
    # No buildx plugin (as here): use the classic builder explicitly instead of failing.
    # Either way the default builder is used, which sees local images; never --pull.
    if ! docker buildx version >/dev/null 2>&1; then
        export DOCKER_BUILDKIT=0
    fi
    log "docker build docker/postgres -> $pg_image (FROM $base_image; apt-get over plain HTTP)"
    local build_log="$cache_dir/postgres-build.log" rc
    # Full output to the log; the steps are shown.
    set +o pipefail
    docker build "${args[@]}" -f "$root/docker/postgres/Dockerfile" "$root/docker/postgres" 2>&1 \
        | tee "$build_log" \
        | awk '/^(Step [0-9]+\/|Successfully|Setting up postgresql-1|E: )/ { print "    " substr($0, 1, 110); fflush() }' >&2
    rc=${PIPESTATUS[0]}
    set -o pipefail
    if [[ $rc -ne 0 ]]; then
        tail -n 30 "$build_log" >&2
        die "docker build of $pg_image failed (exit $rc; full log: $build_log)"
    fi
}

# ------------------------------------------------------------------ main
command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (docker info failed)"

if [[ $skip_compose -eq 0 ]]; then
    log "[1/3] Docker Compose v2"
    bash "$root/scripts/install-compose.sh"
fi

mkdir -p "$cache_dir"
exec 9> "$cache_dir/.build.lock"
if ! flock -n 9; then
    log "another build-base-images run holds $cache_dir/.build.lock; waiting"
    flock 9
fi

# Images this run replaces: removed at the end if nothing else still uses them.
replaced=()
remember_replaced() {
    local id
    if id="$(image_id "$1" 2>/dev/null)"; then replaced+=("$id"); fi
}

log "[2/3] python base image $base_image"
key="$(rootfs_key)"
if [[ $force -eq 0 ]] && image_exists "$base_image" && [[ "$(image_label "$base_image" fti.rootfs.key)" == "$key" ]]; then
    log "exists, skipped (--force to rebuild)"
else
    if [[ $force -eq 0 ]] && image_exists "$base_image"; then
        log "exists but was built from another rootfs recipe/mirror; rebuilding"
    fi
    remember_replaced "$base_image"
    build_python_image "$key"
fi
base_id="$(image_id "$base_image")"

log "[3/3] postgres image $pg_image"
context_hash="$(postgres_context_hash)"
if [[ $force -eq 0 ]] && image_exists "$pg_image" \
        && [[ "$(image_label "$pg_image" fti.base.id)" == "$base_id" ]] \
        && [[ "$(image_label "$pg_image" fti.context.sha256)" == "$context_hash" ]]; then
    log "exists, skipped (--force to rebuild)"
else
    if [[ $force -eq 0 ]] && image_exists "$pg_image"; then
        log "exists but its base image or docker/postgres/ changed; rebuilding"
    fi
    remember_replaced "$pg_image"
    build_postgres_image "$base_id" "$context_hash"
fi

# Newest first (the old postgres image is the old python image's child). An image that
# still has a tag or is used by a container stays.
for (( i = ${#replaced[@]} - 1; i >= 0; i-- )); do
    id="${replaced[$i]}"
    if [[ "$(docker image inspect --format '{{len .RepoTags}}' "$id" 2>/dev/null)" == 0 ]]; then
        docker rmi "$id" >/dev/null 2>&1 && log "removed the replaced image ${id:7:12}" || true
    fi
done

for image in "$base_image" "$pg_image"; do
    log "$(printf '%-36s %-20s %s' "$image" "$(image_id "$image" | cut -c8-19)" \
        "$(human_size "$(docker image inspect --format '{{.Size}}' "$image")")")"
done
log "done (the postgres image shares the python base layer; unique disk use is the difference)"
# stdout carries only these, for: eval "$(bash scripts/build-base-images.sh)"
printf 'export FTI_BASE_IMAGE=%q\nexport FTI_POSTGRES_IMAGE=%q\n' "$base_image" "$pg_image"
