"""EHR (CDS Client) JWT authentication: the acceptance matrix of cds-hooks.md §12 A1-A3.

Tokens come from ``tests/jwt_factory.py``. Time is a ``FakeClock`` injected into the authenticator
(the time its replay cache is given), the JWKS cache, and PyJWT's claim checks, so expiry, TTLs and
refetch intervals are tested without sleeping. Every refusal is asserted by its exact reason.
Key fetching is tested against a real HTTP server on 127.0.0.1 (``jwks_server``); nothing here
reaches beyond loopback, and caches built with ``no_network_session`` fail loudly if they try.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, tzinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter

from cds_service.security import ReplayCheckUnavailable
from cds_service.security.ehr_auth import (
    AuthenticationError,
    EhrAuthenticator,
    VerifiedClient,
    replay_ttl_needed,
)
from cds_service.security.jwks import JwksCache
from cds_service.security.trusted_issuers import (
    DEV_ISSUER,
    DEV_JWKS_FILE,
    DEV_PRIVATE_KEYS_FILE,
    SANDBOX_ISSUER,
    SANDBOX_JWKS_URL,
    TrustConfigError,
    TrustedIssuer,
    development_issuers,
    load_trusted_issuers,
    mint_development_token,
    parse_trusted_issuers,
)
from cds_service.store.replay_cache import ReplayCache
from cds_service.store.state import StateDatabase
from tests.jwt_factory import (
    ASYMMETRIC_ALGS,
    NOW,
    SigningKey,
    b64url,
    bearer,
    claims,
    forge_hmac,
    forge_none,
    from_private_jwk,
    generate_key,
    jwks,
    mint,
    replace_payload,
    signing_key,
)

ISS = "https://ehr.example.org"
BASE = "https://cds.example.org"
DISCOVERY = f"{BASE}/cds-services"
SERVICE = f"{BASE}/cds-services/hfs-rfa-recurrence"
FEEDBACK = f"{SERVICE}/feedback"
ENDPOINTS = (DISCOVERY, SERVICE, FEEDBACK)

# The CDS Hooks 2.0 specification's own example ("Trusting CDS Clients" -> "Example"), verbatim.
SPEC_ISS = "https://fhir-ehr.example.com/"
SPEC_AUD = "https://cds.example.org/cds-services/some-service"
SPEC_JKU = "https://fhir-ehr.example.com/jwk_uri"
SPEC_PUBLIC_JWKS: dict[str, Any] = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "example-kid",
            "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
            "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
            "alg": "ES384",
        }
    ]
}
SPEC_PRIVATE_JWK: dict[str, Any] = {
    **SPEC_PUBLIC_JWKS["keys"][0],
    "d": "SeFXUXda8UomZ8GFUl7HH_Oi15rIbfMcsWj9ecIsDR8kLbqsEz2CGNgwy_IcILxy",
}
SPEC_TOKEN = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGly"
    "LWVoci5leGFtcGxlLmNvbS9qd2tfdXJpIn0.eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIsImF1"
    "ZCI6Imh0dHBzOi8vY2RzLmV4YW1wbGUub3JnL2Nkcy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0MjI1Njg4"
    "NjAsImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUyMmIwMjEtZTFiNy00NjExLWJhNWItOGVlYzZhMzNhYzFlIiwidGVu"
    "YW50IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFhZDMwMmEyIn0.d1WfLjGRKlcWB94l9do4cM8REXeYJLL6"
    "SGUBO8VHZhfM8mwKYP70EMxJ67War4TQblEpaQrp11wx5p7oPFm2ETYgCicS84vXWEIYTdjooZdooCSDf2L8-i4awdoU"
    "wiEb"
)


# ------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------


class FakeClock:
    """A settable clock; ``advance`` moves it forward. Shared by authenticator and JWKS cache."""

    def __init__(self, now: float = NOW) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def datetime(self) -> type[datetime]:
        """A ``datetime`` whose ``now()`` reads this clock (PyJWT's exp, nbf and iat checks)."""
        clock = self

        class ClockDatetime(datetime):
            @classmethod
            def now(cls, tz: tzinfo | None = None) -> ClockDatetime:
                return cls.fromtimestamp(clock.now, tz)

        return ClockDatetime


class _RefuseAll(HTTPAdapter):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        self.log.append(str(request.url))
        raise requests.ConnectionError("network disabled in this test")


def all_keys() -> list[SigningKey]:
    return [signing_key(alg) for alg in ASYMMETRIC_ALGS]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The injected clock, starting at ``jwt_factory.NOW``; PyJWT's time checks read it too."""
    fake = FakeClock()
    monkeypatch.setattr(jwt.api_jwt, "datetime", fake.datetime())
    return fake


@pytest.fixture
def replay(state: StateDatabase) -> ReplayCache:
    """The replay cache the service uses, keeping each jti as long as a token can pass."""
    return ReplayCache(state, max_ttl_seconds=replay_ttl_needed())


@pytest.fixture
def issuer() -> TrustedIssuer:
    """A trusted EHR with one inline key per accepted algorithm, no jku, no restrictions."""
    return TrustedIssuer(iss=ISS, jwks=jwks(*all_keys()))


@pytest.fixture
def auth(issuer: TrustedIssuer, clock: FakeClock, replay: ReplayCache) -> EhrAuthenticator:
    """An authenticator trusting only ``issuer``, on the fake clock."""
    return EhrAuthenticator([issuer], replay_cache=replay, clock=clock)


@pytest.fixture
def no_network_session() -> Iterator[tuple[requests.Session, list[str]]]:
    """A requests session that records and refuses every request: proves nothing was fetched."""
    log: list[str] = []
    session = requests.Session()
    session.mount("http://", _RefuseAll(log))
    session.mount("https://", _RefuseAll(log))
    yield session, log
    session.close()


def reason(auth: EhrAuthenticator, header: str | None, aud: str = SERVICE) -> str:
    """Authenticate expecting failure; return the logged reason."""
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(header, aud)
    return info.value.reason


def token(key: SigningKey | None = None, aud: Any = SERVICE, **extra: Any) -> str:
    return mint(key or signing_key("ES384"), claims(aud, ISS, **extra))


# ------------------------------------------------------------------------------------------
# A1: the Authorization header
# ------------------------------------------------------------------------------------------


NOT_BEARER = "Authorization is not a single Bearer credential"


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "no Authorization header"),
        ("", "no Authorization header"),
        ("   ", "no Authorization header"),
        ("Bearer", NOT_BEARER),
        ("Bearer ", NOT_BEARER),
        ("Basic dXNlcjpwYXNz", NOT_BEARER),
        ("Token abc.def.ghi", NOT_BEARER),
        ("Bearer a b", NOT_BEARER),
    ],
)
def test_missing_or_non_bearer_authorization_is_rejected(
    auth: EhrAuthenticator, header: str | None, why: str
) -> None:
    assert reason(auth, header) == why


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(auth: EhrAuthenticator, scheme: str) -> None:
    assert auth.authenticate(f"{scheme} {token()}", SERVICE).iss == ISS


