"""SMART App Launch 2.x, client side: discovery, PKCE, the authorize URL, token exchange and refresh.

Talks only to the authorization server named in the ``.well-known/smart-configuration`` of an
allowlisted FHIR base, over https (http only on loopback in development mode and tests), with a
timeout and without following redirects. Tokens, codes, verifiers and secrets are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import requests

from cds_service.security.net import is_loopback
from cds_service.smart.errors import Failure, SmartError

#: What the assessment reads: a read of the Patient (banner), searches of the rest.
REQUIRED_ACCESS: tuple[tuple[str, str], ...] = (
    ("Patient", "r"),
    ("Procedure", "rs"),
    ("Observation", "rs"),
    ("Condition", "rs"),
)
#: A FHIR id (R4 ``id`` datatype); anything else from a token response is refused.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: An OAuth error code is shown only when it is a plain token.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SCOPE = re.compile(r"(patient|user)/(\*|[A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)(\?.*)?")


# -- PKCE --------------------------------------------------------------------------------------------


def new_pkce() -> tuple[str, str]:
    """A fresh ``(code_verifier, code_challenge)`` pair for S256 (RFC 7636; 86-character verifier)."""
    verifier = secrets.token_urlsafe(64)
    return verifier, s256(verifier)


def s256(verifier: str) -> str:
    """``BASE64URL(SHA256(verifier))`` without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    """An unguessable ``state`` (256 bits; SMART asks for at least 122)."""
    return secrets.token_urlsafe(32)


# -- discovery ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmartConfiguration:
    """The parts of ``.well-known/smart-configuration`` the app uses (absolute URLs)."""

    authorization_endpoint: str
    token_endpoint: str
    capabilities: tuple[str, ...]
    code_challenge_methods: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: str
    token_type: str
    expires_in: int | None
    refresh_token: str | None
    scope: tuple[str, ...] | None  # None when the server did not say (the spec requires it)
    patient: str | None
    encounter: str | None
    need_patient_banner: bool
    app_context: str | None
    fhir_context: tuple[str, ...]


