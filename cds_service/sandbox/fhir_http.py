"""A small FHIR REST client for the sandbox tools: timeouts, clear errors, never a traceback.

The loader and the smoke test talk to FHIR servers we do not control (public sandboxes, a vendor's
test server, HAPI in Docker). Every failure a user can fix (server down, slow, wrong URL, token
refused, an HTML page instead of FHIR) becomes a :class:`SandboxError` whose message says what
happened and what to try. Tokens never appear in messages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

FHIR_JSON = "application/fhir+json"
_MAX_TEXT = 300


class SandboxError(Exception):
    """A problem with the command line, a file or a server; printed without a traceback."""


@dataclass(frozen=True, slots=True)
class FhirAnswer:
    """One FHIR response: status, the parsed resource (None for an empty body) and headers."""

    status: int
    body: dict[str, Any] | None
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def diagnostics(self) -> str:
        """What an OperationOutcome body says (or the resource type), short and on one line."""
        return outcome_text(self.body)


def outcome_text(body: Any) -> str:
    if not isinstance(body, dict):
        return "no details"
    if body.get("resourceType") != "OperationOutcome":
        return f"a {body.get('resourceType', 'non-FHIR')} resource"
    parts = []
    for issue in body.get("issue") or []:
        if isinstance(issue, dict):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
            if isinstance(text, str) and text.strip():
                parts.append(text.strip())
    text = "; ".join(parts) or "an OperationOutcome without diagnostics"
    return " ".join(text.split())[:_MAX_TEXT]


@dataclass
class FhirEndpoint:
    """A FHIR server base URL with an optional bearer token and a per-request timeout."""

    base: str
    token: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SandboxError(f"--fhir {self.base!r} is not an http(s) FHIR base URL")
        self.base = self.base.rstrip("/")

    def close(self) -> None:
        self.session.close()

    def url(self, path: str) -> str:
        """An absolute URL for a path relative to the base (absolute URLs pass through)."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base}/{path.lstrip('/')}" if path else self.base

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FhirAnswer:
        """Send one request; raises :class:`SandboxError` for what retrying cannot fix."""
        url = self.url(path)
        sent = {"Accept": FHIR_JSON, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = FHIR_JSON
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        where = f"{method} {_shown(url)}"
        try:
            response = self.session.request(
                method,
                url,
                data=None if body is None else json.dumps(body, separators=(",", ":")),
                headers=sent,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            raise SandboxError(
                f"the FHIR server at {self.base} did not answer {where} within {self.timeout:g} s "
                "(raise --timeout for a slow server)"
            ) from None
        except requests.ConnectionError as exc:
            raise SandboxError(
                f"cannot reach the FHIR server at {self.base} ({_reason(exc)}); check the URL and "
                "that the server is running"
            ) from None
        except requests.RequestException as exc:
            raise SandboxError(f"{where} failed: {_reason(exc)}") from None
        if response.status_code == 401:
            raise SandboxError(
                f"the FHIR server answered 401 Unauthorized to {where}: "
                + ("it refused the token" if self.token else "it needs a bearer token (--token)")
            )
        if response.status_code == 403:
            raise SandboxError(
                f"the FHIR server answered 403 Forbidden to {where}: the token (or anonymous "
                "access) does not allow this; some public sandboxes are read-only"
            )
        if 300 <= response.status_code < 400:
            raise SandboxError(
                f"the FHIR server redirected {where} to {response.headers.get('Location', '?')}; "
                "use the final base URL (redirects are not followed)"
            )
        return FhirAnswer(response.status_code, _fhir_body(response, where), response.headers)


def wait_for_metadata(endpoint: FhirEndpoint, wait_seconds: float) -> dict[str, Any]:
    """The server's CapabilityStatement, retrying for up to ``wait_seconds`` while it starts."""
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    while True:
        try:
            answer = endpoint.request("GET", "metadata")
            if (
                answer.ok
                and answer.body
                and answer.body.get("resourceType") == "CapabilityStatement"
            ):
                return answer.body
            problem = SandboxError(
                f"GET {endpoint.base}/metadata answered HTTP {answer.status} with "
                f"{answer.diagnostics()}, not a CapabilityStatement: is {endpoint.base} a FHIR "
                "base URL?"
            )
            retry = answer.status >= 500 or answer.status in (404, 429)
        except SandboxError as exc:
            problem, retry = exc, "cannot reach" in str(exc) or "did not answer" in str(exc)
        if not retry or time.monotonic() >= deadline:
            raise problem
        time.sleep(1.0)


def next_link(bundle: Mapping[str, Any], base: str) -> str | None:
    """The ``next`` link of a searchset, only if it stays on the same server (scheme and host)."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            target = link.get("url")
            if isinstance(target, str):
                a, b = urlsplit(target), urlsplit(base)
                if (a.scheme, a.netloc) == (b.scheme, b.netloc):
                    return target
    return None


def _fhir_body(response: requests.Response, where: str) -> dict[str, Any] | None:
    raw = response.content
    if not raw.strip():
        return None
    ctype = response.headers.get("Content-Type", "")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        shown = ctype.split(";")[0].strip() or "no content type"
        raise SandboxError(
            f"{where} answered HTTP {response.status_code} with {shown}, not FHIR JSON: is this "
            "a FHIR base URL (for HAPI usually .../fhir or .../baseR4)?"
        )
    return data


def _shown(url: str) -> str:
    """The URL without its query (identifier lists can be long)."""
    return url.split("?", 1)[0]


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__


__all__ = [
    "FHIR_JSON",
    "FhirAnswer",
    "FhirEndpoint",
    "SandboxError",
    "next_link",
    "outcome_text",
    "wait_for_metadata",
]