NOT_JWS = "token is not a compact JWS"


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        ("abc", NOT_JWS),
        ("a.b", NOT_JWS),
        ("a.b.c.d.e", NOT_JWS),
        ("!!!.???.###", NOT_JWS),
        ("e30.e30.", "alg None not accepted"),  # {} as the header
        (
            "bm90IGpzb24.e30.c2ln",
            "malformed JWT (Invalid header string: Expecting value: line 1 column 1 (char 0))",
        ),
        ("x" * 20_000, "token longer than 16384 characters"),
    ],
)
def test_malformed_tokens_are_rejected(auth: EhrAuthenticator, garbage: str, why: str) -> None:
    assert reason(auth, bearer(garbage)) == why


# ------------------------------------------------------------------------------------------
# A2: algorithms
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ASYMMETRIC_ALGS)
def test_each_accepted_algorithm_verifies(auth: EhrAuthenticator, alg: str) -> None:
    key = signing_key(alg)
    payload = claims(SERVICE, ISS)
    client = auth.authenticate(bearer(mint(key, payload)), SERVICE)
    assert client == VerifiedClient(
        iss=ISS, tenant=None, jti=payload["jti"], kid=key.kid, fhir_servers=()
    )


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_rejected(auth: EhrAuthenticator, alg: str) -> None:
    assert reason(auth, bearer(forge_none(claims(SERVICE, ISS), alg=alg))) == (
        f"alg {alg!r} not accepted"
    )


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_algorithms_are_rejected(auth: EhrAuthenticator, alg: str) -> None:
    forged = forge_hmac(alg, b"s" * 64, claims(SERVICE, ISS), {"kid": signing_key("RS384").kid})
    assert reason(auth, bearer(forged)) == f"alg {alg!r} not accepted"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_alg_confusion_hmac_keyed_with_trusted_rsa_public_key_is_rejected(
    auth: EhrAuthenticator, alg: str
) -> None:
    rsa_key = signing_key("RS384")
    forged = forge_hmac(alg, rsa_key.public_pem(), claims(SERVICE, ISS), {"kid": rsa_key.kid})
    assert reason(auth, bearer(forged)) == f"alg {alg!r} not accepted"


@pytest.mark.parametrize(
    ("header_alg", "kid_of", "signed_by"),
    [
        ("ES384", "RS384", "ES384"),  # EC-signed, but kid names the RSA key
        ("RS384", "ES384", "RS384"),  # RSA-signed, but kid names the EC key
        ("ES256", "ES384", "ES384"),  # the P-384 key passed off as ES256
        ("RS256", "RS384", "RS384"),  # the right RSA key, but its JWK pins RS384
        ("PS384", "RS384", "RS384"),  # PSS instead of the pinned PKCS#1 v1.5
    ],
)
def test_algorithm_must_fit_the_key(
    auth: EhrAuthenticator, header_alg: str, kid_of: str, signed_by: str
) -> None:
    kid = signing_key(kid_of).kid
    forged = mint(signing_key(signed_by), claims(SERVICE, ISS), {"kid": kid}, alg=header_alg)
    # Every trusted key here declares its alg (kid_of), the only one it verifies.
    assert reason(auth, bearer(forged)) == f"alg {header_alg} does not fit kid {kid!r} ({kid_of})"


def test_token_whose_alg_is_not_the_keys_is_refused_for_that_reason(
    auth: EhrAuthenticator, clock: FakeClock, replay: ReplayCache
) -> None:
    key = signing_key("RS384")
    rs256 = bearer(mint(key, claims(SERVICE, ISS), alg="RS256"))  # a genuine RS256 signature
    assert reason(auth, rs256) == "alg RS256 does not fit kid 'main-rs384' (RS384)"
    # The same key without a declared alg may verify RS256, and the same token then passes.
    unpinned = TrustedIssuer(iss=ISS, jwks={"keys": [key.public_jwk(with_alg=False)]})
    lenient = EhrAuthenticator([unpinned], replay_cache=replay, clock=clock)
    assert lenient.authenticate(rs256, SERVICE).kid == key.kid


def test_rsa_key_without_pinned_alg_serves_every_rsa_algorithm(
    clock: FakeClock, replay: ReplayCache
) -> None:
    key = generate_key("RS384", kid="unpinned")
    auth = EhrAuthenticator(
        [TrustedIssuer(iss=ISS, jwks={"keys": [key.public_jwk(with_alg=False)]})],
        replay_cache=replay,
        clock=clock,
    )
    for alg in ("RS256", "RS384", "PS384"):
        auth.authenticate(bearer(mint(key, claims(SERVICE, ISS), alg=alg)), SERVICE)
    ec_signed = mint(signing_key("ES384"), claims(SERVICE, ISS), {"kid": "unpinned"})
    assert reason(auth, bearer(ec_signed)) == (
        "alg ES384 does not fit kid 'unpinned' (PS384, RS256, RS384)"
    )


def test_unpinned_ec_key_still_needs_the_matching_curve(
    clock: FakeClock, replay: ReplayCache
) -> None:
    key = generate_key("ES384", kid="unpinned-ec")
    auth = EhrAuthenticator(
        [TrustedIssuer(iss=ISS, jwks={"keys": [key.public_jwk(with_alg=False)]})],
        replay_cache=replay,
        clock=clock,
    )
    auth.authenticate(bearer(mint(key, claims(SERVICE, ISS))), SERVICE)
    as_es256 = mint(key, claims(SERVICE, ISS), alg="ES256")
    assert reason(auth, bearer(as_es256)) == "alg ES256 does not fit kid 'unpinned-ec' (ES384)"


# ------------------------------------------------------------------------------------------
# A2: header fields, keys and signatures
# ------------------------------------------------------------------------------------------


def test_missing_kid_is_rejected(auth: EhrAuthenticator) -> None:
    assert reason(
        auth, bearer(mint(signing_key("ES384"), claims(SERVICE, ISS), {"kid": None}))
    ) == ("kid missing or invalid")


NOT_A_STRING_KID = "malformed JWT (Key ID header parameter must be a string)"


@pytest.mark.parametrize(
    ("kid", "why"),
    [
        ("", "kid missing or invalid"),
        (42, NOT_A_STRING_KID),
        (["main-es384"], NOT_A_STRING_KID),
        ("k" * 300, "kid missing or invalid"),
    ],
)
def test_invalid_kid_is_rejected(auth: EhrAuthenticator, kid: Any, why: str) -> None:
    signed = mint(signing_key("ES384"), claims(SERVICE, ISS), {"kid": kid})
    assert reason(auth, bearer(signed)) == why


def test_unknown_kid_is_rejected_without_any_fetch(
    issuer: TrustedIssuer,
    clock: FakeClock,
    replay: ReplayCache,
    no_network_session: tuple[requests.Session, list[str]],
) -> None:
    session, log = no_network_session
    cache = JwksCache([issuer], session=session)
    auth = EhrAuthenticator([issuer], cache, replay_cache=replay, clock=clock)
    forged = mint(signing_key("ES384"), claims(SERVICE, ISS), {"kid": "nobody"})
    assert reason(auth, bearer(forged)) == f"unknown kid 'nobody' for iss {ISS!r}"
    assert log == []


def test_signature_by_another_key_under_a_trusted_kid_is_rejected(auth: EhrAuthenticator) -> None:
    impostor = generate_key("ES384", kid=signing_key("ES384").kid)
    assert reason(auth, bearer(mint(impostor, claims(SERVICE, ISS)))) == (
        "bad signature (kid 'main-es384')"
    )


