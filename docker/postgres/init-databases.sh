#!/usr/bin/env bash
# Runs once, when the postgres volume is first initialised (the image's /docker-entrypoint-initdb.d hook).
# POSTGRES_DB (MLflow's database) already exists; Prefect's server gets its own database beside it.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${PREFECT_DB:-prefect}\" OWNER \"$POSTGRES_USER\";"
