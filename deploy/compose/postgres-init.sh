#!/bin/sh
# Runs once, on an empty data directory (the postgres image's /docker-entrypoint-initdb.d):
# one role and one database each for the platform, Dagster and MLflow, so none can read or lock
# another's tables and each is backed up and migrated on its own.
set -eu

create() {
    # $1 role and database, $2 its password (from deploy/.env, passed in the environment).
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        --set=name="$1" --set=password="$2" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
}

create goshen "$PLATFORM_DB_PASSWORD"
create dagster "$DAGSTER_DB_PASSWORD"
create mlflow "$MLFLOW_DB_PASSWORD"
