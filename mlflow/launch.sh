#!/bin/sh
# Run Goshen's MLflow tracking server: `mlflow/launch.sh [ENV_FILE]`.
# ENV_FILE holds GOSHEN_* (and AWS_*) variables, as in production.env.example; without it the
# server runs on the embedded default: SQLite backend and artifacts under GOSHEN_HOME.
set -eu

if [ "$#" -gt 1 ]; then
    echo "usage: $0 [ENV_FILE]" >&2
    exit 2
fi
if [ "$#" -eq 1 ]; then
    if [ ! -f "$1" ]; then
        echo "$0: no env file at $1" >&2
        exit 2
    fi
    case "$1" in
        */*) env_file=$1 ;;
        *) env_file=./$1 ;;  # `.` searches PATH for a bare name
    esac
    set -a
    . "$env_file"
    set +a
fi

exec goshen mlflow