@pytest.mark.parametrize("alg", ASYMMETRIC_ALGS)
def test_tampered_payload_is_rejected(auth: EhrAuthenticator, alg: str) -> None:
    original = mint(signing_key(alg), claims(DISCOVERY, ISS))
    tampered = replace_payload(original, claims(SERVICE, ISS))
    assert reason(auth, bearer(tampered)) == f"bad signature (kid {signing_key(alg).kid!r})"


def test_stripped_signature_is_rejected(auth: EhrAuthenticator) -> None:
    head, body, _ = token().split(".")
    assert reason(auth, bearer(f"{head}.{body}.")) == "bad signature (kid 'main-es384')"


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
@pytest.mark.parametrize(
    ("signature", "why"),
    [
        ("A", "malformed JWT (Invalid crypto padding)"),  # impossible base64 length
        ("AAAAA", "malformed JWT (Invalid crypto padding)"),
        ("AAAA" * 2, "bad signature (kid {kid!r})"),  # too short
        ("AAAA" * 300, "bad signature (kid {kid!r})"),  # too long
    ],
)
def test_signature_of_the_wrong_shape_is_a_401_not_an_error(
    auth: EhrAuthenticator, alg: str, signature: str, why: str
) -> None:
    head, body, _ = mint(signing_key(alg), claims(SERVICE, ISS)).split(".")
    assert reason(auth, bearer(f"{head}.{body}.{signature}")) == why.format(
        kid=signing_key(alg).kid
    )


@pytest.mark.parametrize("payload", [[1, 2], "text", 42, None])
def test_payload_that_is_not_a_json_object_is_rejected(
    auth: EhrAuthenticator, payload: Any
) -> None:
    head, _, sig = token().split(".")
    body = b64url(json.dumps(payload).encode())
    assert reason(auth, bearer(f"{head}.{body}.{sig}")) == (
        "malformed JWT (Invalid payload string: must be a json object)"
    )


def test_unencoded_payload_option_is_rejected(auth: EhrAuthenticator) -> None:
    # RFC 7797 b64=false changes what is signed; it is not supported, with or without crit.
    signed = mint(signing_key("ES384"), claims(SERVICE, ISS), {"b64": False})
    assert reason(auth, bearer(signed)) == (
        "malformed JWT (Payload segment must be empty when 'b64' is false.)"
    )
    as_string = mint(signing_key("ES384"), claims(SERVICE, ISS), {"b64": "false"})
    assert reason(auth, bearer(as_string)) == "unencoded payloads (b64) are not supported"


def test_required_claims_are_checked_only_after_the_signature(auth: EhrAuthenticator) -> None:
    unsigned_garbage = replace_payload(token(), {"iss": ISS})
    assert reason(auth, bearer(unsigned_garbage)) == "bad signature (kid 'main-es384')"
    signed_without_jti = {k: v for k, v in claims(SERVICE, ISS).items() if k != "jti"}
    assert reason(auth, bearer(mint(signing_key("ES384"), signed_without_jti))) == (
        "missing claim jti"
    )


@pytest.mark.parametrize("typ", ["jwt", "JWT", None])
def test_typ_jwt_or_absent_is_accepted(auth: EhrAuthenticator, typ: str | None) -> None:
    auth.authenticate(
        bearer(mint(signing_key("ES384"), claims(SERVICE, ISS), {"typ": typ})), SERVICE
    )


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"typ": "at+jwt"}, "typ 'at+jwt' is not JWT"),
        ({"typ": 1}, "typ 1 is not JWT"),
        ({"crit": ["exp"], "exp": 1}, "malformed JWT (Unsupported critical extension: exp)"),
        ({"crit": ["b64"], "b64": True}, "crit header not supported"),  # PyJWT would accept it
    ],
)
def test_wrong_typ_or_crit_header_is_rejected(
    auth: EhrAuthenticator, headers: dict[str, Any], why: str
) -> None:
    assert reason(auth, bearer(mint(signing_key("ES384"), claims(SERVICE, ISS), headers))) == why


# ------------------------------------------------------------------------------------------
# A2: time claims
# ------------------------------------------------------------------------------------------


def test_expired_token_is_rejected(auth: EhrAuthenticator) -> None:
    assert reason(auth, bearer(token(now=NOW - 400))) == "token expired"


def test_expiry_within_leeway_is_tolerated(auth: EhrAuthenticator) -> None:
    auth.authenticate(bearer(token(now=NOW - 330)), SERVICE)  # exp = NOW - 30, leeway 60


def test_future_nbf_is_rejected(auth: EhrAuthenticator) -> None:
    assert reason(auth, bearer(token(nbf=NOW + 120))) == "token not yet valid (nbf in the future)"


def test_past_nbf_like_epic_is_accepted(auth: EhrAuthenticator) -> None:
    auth.authenticate(bearer(token(nbf=NOW - 300)), SERVICE)


def test_future_iat_is_rejected(auth: EhrAuthenticator) -> None:
    assert reason(auth, bearer(token(now=NOW + 120))) == "iat in the future"


def test_clock_skew_within_leeway_is_tolerated(auth: EhrAuthenticator) -> None:
    auth.authenticate(bearer(token(now=NOW + 45, nbf=NOW + 45)), SERVICE)


def test_too_long_lifetime_is_rejected(auth: EhrAuthenticator) -> None:
    assert reason(auth, bearer(token(lifetime=3601))) == "token lifetime 3601s exceeds 3600s"


def test_maximum_lifetime_is_accepted(auth: EhrAuthenticator) -> None:
    auth.authenticate(bearer(token(lifetime=3600)), SERVICE)


def test_exp_not_after_iat_is_rejected(auth: EhrAuthenticator) -> None:
    assert reason(auth, bearer(token(exp=NOW))) == "exp is not after iat"


@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ["1800000300", True, 1e400, [1]])
def test_non_numeric_dates_are_rejected(auth: EhrAuthenticator, name: str, value: Any) -> None:
    assert reason(auth, bearer(token(**{name: value}))) == f"{name} is not a NumericDate"


@pytest.mark.parametrize("name", ["exp", "iat", "iss", "aud", "jti"])
def test_each_required_claim_is_required(auth: EhrAuthenticator, name: str) -> None:
    # iss is read first, to find the issuer's keys; the others once the signature has passed.
    why = "iss missing or not a string" if name == "iss" else f"missing claim {name}"
    assert reason(auth, bearer(token(**{name: None}))) == why


# ------------------------------------------------------------------------------------------
# A2: audience, per endpoint
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("aud", ENDPOINTS)
def test_aud_must_be_the_endpoint_being_called(
    auth: EhrAuthenticator, endpoint: str, aud: str
) -> None:
    header = bearer(token(aud=aud))
    if aud == endpoint:
        auth.authenticate(header, endpoint)
    else:
        assert reason(auth, header, endpoint) == f"aud {aud!r} does not match endpoint {endpoint!r}"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_aud_of_another_service_base_is_rejected(auth: EhrAuthenticator, endpoint: str) -> None:
    elsewhere = endpoint.replace(BASE, "https://other-cds.example.org")
    assert reason(auth, bearer(token(aud=elsewhere)), endpoint) == (
        f"aud {elsewhere!r} does not match endpoint {endpoint!r}"
    )


