"""Authenticating the CDS Client (EHR) by its signed JWT (CDS Hooks 2.0, "Trusting CDS Clients").

PyJWT parses the token and checks what JWT itself defines: the signature (with the key the
issuer's JWK Set names by ``kid``, under the token's ``alg`` only if that key may verify it),
``aud``, ``iss``, ``exp``, ``nbf`` and ``iat`` with leeway, and that the required claims are there.
This module keeps the CDS Hooks rules: the accepted algorithms (never ``none`` or HMAC), no JWS
extension (``crit``, ``b64``), a trusted ``iss`` and only the ``jku`` configured for it, the
longest token lifetime, the tenant allowlist, and each ``jti`` used once.

Every failure is an ``AuthenticationError`` whose ``reason`` is for the service log only; the HTTP
answer is a bare 401. Reasons never contain the token; attacker-supplied values in them are
``quoted`` so they cannot forge log lines.

The checks run cheapest and least trusting first, and nothing is fetched or stored for a token
until it has earned it: the ``iss`` must be trusted before any key lookup, a ``jku`` must equal the
issuer's configured JWK Set URL (so attacker-named URLs are never dereferenced), and the ``jti`` is
remembered only after the signature and every claim check passed (so unsigned garbage cannot fill
the replay cache).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import jwt
from jwt.utils import base64url_decode

from cds_service.security import AuthenticationError, quoted
from cds_service.security.jwks import JwksCache
from cds_service.security.trusted_issuers import ALLOWED_ALGORITHMS, TrustedIssuer

Clock = Callable[[], float]

#: Claims every CDS Hooks client JWT carries (``tenant``, ``sub`` and ``nbf`` are optional extras).
REQUIRED_CLAIMS: Final = ("iss", "aud", "exp", "iat", "jti")
_ALGORITHMS: Final = sorted(ALLOWED_ALGORITHMS)

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
    language: str | None = None  # the trust list's locale name for this EHR (issue 18)


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
    (:class:`~cds_service.store.replay_cache.ReplayCache`, in the store's database)."""

    @property
    def max_ttl_seconds(self) -> float:
        """No entry is kept longer than this."""
        ...

    def check_and_remember(self, iss: str, jti: str, expires_at: float, now: float) -> None:
        """Record the pair until ``expires_at`` (capped at ``now + max_ttl_seconds``), or raise
        ``AuthenticationError`` if it was seen (replay), or
        :class:`~cds_service.security.ReplayCheckUnavailable` when no more pairs can be kept or it
        cannot tell (answer 503)."""
        ...


def _spellings(url: str) -> tuple[str, ...]:
    """The ``aud`` values that name ``url``: with or without one trailing slash."""
    bare = url.removesuffix("/")
    return (bare + "/",) if bare.endswith("/") else (bare, bare + "/")


def _read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims, read but not trusted: the issuer and kid say which key may verify.

    A token of the usual shape (JSON objects, a string ``kid``, no ``crit`` or ``b64``) is read
    here, because PyJWT reads each token character by character in Python and then reads it again
    to verify it (about 45 us for an RS384 token). Any other token is read by PyJWT so that its
    message says what is wrong. Either way the one verifying ``jwt.decode`` re-reads the token
    with all of PyJWT's checks, so nothing read here is trusted.
    """
    head, body, _ = token.split(".")  # a compact JWS: checked by _bearer_token
    try:
        header = json.loads(base64url_decode(head))
        claims = json.loads(base64url_decode(body))
    except ValueError:  # not base64url, not UTF-8 or not JSON
        header = claims = None
    if (
        isinstance(header, dict)
        and isinstance(claims, dict)
        and isinstance(header.get("kid"), str)
        and "crit" not in header
        and "b64" not in header
    ):
        return header, claims
    try:
        unverified = jwt.decode_complete(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"malformed JWT ({_said(exc)})") from None
    return unverified["header"], unverified["payload"]


def _check_dates(claims: dict[str, Any]) -> None:
    """``exp``, ``iat`` and ``nbf``, where given, must be JSON numbers (PyJWT takes ``int(value)``,
    which would also pass ``"1800000300"`` and ``true``). A missing one is reported as missing
    once the signature has passed."""
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is not None and not _is_number(value):
            raise AuthenticationError(f"{name} is not a NumericDate")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer no float can hold
        return False


def _said(exc: Exception) -> str:
    """PyJWT's message, escaped and bounded (a ``crit`` member it names comes from the token)."""
    return repr(str(exc))[1:-1][:120]


