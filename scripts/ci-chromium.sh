#!/usr/bin/env bash
# Debian's Chromium for the real-browser tests of the SMART app (tests/test_smart_browser.py), with
# the CJK fonts the Simplified Chinese page needs (without them Chinese renders as empty boxes).
# Playwright drives this system browser; nothing ever downloads a browser of its own.
# Needs root (CI runs as root). Waits for the dpkg lock if another apt is running. Idempotent:
# installs only what is missing, and does nothing when everything is there.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-liberation)
[ -d /usr/share/fonts/opentype/noto ] && fc-list :lang=zh | grep -q . || missing+=(fonts-noto-cjk)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -o DPkg::Lock::Timeout=300 "$@"; }
apt_get update
apt_get install -y "${missing[@]}"
/usr/bin/chromium --version
