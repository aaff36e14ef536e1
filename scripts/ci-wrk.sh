#!/usr/bin/env bash
# wrk from Debian for the benchmark (bench/run_bench.py falls back to a slower Python client).
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -q -o DPkg::Lock::Timeout=300 update
apt-get -q -o DPkg::Lock::Timeout=300 install -y wrk
