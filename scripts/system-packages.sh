# Sourced by test.sh and the lab scripts: installs the Debian packages named, unless what each
# provides is already there. Usage: system_packages mosquitto socat [openssl] [postgresql]
system_packages() {
  local need=() pkg
  for pkg in "$@"; do
    case "$pkg" in
      mosquitto) command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto) ;;
      postgresql) command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
                    || need+=(postgresql) ;;
      chromium-driver) command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver) ;;
      *) command -v "$pkg" >/dev/null 2>&1 || need+=("$pkg") ;;
    esac
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  export PATH="$PATH:/usr/sbin"
}

# ./.venv with this package installed in editable mode, with the extras given (e.g. "[test]").
project_venv() {
  local py=${PYTHON:-python3}
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${1:-}"
}
