"""Which CDS Clients (EHRs) the service trusts, and the public keys it trusts them with.

The trust list is a JSON file named by ``CDS_TRUSTED_ISSUERS_FILE``::

    {"issuers": [{"iss": "https://ehr.example.org",
                  "jwks_url": "https://ehr.example.org/.well-known/jwks.json",
                  "audiences": ["..."], "tenants": ["..."],
                  "fhir_servers": ["https://ehr.example.org/fhir"], "language": "zh-Hans"}]}

Each entry has exactly one key source: ``jwks_url`` (fetched; also the only ``jku`` accepted for
that issuer), ``jwks`` (inline JWK Set) or ``jwks_file`` (path, relative to the trust file's
folder). Members whose name starts with ``_`` are comments. Anything else is an error: a typo such as
``"tenant"`` for ``"tenants"`` would otherwise silently drop a restriction.

Configured keys are checked strictly at start-up (public EC P-256/P-384 or RSA >= 2048 bits, unique
``kid``, no private members), so a bad trust file stops the service instead of failing every call.
"""

from __future__ import annotations

import difflib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.i18n import parse as parse_language
from cds_service.security.net import is_loopback

#: Signing algorithms the service accepts (CDS Hooks recommends ES384 and RS384). Never ``none``
#: and never HMAC: a shared secret cannot identify a client.
ALLOWED_ALGORITHMS: Final = frozenset({"ES384", "RS384", "ES256", "RS256", "PS384"})

#: Elliptic curve each ECDSA algorithm is defined on (RFC 7518 §3.4).
EC_CURVE_FOR_ALG: Final = {"ES256": "P-256", "ES384": "P-384"}

#: Algorithms an RSA key without a JWK ``alg`` may verify (an EC key: its curve's only).
RSA_ALGORITHMS: Final = tuple(sorted(ALLOWED_ALGORITHMS - set(EC_CURVE_FOR_ALG)))

MIN_RSA_BITS: Final = 2048

_PRIVATE_MEMBERS: Final = {
    "EC": ("d",),
    "RSA": ("d", "p", "q", "dp", "dq", "qi", "oth"),
}
_ENTRY_FIELDS: Final = frozenset(
    {"iss", "jwks_url", "jwks", "jwks_file", "audiences", "tenants", "fhir_servers", "language"}
)

DEV_KEYS_DIR: Final = Path(__file__).with_name("dev_keys")
DEV_ISSUER: Final = "https://dev-ehr.hfs-cds.example.org"
DEV_JWKS_FILE: Final = DEV_KEYS_DIR / "dev-jwks.json"
DEV_PRIVATE_KEYS_FILE: Final = DEV_KEYS_DIR / "dev-private-keys.json"

SANDBOX_ISSUER: Final = "https://sandbox.cds-hooks.org"
SANDBOX_JWKS_URL: Final = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
#: The public CDS Hooks sandbox's JWK Set (cds-hooks/sandbox ``build/.well-known/jwks.json`` at
#: 3b7e255). Its private key is published in that repository, so it is trusted in development only.
SANDBOX_JWKS: Final[Mapping[str, Any]] = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f",
            "x": "dw_JGR8nB2I6XveNxUOl2qk699ZPLM2nYI5STSdiEl9avAkrm3CkfYMbrrjr8laB",
            "y": "Sm3mLE-n1zYNla_aiE3cb3nZsL51RbC7ysw3q8aJLxGm-hx79RPMYpITDjp7kgzy",
            "alg": "ES384",
        }
    ]
}


class TrustConfigError(ValueError):
    """The trust list or a configured key set is unusable; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key from a JWK Set, as a ``jwt.PyJWK`` per algorithm it may verify: the JWK's
    ``alg`` if it declares one (it pins the algorithm), else every accepted algorithm that fits its
    type and curve. A token is verified with ``by_alg[its alg]`` or not at all."""

    kid: str
    alg: str | None
    by_alg: dict[str, jwt.PyJWK]


