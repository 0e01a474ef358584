#!/usr/bin/env bash
# One command to set up citybrain on a fresh Debian/Ubuntu machine:
# system packages (redis, mosquitto, chromium for browser tests) where missing,
# then a virtual environment (default .venv, or $CITYBRAIN_VENV) with everything installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CITYBRAIN_VENV:-.venv}
PYTHON=${PYTHON:-python3}

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "citybrain is set up: activate with 'source $VENV/bin/activate'"
