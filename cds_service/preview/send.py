"""Send one hook request: in process through the app factory, or to a running service.

In process the service runs as ``make run`` runs it (development mode), without JWT checks, on a
throwaway database in a temporary folder: a preview never writes audit records or feedback into
anyone's store, and suppression after feedback never hides its card. Settings from the environment
(``CDS_MODEL_CARD``, ``CDS_FHIR_ALLOWLIST``, ...) still apply, so a preview uses the same model card
and FHIR servers as the service would.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from cds_service.cli_support import CliError
from cds_service.config import load_settings

#: The link base of cards made in process when ``CDS_PUBLIC_BASE_URL`` is not set: where
#: ``make run`` serves (its /model-card page is what the card's model-card link opens).
LOCAL_BASE_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the service answered: status, decoded JSON body (None if not JSON), and where from."""

    status: int
    body: Any
    service_id: str
    hook: str
    where: str  # "in process" or the service URL


def hook_of(request: Mapping[str, Any]) -> str:
    """The request's hook, or a :class:`CliError` saying what the file is instead."""
    hook = request.get("hook")
    if isinstance(hook, str) and hook.strip():
        return hook
    if "feedback" in request:
        raise CliError(
            "this is a CDS Hooks feedback body, not a hook request: there are no cards to show "
            "(POST it to .../cds-services/{id}/feedback, see the examples' README.txt)"
        )
    raise CliError("this is not a CDS Hooks request: it has no 'hook'")


def send_in_process(request: Mapping[str, Any], at: datetime | None = None) -> Answer:
    """The service's answer from an app built here (``at`` pins the service's clock)."""
    from cds_service.app import create_app
    from cds_service.hooks.views import EXTENSION

    hook = hook_of(request)
    with tempfile.TemporaryDirectory(prefix="hfs-cds-preview-") as folder, _quiet():
        overrides: dict[str, Any] = {
            "DEV_MODE": True,
            "AUTH_REQUIRED": False,  # nothing listens: the request comes from this process
            # The embedded database, created in the temporary folder (an empty value is the
            # default: it also sets aside a CDS_DATABASE_URL from the environment).
            "INSTANCE_PATH": folder,
            "DATABASE_URL": "",
        }
        # Read with development mode on, as the app will be: an http FHIR server on loopback
        # in CDS_FHIR_ALLOWLIST (make sandbox's) is then allowed here too.
        if not load_settings(overrides=overrides).public_base_url:
            overrides["PUBLIC_BASE_URL"] = LOCAL_BASE_URL
        if at is not None:
            overrides["CLOCK"] = lambda: at
        app = create_app(overrides)
        try:
            services = app.extensions[EXTENSION].services
            service = _service_for(hook, {s.id: s.hook for s in services.values()}, "in process")
            response = app.test_client().post(
                f"/cds-services/{quote(service, safe='')}", json=request
            )
            body = response.get_json(silent=True)
            return Answer(response.status_code, body, service, hook, "in process")
        finally:
            app.extensions["hfs_cds"].close()


def send_to_service(
    request: Mapping[str, Any],
    url: str,
    *,
    jwt_key: Path | None = None,
    iss: str | None = None,
    timeout: float = 10.0,
) -> Answer:
    """The answer of the service at ``url``: its base, its discovery URL (the service is chosen by
    the request's hook) or one service's URL. Signed by the development issuer, or ``jwt_key``."""
    from cds_service.sandbox.fhir_http import SandboxError
    from cds_service.sandbox.smoke import CdsClient, Service

    hook = hook_of(request)
    discovery, service_id = _split_service_url(url)
    client = CdsClient(discovery, _signer(jwt_key, iss), timeout)
    try:
        if service_id is None:
            offered = {s.id: s for s in client.discover()}
            service_id = _service_for(hook, {i: s.hook for i, s in offered.items()}, url)
            service = offered[service_id]
        else:
            service = Service(service_id, hook, f"{client.discovery_url}/{service_id}", {})
        status, body = client.call(service, request)
    except SandboxError as exc:
        raise CliError(str(exc)) from None
    finally:
        client.close()
    if status == 401:
        raise CliError(
            f"{service.url} answered 401: it does not trust the JWT (a service in development "
            "mode trusts the default signer; otherwise give --jwt-key and --iss)"
        )
    return Answer(status, body, service.id, hook, service.url)


def _split_service_url(url: str) -> tuple[str, str | None]:
    """``(discovery URL, service id or None)`` from a base, discovery or service URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"--service {url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    head, found, tail = path.partition("/cds-services")
    origin = f"{parts.scheme}://{parts.netloc}"
    if not found:
        return f"{origin}{path}/cds-services", None
    service_id = tail.strip("/") or None
    if service_id and "/" in service_id:
        raise CliError(f"--service {url!r}: give the service's URL, not one below it")
    return f"{origin}{head}/cds-services", service_id


def _signer(jwt_key: Path | None, iss: str | None) -> Any:
    from cds_service.security.trusted_issuers import SigningKey, TrustConfigError, development_key

    if jwt_key is None:
        if iss:
            raise CliError("--iss goes with --jwt-key")
        return development_key()
    if not iss:
        raise CliError("--jwt-key needs --iss (the issuer the service trusts)")
    try:
        return SigningKey.from_file(jwt_key, iss)
    except TrustConfigError as exc:
        raise CliError(f"--jwt-key {exc}") from None


def _service_for(hook: str, hooks_by_id: Mapping[str, str], where: str) -> str:
    """The id of the service for ``hook`` (the first, as the sandbox would show only one)."""
    for service_id, offered in hooks_by_id.items():
        if offered == hook:
            return service_id
    shown = hook[:64] + ("..." if len(hook) > 64 else "")
    raise CliError(
        f"the service ({where}) offers no {shown!r} hook; it offers "
        f"{', '.join(sorted(set(hooks_by_id.values())))}"
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """The in-process service's start-up warnings (development mode, authentication off) are about
    this throwaway app, not the user's service: only errors reach the terminal."""
    logger = logging.getLogger("cds_service")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
