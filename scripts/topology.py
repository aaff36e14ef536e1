"""The production topology on this machine, without Docker (``make topology``): PostgreSQL, two
replicas running the image's gunicorn command, and nginx in front with docker/nginx's configuration.
Prints the URLs, then runs until Ctrl-C (or SIGTERM) and stops everything.

Ports come from the environment (0 picks a free one):

    TOPOLOGY_PORT           the front door (nginx)          default 8080
    TOPOLOGY_REPLICA_PORTS  the two replicas (gunicorn)     default 8081,8082
    TOPOLOGY_POSTGRES_PORT  the throwaway PostgreSQL        default 5433

The replicas trust CDS_TRUSTED_ISSUERS_FILE when set, else docker/trusted-issuers.sandbox.json
(the development issuer, as the compose file does: ``hfs-cds dev-token`` signs for it); other
CDS_* and SMART_* variables in the environment reach both replicas. CDS_PUBLIC_BASE_URL is the
front door's URL unless set; SMART_SESSION_KEY, the SMART sessions' sealing key the replicas must
share, is made for this run unless set. Logs and data go to a temporary folder, removed at the
end.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.topology import Ports, TopologyUnavailable, running_topology  # noqa: E402


class Stop(Exception):
    pass


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a port number, got {raw!r}") from None


def ports_from_environment() -> Ports:
    raw = os.environ.get("TOPOLOGY_REPLICA_PORTS", "").strip() or "8081,8082"
    try:
        first, second = (int(p) for p in raw.replace(" ", ",").split(",") if p)
    except ValueError:
        raise SystemExit(f"TOPOLOGY_REPLICA_PORTS must be two port numbers, got {raw!r}") from None
    return Ports(
        _port("TOPOLOGY_PORT", 8080), (first, second), _port("TOPOLOGY_POSTGRES_PORT", 5433)
    )


def replica_settings() -> dict[str, str]:
    settings = {
        k: v for k, v in os.environ.items() if k.startswith(("CDS_", "SMART_")) and v.strip()
    }
    settings.setdefault(
        "CDS_TRUSTED_ISSUERS_FILE", str(REPO / "docker" / "trusted-issuers.sandbox.json")
    )
    settings.setdefault("SMART_SESSION_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    return settings


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def main() -> int:
    ports = ports_from_environment()
    settings = replica_settings()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with tempfile.TemporaryDirectory(prefix="hfs-cds-topology-") as folder:
        try:
            with running_topology(Path(folder), settings, ports=ports) as topology:
                if "CDS_PUBLIC_BASE_URL" in settings:
                    public = settings["CDS_PUBLIC_BASE_URL"]
                else:
                    public = topology.base
                print(f"front door (nginx)   {topology.base}   CDS_PUBLIC_BASE_URL={public}")
                for replica in topology.replicas:
                    print(f"{replica.name:<20} {replica.base}   log {replica.log}")
                print(f"PostgreSQL           {topology.database_url}")
                print(f"nginx access log     {topology.balancer.access_log}")
                print(f"trust list           {settings['CDS_TRUSTED_ISSUERS_FILE']}")
                print("Ctrl-C stops everything.", flush=True)
                while True:
                    for replica in topology.replicas:
                        assert replica.process is not None
                        if replica.process.poll() is not None:
                            print(f"{replica.name} exited ({replica.process.returncode})")
                            return 1
                    time.sleep(1)
        except Stop:
            print("stopping", flush=True)
        except TopologyUnavailable as exc:
            print(f"topology: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
