#!/usr/bin/env bash
# Installs everything the tests need, then runs them all:
#   system: mosquitto (real MQTT broker), socat (virtual serial cables), openssl,
#           postgresql (a throw-away server for the shared IOC store tests)
#           chromium, chromium-driver (headless browser for the local web page's tests)
#   python: this package + test extras in ./.venv
# Then: ruff, import rules, mypy (CPython; firmware/ against the ESP32 stubs), pytest (unit,
# integration, firmware under the real MicroPython, hwtests against simulators).
# Extra arguments go to pytest, e.g. scripts/test.sh -k outbox
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/system-packages.sh
system_packages mosquitto socat openssl postgresql chromium chromium-driver

project_venv "[test]"

echo "== ruff"
.venv/bin/ruff check .
echo "== import rules"
.venv/bin/lint-imports
echo "== mypy"
.venv/bin/mypy
echo "== mypy (firmware vs ESP32 stubs)"
# Into their own folder, not the venv: there they would shadow CPython's stdlib for the run
# above. Reinstalled only when the pins change (stamp file), so a rerun costs nothing.
esp32_stubs="micropython-esp32-stubs==1.29.0.post1 micropython-stdlib-stubs==1.29.0.post2"
if [ "$(cat .stubs/esp32/.pins 2>/dev/null)" != "$esp32_stubs" ]; then
  rm -rf .stubs/esp32
  # shellcheck disable=SC2086  # the pins are meant to split into separate arguments
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target .stubs/esp32 $esp32_stubs
  echo "$esp32_stubs" > .stubs/esp32/.pins
fi
.venv/bin/mypy --config-file firmware/mypy.ini
echo "== pytest"
# Two workers, one test file each at a time: most tests wait on real brokers, devices and
# processes rather than compute, so two run side by side in about 60 % of the time on 2 cores.
# Every test starts its own servers on free ports, so they do not meet.
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
