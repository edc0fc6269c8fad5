#!/usr/bin/env bash
# The dashboard's browser test drives a headless Chromium through Playwright. Playwright's
# own browser download is not used (it needs the internet at test time): this installs
# Debian's chromium package when it is missing, and the test points Playwright at it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
echo "chromium missing: installing Debian's chromium package"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
