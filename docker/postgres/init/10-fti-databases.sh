#!/bin/sh
# First start of the database only: one database for the feature store, one for MLflow's
# backend store, both owned by $POSTGRES_USER. (The official postgres image and fti's local
# one both run /docker-entrypoint-initdb.d/*.sh on first initialisation.)
set -eu
for db in "${FTI_FEATURE_DB:-features}" "${FTI_MLFLOW_DB:-mlflow}"; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
