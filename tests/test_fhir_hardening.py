"""Hardening of the outbound FHIR client against a hostile FHIR server (issue 15, items 1-3).

A hostile server runs in a process of its own (``tests/hostile_fhir.py``) with a canary beside it
that records any request it gets: what the service must never contact is asserted from the
servers' own logs, not from the client's word. The real-gunicorn cases (worker memory, a slow
server next to a healthy one, shutdown) are in ``test_fhir_hardening_gunicorn.py``.
"""

from __future__ import annotations

import json
import posixpath
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from flask import Flask

from cds_service import create_app
from cds_service.fhir import FhirAllowlist, FhirClient, FhirError, FhirTimeout
from tests.hook_calls import SERVICE_IDS, hook_body
from tests.hostile_fhir import NEXT_LINKS, HostileFhir, running_hostile
from tests.jwt_factory import bearer, claims, mint, signing_key
from tests.polling import wait_until

pytestmark = pytest.mark.integration

PUBLIC_BASE = "https://cds.test"
PATH = f"/cds-services/{SERVICE_IDS['patient-view']}"
PATIENT = "hostile-p1"
TOKEN = "ehr-access-token-7c1"
ISS_A = "https://ehr-a.example.org"
ISS_B = "https://ehr-b.example.org"
ISS_HOSTILE = "https://hostile-ehr.example.org"
BUDGET = 2.0  # the default CDS_FHIR_BUDGET_SECONDS


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[HostileFhir, HostileFhir]]:
    """The hostile server and its canary, shared by this module's tests (each clears the logs)."""
    with running_hostile() as pair:
        yield pair


@pytest.fixture
def hostile(servers: tuple[HostileFhir, HostileFhir]) -> HostileFhir:
    servers[0].clear()
    servers[1].clear()
    return servers[0]


@pytest.fixture
def canary(servers: tuple[HostileFhir, HostileFhir], hostile: HostileFhir) -> HostileFhir:
    return servers[1]


def hostile_modes() -> list[str]:
    return ["bomb", "endless", "drip", "huge", "redirect", *(f"next-{v}" for v in NEXT_LINKS)]


def write_trust_list(path: Path, origin: str) -> Path:
    """Three EHRs: A and B each with a base of their own on the hostile server's host, and a
    hostile EHR whose trust entry names every hostile mode's base."""
    data = {
        "issuers": [
            {
                "iss": iss,
                "jwks": {"keys": [signing_key("ES384", name).public_jwk()]},
                "fhir_servers": bases,
            }
            for iss, name, bases in (
                (ISS_A, "issuer-a", [f"{origin}/issuer-a/fhir"]),
                (ISS_B, "issuer-b", [f"{origin}/issuer-b/fhir"]),
                (ISS_HOSTILE, "hostile", [f"{origin}/{m}/fhir" for m in hostile_modes()]),
            )
        ]
    }
    path.write_text(json.dumps(data))
    return path


def jwt_for(iss: str, aud: str) -> str:
    name = {ISS_A: "issuer-a", ISS_B: "issuer-b", ISS_HOSTILE: "hostile"}[iss]
    return mint(signing_key("ES384", name), claims(aud, iss, now=time.time()))


def fallback_body(fhir_server: str, prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    """A patient-view call whose data must come from ``fhir_server`` with the EHR's token."""
    auth = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "user/*.read",
        "subject": "hfs-cds",
    }
    return hook_body(
        "patient-view",
        patient=PATIENT,
        prefetch=prefetch if prefetch is not None else {},
        fhirServer=fhir_server,
        fhirAuthorization=auth,
    )


@pytest.fixture
def app(tmp_path: Path, hostile: HostileFhir) -> Iterator[Flask]:
    """The service with authentication on: the global allowlist names ``/healthy/fhir`` only."""
    application = create_app(
        {
            "TESTING": True,
            "TRUSTED_ISSUERS_FILE": str(write_trust_list(tmp_path / "trust.json", hostile.origin)),
            "PUBLIC_BASE_URL": PUBLIC_BASE,
            "DEV_MODE": True,  # http to the loopback servers
            "FHIR_ALLOWLIST": hostile.base("healthy"),
        }
    )
    yield application
    application.extensions["hfs_cds"].close()


def call(app: Flask, iss: str, body: dict[str, Any]) -> tuple[int, float, dict[str, Any]]:
    headers = {"Authorization": bearer(jwt_for(iss, PUBLIC_BASE + PATH))}
    started = time.monotonic()
    response = app.test_client().post(PATH, json=body, headers=headers)
    return response.status_code, time.monotonic() - started, response.get_json()