class EhrAuthenticator:
    """Verifies ``Authorization: Bearer <JWT>`` from a trusted CDS Client for one endpoint.

    ``endpoint_audience`` is the URL of the endpoint being called, built from the service's
    configured public base URL (not ``request.url``, which a proxy may have rewritten). ``aud``
    may also be any of the issuer's configured ``audiences``. ``leeway_seconds`` absorbs clock
    skew on ``exp``, ``nbf`` and ``iat``; ``max_token_lifetime_seconds`` bounds ``exp - iat`` and
    therefore how long ``replay_cache`` must remember a ``jti``. PyJWT checks the time claims
    against the system clock; ``clock`` is the time given to the replay cache.
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
        self._audiences = {
            i.iss: [spelling for aud in i.audiences for spelling in _spellings(aud)]
            for i in issuer_list
        }
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
        """Return the verified client, or raise ``AuthenticationError`` (answer with a bare 401);
        ``ReplayCheckUnavailable`` when the replay cache cannot be consulted (answer 503)."""
        token = self._bearer_token(authorization_header)
        header, unverified_claims = _read_unverified(token)
        alg, kid = self._checked_header(header)
        issuer = self._trusted_issuer(header, unverified_claims)
        _check_dates(unverified_claims)

        key = self._jwks.get_key(issuer, kid)
        verifier = key.by_alg.get(alg)
        if verifier is None:
            raise AuthenticationError(
                f"alg {alg} does not fit kid {quoted(kid)} ({', '.join(sorted(key.by_alg))})"
            )
        audiences = [*_spellings(endpoint_audience), *self._audiences[issuer.iss]]
        try:
            claims = jwt.decode(
                token,
                verifier,
                algorithms=_ALGORITHMS,
                audience=audiences,
                issuer=issuer.iss,
                leeway=self._leeway,
                # sub is no CDS Hooks claim: any value is accepted, as with other extras.
                options={"require": list(REQUIRED_CLAIMS), "verify_sub": False},
            )
        except jwt.PyJWTError as exc:
            raise self._refusal(exc, kid, unverified_claims, endpoint_audience) from None
        return self._cds_hooks_claims(claims, issuer, kid)

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
    def _checked_header(header: dict[str, Any]) -> tuple[str, str]:
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
        return alg, kid

    def _trusted_issuer(self, header: dict[str, Any], claims: dict[str, Any]) -> TrustedIssuer:
        iss = claims.get("iss")
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
        return issuer

    @staticmethod
    def _refusal(
        exc: jwt.PyJWTError, kid: str, claims: dict[str, Any], endpoint_audience: str
    ) -> AuthenticationError:
        """Why PyJWT refused a token, in this service's log vocabulary."""
        if isinstance(exc, jwt.InvalidSignatureError):
            return AuthenticationError(f"bad signature (kid {quoted(kid)})")
        if isinstance(exc, jwt.DecodeError):  # e.g. a signature segment that is not base64url
            return AuthenticationError(f"malformed JWT ({_said(exc)})")
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return AuthenticationError(f"missing claim {exc.claim}")
        if isinstance(exc, jwt.ExpiredSignatureError):
            return AuthenticationError("token expired")
        if isinstance(exc, jwt.ImmatureSignatureError):
            nbf = "(nbf)" in str(exc)
            return AuthenticationError(
                "token not yet valid (nbf in the future)" if nbf else "iat in the future"
            )
        if isinstance(exc, jwt.InvalidAudienceError):
            return AuthenticationError(
                f"aud {quoted(claims['aud'])} does not match endpoint {quoted(endpoint_audience)}"
            )
        if isinstance(exc, jwt.exceptions.InvalidJTIError):
            return AuthenticationError("jti missing or invalid")
        return AuthenticationError(f"invalid JWT ({_said(exc)})")

    def _cds_hooks_claims(
        self, claims: dict[str, Any], issuer: TrustedIssuer, kid: str
    ) -> VerifiedClient:
        exp, iat = claims["exp"], claims["iat"]  # JSON numbers, checked before the signature
        if exp <= iat:
            raise AuthenticationError("exp is not after iat")
        if exp - iat > self._max_lifetime:
            raise AuthenticationError(
                f"token lifetime {exp - iat:g}s exceeds {self._max_lifetime:g}s"
            )
        jti = claims["jti"]  # a string (PyJWT)
        if not jti or len(jti) > _MAX_ID_CHARS:
            raise AuthenticationError("jti missing or invalid")
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthenticationError("tenant is not a string")
        if issuer.tenants and tenant not in issuer.tenants:
            raise AuthenticationError(f"tenant {quoted(tenant)} not allowed for this issuer")

        # Last: only a token that passed everything else may take a slot in the replay cache.
        now = self._clock()
        self._replay.check_and_remember(issuer.iss, jti, expires_at=exp + self._leeway, now=now)
        return VerifiedClient(
            iss=issuer.iss,
            tenant=tenant,
            jti=jti,
            kid=kid,
            fhir_servers=issuer.fhir_servers,
            language=issuer.language,
        )


__all__ = [
    "AuthenticationError",
    "EhrAuthenticator",
    "ReplayGuard",
    "VerifiedClient",
    "replay_ttl_needed",
]