def test_aud_may_be_an_array(auth: EhrAuthenticator) -> None:
    auth.authenticate(bearer(token(aud=[SERVICE])), SERVICE)
    auth.authenticate(bearer(token(aud=["https://someone.else/x", SERVICE])), SERVICE)


@pytest.mark.parametrize("aud", [[], ["https://someone.else/x"], [SERVICE, 7], 7, {"a": SERVICE}])
def test_bad_aud_values_are_rejected(auth: EhrAuthenticator, aud: Any) -> None:
    why = "missing claim aud" if aud == [] else f"aud {aud!r} does not match endpoint {SERVICE!r}"
    assert reason(auth, bearer(token(aud=aud))) == why


@pytest.mark.parametrize(
    ("aud", "endpoint"),
    [(SERVICE + "/", SERVICE), (SERVICE, SERVICE + "/"), (DISCOVERY + "/", DISCOVERY + "/")],
)
def test_one_trailing_slash_is_tolerated(auth: EhrAuthenticator, aud: str, endpoint: str) -> None:
    auth.authenticate(bearer(token(aud=aud)), endpoint)


@pytest.mark.parametrize("aud", [SERVICE + "//", SERVICE.upper(), SERVICE + "/x", SERVICE[:-1]])
def test_only_a_single_trailing_slash_is_tolerated(auth: EhrAuthenticator, aud: str) -> None:
    assert reason(auth, bearer(token(aud=aud))) == (
        f"aud {aud!r} does not match endpoint {SERVICE!r}"
    )


def test_issuer_configured_audiences_are_accepted_at_every_endpoint(
    clock: FakeClock, replay: ReplayCache
) -> None:
    epic_like = TrustedIssuer(
        iss=ISS, jwks=jwks(signing_key("RS384")), audiences=("hfs-cds-client-42",)
    )
    auth = EhrAuthenticator([epic_like], replay_cache=replay, clock=clock)
    for endpoint in ENDPOINTS:
        auth.authenticate(bearer(token(signing_key("RS384"), aud="hfs-cds-client-42")), endpoint)
        auth.authenticate(bearer(token(signing_key("RS384"), aud=endpoint)), endpoint)
    assert reason(auth, bearer(token(signing_key("RS384"), aud="hfs-cds-client-43"))) == (
        f"aud 'hfs-cds-client-43' does not match endpoint {SERVICE!r}"
    )


def test_configured_audiences_belong_to_their_issuer_only(
    clock: FakeClock, replay: ReplayCache
) -> None:
    other = generate_key("ES384", kid="other-1")
    auth = EhrAuthenticator(
        [
            TrustedIssuer(iss=ISS, jwks=jwks(signing_key("ES384"))),
            TrustedIssuer(iss="https://other.example", jwks=jwks(other), audiences=("shared",)),
        ],
        replay_cache=replay,
        clock=clock,
    )
    assert reason(auth, bearer(token(aud="shared"))) == (
        f"aud 'shared' does not match endpoint {SERVICE!r}"
    )
    auth.authenticate(bearer(mint(other, claims("shared", "https://other.example"))), SERVICE)


# ------------------------------------------------------------------------------------------
# A2/A3: issuers and jku
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("iss", ["https://evil.example", ISS + "/", ISS.upper(), 42, None])
def test_untrusted_or_malformed_iss_is_rejected(auth: EhrAuthenticator, iss: Any) -> None:
    why = f"untrusted iss {iss!r}" if isinstance(iss, str) else "iss missing or not a string"
    assert reason(auth, bearer(mint(signing_key("ES384"), claims(SERVICE, ISS, iss=iss)))) == why


def test_issuer_with_fixed_keys_rejects_any_jku(auth: EhrAuthenticator) -> None:
    forged = mint(signing_key("ES384"), claims(SERVICE, ISS), {"jku": "https://ehr.example.org/k"})
    assert reason(auth, bearer(forged)) == (
        f"jku 'https://ehr.example.org/k' not allowlisted for {ISS!r}"
    )


# ------------------------------------------------------------------------------------------
# A2: replay, tenant, extra claims
# ------------------------------------------------------------------------------------------


def replayed(jti: str, iss: str = ISS) -> str:
    return f"replayed jti {jti!r} from iss {iss!r}"


def test_replayed_jti_is_rejected(auth: EhrAuthenticator) -> None:
    header = bearer(token(jti="once"))
    auth.authenticate(header, SERVICE)
    assert reason(auth, header) == replayed("once")


def test_same_jti_in_a_new_token_is_still_a_replay(auth: EhrAuthenticator) -> None:
    jti = str(uuid.uuid4())
    auth.authenticate(bearer(token(jti=jti)), SERVICE)
    assert reason(
        auth, bearer(token(signing_key("RS384"), jti=jti, aud=FEEDBACK)), FEEDBACK
    ) == replayed(jti)


def test_jti_is_scoped_per_issuer(clock: FakeClock, replay: ReplayCache) -> None:
    other = generate_key("ES384", kid="other-2")
    auth = EhrAuthenticator(
        [
            TrustedIssuer(iss=ISS, jwks=jwks(signing_key("ES384"))),
            TrustedIssuer(iss="https://other.example", jwks=jwks(other)),
        ],
        replay_cache=replay,
        clock=clock,
    )
    auth.authenticate(bearer(token(jti="shared-jti")), SERVICE)
    auth.authenticate(
        bearer(mint(other, claims(SERVICE, "https://other.example", jti="shared-jti"))), SERVICE
    )


def test_rejected_tokens_do_not_consume_their_jti(auth: EhrAuthenticator) -> None:
    jti = str(uuid.uuid4())
    wrong_aud = bearer(token(jti=jti, aud=DISCOVERY))  # refused before the replay check
    assert reason(auth, wrong_aud) == f"aud {DISCOVERY!r} does not match endpoint {SERVICE!r}"
    auth.authenticate(bearer(token(jti=jti)), SERVICE)


@pytest.mark.parametrize("jti", ["", 5, "j" * 300])
def test_invalid_jti_is_rejected(auth: EhrAuthenticator, jti: Any) -> None:
    assert reason(auth, bearer(token(jti=jti))) == "jti missing or invalid"


def test_replay_is_caught_across_threads(auth: EhrAuthenticator) -> None:
    header = bearer(token(jti="raced"))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait()
        try:
            auth.authenticate(header, SERVICE)
            outcome = "accepted"
        except AuthenticationError as exc:
            outcome = exc.reason
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["accepted"] + [replayed("raced")] * 7


def test_extra_claims_are_accepted(auth: EhrAuthenticator) -> None:
    client = auth.authenticate(
        bearer(token(sub="epic-client-1", nbf=NOW - 300, tenant="t-1", custom={"x": [1]})), SERVICE
    )
    assert client.tenant == "t-1"


def test_tenant_allowlist(clock: FakeClock, replay: ReplayCache) -> None:
    key = signing_key("ES384")
    auth = EhrAuthenticator(
        [TrustedIssuer(iss=ISS, jwks=jwks(key), tenants=("hospital-a", "hospital-b"))],
        replay_cache=replay,
        clock=clock,
    )
    assert auth.authenticate(bearer(token(tenant="hospital-b")), SERVICE).tenant == "hospital-b"
    assert reason(auth, bearer(token(tenant="hospital-c"))) == (
        "tenant 'hospital-c' not allowed for this issuer"
    )
    # required once an allowlist exists
    assert reason(auth, bearer(token())) == "tenant None not allowed for this issuer"
    assert reason(auth, bearer(token(tenant=["hospital-a"]))) == "tenant is not a string"