@dataclass(frozen=True)
class TrustedIssuer:
    """One trusted CDS Client, identified by the JWT ``iss`` it signs with.

    Key sources: ``jwks`` (an inline JWK Set) or ``jwks_file`` (an absolute path once loaded from
    a trust file) are fixed keys; ``jwks_url`` is the issuer's JWK Set URL. A token's ``jku``
    header is accepted only if it equals ``jwks_url``, and only ``jwks_url`` is ever fetched.

    Programmatic issuers may combine fixed keys with a ``jwks_url`` (the trust file may not): the
    fixed keys are used without any fetch, and the URL is the accepted ``jku`` and the place to
    look for a ``kid`` that is not among them (key rotation). The CDS Hooks sandbox issuer is built
    this way: its key ships inline and its tokens carry ``jku``.

    ``audiences`` are extra accepted ``aud`` values besides the endpoint URL (some EHRs let the
    site configure ``aud``). ``tenants``, when non-empty, is the allowlist for the ``tenant``
    claim. ``fhir_servers`` are base-URL prefixes this issuer may send as ``fhirServer``.
    ``language`` (``en`` or ``zh-Hans``; stored as its locale name) is the language of this EHR's
    cards; None = ``CDS_LANGUAGE``.
    """

    iss: str
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_file: str | None = None
    audiences: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    fhir_servers: tuple[str, ...] = ()
    language: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.iss, str) or not self.iss.strip() or self.iss != self.iss.strip():
            raise TrustConfigError("iss must be a non-empty string without surrounding spaces")
        if self.jwks is not None and self.jwks_file is not None:
            raise TrustConfigError("give either jwks or jwks_file, not both")
        if self.jwks is None and self.jwks_file is None and self.jwks_url is None:
            raise TrustConfigError("one of jwks_url, jwks or jwks_file is required")
        if self.jwks_url is not None:
            check_jwks_url(self.jwks_url)
        if self.jwks is not None:
            parse_jwks(self.jwks, source="jwks", strict=True)
        for name in ("audiences", "tenants", "fhir_servers"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not all(
                isinstance(v, str) and v.strip() for v in values
            ):
                raise TrustConfigError(f"{name} must be a tuple of non-empty strings")
        for url in self.fhir_servers:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise TrustConfigError(f"fhir_servers: {url!r} is not an absolute http(s) URL")

    def fixed_keys(self) -> dict[str, VerificationKey]:
        """The inline or file keys by ``kid`` (empty for a ``jwks_url``-only issuer)."""
        if self.jwks is not None:
            return parse_jwks(self.jwks, source="jwks", strict=True)
        if self.jwks_file is not None:
            return parse_jwks(_read_json(Path(self.jwks_file)), source=self.jwks_file, strict=True)
        return {}


def check_jwks_url(url: str) -> None:
    """A JWK Set URL must be https (http only on loopback, for local tests) with no credentials."""
    if not isinstance(url, str):
        raise TrustConfigError("jwks_url must be a string")
    parts = urlsplit(url)
    secure = parts.scheme == "https" and bool(parts.hostname)
    local = parts.scheme == "http" and is_loopback(parts.hostname)
    if not (secure or local):
        raise TrustConfigError(
            f"jwks_url must be an https URL (http only on loopback), got {url!r}"
        )
    if parts.username or parts.password or parts.fragment:
        raise TrustConfigError(f"jwks_url must not carry credentials or a fragment: {url!r}")


def parse_jwk(jwk: Any) -> VerificationKey:
    """Turn one public JWK into a verification key, or raise ``ValueError`` saying why not."""
    if not isinstance(jwk, Mapping):
        raise ValueError("a JWK must be a JSON object")
    kty = jwk.get("kty")
    if kty == "oct":
        raise ValueError("symmetric keys (kty 'oct') are never accepted")
    if kty not in _PRIVATE_MEMBERS:
        raise ValueError(f"kty {kty!r} is not supported (EC or RSA public keys only)")
    private = [m for m in _PRIVATE_MEMBERS[kty] if m in jwk]
    if private:
        raise ValueError(
            f"contains private key member(s) {', '.join(map(repr, private))}; "
            "a JWK Set given to the service must hold public keys only"
        )
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("kid is required (a non-empty string)")
    if "use" in jwk and jwk["use"] != "sig":
        raise ValueError(f"kid {kid!r}: use is {jwk['use']!r}, expected 'sig'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError(f"kid {kid!r}: key_ops does not include 'verify'")
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in ALLOWED_ALGORITHMS:
            raise ValueError(f"kid {kid!r}: alg {alg!r} is not an accepted algorithm")
        if (kty == "EC") != alg.startswith("ES"):
            raise ValueError(f"kid {kid!r}: alg {alg!r} does not fit kty {kty!r}")
    algorithms = RSA_ALGORITHMS
    if kty == "EC":
        crv = jwk.get("crv")
        algorithms = tuple(a for a, curve in EC_CURVE_FOR_ALG.items() if curve == crv)
        if not algorithms:
            raise ValueError(f"kid {kid!r}: curve {crv!r} is not supported (P-256 or P-384)")
        if alg is not None and EC_CURVE_FOR_ALG[alg] != crv:
            raise ValueError(f"kid {kid!r}: alg {alg!r} needs curve {EC_CURVE_FOR_ALG[alg]}")
    try:
        by_alg = {a: jwt.PyJWK(dict(jwk), a) for a in ((alg,) if alg else algorithms)}
    except Exception as exc:  # PyJWT raises several types for a malformed point or modulus
        raise ValueError(f"kid {kid!r}: not a valid {kty} public key ({exc})") from None
    public = next(iter(by_alg.values())).key
    if isinstance(public, RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        raise ValueError(
            f"kid {kid!r}: RSA key has {public.key_size} bits, at least {MIN_RSA_BITS} needed"
        )
    return VerificationKey(kid=kid, alg=alg, by_alg=by_alg)


def parse_jwks(data: Any, *, source: str, strict: bool) -> dict[str, VerificationKey]:
    """Keys of a JWK Set by ``kid``.

    ``strict`` (configured keys): any unusable key is a ``TrustConfigError``. Otherwise (a fetched
    set, which may legitimately hold encryption or unsupported keys) unusable keys are skipped,
    and a ``kid`` that appears twice is dropped because it is ambiguous. A set that is not an
    object with a ``keys`` array raises ``ValueError`` either way.
    """
    error: type[ValueError] = TrustConfigError if strict else ValueError
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise error(f"{source}: a JWK Set must be an object with a 'keys' array")
    if strict:
        unknown = sorted(k for k in data if k != "keys" and not k.startswith("_"))
        if unknown:
            raise error(f"{source}: unexpected member(s) {unknown} in the JWK Set")
        if not data["keys"]:
            raise error(f"{source}: the JWK Set has no keys")
    keys: dict[str, VerificationKey] = {}
    duplicates: set[str] = set()
    for index, jwk in enumerate(data["keys"]):
        try:
            parsed = parse_jwk(jwk)
        except ValueError as exc:
            if strict:
                raise error(f"{source}: keys[{index}]: {exc}") from None
            continue
        if parsed.kid in keys or parsed.kid in duplicates:
            if strict:
                raise error(f"{source}: keys[{index}]: kid {parsed.kid!r} appears more than once")
            duplicates.add(parsed.kid)
            keys.pop(parsed.kid, None)
            continue
        keys[parsed.kid] = parsed
    return keys


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TrustConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrustConfigError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


def _string_tuple(entry: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = entry.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise TrustConfigError(f"{name} must be an array of non-empty strings")
    return tuple(value)


def _parse_entry(entry: Any, base_dir: Path) -> TrustedIssuer:
    if not isinstance(entry, Mapping):
        raise TrustConfigError("must be an object")
    unknown = sorted(k for k in entry if k not in _ENTRY_FIELDS and not str(k).startswith("_"))
    if unknown:
        hints = [
            f"{k!r} -> {close[0]!r}"
            for k in unknown
            if (close := difflib.get_close_matches(str(k), _ENTRY_FIELDS, n=1, cutoff=0.6))
        ]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise TrustConfigError(f"unknown field(s) {unknown}{hint}")
    iss = entry.get("iss")
    if not isinstance(iss, str) or not iss.strip():
        raise TrustConfigError("iss is required (a non-empty string)")
    sources = [k for k in ("jwks_url", "jwks", "jwks_file") if entry.get(k) is not None]
    if len(sources) != 1:
        raise TrustConfigError(
            "exactly one of jwks_url, jwks or jwks_file is required"
            + (f" (found {', '.join(sources)})" if sources else "")
        )
    jwks_url = entry.get("jwks_url")
    if jwks_url is not None:
        check_jwks_url(jwks_url)
    jwks = entry.get("jwks")
    if jwks is not None and not isinstance(jwks, dict):
        raise TrustConfigError("jwks must be a JWK Set object")
    jwks_file: str | None = None
    if entry.get("jwks_file") is not None:
        raw = entry["jwks_file"]
        if not isinstance(raw, str) or not raw:
            raise TrustConfigError("jwks_file must be a path string")
        resolved = (base_dir / raw).resolve()
        # Load now so a broken key file stops start-up rather than failing every request.
        parse_jwks(_read_json(resolved), source=f"jwks_file {str(resolved)!r}", strict=True)
        jwks_file = str(resolved)
    return TrustedIssuer(
        iss=iss,
        jwks_url=jwks_url,
        jwks=jwks,
        jwks_file=jwks_file,
        audiences=_string_tuple(entry, "audiences"),
        tenants=_string_tuple(entry, "tenants"),
        fhir_servers=_string_tuple(entry, "fhir_servers"),
        language=_language(entry.get("language")),
    )


def _language(value: Any) -> str | None:
    """The entry's ``language`` as a locale name (``"zh-CN"`` -> ``"zh_Hans"``), or None."""
    if value is None:
        return None
    try:
        return parse_language(value if isinstance(value, str) else repr(value))
    except ValueError as exc:
        raise TrustConfigError(f"language: {exc}") from None


def parse_trusted_issuers(data: Any, base_dir: str | os.PathLike[str]) -> tuple[TrustedIssuer, ...]:
    """Validate a decoded trust list; ``jwks_file`` paths are resolved against ``base_dir``."""
    if not isinstance(data, Mapping):
        raise TrustConfigError("the trust list must be a JSON object with an 'issuers' array")
    unknown = sorted(k for k in data if k != "issuers" and not str(k).startswith("_"))
    if unknown:
        raise TrustConfigError(f"unknown top-level field(s) {unknown}")
    entries = data.get("issuers")
    if not isinstance(entries, list) or not entries:
        raise TrustConfigError("'issuers' must be a non-empty array")
    issuers: list[TrustedIssuer] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        label = f"issuers[{index}]"
        if isinstance(entry, Mapping) and isinstance(entry.get("iss"), str):
            label += f" (iss {entry['iss']!r})"
        try:
            issuer = _parse_entry(entry, Path(base_dir))
        except TrustConfigError as exc:
            raise TrustConfigError(f"{label}: {exc}") from None
        if issuer.iss in seen:
            raise TrustConfigError(
                f"{label}: duplicate iss, already configured in issuers[{seen[issuer.iss]}]"
            )
        seen[issuer.iss] = index
        issuers.append(issuer)
    return tuple(issuers)


def load_trusted_issuers(path: str | os.PathLike[str]) -> tuple[TrustedIssuer, ...]:
    """Read and validate the trust list file (``CDS_TRUSTED_ISSUERS_FILE``)."""
    file = Path(path)
    try:
        return parse_trusted_issuers(_read_json(file), file.resolve().parent)
    except TrustConfigError as exc:
        message = str(exc)
        raise TrustConfigError(
            message if message.startswith(str(file)) else f"{file}: {message}"
        ) from None


def development_issuers() -> tuple[TrustedIssuer, ...]:
    """Issuers trusted only in development mode, since both have published private keys: the
    development EHR and the public CDS Hooks sandbox. Neither may name a ``fhirServer``: the FHIR
    allowlist is configured separately."""
    return (
        TrustedIssuer(iss=DEV_ISSUER, jwks_file=str(DEV_JWKS_FILE)),
        TrustedIssuer(iss=SANDBOX_ISSUER, jwks_url=SANDBOX_JWKS_URL, jwks=dict(SANDBOX_JWKS)),
    )


@dataclass(frozen=True)
class SigningKey:
    """A client's private key: one fresh JWT per call, ``aud`` = the endpoint URL.

    The one signer of the project: ``hfs-cds dev-token`` (:func:`mint_development_token`) and
    ``hfs-cds smoke`` both sign with it (CDS Hooks "Trusting Clients").
    """

    key: EllipticCurvePrivateKey | RSAPrivateKey
    kid: str
    iss: str
    alg: str
    jku: str | None = None
    lifetime_seconds: int = 300

    @classmethod
    def from_file(
        cls, path: Path, iss: str, alg: str | None = None, jku: str | None = None
    ) -> SigningKey:
        """A private JWK file (or a JWK Set holding one); ``TrustConfigError`` naming the file."""
        data = _read_json(path)
        keys = data.get("keys") if isinstance(data, dict) and "keys" in data else [data]
        private = [k for k in keys or [] if isinstance(k, dict) and "d" in k]
        if len(private) != 1:
            raise TrustConfigError(
                f"{path}: must hold exactly one private JWK (found {len(private)})"
            )
        jwk = private[0]
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TrustConfigError(f"{path}: the key has no 'kid'")
        chosen = alg or jwk.get("alg") or ("ES384" if jwk.get("kty") == "EC" else "RS384")
        try:
            key = (ECAlgorithm if jwk.get("kty") == "EC" else RSAAlgorithm).from_jwk(jwk)
        except Exception as exc:  # PyJWT raises several types for a malformed key
            raise TrustConfigError(f"{path}: not a usable private key ({exc})") from None
        if not isinstance(key, EllipticCurvePrivateKey | RSAPrivateKey):
            raise TrustConfigError(f"{path}: not a private key")
        return cls(key=key, kid=kid, iss=iss, alg=str(chosen), jku=jku)

    def sign(
        self,
        audience: str | Sequence[str],
        *,
        tenant: str | None = None,
        now: float | None = None,
    ) -> str:
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.iss,
            "aud": audience if isinstance(audience, str) else list(audience),
            "iat": issued,
            "exp": issued + self.lifetime_seconds,
            "jti": str(uuid.uuid4()),
        }
        if tenant is not None:
            claims["tenant"] = tenant
        headers = {"kid": self.kid, "typ": "JWT"}
        if self.jku:
            headers["jku"] = self.jku
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=headers)


def development_key(alg: Literal["ES384", "RS384"] = "ES384") -> SigningKey:
    """The development issuer's key (``dev_keys/dev-private-keys.json``, one per algorithm)."""
    data = _read_json(DEV_PRIVATE_KEYS_FILE)
    jwk = next(k for k in data["keys"] if k.get("alg") == alg)
    private = ECAlgorithm.from_jwk(jwk) if alg == "ES384" else RSAAlgorithm.from_jwk(jwk)
    if not isinstance(private, EllipticCurvePrivateKey | RSAPrivateKey):  # pragma: no cover
        raise TrustConfigError(f"{DEV_PRIVATE_KEYS_FILE}: {alg} key is not a private key")
    return SigningKey(key=private, kid=jwk["kid"], iss=DEV_ISSUER, alg=alg)


def mint_development_token(
    audience: str | Sequence[str],
    *,
    alg: Literal["ES384", "RS384"] = "ES384",
    tenant: str | None = None,
    lifetime_seconds: int = 300,
    now: float | None = None,
) -> str:
    """A JWT from the development issuer, for ``curl`` against a service in development mode.

    ``audience`` is the full endpoint URL, e.g. ``http://localhost:5000/cds-services``. The keys
    are public (``dev_keys/dev-private-keys.json``), so such a token proves nothing in production.
    """
    key = replace(development_key(alg), lifetime_seconds=lifetime_seconds)
    return key.sign(audience, tenant=tenant, now=now)


__all__ = [
    "ALLOWED_ALGORITHMS",
    "DEV_ISSUER",
    "RSA_ALGORITHMS",
    "SANDBOX_ISSUER",
    "SANDBOX_JWKS_URL",
    "SigningKey",
    "TrustConfigError",
    "TrustedIssuer",
    "VerificationKey",
    "check_jwks_url",
    "development_issuers",
    "development_key",
    "load_trusted_issuers",
    "mint_development_token",
    "parse_jwk",
    "parse_jwks",
    "parse_trusted_issuers",
]
