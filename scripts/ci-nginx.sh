#!/usr/bin/env bash
# nginx from Debian: the load balancer of the production topology (docker/nginx/, make topology,
# tests/test_topology*.py). The tests and `make topology` run their own nginx in the foreground
# with a configuration in a scratch folder (tests/topology.py); no system service is used.
# Idempotent (quick when installed). Needs root (apt-get), as on CI and the project's machines;
# waits for the dpkg lock if another apt is running.
set -euo pipefail
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -o DPkg::Lock::Timeout=300 "$@"; }
apt_get update
apt_get install -y --no-install-recommends nginx
/usr/sbin/nginx -v