def test_verified_client_carries_the_issuers_fhir_servers(
    clock: FakeClock, replay: ReplayCache
) -> None:
    bases = ("https://ehr.example.org/fhir", "https://ehr.example.org/fhir-r4")
    auth = EhrAuthenticator(
        [TrustedIssuer(iss=ISS, jwks=jwks(signing_key("ES384")), fhir_servers=bases)],
        replay_cache=replay,
        clock=clock,
    )
    assert auth.authenticate(bearer(token()), SERVICE).fhir_servers == bases


# ------------------------------------------------------------------------------------------
# Replay cache
# ------------------------------------------------------------------------------------------


def test_replay_cache_purges_expired_entries(state: StateDatabase) -> None:
    cache = ReplayCache(state, max_entries=10)
    cache.check_and_remember(ISS, "a", expires_at=NOW + 10, now=NOW)
    cache.check_and_remember(ISS, "b", expires_at=NOW + 100, now=NOW)
    cache.check_and_remember(ISS, "c", expires_at=NOW + 200, now=NOW + 50)
    assert cache.purge(NOW + 50) == 1  # the schedule's purge
    assert len(cache) == 2  # "a" is gone
    cache.check_and_remember(ISS, "a", expires_at=NOW + 300, now=NOW + 50)  # may reappear


def test_replay_cache_refuses_new_tokens_when_full(state: StateDatabase) -> None:
    cache = ReplayCache(state, max_entries=3)
    for jti in "abc":
        cache.check_and_remember(ISS, jti, expires_at=NOW + 100, now=NOW)
    with pytest.raises(ReplayCheckUnavailable, match=r"^replay cache full; refusing new tokens$"):
        cache.check_and_remember(ISS, "d", expires_at=NOW + 100, now=NOW)
    cache.check_and_remember(ISS, "d", expires_at=NOW + 200, now=NOW + 100)  # after expiry: room


def test_replay_cache_caps_entry_lifetime(state: StateDatabase) -> None:
    cache = ReplayCache(state, max_ttl_seconds=60)
    cache.check_and_remember(ISS, "a", expires_at=NOW + 10_000, now=NOW)
    cache.check_and_remember(ISS, "b", expires_at=NOW + 10_000, now=NOW + 61)
    cache.purge(NOW + 61)
    assert len(cache) == 1


def test_replay_entries_outlive_every_token_that_could_pass(
    auth: EhrAuthenticator, clock: FakeClock
) -> None:
    header = bearer(token(lifetime=3600, jti="long-lived"))
    auth.authenticate(header, SERVICE)
    clock.advance(3600 + 59)  # still inside exp + leeway
    assert reason(auth, header) == replayed("long-lived")
    clock.advance(2)
    assert reason(auth, header) == "token expired"


def test_replay_cache_shorter_than_token_validity_is_refused(
    issuer: TrustedIssuer, state: StateDatabase
) -> None:
    short = ReplayCache(state, max_ttl_seconds=3600)
    with pytest.raises(ValueError, match="max_ttl_seconds"):
        EhrAuthenticator([issuer], replay_cache=short)


