"""Which FHIR servers may be contacted, and which URLs lie under a base (the one paging rule).

One http rule everywhere: an http URL is allowed only for a loopback host in development mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cds_service.security.net import is_loopback

_SEPARATORS = re.compile(r"[\s,]+")


def parse_allowlist(raw: str, allow_loopback_http: bool) -> tuple[str, ...]:
    """The bases of an allowlist string, comma and/or whitespace separated, without trailing
    slashes; ValueError naming the first entry :func:`base_problem` refuses."""
    bases = tuple(part.rstrip("/") for part in _SEPARATORS.split(raw) if part)
    for base in bases:
        if (why := base_problem(base, allow_loopback_http)) is not None:
            raise ValueError(f"{base!r} {why}")
    return bases


def base_problem(url: str, allow_loopback_http: bool) -> str | None:
    """Why the service may not send a token to ``url``, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an absolute http(s) URL"
    if parts.username or parts.password:
        return "must not carry credentials"
    if parts.scheme == "http" and not (allow_loopback_http and is_loopback(parts.hostname)):
        return "must be https (http only on loopback in development mode)"
    return None


def outside(url: str, base: str) -> str | None:
    """Why ``url`` is not under ``base``, or None. Scheme and host compare case-insensitively;
    port and path prefix exactly (path segments: ``/fhir`` covers ``/fhir/x``, not ``/fhirx``)."""
    target, allowed = urlsplit(url), urlsplit(base.rstrip("/"))
    try:
        same_port = target.port == allowed.port
    except ValueError:
        return "not a valid URL"
    if (target.scheme, target.hostname) != (allowed.scheme, allowed.hostname) or not same_port:
        return f"another server ({target.scheme}://{target.netloc.rpartition('@')[2]})"
    if target.username or target.password:
        return "credentials in the URL"
    prefix = allowed.path.rstrip("/")
    if target.path != prefix and not target.path.startswith(prefix + "/"):
        return f"outside the base path {prefix or '/'}"
    return None


@dataclass(frozen=True, slots=True)
class FhirAllowlist:
    """Base-URL prefixes the service may query; http only on loopback in development mode."""

    bases: tuple[str, ...]
    allow_loopback_http: bool = False

    def permits(self, url: str, extra_bases: tuple[str, ...] = ()) -> bool:
        """Is ``url`` under an allowed base (the list, or ``extra_bases`` for this caller)?"""
        if base_problem(url, self.allow_loopback_http) is not None:
            return False
        return any(outside(url, base) is None for base in self.bases + extra_bases)
