"""Mint CDS Client JWTs for tests: valid ones, and the forgeries a verifier must refuse.

Tokens are assembled by hand (base64url header . payload . signature) rather than through
``jwt.encode`` so a test can put anything in the header (no ``kid``, ``alg: none``, a foreign
``jku``) and forge HMAC signatures with keys PyJWT would refuse, such as an RSA public key PEM.

Keys are generated once per test session (``signing_key``): RSA generation is the slow part.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

#: A fixed "now" for tests that inject a clock (2027-01-15T08:00:00Z).
NOW: Final = 1_800_000_000

ASYMMETRIC_ALGS: Final = ("ES384", "RS384", "ES256", "RS256", "PS384")
_HMAC_HASHES: Final = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class SigningKey:
    """A client key pair, the algorithm it signs with, and its ``kid``."""

    alg: str
    kid: str
    private_key: PrivateKey

    def public_jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        public = self.private_key.public_key()
        jwk: dict[str, Any]
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig"})
        if with_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def generate_key(alg: str, kid: str | None = None) -> SigningKey:
    """A fresh key for ``alg`` (EC P-256/P-384, RSA 2048)."""
    private: PrivateKey
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif alg in ("RS256", "RS384", "PS384"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"no key type for {alg}")
    return SigningKey(alg, kid or f"test-{alg.lower()}-{uuid.uuid4().hex[:8]}", private)


@functools.cache
def signing_key(alg: str, name: str = "main") -> SigningKey:
    """The session's key for ``alg`` (``name`` gives further independent keys)."""
    return generate_key(alg, kid=f"{name}-{alg.lower()}")


def from_private_jwk(jwk: Mapping[str, Any]) -> SigningKey:
    """A signing key from a private JWK (the spec example, the development keys)."""
    loader = ECAlgorithm if jwk["kty"] == "EC" else RSAAlgorithm
    private = loader.from_jwk(dict(jwk))
    if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("not a private JWK")
    return SigningKey(str(jwk["alg"]), str(jwk["kid"]), private)


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


def claims(
    aud: Any, iss: Any, /, *, now: float = NOW, lifetime: int = 300, **extra: Any
) -> dict[str, Any]:
    """CDS Hooks payload like the sandbox sends; ``extra`` adds, overrides or (with None)
    removes claims, including ``iss`` and ``aud``."""
    payload: dict[str, Any] = {
        "iss": iss,
        "aud": aud,
        "iat": int(now),
        "exp": int(now) + lifetime,
        "jti": str(uuid.uuid4()),
    }
    payload.update(extra)
    return {k: v for k, v in payload.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def _header(alg: str, kid: str | None, headers: Mapping[str, Any] | None) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    header.update(headers or {})
    return {k: v for k, v in header.items() if v is not None}


def mint(
    key: SigningKey,
    claims: Mapping[str, Any],
    headers: Mapping[str, Any] | None = None,
    *,
    alg: str | None = None,
) -> str:
    """Sign ``claims`` with ``key``. ``headers`` overrides header fields (None removes one);
    ``alg`` overrides the signing algorithm (must be usable with the key type)."""
    algorithm = alg or key.alg
    header = _header(algorithm, key.kid, headers)
    signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
    signature = get_default_algorithms()[algorithm].sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{b64url(signature)}"


def forge_none(
    claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None, alg: str = "none"
) -> str:
    """An unsecured JWS (``alg: none``, empty signature)."""
    header = _header(alg, "whatever", headers)
    return f"{_json_segment(header)}.{_json_segment(claims)}."


def forge_hmac(
    alg: str, secret: bytes, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None
) -> str:
    """An HMAC-signed token. With ``secret`` = a trusted RSA key's public PEM this is the classic
    algorithm-confusion attack on verifiers that let the token choose the algorithm."""
    header = _header(alg, None, headers)
    signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), _HMAC_HASHES[alg]).digest()
    return f"{signing_input}.{b64url(mac)}"


def replace_payload(token: str, claims: Mapping[str, Any]) -> str:
    """Swap the payload but keep the original signature (a tampered token)."""
    header, _, signature = token.split(".")
    return f"{header}.{_json_segment(claims)}.{signature}"


def bearer(token: str) -> str:
    return f"Bearer {token}"