def client_for(hostile: HostileFhir, *modes: str, budget: float = BUDGET) -> FhirClient:
    bases = tuple(hostile.base(m) for m in modes)
    return FhirClient(FhirAllowlist(bases, allow_loopback_http=True), budget_seconds=budget)


def escapes(path: str, base_path: str) -> bool:
    """Would a server that decodes percent-escapes, drops ``;`` parameters and resolves dot
    segments (as many do) read ``path`` as outside ``base_path``?"""
    segments = [unquote(s).split(";", 1)[0] for s in path.split("/")]
    resolved = posixpath.normpath("/".join(unquote(s) for s in segments))
    return resolved != base_path and not resolved.startswith(base_path + "/")


QUERIES = {"procedures": f"Procedure?patient={PATIENT}"}


# -- 1. unbounded responses ------------------------------------------------------------------------


def test_a_gzip_bomb_is_refused_at_the_byte_cap(hostile: HostileFhir) -> None:
    """400 KB on the wire inflating to 400 MB: refused once the inflated answer passes the cap."""
    client = client_for(hostile, "bomb")
    started = time.monotonic()
    try:
        with pytest.raises(FhirError, match="larger than"):
            client.fetch_all(hostile.base("bomb"), QUERIES, TOKEN)
        assert time.monotonic() - started < BUDGET
    finally:
        client.close()


def test_an_endless_body_is_cut_at_the_byte_cap(hostile: HostileFhir) -> None:
    client = client_for(hostile, "endless")
    try:
        with pytest.raises(FhirError, match="larger than"):
            client.fetch_all(hostile.base("endless"), QUERIES, TOKEN)
    finally:
        client.close()
    (record,) = hostile.under("/endless/")
    # The client hangs up: the server's next writes fail (socket buffers hold a few MB at most).
    assert wait_until(lambda: hostile.under("/endless/")[0]["client_gone"], 3.0), record
    assert hostile.under("/endless/")[0]["bytes"] < client.max_response_bytes + 16 * 2**20


def test_a_huge_bundle_answers_412_within_the_budget(app: Flask, hostile: HostileFhir) -> None:
    """100,000 entries (about 40 MB) in a Bundle: 412 for the size, inside the budget."""
    status, elapsed, body = call(app, ISS_HOSTILE, fallback_body(hostile.base("huge")))
    assert status == 412, body
    assert "larger than" in body["issue"][0]["diagnostics"]
    assert elapsed < BUDGET + 1.0  # the unbounded client took 3.4 s


# -- 2. a slow server ------------------------------------------------------------------------------


def test_a_drip_ends_at_the_deadline_and_its_socket_is_closed(hostile: HostileFhir) -> None:
    """One byte a second, status line included: the call ends at its deadline and hangs up; no
    thread keeps reading after the answer."""
    client = client_for(hostile, "drip")
    started = time.monotonic()
    try:
        with pytest.raises(FhirTimeout):
            client.fetch_all(hostile.base("drip"), QUERIES, TOKEN)
        assert time.monotonic() - started < BUDGET + 1.0
    finally:
        client.close()
    # The drip learns the client left at its next write or two (one a second).
    assert wait_until(lambda: hostile.under("/drip/")[0]["client_gone"], 5.0)


def test_a_slow_server_does_not_starve_another_issuer(app: Flask, hostile: HostileFhir) -> None:
    """While one issuer's calls wait on a drip, another issuer's calls to a healthy server all
    succeed (the same under gunicorn, with shutdown, is in the gunicorn file)."""
    stop = threading.Event()

    def attack() -> None:
        while not stop.is_set():
            call(app, ISS_HOSTILE, fallback_body(hostile.base("drip")))

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(4)]
    for thread in attackers:
        thread.start()
    try:
        time.sleep(BUDGET + 0.5)  # the first attacks have timed out; their fetches linger or not
        answers = [call(app, ISS_A, fallback_body(hostile.base("healthy"))) for _ in range(6)]
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=10)
    assert [(status, bool(body.get("cards"))) for status, _, body in answers] == [(200, True)] * 6


