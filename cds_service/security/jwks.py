"""The trusted issuers' verification keys, by ``kid``: configured ones, and JWK Sets fetched from the
issuers' configured URLs only, cached, refetched on rotation at a bounded rate, within time and
size limits. (``jwt.PyJWKClient`` is not used: it caps neither the size of a JWK Set nor the time
spent reading one, and stops accepting known keys as soon as a refetch fails.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import requests

from cds_service.security import AuthenticationError, quoted
from cds_service.security.trusted_issuers import TrustedIssuer, VerificationKey, parse_jwks

Clock = Callable[[], float]


@dataclass
class _RemoteKeys:
    url: str
    keys: dict[str, VerificationKey] = field(default_factory=dict)
    fetched_at: float | None = None  # last successful fetch
    attempted_at: float | None = None  # last fetch attempt, successful or not
    last_error: str | None = None  # why the last attempt failed, if it did
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards the fields above
    fetch_lock: threading.Lock = field(default_factory=threading.Lock)  # one fetch at a time


@dataclass(frozen=True)
class _IssuerKeys:
    fixed: dict[str, VerificationKey]
    remote: _RemoteKeys | None


class JwksCache:
    """Verification keys per trusted issuer, by ``kid``.

    Inline and file keys are loaded at construction. An issuer's ``jwks_url`` is fetched lazily,
    kept for ``ttl_seconds``, and refetched when a token names an unknown ``kid`` (key rotation),
    but at most once per ``min_refetch_interval_seconds`` per issuer so a stream of made-up kids
    cannot turn the service into a request amplifier. When a refetch fails the previous keys stay
    usable for ``max_stale_seconds`` beyond their TTL, so a brief outage of the EHR's key endpoint
    does not lock the EHR out. Only configured URLs are ever fetched: redirects are not followed,
    bodies are capped, and each fetch is bounded by ``timeout_seconds``.
    """

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        *,
        session: requests.Session | None = None,
        ttl_seconds: float = 3600.0,
        min_refetch_interval_seconds: float = 30.0,
        max_stale_seconds: float = 6 * 3600.0,
        timeout_seconds: float = 2.0,
        max_response_bytes: int = 256 * 1024,
        clock: Clock = time.monotonic,
    ) -> None:
        self._session = session if session is not None else requests.Session()
        self._ttl = ttl_seconds
        self._min_interval = min_refetch_interval_seconds
        self._max_stale = max_stale_seconds
        self._timeout = timeout_seconds
        self._max_bytes = max_response_bytes
        self._clock = clock
        self._issuers: dict[str, _IssuerKeys] = {}
        for issuer in issuers:
            remote = _RemoteKeys(issuer.jwks_url) if issuer.jwks_url is not None else None
            self._issuers[issuer.iss] = _IssuerKeys(issuer.fixed_keys(), remote)

    def close(self) -> None:
        """Release pooled connections (the app calls this on shutdown)."""
        self._session.close()

    def covers(self, iss: str) -> bool:
        """Whether this cache was built with keys for ``iss``."""
        return iss in self._issuers

    def get_key(self, issuer: TrustedIssuer, kid: str) -> VerificationKey:
        """The issuer's key named ``kid``, fetching its JWK Set if needed and allowed."""
        entry = self._issuers.get(issuer.iss)
        if entry is None:
            raise AuthenticationError(f"no keys configured for iss {quoted(issuer.iss)}")
        key = entry.fixed.get(kid)
        if key is not None:
            return key
        remote = entry.remote
        if remote is None:
            raise AuthenticationError(f"unknown kid {quoted(kid)} for iss {quoted(issuer.iss)}")
        now = self._clock()
        with remote.lock:
            if self._fresh(remote, now) and kid in remote.keys:
                return remote.keys[kid]
        return self._get_key_slow(remote, kid, issuer.iss)

    def _fresh(self, remote: _RemoteKeys, now: float) -> bool:
        return remote.fetched_at is not None and now - remote.fetched_at < self._ttl

    def _get_key_slow(self, remote: _RemoteKeys, kid: str, iss: str) -> VerificationKey:
        # Serialise fetches per issuer; callers with a known, fresh kid never wait on this lock.
        with remote.fetch_lock:
            now = self._clock()
            with remote.lock:
                if self._fresh(remote, now) and kid in remote.keys:
                    return remote.keys[kid]  # another thread fetched it while we waited
                may_fetch = (
                    remote.attempted_at is None or now - remote.attempted_at >= self._min_interval
                )
            failure: str | None = None
            if may_fetch:
                try:
                    keys: dict[str, VerificationKey] | None = self._fetch(remote.url)
                except AuthenticationError as exc:
                    keys, failure = None, exc.reason
                with remote.lock:
                    remote.attempted_at, remote.last_error = now, failure
                    if keys is not None:
                        remote.keys, remote.fetched_at = keys, now
            with remote.lock:
                key = remote.keys.get(kid)
                usable = (
                    remote.fetched_at is not None
                    and now - remote.fetched_at < self._ttl + self._max_stale
                )
                last_error = remote.last_error
            if key is not None and usable:
                return key
            if failure is not None:
                raise AuthenticationError(failure)
            if not may_fetch and last_error is not None:
                raise AuthenticationError(f"{last_error} (retry rate-limited)")
            if not may_fetch:
                raise AuthenticationError(
                    f"unknown kid {quoted(kid)} for iss {quoted(iss)} (JWKS refetch rate-limited)"
                )
            raise AuthenticationError(
                f"unknown kid {quoted(kid)} for iss {quoted(iss)} after refetch"
            )

    def _fetch(self, url: str) -> dict[str, VerificationKey]:
        started = time.monotonic()  # real time: bounds a slow-drip body, whatever the test clock
        try:
            with self._session.get(
                url,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json, application/jwk-set+json"},
            ) as response:
                if response.status_code != 200:
                    raise AuthenticationError(
                        f"JWKS fetch from {url} failed: HTTP {response.status_code}"
                    )
                body = bytearray()
                for chunk in response.iter_content(chunk_size=16 * 1024):
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise AuthenticationError(
                            f"JWKS from {url} exceeds {self._max_bytes} bytes"
                        )
                    if time.monotonic() - started > 2 * self._timeout:
                        raise AuthenticationError(f"JWKS fetch from {url} too slow")
        except requests.RequestException as exc:
            raise AuthenticationError(
                f"JWKS fetch from {url} failed: {type(exc).__name__}"
            ) from None
        try:
            data = json.loads(bytes(body))
        except ValueError:
            raise AuthenticationError(f"JWKS from {url} is not JSON") from None
        try:
            return parse_jwks(data, source=url, strict=False)
        except ValueError as exc:
            raise AuthenticationError(f"JWKS from {url} unusable: {exc}") from None


__all__ = ["JwksCache"]
