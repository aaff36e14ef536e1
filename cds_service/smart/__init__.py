"""The SMART-on-FHIR app: launch from the chart or a CDS card, show the recurrence-risk assessment.

``init_smart(app, settings)`` mounts it at ``/smart`` on an app built by ``create_app``, with the
``SMART_*`` section of the service's settings (``settings.smart``) and the app's one
:class:`~cds_service.assessment.Assessor`. Importing this package is cheap; the app itself loads
in :func:`init_smart`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the app's modules load only when it is mounted (see the module docstring)
    from flask import Flask

    from cds_service.config import Settings
    from cds_service.runtime import Runtime
    from cds_service.smart.app_state import SmartRuntime

EXTENSION = "hfs_cds_smart"
URL_PREFIX = "/smart"
LAUNCH_PATH = URL_PREFIX + "/launch"

__all__ = [
    "EXTENSION",
    "LAUNCH_PATH",
    "RedactSmartQueries",
    "init_smart",
    "launch_path",
    "launch_url",
]


def init_smart(app: Flask, settings: Settings) -> None:
    """Mount the SMART app on ``app`` with ``settings.smart`` (idempotent)."""
    if EXTENSION in app.extensions:
        return
    from cds_service.smart.app_state import SmartRuntime
    from cds_service.smart.views import bp

    app.extensions[EXTENSION] = SmartRuntime.build(settings.smart, app.extensions["hfs_cds"])
    app.register_blueprint(bp, url_prefix=URL_PREFIX)
    _redact_request_log()


def launch_path(app: Flask) -> str | None:
    """The launch path for a card's ``smart`` link, or None when the app is not set up."""
    smart: SmartRuntime | None = app.extensions.get(EXTENSION)
    return LAUNCH_PATH if smart is not None and smart.settings.enabled else None


def launch_url(app: Flask, host_url: str | Callable[[], str] | None = None) -> str | None:
    """The absolute launch URL for a card's ``smart`` link, or None when the app is not set up.

    The base is ``CDS_PUBLIC_BASE_URL``, else ``host_url`` (the request's, behind no proxy). A
    callable is only called without a public base URL: deriving ``request.host_url`` is not free
    on the hook's hot path.
    """
    path = launch_path(app)
    if path is None:
        return None
    cds: Runtime = app.extensions["hfs_cds"]
    base = cds.settings.public_base_url or (host_url() if callable(host_url) else host_url)
    base = (base or "").rstrip("/")
    return base + path if base else None


class RedactSmartQueries(logging.Filter):
    """Drops the query string of ``/smart/`` URLs from request-log lines (werkzeug's ``hfs-cds
    serve`` log): the callback's carries the authorization code and ``state``."""

    _URL = re.compile(r"(/smart/[^\s?\"]*)\?[^\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self._URL.sub(r"\1?[redacted]", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._URL.sub(r"\1?[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def _redact_request_log() -> None:
    logger = logging.getLogger("werkzeug")
    if not any(isinstance(f, RedactSmartQueries) for f in logger.filters):
        logger.addFilter(RedactSmartQueries())
