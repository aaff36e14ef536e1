"""Structured JSON logs with the request id and hookInstance; nothing sensitive by construction.

The service logs ids it generated, service ids, statuses and reasons; never tokens, JWTs, request
bodies or patient data. Third-party loggers that would print request URLs with patient ids
(urllib3 at DEBUG) are held at WARNING.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import g, has_request_context

from cds_service.ids import new_uuid

#: Attributes a log call may add with ``extra=`` that belong in the JSON line.
_EXTRA_FIELDS = ("service", "status", "cards", "hook", "issuer")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def plain_token(value: str | None) -> str | None:
    """``value`` if it is a short plain token (a uuid, an id), else None: safe to log."""
    return value if value and _REQUEST_ID.fullmatch(value) else None


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID when it is a plain token, else a new one (no log injection)."""
    return plain_token(header) or new_uuid().replace("-", "")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; request context is read at format time from ``flask.g``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context():
            for name in ("request_id", "hook_instance"):
                value = g.get(name)
                if value:
                    line[name] = value
        for name in _EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def skip_unused_record_fields() -> None:
    """Stop the logging module gathering what no line here prints: caller frame, thread,
    process and multiprocessing names (the logging HOWTO's "Optimization" settings).

    Looking up the caller walks the stack on every log call, a measurable share of a worker's
    CPU under load.
    """
    logging._srcfile = None  # the documented switch for findCaller
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the whole process (``hfs-cds serve`` and the gunicorn config)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    skip_unused_record_fields()
    quiet_third_party_loggers()


def quiet_third_party_loggers() -> None:
    # urllib3 logs full request URLs (with patient ids in FHIR searches) at DEBUG.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