def test_one_issuers_fetches_in_flight_are_bounded(hostile: HostileFhir) -> None:
    """The hostile EHR's four searches on the drip hold its four permits: its next call waits
    (and never reaches the server meanwhile), while EHR A's call goes straight through."""
    client = client_for(hostile, "drip", "healthy")
    drip = {f"k{i}": f"Procedure?patient={PATIENT}&i={i}" for i in range(4)}
    errors: list[Exception] = []

    def hostile_call() -> None:
        try:
            client.fetch_all(hostile.base("drip"), drip, TOKEN, issuer=ISS_HOSTILE)
        except FhirError as exc:
            errors.append(exc)

    first = threading.Thread(target=hostile_call)
    first.start()
    try:
        assert wait_until(lambda: len(hostile.under("/drip/")) == 4, 1.0)
        second = threading.Thread(target=hostile_call)
        second.start()
        started = time.monotonic()
        found = client.fetch_all(hostile.base("healthy"), QUERIES, TOKEN, issuer=ISS_A)
        assert time.monotonic() - started < 1.0
        assert [r["resourceType"] for r in found["procedures"]] == ["Procedure"]
        time.sleep(0.5)
        assert len(hostile.under("/drip/")) == 4  # the second call waits for a permit
        first.join(timeout=10)
        second.join(timeout=10)
    finally:
        client.close()
    assert len(errors) == 2 and all(isinstance(e, FhirTimeout) for e in errors)


# -- 3. the allowlist along the path ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("iss", "fhir_server"),
    [
        (ISS_A, "{origin}/healthy/fhir/../outside/fhir"),
        (ISS_A, "{origin}/healthy/fhir/%2e%2e/outside/fhir"),
        (ISS_A, "{origin}/healthy/fhir/%2E%2e%2Foutside/fhir"),
        (ISS_A, "{origin}/healthy/fhir/..;/outside/fhir"),
        (ISS_A, "{origin}/healthy/fhir?x="),
        (ISS_A, "{origin}/healthy/fhir#"),
        (ISS_A, "{origin}/healthy/fhir/#/x"),
        (ISS_A, "http://user:pw@{host}/healthy/fhir"),
        (ISS_B, "{origin}/issuer-b/fhir/../../issuer-a/fhir"),
        (ISS_B, "{origin}/issuer-b/fhir/%2e%2e/%2e%2e/issuer-a/fhir"),
        (ISS_B, "{origin}/issuer-a/fhir"),  # A's own base, sent by B
    ],
)
def test_a_fhir_server_off_the_issuers_bases_is_never_contacted(
    app: Flask, hostile: HostileFhir, iss: str, fhir_server: str
) -> None:
    url = fhir_server.format(origin=hostile.origin, host=hostile.origin.removeprefix("http://"))
    status, _, body = call(app, iss, fallback_body(url))
    assert status == 412, body
    assert hostile.log() == []  # no request at all: the token went nowhere


def test_each_issuer_reaches_its_own_base_and_the_global_allowlist(
    app: Flask, hostile: HostileFhir
) -> None:
    for iss, mode in ((ISS_A, "issuer-a"), (ISS_B, "issuer-b"), (ISS_A, "healthy")):
        status, _, body = call(app, iss, fallback_body(hostile.base(mode)))
        assert status == 200 and body["cards"], body
    assert {r["path"].split("/")[1] for r in hostile.log()} == {"issuer-a", "issuer-b", "healthy"}
    assert all(r["bearer"] for r in hostile.log())


@pytest.mark.parametrize("variant", sorted(NEXT_LINKS))
def test_a_next_link_escaping_the_base_is_not_followed(
    app: Flask, hostile: HostileFhir, canary: HostileFhir, variant: str
) -> None:
    base = hostile.base(f"next-{variant}")
    status, _, body = call(app, ISS_HOSTILE, fallback_body(base))
    assert status == 412, body
    assert "'next' link" in body["issue"][0]["diagnostics"]
    base_path = f"/next-{variant}/fhir"
    assert [r["path"] for r in hostile.log() if escapes(r["raw"].split("?")[0], base_path)] == []
    assert all(r["query"].count("page=") == 0 for r in hostile.log())  # page 2 never asked
    assert canary.log() == []


def test_a_next_link_in_the_ehrs_own_prefetch_is_checked_the_same_way(
    app: Flask, hostile: HostileFhir, canary: HostileFhir
) -> None:
    base = hostile.base("healthy")
    first_page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [],
        "link": [{"relation": "next", "url": f"{base}/%2e%2e/%2e%2e/outside/fhir/Procedure"}],
    }
    body = fallback_body(base, prefetch={"procedures": first_page})
    status, _, answer = call(app, ISS_A, body)
    assert status == 412, answer
    assert [r for r in hostile.log() if escapes(r["raw"].split("?")[0], "/healthy/fhir")] == []
    assert canary.log() == []


def test_a_redirect_is_never_followed_to_the_canary(
    app: Flask, hostile: HostileFhir, canary: HostileFhir
) -> None:
    status, _, body = call(app, ISS_HOSTILE, fallback_body(hostile.base("redirect")))
    assert status == 412 and "HTTP 302" in body["issue"][0]["diagnostics"]
    assert canary.log() == []