# ------------------------------------------------------------------------------------------
# A3: JWKS over HTTP, against a real local server
# ------------------------------------------------------------------------------------------


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 whose answer a test can change; records every path requested."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.status = 200
        self.body: bytes | None = None  # overrides the JSON answer
        self.redirect_to: str | None = None
        self.stall = False  # hold the response until ``release`` is set (timeout tests)
        self.release = threading.Event()
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.paths.append(self.path)
                if server.stall:
                    server.release.wait(5)
                if server.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.body if server.body is not None else json.dumps(server.jwks).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and hung up is expected here

        self._httpd = QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/jwks.json") -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def stop(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    """A real HTTP JWKS endpoint on an ephemeral loopback port (``.url()``, ``.paths``)."""
    server = JwksServer()
    yield server
    server.stop()


RemoteAuth = Callable[..., EhrAuthenticator]


@pytest.fixture
def remote_auth(
    jwks_server: JwksServer, clock: FakeClock, replay: ReplayCache
) -> Iterator[RemoteAuth]:
    """Build an authenticator for an issuer whose keys live at ``jwks_server``; closes its session.

    Keyword arguments go to ``JwksCache`` (e.g. ``timeout_seconds``); ``url`` overrides the URL.
    """
    sessions: list[requests.Session] = []

    def build(url: str | None = None, **cache_options: Any) -> EhrAuthenticator:
        remote = TrustedIssuer(iss=ISS, jwks_url=url or jwks_server.url())
        session = requests.Session()
        sessions.append(session)
        cache = JwksCache([remote], session=session, clock=clock, **cache_options)
        return EhrAuthenticator([remote], cache, replay_cache=replay, clock=clock)

    yield build
    for session in sessions:
        session.close()


def test_jwks_is_fetched_once_and_cached(
    jwks_server: JwksServer, remote_auth: RemoteAuth, clock: FakeClock
) -> None:
    key = signing_key("ES384")
    jwks_server.jwks = jwks(key)
    auth = remote_auth()
    for _ in range(5):
        auth.authenticate(bearer(token(key)), SERVICE)
        clock.advance(60)
    assert jwks_server.paths == ["/jwks.json"]


def test_matching_jku_is_accepted_and_only_the_configured_url_is_fetched(
    jwks_server: JwksServer, remote_auth: RemoteAuth
) -> None:
    key = signing_key("ES384")
    jwks_server.jwks = jwks(key)
    auth = remote_auth()
    forged = mint(key, claims(SERVICE, ISS), {"jku": jwks_server.url()})
    auth.authenticate(bearer(forged), SERVICE)
    assert jwks_server.paths == ["/jwks.json"]


@pytest.mark.parametrize(
    "jku",
    [
        "/attacker.json",  # same host, other path
        "/jwks.json?x=1",  # same path, extra query
        "https://attacker.example/jwks.json",
        "http://127.0.0.1:9/jwks.json",
    ],
)
def test_non_allowlisted_jku_is_never_fetched(
    jwks_server: JwksServer, remote_auth: RemoteAuth, jku: str
) -> None:
    attacker = generate_key("ES384", kid="attacker")
    jwks_server.jwks = jwks(attacker)  # would verify, if the server were ever asked
    url = jwks_server.url(jku) if jku.startswith("/") else jku
    auth = remote_auth()
    forged = mint(attacker, claims(SERVICE, ISS), {"jku": url})
    assert reason(auth, bearer(forged)) == f"jku {url!r} not allowlisted for {ISS!r}"
    assert jwks_server.paths == []


def test_key_rotation_triggers_exactly_one_refetch(
    jwks_server: JwksServer, remote_auth: RemoteAuth, clock: FakeClock
) -> None:
    old, new = generate_key("ES384", kid="2026-01"), generate_key("RS384", kid="2026-07")
    jwks_server.jwks = jwks(old)
    auth = remote_auth()
    auth.authenticate(bearer(token(old)), SERVICE)
    clock.advance(120)
    jwks_server.jwks = jwks(new)  # the EHR rotates
    auth.authenticate(bearer(token(new)), SERVICE)
    auth.authenticate(bearer(token(new)), SERVICE)
    assert jwks_server.paths == ["/jwks.json"] * 2
    assert reason(auth, bearer(token(old))) == (  # retired key no longer trusted
        f"unknown kid '2026-01' for iss {ISS!r} (JWKS refetch rate-limited)"
    )
    assert len(jwks_server.paths) == 2


def test_unknown_kid_flood_causes_bounded_refetches(
    jwks_server: JwksServer, remote_auth: RemoteAuth, clock: FakeClock
) -> None:
    key = signing_key("ES384")
    jwks_server.jwks = jwks(key)
    auth = remote_auth(min_refetch_interval_seconds=30)
    auth.authenticate(bearer(token(key)), SERVICE)

    def flood(*, refetch_first: bool) -> None:
        for attempt in range(50):
            kid = f"made-up-{uuid.uuid4()}"
            forged = mint(key, claims(SERVICE, ISS), {"kid": kid})
            why = (
                "after refetch" if refetch_first and attempt == 0 else "(JWKS refetch rate-limited)"
            )
            assert reason(auth, bearer(forged)) == f"unknown kid {kid!r} for iss {ISS!r} {why}"
            clock.advance(0.1)

    flood(refetch_first=False)  # within 30 s of the first fetch: no refetch at all
    assert len(jwks_server.paths) == 1
    clock.advance(30)
    flood(refetch_first=True)  # one refetch for the whole second burst
    assert len(jwks_server.paths) == 2
    auth.authenticate(bearer(token(key)), SERVICE)  # the real key still works
    assert len(jwks_server.paths) == 2


def test_jwks_is_refreshed_after_its_ttl(
    jwks_server: JwksServer, remote_auth: RemoteAuth, clock: FakeClock
) -> None:
    key = signing_key("ES384")
    jwks_server.jwks = jwks(key)
    auth = remote_auth(ttl_seconds=3600)
    auth.authenticate(bearer(token(key)), SERVICE)
    clock.advance(3601)
    auth.authenticate(bearer(token(key, now=clock.now)), SERVICE)
    assert len(jwks_server.paths) == 2


def test_known_keys_survive_a_brief_jwks_outage_but_not_a_long_one(
    jwks_server: JwksServer, remote_auth: RemoteAuth, clock: FakeClock
) -> None:
    key = signing_key("ES384")
    jwks_server.jwks = jwks(key)
    auth = remote_auth(ttl_seconds=3600, max_stale_seconds=7200)
    auth.authenticate(bearer(token(key)), SERVICE)
    jwks_server.status = 503
    clock.advance(3601)
    auth.authenticate(bearer(token(key, now=clock.now)), SERVICE)  # refetch failed: stale key used
    assert len(jwks_server.paths) == 2
    clock.advance(7200)
    assert reason(auth, bearer(token(key, now=clock.now))) == (
        f"JWKS fetch from {jwks_server.url()} failed: HTTP 503"
    )


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ({"status": 500}, "JWKS fetch from {url} failed: HTTP 500"),
        ({"status": 404}, "JWKS fetch from {url} failed: HTTP 404"),
        ({"body": b"<html>maintenance</html>"}, "JWKS from {url} is not JSON"),
        (
            {"body": b'{"keys": "nope"}'},
            "JWKS from {url} unusable: {url}: a JWK Set must be an object with a 'keys' array",
        ),
        ({"body": b"[" * 300_000}, "JWKS from {url} exceeds 262144 bytes"),
        ({"redirect_to": "/moved.json"}, "JWKS fetch from {url} failed: HTTP 302"),
    ],
)
def test_broken_jwks_endpoint_is_an_authentication_error(
    jwks_server: JwksServer, remote_auth: RemoteAuth, setup: dict[str, Any], expected: str
) -> None:
    for name, value in setup.items():
        setattr(jwks_server, name, value)
    auth = remote_auth()
    assert reason(auth, bearer(token())) == expected.format(url=jwks_server.url())
    assert "/moved.json" not in jwks_server.paths  # redirects are never followed


def test_jwks_timeout_is_an_authentication_error(
    jwks_server: JwksServer, remote_auth: RemoteAuth
) -> None:
    jwks_server.stall = True
    auth = remote_auth(timeout_seconds=0.2)
    timed_out = f"JWKS fetch from {jwks_server.url()} failed: ReadTimeout"
    assert reason(auth, bearer(token())) == timed_out
    # The next calls within the refetch interval fail fast, without another request.
    assert reason(auth, bearer(token())) == f"{timed_out} (retry rate-limited)"
    assert jwks_server.paths == ["/jwks.json"]


def test_jwks_endpoint_down_is_an_authentication_error(remote_auth: RemoteAuth) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks.json"
    auth = remote_auth(url=url, timeout_seconds=0.5)
    assert reason(auth, bearer(token())) == f"JWKS fetch from {url} failed: ConnectionError"


def test_fetched_jwks_skips_unusable_keys(jwks_server: JwksServer, remote_auth: RemoteAuth) -> None:
    key = signing_key("ES384")
    jwks_server.jwks = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"},
            key.public_jwk(),
        ]
    }
    auth = remote_auth()
    auth.authenticate(bearer(token(key)), SERVICE)
    assert reason(auth, bearer(mint(key, claims(SERVICE, ISS), {"kid": "hmac"}))) == (
        f"unknown kid 'hmac' for iss {ISS!r} (JWKS refetch rate-limited)"
    )


# ------------------------------------------------------------------------------------------
# Robustness: only AuthenticationError, never the token in a reason
# ------------------------------------------------------------------------------------------


def test_reasons_never_contain_the_token(auth: EhrAuthenticator) -> None:
    bad = [
        token(aud=DISCOVERY),
        token(now=NOW - 10_000),
        forge_none(claims(SERVICE, ISS)),
        forge_hmac("HS256", signing_key("RS384").public_pem(), claims(SERVICE, ISS)),
        replace_payload(token(), claims(SERVICE, ISS)),
        mint(signing_key("ES384"), claims(SERVICE, "https://evil.example")),
    ]
    for t in bad:
        why = reason(auth, bearer(t))
        assert all(segment not in why for segment in t.split(".") if segment)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


def test_fuzzed_tokens_only_ever_raise_authentication_error(replay: ReplayCache) -> None:
    trusted = TrustedIssuer(iss=ISS, jwks=jwks(*all_keys()))
    auth = EhrAuthenticator([trusted], replay_cache=replay, clock=FakeClock())
    header_keys = st.sampled_from(["alg", "kid", "typ", "jku", "crit", "b64"])
    claim_keys = st.sampled_from(["iss", "aud", "exp", "iat", "nbf", "jti", "tenant"])
    header_values = _json | st.sampled_from([*ASYMMETRIC_ALGS, "none", "HS256", "main-es384"])
    claim_values = _json | st.sampled_from([ISS, SERVICE, NOW, NOW + 100])

    @settings(
        max_examples=300,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        st.dictionaries(header_keys, header_values),
        st.dictionaries(claim_keys, claim_values),
        st.binary(max_size=104),
    )
    def check(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> None:
        raw = ".".join(
            [
                b64url(json.dumps(header).encode()),
                b64url(json.dumps(payload).encode()),
                b64url(signature),
            ]
        )
        with pytest.raises(AuthenticationError):
            auth.authenticate(bearer(raw), SERVICE)

    check()


def test_fuzzed_authorization_headers_only_raise_authentication_error(
    replay: ReplayCache,
) -> None:
    trusted = TrustedIssuer(iss=ISS, jwks=jwks(signing_key("ES384")))
    auth = EhrAuthenticator([trusted], replay_cache=replay)

    @settings(max_examples=200, derandomize=True, database=None, deadline=None)
    @given(st.text(max_size=200))
    def check(header: str) -> None:
        with pytest.raises(AuthenticationError):
            auth.authenticate(header, SERVICE)

    check()


# ------------------------------------------------------------------------------------------
# The CDS Hooks 2.0 specification's worked example
# ------------------------------------------------------------------------------------------


@pytest.fixture
def spec_auth(
    clock: FakeClock,
    replay: ReplayCache,
    no_network_session: tuple[requests.Session, list[str]],
) -> EhrAuthenticator:
    """Trusts the spec example's EHR: its JWKS inline, its jku declared (never fetched)."""
    spec_issuer = TrustedIssuer(iss=SPEC_ISS, jwks=SPEC_PUBLIC_JWKS, jwks_url=SPEC_JKU)
    session, _ = no_network_session
    cache = JwksCache([spec_issuer], session=session)
    return EhrAuthenticator([spec_issuer], cache, replay_cache=replay, clock=clock)


