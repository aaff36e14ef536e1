"""The image's exact command, outside Docker: gunicorn with docker/gunicorn.conf.py and the image's
environment, on loopback, configured the production way (a mounted trust list, no development
mode). It must answer health, readiness and authenticated CDS Hooks calls, log JSON without query
strings, and refuse to start without a trust list."""

from __future__ import annotations

import gc
import json
import logging
import os
import runpy
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from cds_service.sandbox.bundles import stored_resources
from cds_service.sandbox.scenarios import build_bundle, synthetic_patients
from cds_service.security.trusted_issuers import SigningKey
from tests.fhir_server import free_port
from tests.hook_calls import prefetch_for
from tests.test_docker_files import DOCKER, exec_form, final_stage_env, parse_dockerfile

pytestmark = pytest.mark.integration

ISSUER = "https://ehr.test.example/cds-client"
START_TIMEOUT_SECONDS = 30.0


@dataclass
class Served:
    base: str
    signer: SigningKey
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]


def image_command() -> list[str]:
    """The image's CMD with in-image paths mapped to this checkout and this venv."""
    instructions = parse_dockerfile()
    (cmd,) = [i for i in instructions if i.keyword == "CMD"]
    copied = {
        f"/etc/hfs-cds/{Path(source).name}": str(DOCKER / Path(source).name)
        for i in instructions
        if i.keyword == "COPY" and i.arguments.split()[-1] == "/etc/hfs-cds/"
        for source in i.arguments.split()[:-1]
    }
    command = [copied.get(part, part) for part in exec_form(cmd)]
    command[0] = str(Path(sys.executable).parent / command[0])  # the venv's, as the image's PATH
    return command


def image_environment(data: Path, **overrides: str) -> dict[str, str]:
    """The image's ENV (PATH and the venv mapped to this one, its volume to ``data``), plus the
    test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    image = final_stage_env(parse_dockerfile())
    image.pop("PATH"), image.pop("VIRTUAL_ENV")
    image["CDS_INSTANCE_PATH"] = str(data)  # the image's volume
    env.update(image)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env.update(overrides)
    return env


def mounted_trust_list(tmp: Path) -> SigningKey:
    """A trust list naming a test EHR's public key (as a site mounts it); its signer."""
    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid="ehr-test-1", alg="ES384", use="sig")
    (tmp / "trusted-issuers.json").write_text(
        json.dumps({"issuers": [{"iss": ISSUER, "jwks": {"keys": [public]}}]})
    )
    return SigningKey(key=key, kid="ehr-test-1", iss=ISSUER, alg="ES384")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """gunicorn as the image runs it, on a free loopback port; stopped (SIGTERM) at the end."""
    tmp = tmp_path_factory.mktemp("gunicorn")
    signer = mounted_trust_list(tmp)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = image_environment(
        tmp / "volume",
        HOST="127.0.0.1",
        PORT=str(port),
        CDS_PUBLIC_BASE_URL=base,
        CDS_TRUSTED_ISSUERS_FILE=str(tmp / "trusted-issuers.json"),
    )
    log = tmp / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            image_command(), env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        assert process.poll() is None, log.read_text()
        try:
            requests.get(f"{base}/healthz", timeout=1)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
    yield Served(base, signer, process, log, env)
    process.terminate()
    assert process.wait(timeout=40) == 0  # a graceful stop


