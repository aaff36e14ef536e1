"""Issue 15, item 7, through the image's gunicorn (``docker/gunicorn.conf.py``) on loopback:

* a 16 KiB JWT in ``Authorization``, the longest the service reads, was refused by gunicorn's
  default header-field limit (8190 bytes) with a bare 400 before the app saw it: now it passes;
* a chunked request body over ``CDS_MAX_REQUEST_BYTES`` was cut at the limit and answered 400
  "not valid JSON": now 413 with an OperationOutcome, as with a Content-Length.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from cds_service.security.trusted_issuers import SigningKey
from tests.fhir_server import free_port
from tests.hook_calls import SERVICE_IDS, hook_body, recent_patient
from tests.processes import stop_process
from tests.test_docker_gunicorn import image_command, image_environment, mounted_trust_list

pytestmark = pytest.mark.integration

START_TIMEOUT_SECONDS = 30.0
MAX_TOKEN_CHARS = 16 * 1024  # security/ehr_auth.py reads tokens up to this length
LIMIT = 64 * 1024  # CDS_MAX_REQUEST_BYTES for these tests


@dataclass
class Served:
    base: str
    signer: SigningKey
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("gunicorn-limits")
    signer = mounted_trust_list(tmp)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = image_environment(
        tmp / "volume",
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="1",
        CDS_PUBLIC_BASE_URL=base,
        CDS_TRUSTED_ISSUERS_FILE=str(tmp / "trusted-issuers.json"),
        CDS_MAX_REQUEST_BYTES=str(LIMIT),
    )
    log = tmp / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            image_command(), env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            assert process.poll() is None, log.read_text()
            try:
                requests.get(f"{base}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        yield Served(base, signer, log)
    finally:
        stop_process(process, timeout=60)


def long_token(signer: SigningKey, audience: str, length: int) -> str:
    """A valid JWT for ``audience`` padded (with an extra claim) to at most ``length`` characters,
    as close to it as base64url allows."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": signer.iss,
        "aud": audience,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    headers = {"kid": signer.kid, "typ": "JWT"}
    pad = length * 3 // 4  # too long: shortened below until the token fits
    while True:
        token = jwt.encode({**claims, "pad": "x" * pad}, signer.key, signer.alg, headers=headers)
        if len(token) <= length:
            return token
        pad -= max(1, (len(token) - length) * 3 // 4)


def test_a_16_kib_jwt_in_authorization_reaches_the_app(served: Served) -> None:
    url = f"{served.base}/cds-services"
    token = long_token(served.signer, url, MAX_TOKEN_CHARS)
    assert MAX_TOKEN_CHARS - 3 <= len(token) <= MAX_TOKEN_CHARS
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["services"]) == 4


def test_a_longer_jwt_is_refused_by_the_app_not_cut_by_the_server(served: Served) -> None:
    url = f"{served.base}/cds-services"
    token = long_token(served.signer, url, MAX_TOKEN_CHARS + 200)
    assert len(token) > MAX_TOKEN_CHARS
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 401  # the app's answer: the token is too long


def test_a_chunked_body_over_the_limit_is_413(served: Served) -> None:
    url = f"{served.base}/cds-services/{SERVICE_IDS['patient-view']}"
    body = hook_body("patient-view", recent_patient(), pad="x" * LIMIT)
    raw = json.dumps(body).encode()

    def chunks() -> Iterator[bytes]:  # a generator: requests sends it chunked
        for start in range(0, len(raw), 8192):
            yield raw[start : start + 8192]

    response = requests.post(
        url,
        data=chunks(),
        headers={
            "Authorization": f"Bearer {served.signer.sign(url)}",
            "Content-Type": "application/json",
        },
        timeout=10,
    )
    assert response.status_code == 413, response.text[:300]
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "too-costly"


def test_a_chunked_body_under_the_limit_is_served(served: Served) -> None:
    url = f"{served.base}/cds-services/{SERVICE_IDS['patient-view']}"
    raw = json.dumps(hook_body("patient-view", recent_patient())).encode()
    response = requests.post(
        url,
        data=iter([raw[:100], raw[100:]]),
        headers={
            "Authorization": f"Bearer {served.signer.sign(url)}",
            "Content-Type": "application/json",
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["cards"]) == 1
