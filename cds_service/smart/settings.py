"""Settings of the SMART app, read once from the environment with ``create_app(config)`` overrides.

Environment variable = the field name in upper case with the ``SMART_`` prefix (``SMART_CLIENT_ID``,
``SMART_ALLOWED_ISSUERS``…); ``create_app({"SMART_CLIENT_ID": …})`` overrides by the same names.
Every default is the safe one: with no client id the app answers a "not set up" page and talks to
nobody; cookies are ``Secure``; frames are allowed only from the registered EHRs' origins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cds_service.config import ConfigError
from cds_service.security.net import is_loopback

ENV_PREFIX = "SMART_"

#: Read-only access to what the assessment reads, in SMART v2 syntax; ``online_access`` asks for a
#: refresh token that lives as long as the user's EHR session. ``launch`` is replaced by
#: ``launch/patient`` in a standalone launch.
DEFAULT_SCOPES = (
    "launch",
    "patient/Patient.rs",
    "patient/Procedure.rs",
    "patient/Observation.rs",
    "patient/Condition.rs",
    "online_access",
)


@dataclass(frozen=True, slots=True)
class SmartSettings:
    """All SMART app settings. Environment variable = ``SMART_`` + the field name in upper case."""

    #: The client id the EHR registered for this app; empty = the app is not set up.
    client_id: str = ""
    #: Set for a confidential client (HTTP Basic at the token endpoint); empty = public client.
    client_secret: str = ""
    #: FHIR base URLs (``iss``) of the EHRs allowed to launch the app; nothing else is contacted.
    allowed_issuers: tuple[str, ...] = ()
    #: FHIR base for a standalone launch (``/smart/launch`` without parameters); empty = none.
    standalone_fhir_base: str = ""
    #: The registered redirect URI; empty = CDS_PUBLIC_BASE_URL (else the request host) + callback.
    redirect_url: str = ""
    #: Scopes asked for (space or comma separated).
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    #: ``Secure`` on the session cookie. Only tests over plain http on loopback turn it off.
    cookie_secure: bool = True
    #: CSP ``frame-ancestors`` sources; empty = ``'self'`` plus the origins of the allowed issuers.
    frame_ancestors: tuple[str, ...] = ()
    #: A browser session (and the access it holds) ends after this long without a request.
    session_idle_seconds: int = 3600
    #: Time budget for the FHIR queries behind one page, and the connect timeout of each.
    fhir_budget_seconds: float = 5.0
    fhir_connect_timeout_seconds: float = 1.0
    #: Timeout of a discovery or token request to the EHR's authorization server.
    http_timeout_seconds: float = 5.0
    #: How long a ``.well-known/smart-configuration`` document is reused.
    discovery_ttl_seconds: int = 3600

    @property
    def enabled(self) -> bool:
        return bool(self.client_id)

    @property
    def confidential(self) -> bool:
        return bool(self.client_secret)

    @property
    def fhir_bases(self) -> tuple[str, ...]:
        """Every FHIR base the app may contact: the allowed issuers and the standalone base."""
        bases = self.allowed_issuers
        if self.standalone_fhir_base and self.standalone_fhir_base not in bases:
            bases += (self.standalone_fhir_base,)
        return bases

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SmartSettings:
        values = {
            f.name: environ[ENV_PREFIX + f.name.upper()]
            for f in dataclasses.fields(cls)
            if ENV_PREFIX + f.name.upper() in environ
        }
        return cls()._replace(values)

    def with_overrides(self, overrides: Mapping[str, Any]) -> SmartSettings:
        """Apply ``SMART_*`` keys of ``create_app(config)``; other keys are not ours."""
        names = {ENV_PREFIX + f.name.upper(): f.name for f in dataclasses.fields(self)}
        return self._replace({names[k]: v for k, v in overrides.items() if k in names})

    def check(self, allow_loopback_http: bool) -> None:
        """Refuse settings that would send secrets or tokens over plain http (ConfigError)."""
        for name, url in [("SMART_ALLOWED_ISSUERS", u) for u in self.allowed_issuers] + [
            ("SMART_STANDALONE_FHIR_BASE", self.standalone_fhir_base),
            ("SMART_REDIRECT_URL", self.redirect_url),
        ]:
            if url:
                _check_url(name, url, allow_loopback_http)
        if self.enabled and not self.fhir_bases:
            raise ConfigError(
                "SMART_CLIENT_ID is set but no EHR may launch the app: set SMART_ALLOWED_ISSUERS "
                "or SMART_STANDALONE_FHIR_BASE"
            )

    def _replace(self, values: Mapping[str, Any]) -> SmartSettings:
        parsed: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in values:
                parsed[f.name] = _parse(f.name, values[f.name], str(f.type))
        out = dataclasses.replace(self, **parsed)
        return dataclasses.replace(
            out,
            allowed_issuers=tuple(_base(u) for u in out.allowed_issuers),
            standalone_fhir_base=_base(out.standalone_fhir_base),
        )


def _base(url: str) -> str:
    """A FHIR base as the app compares it: no trailing slash."""
    return url.strip().rstrip("/")


def _check_url(name: str, url: str, allow_loopback_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and allow_loopback_http and is_loopback(parts.hostname):
        return
    raise ConfigError(
        f"{name}: {url!r} must be an https URL (http only on loopback in development mode)"
    )


def _parse(name: str, value: Any, kind: str) -> Any:
    env_name = ENV_PREFIX + name.upper()
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind.startswith("tuple"):
            items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{env_name}: cannot use {value!r} ({kind} expected)") from exc
    return str(value).strip()
