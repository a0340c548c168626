#!/usr/bin/env bash
# Export per-image requirement sets from the ONE lockfile and collect their wheels.
#
#   bash scripts/build-wheelhouse.sh
#
# Writes build/requirements/{features,training,inference,mlflow}.txt (exact pins from uv.lock,
# exported by `uv export --frozen`) and build/wheelhouse/ (every pinned wheel plus the fti wheel).
# The Dockerfiles install from these, so every image gets the same shared, scikit-learn, numpy and
# pandas. With a complete wheelhouse an image build needs no network (PIP_NO_INDEX=1); that is
# how images are built on hosts whose containers cannot reach PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh >/dev/null 2>&1 || bash scripts/bootstrap.sh
UV="$(command -v uv)"
req=build/requirements
wheels=build/wheelhouse
mkdir -p "$req" "$wheels"

export_set() {  # name, extras...
    local name="$1"; shift
    local args=()
    for extra in "$@"; do args+=(--extra "$extra"); done
    "$UV" export --frozen --no-hashes --no-header --no-emit-project --no-dev "${args[@]}" \
        --python python3.11 -o "$req/$name.txt" >/dev/null
    echo "wheelhouse: $req/$name.txt ($(grep -c '==' "$req/$name.txt") pins)"
}
export_set features
export_set training train
export_set inference serve
export_set mlflow registry
cat "$req"/*.txt | grep -v '^\s*#' | sort -u > "$req/all.txt"

echo "wheelhouse: collecting wheels into $wheels"
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform linux_x86_64 --implementation cp \
    -r "$req/all.txt" -d "$wheels"
rm -f "$wheels"/fti-*.whl
"$UV" build --wheel --out-dir "$wheels" --quiet .
echo "wheelhouse: $(ls "$wheels" | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"
