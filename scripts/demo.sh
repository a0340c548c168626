#!/usr/bin/env bash
# The whole loop on the embedded default (no Docker): SQLite feature store + local MLflow store.
#
#   bash scripts/demo.sh
#
# installs the locked environment -> generates seeded claims data -> feature job -> training
# (registers the model, gates the 'champion' alias) -> serves the REST API on $FTI_PORT
# (default 8000) -> prints an example request and its answer, then keeps serving until Ctrl-C.
# State lives in $FTI_DATA_DIR (default ./data). Re-running is safe: the feature job publishes
# nothing new for identical data, and training registers a new version that must pass the gate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
export FTI_DATA_DIR="${FTI_DATA_DIR:-$PWD/data}"
export FTI_PORT="${FTI_PORT:-8000}"
SPEC="${FTI_DEMO_SPEC:-specs/claims.yaml}"
FTI=".venv/bin/fti"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/5 generate seeded demo data"
"$FTI" data generate --spec "$SPEC"
step "2/5 feature pipeline: validate the source, publish a feature version"
"$FTI" features run --spec "$SPEC"
step "3/5 training pipeline: train, log to MLflow, register, gate 'champion'"
"$FTI" train --spec "$SPEC"
step "4/5 inference service on http://127.0.0.1:$FTI_PORT (docs at /docs)"
"$FTI" serve --spec "$SPEC" --host 127.0.0.1 --port "$FTI_PORT" &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT INT TERM
step "5/5 example request"
.venv/bin/python scripts/example_request.py --spec "$SPEC" --url "http://127.0.0.1:$FTI_PORT"
printf '\nfti demo: API ready at http://127.0.0.1:%s (Ctrl-C to stop)\n' "$FTI_PORT"
wait "$SERVER"
