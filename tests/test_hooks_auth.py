"""EHR authentication at the HTTP layer: which calls need a JWT, and what a failure looks like.

The authenticator's full JWT matrix is in test_ehr_auth.py; here the app is configured the way a
hospital would (a trusted-issuers file, a public base URL) and called like an EHR.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import create_app
from cds_service.config import ConfigError
from cds_service.security.trusted_issuers import DEV_ISSUER, mint_development_token
from tests.cds_invariants import assert_valid_cds_response
from tests.fake_fhir import FakeFhirServer, running_fake_fhir
from tests.hook_calls import SERVICE_IDS, hook_body, recent_patient
from tests.jwt_factory import bearer, claims, forge_none, from_private_jwk, mint, signing_key
from tests.test_ehr_auth import SPEC_ISS, SPEC_PRIVATE_JWK, SPEC_PUBLIC_JWKS, SPEC_TOKEN

BASE = "https://cds.example.org"
ISS = "https://ehr.example.org"
OTHER_ISS = "https://other-ehr.example.org"
PATIENT_VIEW = SERVICE_IDS["patient-view"]
Token = Callable[..., str]


@pytest.fixture
def fhir() -> Iterator[FakeFhirServer]:
    """A real HTTP FHIR endpoint only ISS's trust entry names (not on the global allowlist)."""
    with running_fake_fhir(recent_patient()) as server:
        yield server


@pytest.fixture
def trust_file(tmp_path: Path, fhir: FakeFhirServer) -> Path:
    """A trusted-issuers file as a hospital writes it: two EHRs, keys inline, one FHIR server."""
    es, rs = signing_key("ES384", "http"), signing_key("RS384", "http")
    other = signing_key("ES384", "other")
    data = {
        "issuers": [
            {
                "iss": ISS,
                "jwks": {"keys": [es.public_jwk(), rs.public_jwk()]},
                "fhir_servers": [fhir.base],
            },
            {"iss": OTHER_ISS, "jwks": {"keys": [other.public_jwk()]}},
            {"iss": SPEC_ISS, "jwks": SPEC_PUBLIC_JWKS},
        ]
    }
    path = tmp_path / "trusted-issuers.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def secured(trust_file: Path) -> Iterator[Flask]:
    """The app with authentication on, as in production (development mode for http loopback FHIR)."""
    app = create_app(
        {
            "TESTING": True,
            "TRUSTED_ISSUERS_FILE": str(trust_file),
            "PUBLIC_BASE_URL": BASE + "/",
            "DEV_MODE": False,
        }
    )
    yield app
    app.extensions["hfs_cds"].close()


@pytest.fixture
def token() -> Token:
    """``token(path)`` mints a fresh JWT for the endpoint ``BASE + path`` (ES384 from ISS)."""

    def make(
        path: str, *, alg: str = "ES384", iss: str = ISS, name: str = "http", **extra: Any
    ) -> str:
        return mint(signing_key(alg, name), claims(BASE + path, iss, now=time.time(), **extra))

    return make


def _get(client: FlaskClient, path: str, jwt: str | None) -> Any:
    headers = {"Authorization": bearer(jwt)} if jwt else {}
    return client.get(path, headers=headers)


def _post(client: FlaskClient, path: str, jwt: str | None, body: Any) -> Any:
    headers = {"Authorization": bearer(jwt)} if jwt else {}
    return client.post(path, json=body, headers=headers)


def _fallback_body(fhir: FakeFhirServer) -> dict[str, Any]:
    """A request with no prefetch, so the service must query ``fhir`` with the EHR's token."""
    auth = {
        "access_token": "tok",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "x",
        "subject": "s",
    }
    return hook_body("patient-view", prefetch={}, fhirServer=fhir.base, fhirAuthorization=auth)


def _assert_bare_401(response: Any) -> None:
    assert response.status_code == 401
    assert response.get_data() == b""
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_valid_tokens_open_discovery_and_service(secured: Flask, token: Token, alg: str) -> None:
    client = secured.test_client()
    assert _get(client, "/cds-services", token("/cds-services", alg=alg)).status_code == 200
    path = f"/cds-services/{PATIENT_VIEW}"
    response = _post(
        client, path, token(path, alg=alg), hook_body("patient-view", recent_patient())
    )
    assert_valid_cds_response(response.get_json())


def test_missing_token_is_a_bare_401(secured: Flask) -> None:
    client = secured.test_client()
    _assert_bare_401(_get(client, "/cds-services", None))
    _assert_bare_401(_post(client, f"/cds-services/{PATIENT_VIEW}", None, hook_body()))
    _assert_bare_401(_post(client, "/cds-services/unknown-id", None, hook_body()))  # no id oracle


