"""``hfs-cds serve`` as ``make run`` starts it: a real process that answers an EHR's calls."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from cds_service.security.trusted_issuers import mint_development_token
from tests.fhir_server import free_port


@pytest.fixture
def served() -> Iterator[str]:
    """The service in development mode on a free port; yields its discovery URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CDS_DEV_MODE": "1", "CDS_PUBLIC_BASE_URL": base}
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                requests.get(f"{base}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield f"{base}/cds-services"
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


def test_development_server_answers_discovery_with_a_dev_token(served: str) -> None:
    assert requests.get(served, timeout=5).status_code == 401
    token = mint_development_token(served)
    response = requests.get(served, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert response.status_code == 200
    assert len(response.json()["services"]) == 4
