#!/usr/bin/env bash
# Run the whole test suite: starts Redis and Mosquitto when they do not answer.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CITYBRAIN_VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
bash scripts/services.sh
export PATH="$VENV/bin:$PATH"
[ -d "$VENV" ] || { echo "no virtual environment at $VENV: run scripts/setup.sh first" >&2; exit 1; }
"$VENV/bin/ruff" check .
"$VENV/bin/lint-imports"
exec "$VENV/bin/python" -m pytest "$@"
