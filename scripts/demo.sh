#!/usr/bin/env bash
# Installs urbanedge into ./.venv and runs the demo (embedded broker, simulated devices,
# the agent and a consumer). Arguments go to `urbanedge demo`, e.g. --duration 30 --json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check .
exec .venv/bin/urbanedge demo "$@"