class OAuthClient:
    """Discovery (cached per FHIR base) and token requests on one pooled session."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        timeout_seconds: float,
        discovery_ttl_seconds: float,
        allow_loopback_http: bool,
    ) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self._timeout = timeout_seconds
        self._ttl = discovery_ttl_seconds
        self._allow_loopback_http = allow_loopback_http
        self._session = requests.Session()
        self._cache: dict[str, tuple[float, SmartConfiguration]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    # -- discovery -------------------------------------------------------------------------------

    def discover(self, fhir_base: str) -> SmartConfiguration:
        """``{fhir_base}/.well-known/smart-configuration``, from the cache while it is fresh.

        The caller has already checked ``fhir_base`` against the allowlist; failures are not cached.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(fhir_base)
            if cached and now - cached[0] < self._ttl:
                return cached[1]
        url = f"{fhir_base}/.well-known/smart-configuration"
        try:
            response = self._session.get(
                url,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise SmartError(
                Failure.DISCOVERY_FAILED, f"could not connect ({type(exc).__name__})"
            ) from exc
        if response.status_code != 200:
            raise SmartError(Failure.DISCOVERY_FAILED, f"HTTP {response.status_code}")
        try:
            document = response.json()
        except ValueError as exc:
            raise SmartError(Failure.DISCOVERY_INVALID, "the answer is not JSON") from exc
        config = self._parse_configuration(fhir_base, document)
        with self._lock:
            self._cache[fhir_base] = (now, config)
        return config

    def _parse_configuration(self, fhir_base: str, document: Any) -> SmartConfiguration:
        if not isinstance(document, dict):
            raise SmartError(Failure.DISCOVERY_INVALID, "the answer is not a JSON object")
        endpoints = []
        for name in ("authorization_endpoint", "token_endpoint"):
            value = document.get(name)
            if not isinstance(value, str) or not value:
                raise SmartError(Failure.DISCOVERY_INVALID, f"no {name}")
            url = urljoin(fhir_base + "/", value)
            if not self._safe_url(url):
                raise SmartError(Failure.DISCOVERY_INVALID, f"{name} is not an https URL")
            endpoints.append(url)
        methods = _strings(document.get("code_challenge_methods_supported"))
        if methods is not None and "S256" not in methods:
            raise SmartError(
                Failure.DISCOVERY_INVALID, "code_challenge_methods_supported does not list S256"
            )
        return SmartConfiguration(
            authorization_endpoint=endpoints[0],
            token_endpoint=endpoints[1],
            capabilities=_strings(document.get("capabilities")) or (),
            code_challenge_methods=methods or (),
        )

    def _safe_url(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.username or parts.password or not parts.hostname:
            return False
        if parts.scheme == "https":
            return True
        return parts.scheme == "http" and self._allow_loopback_http and is_loopback(parts.hostname)

    # -- authorization ---------------------------------------------------------------------------

    def authorize_url(
        self,
        config: SmartConfiguration,
        *,
        redirect_uri: str,
        scopes: Iterable[str],
        state: str,
        code_challenge: str,
        aud: str,
        launch: str | None,
    ) -> str:
        """The authorization request as a GET URL (PKCE S256 always; ``launch`` in an EHR launch)."""
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "aud": aud,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if launch is not None:
            params["launch"] = launch
        separator = "&" if urlsplit(config.authorization_endpoint).query else "?"
        return config.authorization_endpoint + separator + urlencode(params)

    def exchange_code(
        self, token_endpoint: str, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenResponse:
        return self._token_request(
            token_endpoint,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            },
        )

    def refresh(self, token_endpoint: str, refresh_token: str) -> TokenResponse:
        """A new access token with the same scope (none asked for: a refresh never widens it)."""
        return self._token_request(
            token_endpoint, {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    def _token_request(self, token_endpoint: str, form: dict[str, str]) -> TokenResponse:
        if not self._safe_url(token_endpoint):
            raise SmartError(Failure.TOKEN_FAILED, "the token endpoint is not an https URL")
        auth: tuple[str, str] | None = None
        if self._secret:
            auth = (self.client_id, self._secret)  # confidential-symmetric: HTTP Basic
        else:
            form = {**form, "client_id": self.client_id}  # public client
        try:
            response = self._session.post(
                token_endpoint,
                data=form,
                auth=auth,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise SmartError(
                Failure.TOKEN_FAILED,
                f"the authorization server could not be reached ({type(exc).__name__})",
            ) from exc
        body = _json_object(response)
        if response.status_code != 200:
            code = body.get("error") if body else None
            shown = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None
            raise SmartError(
                Failure.TOKEN_FAILED,
                f"the authorization server answered HTTP {response.status_code}"
                + (f" ({shown})" if shown else ""),
            )
        if body is None:
            raise SmartError(Failure.TOKEN_INVALID, "the token answer is not a JSON object")
        return parse_token_response(body)


def parse_token_response(body: Mapping[str, Any]) -> TokenResponse:
    """Validate a token answer (SMART App Launch §token response); SmartError names what is wrong."""
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise SmartError(Failure.TOKEN_INVALID, "no access_token")
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise SmartError(Failure.TOKEN_INVALID, "token_type is not Bearer")
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 0:
        expires_in = None
    scope = body.get("scope")
    patient = _optional_id(body, "patient")
    encounter = _optional_id(body, "encounter")
    banner = body.get("need_patient_banner")
    app_context = body.get("appContext")
    if app_context is not None and not isinstance(app_context, str):
        app_context = json.dumps(app_context)  # some servers send the JSON itself
    refresh = body.get("refresh_token")
    return TokenResponse(
        access_token=access_token,
        token_type="Bearer",
        expires_in=expires_in,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        scope=tuple(scope.split()) if isinstance(scope, str) else None,
        patient=patient,
        encounter=encounter,
        need_patient_banner=banner if isinstance(banner, bool) else True,
        app_context=app_context,
        fhir_context=_fhir_context_references(body.get("fhirContext")),
    )


def missing_access(granted: Iterable[str]) -> list[str]:
    """The accesses in :data:`REQUIRED_ACCESS` that no granted scope covers (v1 or v2 syntax)."""
    covered: dict[str, set[str]] = {}
    for scope in granted:
        match = _SCOPE.fullmatch(scope)
        if not match:
            continue
        _, resource, permissions, _ = match.groups()
        letters = {"read": "rs", "write": "cud", "*": "cruds"}.get(permissions, permissions)
        covered.setdefault(resource, set()).update(letters)
    missing = []
    for resource, needed in REQUIRED_ACCESS:
        have = covered.get(resource, set()) | covered.get("*", set())
        if not set(needed) <= have:
            missing.append(f"{resource} ({'read and search' if len(needed) > 1 else 'read'})")
    return missing


def _optional_id(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not FHIR_ID.fullmatch(value):
        raise SmartError(Failure.TOKEN_INVALID, f"'{name}' is not a FHIR id")
    return value


def _fhir_context_references(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        item["reference"]
        for item in value
        if isinstance(item, dict) and isinstance(item.get("reference"), str)
    )


def _strings(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(v for v in value if isinstance(v, str))


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