def test_audience_must_be_the_endpoint_called(secured: Flask, token: Token) -> None:
    client = secured.test_client()
    service = f"/cds-services/{PATIENT_VIEW}"
    _assert_bare_401(_get(client, "/cds-services", token(service)))
    _assert_bare_401(_post(client, service, token("/cds-services"), hook_body()))
    _assert_bare_401(_post(client, service, token(service + "/feedback"), hook_body()))


def test_replayed_token_is_refused(secured: Flask, token: Token) -> None:
    client = secured.test_client()
    jwt = token("/cds-services")
    assert _get(client, "/cds-services", jwt).status_code == 200
    _assert_bare_401(_get(client, "/cds-services", jwt))


def test_forged_and_expired_tokens_are_refused(secured: Flask, token: Token) -> None:
    client = secured.test_client()
    _assert_bare_401(_get(client, "/cds-services", forge_none(claims(BASE + "/cds-services", ISS))))
    _assert_bare_401(
        _get(client, "/cds-services", token("/cds-services", exp=int(time.time()) - 3600))
    )
    _assert_bare_401(
        _get(client, "/cds-services", token("/cds-services", iss="https://evil.example"))
    )


def test_spec_example_token_expired_then_fresh_token_once(secured: Flask) -> None:
    """The CDS Hooks spec's own example JWT: expired; the same key freshly signed works once."""
    spec_app = secured.test_client()
    _assert_bare_401(_post(spec_app, "/cds-services/some-service", SPEC_TOKEN, hook_body()))
    fresh = mint(
        from_private_jwk(SPEC_PRIVATE_JWK),
        claims(BASE + "/cds-services", SPEC_ISS, now=time.time()),
    )
    assert _get(spec_app, "/cds-services", fresh).status_code == 200
    _assert_bare_401(_get(spec_app, "/cds-services", fresh))


def test_preflight_needs_no_token(secured: Flask) -> None:
    response = secured.test_client().options(
        f"/cds-services/{PATIENT_VIEW}",
        headers={"Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_401_carries_cors_so_browser_ehrs_can_read_it(secured: Flask) -> None:
    response = secured.test_client().get(
        "/cds-services", headers={"Origin": "https://ehr.example.org"}
    )
    assert response.status_code == 401 and response.headers["Access-Control-Allow-Origin"] == "*"


def test_failure_reason_is_logged_but_never_the_token(
    secured: Flask, token: Token, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = token("/wrong")
    _get(secured.test_client(), "/cds-services", bad)
    assert "EHR authentication failed" in caplog.text
    assert bad not in caplog.text and bad.split(".")[2] not in caplog.text


def test_http_fhir_server_is_refused_outside_development_mode_even_for_its_issuer(
    secured: Flask, token: Token, fhir: FakeFhirServer
) -> None:
    client = secured.test_client()
    path = f"/cds-services/{PATIENT_VIEW}"
    body = _fallback_body(fhir)
    # http on loopback is refused outside development mode, even when allowlisted by an issuer.
    assert _post(client, path, token(path), body).status_code == 412
    assert fhir.seen == []


def test_issuer_fhir_servers_extend_the_allowlist_for_that_issuer_only(
    trust_file: Path, token: Token, fhir: FakeFhirServer
) -> None:
    app = create_app(
        {
            "TESTING": True,
            "TRUSTED_ISSUERS_FILE": str(trust_file),
            "PUBLIC_BASE_URL": BASE,
            "DEV_MODE": True,
        }
    )
    client = app.test_client()
    path = f"/cds-services/{PATIENT_VIEW}"
    body = _fallback_body(fhir)
    assert _post(client, path, token(path), body).status_code == 200
    assert {r.authorization for r in fhir.seen} == {"Bearer tok"}
    fhir.seen.clear()
    other = token(path, iss=OTHER_ISS, name="other")
    assert _post(client, path, other, body).status_code == 412
    assert fhir.seen == []
    app.extensions["hfs_cds"].close()


def test_development_mode_trusts_the_development_issuer() -> None:
    app = create_app(
        {"TESTING": True, "DEV_MODE": True, "PUBLIC_BASE_URL": "http://127.0.0.1:8080"}
    )
    jwt = mint_development_token("http://127.0.0.1:8080/cds-services")
    assert _get(app.test_client(), "/cds-services", jwt).status_code == 200
    assert DEV_ISSUER.startswith("https://")
    app.extensions["hfs_cds"].close()


def test_auth_required_without_issuers_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="no issuer is trusted"):
        create_app({"TESTING": True})


def test_bad_trusted_issuers_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"issuers": [{"iss": "https://x.example"}]}')
    with pytest.raises(ConfigError, match="CDS_TRUSTED_ISSUERS_FILE"):
        create_app({"TESTING": True, "TRUSTED_ISSUERS_FILE": str(path)})