def test_spec_example_token_is_rejected_as_expired(
    spec_auth: EhrAuthenticator, no_network_session: tuple[requests.Session, list[str]]
) -> None:
    # Its signature is genuine (the key lookup and signature pass); only its 2015 expiry fails.
    assert reason(spec_auth, bearer(SPEC_TOKEN), SPEC_AUD) == "token expired"
    assert no_network_session[1] == []


def test_fresh_token_with_the_spec_example_key_is_accepted_once(
    spec_auth: EhrAuthenticator, no_network_session: tuple[requests.Session, list[str]]
) -> None:
    key = from_private_jwk(SPEC_PRIVATE_JWK)
    payload = claims(SPEC_AUD, SPEC_ISS, tenant="2ddd6c3a-8e9a-44c6-a305-52111ad302a2")
    fresh = mint(key, payload, {"jku": SPEC_JKU})
    client = spec_auth.authenticate(bearer(fresh), SPEC_AUD)
    assert (client.iss, client.kid, client.tenant) == (
        SPEC_ISS,
        "example-kid",
        "2ddd6c3a-8e9a-44c6-a305-52111ad302a2",
    )
    assert reason(spec_auth, bearer(fresh), SPEC_AUD) == replayed(payload["jti"], SPEC_ISS)
    assert no_network_session[1] == []


def test_spec_example_private_jwk_is_refused_as_trusted_key_material() -> None:
    with pytest.raises(TrustConfigError, match="private key member"):
        TrustedIssuer(iss=SPEC_ISS, jwks={"keys": [SPEC_PRIVATE_JWK]})


# ------------------------------------------------------------------------------------------
# Development issuers
# ------------------------------------------------------------------------------------------


def _dev_private_keys() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DEV_PRIVATE_KEYS_FILE.read_text(encoding="utf-8"))
    return data


def test_development_issuers_are_the_dev_ehr_and_the_sandbox() -> None:
    dev, sandbox = development_issuers()
    assert dev.iss == DEV_ISSUER and dev.jwks_url is None and dev.jwks_file
    assert sandbox.iss == SANDBOX_ISSUER and sandbox.jwks_url == SANDBOX_JWKS_URL
    assert set(sandbox.fixed_keys()) == {"44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"}
    assert dev.fhir_servers == sandbox.fhir_servers == ()
    assert {k.alg for k in dev.fixed_keys().values()} == {"ES384", "RS384"}


def test_dev_private_keys_are_marked_and_match_the_public_jwks() -> None:
    data = _dev_private_keys()
    assert "DEVELOPMENT ONLY" in data["_warning"]
    public = json.loads(DEV_JWKS_FILE.read_text(encoding="utf-8"))
    derived = [
        {k: v for k, v in from_private_jwk(jwk).public_jwk().items() if k not in ("key_ops",)}
        for jwk in data["keys"]
    ]
    published = [{k: v for k, v in jwk.items() if k != "key_ops"} for jwk in public["keys"]]
    assert derived == published


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_dev_private_keys_verify(alg: str, clock: FakeClock, replay: ReplayCache) -> None:
    jwk = next(k for k in _dev_private_keys()["keys"] if k["alg"] == alg)
    auth = EhrAuthenticator(development_issuers(), replay_cache=replay, clock=clock)
    dev_token = mint(from_private_jwk(jwk), claims(DISCOVERY, DEV_ISSUER))
    assert auth.authenticate(bearer(dev_token), DISCOVERY).kid == jwk["kid"]


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_mint_development_token_is_accepted(alg: Any, replay: ReplayCache) -> None:
    # The real clock: the helper uses time.time().
    auth = EhrAuthenticator(development_issuers(), replay_cache=replay)
    dev_token = mint_development_token(DISCOVERY, alg=alg, tenant="dev")
    assert auth.authenticate(bearer(dev_token), DISCOVERY).tenant == "dev"


def test_sandbox_shaped_token_uses_the_inline_key_without_fetching(
    clock: FakeClock,
    replay: ReplayCache,
    no_network_session: tuple[requests.Session, list[str]],
) -> None:
    issuers = development_issuers()
    session, log = no_network_session
    cache = JwksCache(issuers, session=session)
    auth = EhrAuthenticator(issuers, cache, replay_cache=replay, clock=clock)
    impostor = generate_key("ES384", kid="44823f3d-0b01-4a6c-a80e-b9d3e8a7226f")
    forged = mint(impostor, claims(SERVICE, SANDBOX_ISSUER), {"jku": SANDBOX_JWKS_URL})
    assert reason(auth, bearer(forged)) == f"bad signature (kid {impostor.kid!r})"
    assert log == []
    other_jku = mint(impostor, claims(SERVICE, SANDBOX_ISSUER), {"jku": SANDBOX_JWKS_URL + "?"})
    assert reason(auth, bearer(other_jku)) == (
        f"jku {SANDBOX_JWKS_URL + '?'!r} not allowlisted for {SANDBOX_ISSUER!r}"
    )


# ------------------------------------------------------------------------------------------
# Trusted-issuers file
# ------------------------------------------------------------------------------------------

