"""Authenticating the CDS Client (EHR) by its signed JWT (CDS Hooks 2.0, "Trusting CDS Clients").

Every failure is an ``AuthenticationError`` whose ``reason`` is for the service log only; the HTTP
answer is a bare 401. Reasons never contain the token; attacker-supplied values in them (``iss``,
``kid``) are ``repr``-quoted and truncated so they cannot forge log lines.

The checks run cheapest and least trusting first, and nothing is fetched or stored for a token
until it has earned it: the ``iss`` must be trusted before any key lookup, a ``jku`` must equal the
issuer's configured JWK Set URL (so attacker-named URLs are never dereferenced), and the ``jti`` is
remembered only after the signature and every claim check passed (so unsigned garbage cannot fill
the replay cache).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from cds_service.security import AuthenticationError, quoted
from cds_service.security.jwks import JwksCache
from cds_service.security.trusted_issuers import (
    ALLOWED_ALGORITHMS,
    EC_CURVE_FOR_ALG,
    MIN_RSA_BITS,
    TrustedIssuer,
    VerificationKey,
)

Clock = Callable[[], float]

#: Claims every CDS Hooks client JWT carries (``tenant``, ``sub`` and ``nbf`` are optional extras).
REQUIRED_CLAIMS: Final = ("iss", "aud", "exp", "iat", "jti")

# A compact JWS: three base64url segments. The signature may be empty only so that ``alg: none``
# is reported as such rather than as "malformed".
_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_TOKEN_CHARS: Final = 16 * 1024
_MAX_ID_CHARS: Final = 256  # kid and jti: long enough for any real client, bounded for the cache

#: Clock skew absorbed on ``exp``, ``nbf`` and ``iat``, and the longest accepted ``exp - iat``.
DEFAULT_LEEWAY_SECONDS: Final = 60.0
DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: Final = 3600.0


@dataclass(frozen=True, slots=True)
class VerifiedClient:
    """Who called: the verified issuer, its tenant, and the FHIR bases it may name."""

    iss: str
    tenant: str | None
    jti: str
    kid: str
    fhir_servers: tuple[str, ...]


def replay_ttl_needed(
    leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
    max_token_lifetime_seconds: float = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
) -> float:
    """How long a ``jti`` must be remembered so no replay of an accepted token can pass.

    An accepted token passes the exp check until exp + leeway, and exp <= iat + lifetime <=
    now + leeway + lifetime.
    """
    return max_token_lifetime_seconds + 2 * leeway_seconds


class ReplayGuard(Protocol):
    """Remembers accepted ``(iss, jti)`` pairs and refuses them afterwards
    (:class:`~cds_service.security.shared_replay.SharedReplayCache`)."""

    @property
    def max_ttl_seconds(self) -> float:
        """No entry is kept longer than this."""
        ...

    def check_and_remember(self, iss: str, jti: str, expires_at: float, now: float) -> None:
        """Record the pair until ``expires_at`` (capped at ``now + max_ttl_seconds``), or raise
        ``AuthenticationError`` if it was seen (replay) or no more pairs can be kept (full)."""
        ...


def _strip_slash(url: str) -> str:
    return url[:-1] if url.endswith("/") else url


def _numeric_date(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    # bool is an int subclass; a JSON true is not a date.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthenticationError(f"{name} is not a NumericDate")
    return float(value)


@dataclass(frozen=True, slots=True)
class _CompactJws:
    """A compact JWS split and decoded once; nothing in it is trusted until verified."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _parse_compact(token: str) -> _CompactJws:
    """Decode the three segments of a token that already matched ``_COMPACT_JWS``."""
    head, payload, signature = token.split(".")
    try:
        header = orjson.loads(_b64url_decode(head))
    except (ValueError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
        raise AuthenticationError("malformed JWT header") from None
    if not isinstance(header, dict):
        raise AuthenticationError("malformed JWT header")
    try:
        claims = orjson.loads(_b64url_decode(payload))
        raw_signature = _b64url_decode(signature)
    except (ValueError, binascii.Error):
        raise AuthenticationError("malformed JWT payload") from None
    if not isinstance(claims, dict):
        raise AuthenticationError("malformed JWT payload")
    return _CompactJws(header, claims, f"{head}.{payload}".encode("ascii"), raw_signature)


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


#: PyJWT's signature algorithms for the accepted ``alg`` values (never HMAC or ``none``).
_ALGORITHMS: Final = {
    name: algorithm
    for name, algorithm in jwt.algorithms.get_default_algorithms().items()
    if name in ALLOWED_ALGORITHMS
}
if set(_ALGORITHMS) != set(ALLOWED_ALGORITHMS):  # PyJWT without its cryptography extra
    raise ImportError(
        f"PyJWT lacks algorithms {sorted(set(ALLOWED_ALGORITHMS) - set(_ALGORITHMS))}"
    )


def _check_key_fits(key: VerificationKey, alg: str) -> None:
    """The key's type (and JWK ``alg``, if declared) must fit the token's ``alg``.

    This is what defeats algorithm confusion: an RSA key is never used for ECDSA or vice versa,
    and HMAC never reaches this point.
    """
    if key.alg is not None and key.alg != alg:
        raise AuthenticationError(f"alg {alg} used with kid {quoted(key.kid)} declared {key.alg}")
    if alg.startswith("ES"):
        if not isinstance(key.key, EllipticCurvePublicKey):
            raise AuthenticationError(f"alg {alg} used with non-EC kid {quoted(key.kid)}")
        curve = {"secp256r1": "P-256", "secp384r1": "P-384"}.get(key.key.curve.name)
        if curve != EC_CURVE_FOR_ALG[alg]:
            raise AuthenticationError(f"alg {alg} used with a {key.key.curve.name} key")
    else:
        if not isinstance(key.key, RSAPublicKey):
            raise AuthenticationError(f"alg {alg} used with non-RSA kid {quoted(key.kid)}")
        if key.key.key_size < MIN_RSA_BITS:  # pragma: no cover - refused when keys are parsed
            raise AuthenticationError(f"RSA key {quoted(key.kid)} too short")


class EhrAuthenticator:
    """Verifies ``Authorization: Bearer <JWT>`` from a trusted CDS Client for one endpoint.

    ``endpoint_audience`` is the URL of the endpoint being called, built from the service's
    configured public base URL (not ``request.url``, which a proxy may have rewritten). ``aud``
    may also be any of the issuer's configured ``audiences``. ``leeway_seconds`` absorbs clock
    skew on ``exp``, ``nbf`` and ``iat``; ``max_token_lifetime_seconds`` bounds ``exp - iat`` and
    therefore how long a replay cache entry must live.
    """

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        jwks_cache: JwksCache | None = None,
        *,
        replay_cache: ReplayGuard,
        leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
        max_token_lifetime_seconds: float = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
        clock: Clock = time.time,
    ) -> None:
        issuer_list = tuple(issuers)
        self._issuers: dict[str, TrustedIssuer] = {}
        for issuer in issuer_list:
            if issuer.iss in self._issuers:
                raise ValueError(f"issuer {issuer.iss!r} is configured twice")
            self._issuers[issuer.iss] = issuer
        self._jwks = jwks_cache if jwks_cache is not None else JwksCache(issuer_list)
        missing = [iss for iss in self._issuers if not self._jwks.covers(iss)]
        if missing:
            raise ValueError(f"jwks_cache has no keys for {missing}")
        self._leeway = float(leeway_seconds)
        self._max_lifetime = float(max_token_lifetime_seconds)
        needed_ttl = replay_ttl_needed(self._leeway, self._max_lifetime)
        if replay_cache.max_ttl_seconds < needed_ttl:
            raise ValueError(
                f"replay_cache.max_ttl_seconds must be at least {needed_ttl:g} "
                "(max token lifetime + 2 x leeway), or replays could slip through"
            )
        self._replay = replay_cache
        self._clock = clock

    @property
    def issuers(self) -> tuple[TrustedIssuer, ...]:
        return tuple(self._issuers.values())

    def close(self) -> None:
        self._jwks.close()

    def authenticate(
        self, authorization_header: str | None, endpoint_audience: str
    ) -> VerifiedClient:
        """Return the verified client, or raise ``AuthenticationError`` (answer with a bare 401)."""
        token = self._bearer_token(authorization_header)
        jws = _parse_compact(token)
        header = self._checked_header(jws.header)
        alg, kid = header["alg"], header["kid"]

        iss = jws.claims.get("iss")
        if not isinstance(iss, str):
            raise AuthenticationError("iss missing or not a string")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise AuthenticationError(f"untrusted iss {quoted(iss)}")
        if "jku" in header and (issuer.jwks_url is None or header["jku"] != issuer.jwks_url):
            # Never dereferenced: a token naming its own key URL could sign with any key.
            raise AuthenticationError(
                f"jku {quoted(header['jku'])} not allowlisted for {quoted(iss)}"
            )

        key = self._jwks.get_key(issuer, kid)
        _check_key_fits(key, alg)
        claims = self._verified_claims(jws, key, alg)
        return self._check_claims(claims, issuer, kid, endpoint_audience)

    @staticmethod
    def _bearer_token(authorization_header: str | None) -> str:
        if authorization_header is None or not authorization_header.strip():
            raise AuthenticationError("no Authorization header")
        parts = authorization_header.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise AuthenticationError("Authorization is not a single Bearer credential")
        token = parts[1]
        if len(token) > _MAX_TOKEN_CHARS:
            raise AuthenticationError(f"token longer than {_MAX_TOKEN_CHARS} characters")
        if not _COMPACT_JWS.fullmatch(token):
            raise AuthenticationError("token is not a compact JWS")
        return token

    @staticmethod
    def _checked_header(header: dict[str, Any]) -> dict[str, Any]:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise AuthenticationError(f"alg {quoted(alg)} not accepted")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthenticationError(f"typ {quoted(typ)} is not JWT")
        if "crit" in header:
            # No JWS extension is understood here, so any critical one must be refused (RFC 7515).
            raise AuthenticationError("crit header not supported")
        if header.get("b64", True) is not True:
            raise AuthenticationError("unencoded payloads (b64) are not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_ID_CHARS:
            raise AuthenticationError("kid missing or invalid")
        return header

    @staticmethod
    def _verified_claims(jws: _CompactJws, key: VerificationKey, alg: str) -> dict[str, Any]:
        # PyJWT's algorithm verifies the signature; the token was parsed once, by
        # _parse_compact, instead of three times (header, unverified claims, then jwt.decode).
        if not _ALGORITHMS[alg].verify(jws.signing_input, key.key, jws.signature):
            raise AuthenticationError(f"bad signature (kid {quoted(key.kid)})")
        for name in REQUIRED_CLAIMS:
            if jws.claims.get(name) is None:
                raise AuthenticationError(f"missing claim {name}")
        return jws.claims

    def _check_claims(
        self, claims: dict[str, Any], issuer: TrustedIssuer, kid: str, endpoint_audience: str
    ) -> VerifiedClient:
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise AuthenticationError("aud is neither a string nor an array of strings")
        accepted = {_strip_slash(endpoint_audience), *map(_strip_slash, issuer.audiences)}
        if not any(_strip_slash(a) in accepted for a in audiences):
            raise AuthenticationError(
                f"aud {quoted(aud)} does not match endpoint {quoted(endpoint_audience)}"
            )

        now = self._clock()
        exp, iat = _numeric_date(claims, "exp"), _numeric_date(claims, "iat")
        if exp <= now - self._leeway:
            raise AuthenticationError("token expired")
        if "nbf" in claims and _numeric_date(claims, "nbf") > now + self._leeway:
            raise AuthenticationError("token not yet valid (nbf in the future)")
        if iat > now + self._leeway:
            raise AuthenticationError("iat in the future")
        if exp <= iat:
            raise AuthenticationError("exp is not after iat")
        if exp - iat > self._max_lifetime:
            raise AuthenticationError(
                f"token lifetime {exp - iat:g}s exceeds {self._max_lifetime:g}s"
            )

        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > _MAX_ID_CHARS:
            raise AuthenticationError("jti missing or invalid")
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthenticationError("tenant is not a string")
        if issuer.tenants and tenant not in issuer.tenants:
            raise AuthenticationError(f"tenant {quoted(tenant)} not allowed for this issuer")

        # Last: only a token that passed everything else may take a slot in the replay cache.
        self._replay.check_and_remember(issuer.iss, jti, expires_at=exp + self._leeway, now=now)
        return VerifiedClient(
            iss=issuer.iss, tenant=tenant, jti=jti, kid=kid, fhir_servers=issuer.fhir_servers
        )


__all__ = [
    "AuthenticationError",
    "EhrAuthenticator",
    "ReplayGuard",
    "VerifiedClient",
    "replay_ttl_needed",
]
