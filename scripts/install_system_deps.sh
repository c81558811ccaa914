#!/usr/bin/env bash
# Install the Debian packages dcd-itr needs (the emoji benchmark's font and CLDR captions, and venv support),
# and the headless browser the web page's end-to-end test drives (chromium, chromium-driver).
# As root it runs apt-get; with passwordless sudo it uses sudo; otherwise it prints the exact command and fails.
# The browser is optional: where it cannot be installed a warning is printed and the browser test skips, saying so.
set -euo pipefail
packages=(fonts-noto-color-emoji unicode-cldr-core)
optional=(chromium chromium-driver)
python="${PYTHON:-python3}"
if ! "$python" -c "import ensurepip, venv" >/dev/null 2>&1; then packages+=(python3-venv); fi
missing_from() {
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || echo "$package"
  done
}
mapfile -t missing < <(missing_from "${packages[@]}")
mapfile -t missing_optional < <(missing_from "${optional[@]}")
[ ${#missing[@]} -eq 0 ] && [ ${#missing_optional[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  apt=(sudo DEBIAN_FRONTEND=noninteractive apt-get)
else
  if [ ${#missing[@]} -gt 0 ]; then
    echo "dcd-itr needs these Debian packages; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]} ${missing_optional[*]}" >&2
    exit 1
  fi
  echo "warning: ${missing_optional[*]} not installed (no root): the browser test will skip" >&2
  exit 0
fi
"${apt[@]}" update -qq
if [ ${#missing[@]} -gt 0 ]; then
  "${apt[@]}" install -y -qq "${missing[@]}"
fi
if [ ${#missing_optional[@]} -gt 0 ]; then
  "${apt[@]}" install -y -qq "${missing_optional[@]}" ||
    echo "warning: could not install ${missing_optional[*]}: the browser test will skip" >&2
fi