GOOD_URL = "https://ehr.example.org/.well-known/jwks.json"


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "jwks_url": GOOD_URL}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def test_trust_file_with_every_field_loads(tmp_path: Path, replay: ReplayCache) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "b.json").write_text(json.dumps(jwks(signing_key("RS384"))))
    config = {
        "_comment": "test",
        "issuers": [
            entry(
                audiences=["client-1"],
                tenants=["t1"],
                fhir_servers=["https://ehr.example.org/fhir"],
            ),
            {"iss": "https://b.example", "jwks_file": "keys/b.json"},
            {"iss": "https://c.example", "jwks": jwks(signing_key("ES384"))},
            {"iss": "https://local.example", "jwks_url": "http://127.0.0.1:8081/jwks.json"},
        ],
    }
    path = tmp_path / "trusted-issuers.json"
    path.write_text(json.dumps(config))
    a, b, c, local = load_trusted_issuers(path)
    assert (a.audiences, a.tenants, a.fhir_servers) == (
        ("client-1",),
        ("t1",),
        ("https://ehr.example.org/fhir",),
    )
    assert b.jwks_file == str((tmp_path / "keys" / "b.json").resolve())
    assert set(b.fixed_keys()) == {signing_key("RS384").kid}
    assert c.jwks is not None and local.jwks_url == "http://127.0.0.1:8081/jwks.json"
    EhrAuthenticator((a, b, c, local), replay_cache=replay)  # builds without fetching anything


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "JSON object"),
        ({}, "'issuers' must be a non-empty array"),
        ({"issuers": []}, "'issuers' must be a non-empty array"),
        ({"issuers": [entry()], "issuer": []}, "unknown top-level field(s) ['issuer']"),
        ({"issuers": ["x"]}, "issuers[0]: must be an object"),
        ({"issuers": [entry(iss=None)]}, "issuers[0]: iss is required"),
        ({"issuers": [entry(iss=" ")]}, "issuers[0] (iss ' '): iss is required"),
        ({"issuers": [entry(jwks_url=None)]}, "exactly one of jwks_url, jwks or jwks_file"),
        (
            {"issuers": [entry(jwks={"keys": []})]},
            f"issuers[0] (iss '{ISS}'): exactly one of jwks_url, jwks or jwks_file is required "
            "(found jwks_url, jwks)",
        ),
        ({"issuers": [entry(jwks_url="http://ehr.example.org/jwks")]}, "jwks_url must be an https"),
        ({"issuers": [entry(jwks_url="ftp://ehr.example.org/jwks")]}, "jwks_url must be an https"),
        ({"issuers": [entry(jwks_url="https://u:p@ehr.example.org/j")]}, "credentials"),
        ({"issuers": [entry(), entry()]}, "issuers[1] (iss 'https://ehr.example.org'): duplicate"),
        ({"issuers": [entry(tenant=["x"])]}, "unknown field(s) ['tenant']"),
        ({"issuers": [entry(audiences="aud")]}, "audiences must be an array of non-empty strings"),
        ({"issuers": [entry(tenants=[""])]}, "tenants must be an array"),
        ({"issuers": [entry(fhir_servers=["ehr/fhir"])]}, "not an absolute http(s) URL"),
        ({"issuers": [entry(jwks_url=None, jwks_file="missing.json")]}, "cannot read"),
        ({"issuers": [entry(jwks_url=None, jwks=[])]}, "jwks must be a JWK Set object"),
        ({"issuers": [entry(jwks_url=None, jwks={"keys": []})]}, "the JWK Set has no keys"),
        (
            {"issuers": [entry(jwks_url=None, jwks={"keys": [SPEC_PRIVATE_JWK]})]},
            "keys[0]: contains private key member(s) 'd'",
        ),
        (
            {"issuers": [entry(jwks_url=None, jwks={"keys": [{"kty": "oct", "k": "c2Vj"}]})]},
            "symmetric keys (kty 'oct') are never accepted",
        ),
        (
            {
                "issuers": [
                    entry(
                        jwks_url=None, jwks={"keys": [{**SPEC_PUBLIC_JWKS["keys"][0], "kid": None}]}
                    )
                ]
            },
            "kid is required",
        ),
        (
            {"issuers": [entry(jwks_url=None, jwks={"keys": SPEC_PUBLIC_JWKS["keys"] * 2})]},
            "kid 'example-kid' appears more than once",
        ),
        (
            {
                "issuers": [
                    entry(
                        jwks_url=None,
                        jwks={"keys": [{**SPEC_PUBLIC_JWKS["keys"][0], "alg": "ES256"}]},
                    )
                ]
            },
            "alg 'ES256' needs curve P-256",
        ),
        (
            {
                "issuers": [
                    entry(
                        jwks_url=None,
                        jwks={"keys": [{**SPEC_PUBLIC_JWKS["keys"][0], "alg": "HS256"}]},
                    )
                ]
            },
            "alg 'HS256' is not an accepted algorithm",
        ),
        (
            {
                "issuers": [
                    entry(
                        jwks_url=None, jwks={"keys": [{**SPEC_PUBLIC_JWKS["keys"][0], "x": "AAAA"}]}
                    )
                ]
            },
            "not a valid EC public key",
        ),
    ],
)
def test_trust_config_errors_name_the_entry_and_field(
    tmp_path: Path, data: Any, message: str
) -> None:
    with pytest.raises(TrustConfigError) as info:
        parse_trusted_issuers(data, tmp_path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("typo", "message"),
    [
        ({"jwks_uri": "https://ehr.example.org/jwks"}, "(did you mean 'jwks_uri' -> 'jwks_url'?)"),
        ({"tenant": ["x"]}, "(did you mean 'tenant' -> 'tenants'?)"),
        ({"colour": "blue"}, "unknown field(s) ['colour']"),  # nothing close: no guess
    ],
)
def test_an_unknown_trust_list_field_suggests_the_nearest_one(
    tmp_path: Path, typo: dict[str, Any], message: str
) -> None:
    """Issue 16: ``jwks_uri`` (the OAuth metadata spelling) said only "unknown field"."""
    with pytest.raises(TrustConfigError) as info:
        parse_trusted_issuers({"issuers": [entry(**typo)]}, tmp_path)
    assert str(info.value).endswith(message)


def test_weak_rsa_key_is_refused(tmp_path: Path) -> None:
    weak = SigningKey(
        "RS384", "weak", rsa.generate_private_key(public_exponent=65537, key_size=1024)
    )
    with pytest.raises(TrustConfigError, match="1024 bits, at least 2048"):
        parse_trusted_issuers({"issuers": [entry(jwks_url=None, jwks=jwks(weak))]}, tmp_path)


def test_trust_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "trusted.json"
    path.write_text('{"issuers": [\n  {"iss": "x",}\n]}')
    with pytest.raises(TrustConfigError, match=r"trusted\.json: not valid JSON \(line 2"):
        load_trusted_issuers(path)
    path.write_text(json.dumps({"issuers": [entry(jwks_url=None, jwks_file="k/missing.json")]}))
    with pytest.raises(TrustConfigError, match=r"trusted\.json: issuers\[0\].*missing\.json"):
        load_trusted_issuers(path)
    with pytest.raises(TrustConfigError, match="cannot read"):
        load_trusted_issuers(tmp_path / "absent.json")


def test_jwks_file_with_a_private_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "k.json").write_text(json.dumps({"keys": [SPEC_PRIVATE_JWK]}))
    with pytest.raises(TrustConfigError, match=r"k\.json.*private key member"):
        parse_trusted_issuers({"issuers": [entry(jwks_url=None, jwks_file="k.json")]}, tmp_path)


def test_authenticator_refuses_duplicate_issuers_and_uncovered_caches(
    issuer: TrustedIssuer, replay: ReplayCache
) -> None:
    with pytest.raises(ValueError, match="configured twice"):
        EhrAuthenticator([issuer, issuer], replay_cache=replay)
    with pytest.raises(ValueError, match="no keys"):
        EhrAuthenticator([issuer], JwksCache([]), replay_cache=replay)
