#!/usr/bin/env bash
# Debian's Chromium for the one real-browser test of the SMART app (tests/test_smart_browser.py).
# Playwright drives this system browser; nothing ever downloads a browser of its own.
# Needs root (CI runs as root). Waits for the dpkg lock if another apt is running.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -o DPkg::Lock::Timeout=300 "$@"; }
apt_get update
apt_get install -y chromium fonts-liberation
/usr/bin/chromium --version