def test_health_and_readiness_answer_without_a_token(served: Served) -> None:
    health = requests.get(f"{served.base}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = requests.get(f"{served.base}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["model"]["id"] == "fei-2022-hfs-rfa-recurrence"


def test_the_image_health_check_script_passes(served: Served) -> None:
    script = DOCKER / "healthcheck.py"
    result = subprocess.run([sys.executable, str(script)], env=served.env, timeout=30)
    assert result.returncode == 0
    elsewhere = {**served.env, "PORT": str(free_port())}
    failed = subprocess.run(
        [sys.executable, str(script)], env=elsewhere, capture_output=True, text=True, timeout=30
    )
    assert failed.returncode == 1 and "healthcheck:" in failed.stderr


def test_discovery_needs_a_jwt_from_the_trusted_ehr(served: Served) -> None:
    url = f"{served.base}/cds-services"
    assert requests.get(url, timeout=5).status_code == 401
    token = served.signer.sign(url)
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert response.status_code == 200
    assert len(response.json()["services"]) == 4
    replayed = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert replayed.status_code == 401  # each token works once


def test_a_hook_call_through_gunicorn_gets_the_card(served: Served) -> None:
    (patient,) = synthetic_patients(count=1, today=date.today())
    resources = stored_resources(build_bundle([patient]))
    url = f"{served.base}/cds-services/hfs-rfa-recurrence-patient-view"
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr1", "patientId": patient.key},
        "prefetch": prefetch_for(resources),
    }
    response = requests.post(
        url, json=body, headers={"Authorization": f"Bearer {served.signer.sign(url)}"}, timeout=10
    )
    assert response.status_code == 200
    (card,) = response.json()["cards"]
    assert "by 12 months" in card["summary"]
    # One access line per call, carrying the hook's outcome.
    access = _access_line_of(served, response.headers["X-Request-ID"])
    assert access["path"] == "/cds-services/hfs-rfa-recurrence-patient-view"
    assert access["service"] == "hfs-rfa-recurrence-patient-view"
    assert access["status"] == 200 and access["assessment"] == "scored" and access["cards"] == 1
    assert access["hook_instance"] == body["hookInstance"]
    assert access["method"] == "POST" and access["remote"] == "127.0.0.1"
    assert access["bytes"] == len(response.content) and access["duration_ms"] >= 0


def _access_line_of(served: Served, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in served.log.read_text().splitlines():
            if request_id in line and '"gunicorn.access"' in line:
                parsed: dict[str, Any] = json.loads(line)
                return parsed
        time.sleep(0.05)
    raise AssertionError("no access line for the request")


def test_logs_are_json_lines_with_paths_but_no_query_strings(served: Served) -> None:
    marker = uuid.uuid4().hex
    requests.get(f"{served.base}/healthz?patient=Chen-{marker}", timeout=5)
    request_id = f"req-{marker}"
    requests.get(f"{served.base}/readyz", headers={"X-Request-ID": request_id}, timeout=5)
    deadline = time.monotonic() + 10
    while request_id not in served.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = served.log.read_text()
    assert marker in text and f"Chen-{marker}" not in text  # the request id, never the query
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert {"method", "path", "status", "duration_ms"} <= set(access[-1])
    assert access[-1]["request_id"] == request_id and access[-1]["path"] == "/readyz"
    assert any(line["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own, as JSON


def test_without_a_trust_list_the_image_refuses_to_start(tmp_path: Path) -> None:
    env = image_environment(tmp_path / "volume", HOST="127.0.0.1", PORT=str(free_port()))
    result = subprocess.run(
        image_command(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3
    (line,) = [json.loads(x) for x in result.stderr.splitlines() if x.strip()]
    assert line["level"] == "CRITICAL"
    assert "refusing to start" in line["message"]
    assert "CDS_TRUSTED_ISSUERS_FILE" in line["message"]
    assert "Traceback" not in result.stderr + result.stdout


def test_the_master_freezes_the_preloaded_heap_before_forking(tmp_path: Path) -> None:
    """pre_fork moves the app's objects to the permanent generation (gc.freeze)."""
    mounted_trust_list(tmp_path)
    env = image_environment(
        tmp_path / "volume",
        CDS_TRUSTED_ISSUERS_FILE=str(tmp_path / "trusted-issuers.json"),
    )
    # Loading the config also sets the logging module's switches; put them back afterwards.
    switches = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    saved = {name: getattr(logging, name) for name in switches}
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            config = runpy.run_path(str(DOCKER / "gunicorn.conf.py"))
        gc.unfreeze()
        config["pre_fork"](None, None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        for name, value in saved.items():
            setattr(logging, name, value)
