"""The sandbox tools' FHIR server: a base URL and token over the one FHIR client, in CLI words.

The loader and the smoke test talk to FHIR servers we do not control (public sandboxes, a vendor's
test server, HAPI in Docker) through :class:`cds_service.fhir.FhirClient`. Every failure a user can
fix (server down, slow, wrong URL, token refused, an HTML page instead of FHIR) becomes a
:class:`SandboxError` whose message says what happened and what to try. Tokens never appear in
messages.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cds_service.fhir import FhirAnswer, FhirClient, FhirError, FhirTimeout, FhirUnreachable
from fhir_mappings import Resource

#: Pages of one search the tools follow before saying so.
MAX_PAGES = 50


class SandboxError(Exception):
    """A problem with the command line, a file or a server; printed without a traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a load or a smoke run; ``partial`` is the summary of what was done so far."""

    def __init__(self, partial: str) -> None:
        super().__init__(partial)
        self.partial = partial


@dataclass
class FhirEndpoint:
    """A FHIR server base URL with an optional bearer token and a per-request time budget."""

    base: str
    token: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    client: FhirClient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SandboxError(f"--fhir {self.base!r} is not an http(s) FHIR base URL")
        self.base = self.base.rstrip("/")
        self.client = FhirClient(
            budget_seconds=self.timeout,
            connect_timeout_seconds=self.timeout,
            max_pages=MAX_PAGES,
            max_workers=1,
        )

    def close(self) -> None:
        self.client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FhirAnswer:
        """Send one request (``path`` relative to the base); SandboxError for what retrying
        cannot fix."""
        url = f"{self.base}/{path.lstrip('/')}" if path else self.base
        where = f"{method} {url.split('?', 1)[0]}"  # without the query: identifier lists are long
        try:
            answer = self.client.request(method, url, self.token, body=body, headers=headers)
        except FhirError as exc:
            raise self._error(exc, where) from None
        if answer.status in (401, 403) or 300 <= answer.status < 400:
            raise self._error(FhirError("", answer.status), where, answer.headers)
        if answer.problem:
            shown = answer.headers.get("Content-Type", "").split(";")[0].strip()
            raise SandboxError(
                f"{where} answered HTTP {answer.status} with {shown or 'no content type'}, not "
                "FHIR JSON: is this a FHIR base URL (for HAPI usually .../fhir or .../baseR4)?"
            )
        return answer

    def pages(self, first: str | Resource) -> Iterator[Resource]:
        """Each Bundle page of a search (a query relative to the base, or its first page), by
        the one paging rule. FhirError with the status when the server cannot run the search;
        SandboxError for the rest."""
        try:
            yield from self.client.pages(self.base, first, self.token)
        except FhirError as exc:
            if exc.status is not None and exc.status not in (401, 403):
                raise
            where = f"GET {self.base}/{first.split('?')[0] if isinstance(first, str) else '...'}"
            raise self._error(exc, where) from None

    def _error(
        self, exc: FhirError, where: str, headers: Mapping[str, str] | None = None
    ) -> SandboxError:
        if isinstance(exc, FhirTimeout):
            return SandboxError(
                f"the FHIR server at {self.base} did not answer {where} within {self.timeout:g} s "
                "(raise --timeout for a slow server)"
            )
        if isinstance(exc, FhirUnreachable):
            return SandboxError(
                f"cannot reach the FHIR server at {self.base} ({exc.cause}); check the URL and "
                "that the server is running"
            )
        if exc.status == 401:
            return SandboxError(
                f"the FHIR server answered 401 Unauthorized to {where}: "
                + ("it refused the token" if self.token else "it needs a bearer token (--token)")
            )
        if exc.status == 403:
            return SandboxError(
                f"the FHIR server answered 403 Forbidden to {where}: the token (or anonymous "
                "access) does not allow this; some public sandboxes are read-only"
            )
        if exc.status is not None and 300 <= exc.status < 400:
            return SandboxError(
                f"the FHIR server redirected {where} to {(headers or {}).get('Location', '?')}; "
                "use the final base URL (redirects are not followed)"
            )
        return SandboxError(f"{where} failed: {exc}")


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


__all__ = ["FhirEndpoint", "SandboxError", "wait_for_metadata"]
