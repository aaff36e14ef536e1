"""Container health check: exit 0 when the service's ``/healthz`` answers 200 (no curl in slim).

``python healthcheck.py`` checks ``http://127.0.0.1:$PORT/healthz``; ``--url URL`` checks another
URL (e.g. ``/readyz``) and ``--wait SECONDS`` keeps trying that long (for a job waiting on a server).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request


def healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    port = os.environ.get("PORT", "8080")
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}/healthz")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.wait
    while not healthy(args.url):
        if time.monotonic() >= deadline:
            return 1
        time.sleep(2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
