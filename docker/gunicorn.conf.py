"""gunicorn settings for the hfs-cds image (``gunicorn --config gunicorn.conf.py``).

Everything comes from the environment, with the image's defaults:

* ``HOST`` (0.0.0.0) and ``PORT`` (8080): where to listen;
* ``WEB_CONCURRENCY`` (2) worker processes, ``GUNICORN_THREADS`` (4) threads each. Scoring is
  CPU-bound and one process is held by Python's GIL, so processes give throughput (one per core);
  a hook call may wait up to ``CDS_FHIR_BUDGET_SECONDS`` on the EHR's FHIR server, so a few
  threads keep a worker free meanwhile (more threads only add GIL hand-offs: the benchmark's worker
  CPU per hook call doubled at eight). The workers, and every replica on the same database, share
  the JWT replay cache and the SMART sessions through the store's database (``CDS_DATABASE_URL``,
  else the embedded SQLite file; see :mod:`cds_service.store.state`); without
  ``SMART_SESSION_KEY`` the sessions' sealing key is made once in the master, hence ``preload_app``;
* ``GUNICORN_TIMEOUT`` (30 s) per request and ``GUNICORN_GRACEFUL_TIMEOUT`` (30 s) to finish
  requests in flight on SIGTERM (``docker stop`` waits 10 s unless told ``--time 35``);
* ``CDS_LOG_LEVEL`` (INFO).

One access line per request; a hook call's line also names the service, the assessment status,
the number of cards and the hookInstance.

The app is loaded once in the master before the workers fork (``preload_app``): the model card and
the trust list are read and checked once, and a bad one stops the container at start-up instead of
failing each worker. Logs are JSON lines on stderr (the service's own formatter), access lines
included, with the path but never the query string.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from gunicorn.glogging import Logger

from cds_service.logging_setup import JsonFormatter, skip_unused_record_fields


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


class AccessJsonFormatter(logging.Formatter):
    """One JSON object per request: method, path without query, status, size, time, request id."""

    def format(self, record: logging.LogRecord) -> str:
        atoms: Mapping[str, Any] = record.args if isinstance(record.args, Mapping) else {}
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "method": atoms.get("m"),
            "path": atoms.get("U"),  # PATH_INFO: the query string is never logged
            "status": _number(atoms.get("s")),
            "bytes": _number(atoms.get("B")),
            "duration_ms": _number(atoms.get("M")),
            "request_id": atoms.get("{x-request-id}o"),
            "remote": atoms.get("h"),
        }
        # A hook call's outcome (service, status, cards, hookInstance), left in the WSGI environ.
        outcome = atoms.get("{hfs_cds.outcome}e")
        if isinstance(outcome, Mapping):
            # "status" on this line is the HTTP status; the hook's is the assessment's status.
            line.update({("assessment" if k == "status" else k): v for k, v in outcome.items()})
        kept = {k: v for k, v in line.items() if v not in (None, "-")}
        return orjson.dumps(kept, default=str).decode()


class AccessLogger(Logger):
    """gunicorn's logger, with only the atoms :class:`AccessJsonFormatter` writes.

    gunicorn's own ``atoms()`` builds some 30 entries per request, every request and response
    header and every WSGI environ key among them, then wraps them in a case-insensitive mapping:
    7% of a hook call's worker time in the benchmark (S2), for a line that keeps eight of them.
    """

    def atoms(
        self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: Any
    ) -> dict[str, Any]:
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        request_id = next((v for k, v in resp.headers if k.lower() == "x-request-id"), None)
        return {
            "h": environ.get("REMOTE_ADDR"),
            "m": environ.get("REQUEST_METHOD"),
            "U": environ.get("PATH_INFO"),
            "s": status,
            "B": getattr(resp, "sent", None),
            "M": request_time.seconds * 1000 + request_time.microseconds // 1000,
            "{x-request-id}o": request_id,
            "{hfs_cds.outcome}e": environ.get("hfs_cds.outcome"),
        }

    def access(self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: Any) -> None:
        # Always on here (accesslog is set below); gunicorn < 27 has no access_log_enabled to ask.
        try:  # the mapping goes to AccessJsonFormatter as the record's args, as gunicorn's does
            self.access_log.info(
                self.cfg.access_log_format, self.atoms(resp, req, environ, request_time)
            )
        except Exception:
            self.exception("access log line not written")


def _number(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _refuse_bad_configuration() -> str:
    """Check the configuration as the app will (same code), before gunicorn starts; the log level.

    A missing trust list, a bad model card or an unreachable database then ends start-up with one
    JSON line naming the problem instead of a traceback from inside gunicorn.
    """
    from cds_service.config import ConfigError, load_settings
    from cds_service.model import ModelCardError
    from cds_service.runtime import Runtime
    from cds_service.store import StoreError
    from fhir_mappings import ValueSetError

    try:
        settings = load_settings()
        Runtime.build(settings).close()
    except (ConfigError, ModelCardError, ValueSetError, StoreError) as exc:
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "CRITICAL",
            "logger": "hfs_cds.startup",
            "message": f"refusing to start: {exc}",
        }
        print(json.dumps(line), file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    return settings.log_level


def pre_fork(server: Any, worker: Any) -> None:
    """Move the preloaded app's objects out of the garbage collector's reach before forking.

    Otherwise every full collection in a worker walks the whole inherited heap (and touches its
    pages, undoing copy-on-write sharing). Measured on the heavy-prefetch benchmark (S4): p99
    34 -> 7 ms and 40% more requests per second. See the ``gc.freeze`` documentation.
    """
    gc.freeze()


wsgi_app = "cds_service.app:create_app()"
bind = [f"{os.environ.get('HOST', '0.0.0.0')}:{_int_env('PORT', 8080)}"]
workers = _int_env("WEB_CONCURRENCY", 2)
# Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads connections over the
# workers. On one shared socket the first idle worker accepts a whole burst, and EHRs keep their
# connections open: one worker could serve them all while the others idle.
reuse_port = True
worker_class = "gthread"
threads = _int_env("GUNICORN_THREADS", 4)
preload_app = True
timeout = _int_env("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int_env("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = 5
# One header line may hold "Authorization: Bearer " and a JWT of up to 16 KiB, the longest the
# service reads (security/ehr_auth.py); gunicorn's default (8190 bytes) refused half of that range.
limit_request_field_size = 20 * 1024
# Worker heartbeats on tmpfs (a container's /tmp may be a slow overlay or read-only).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn >= 25.1 opens a control socket under $HOME by default; the image user has no home.
control_socket_disable = True

_level = _refuse_bad_configuration()
skip_unused_record_fields()
loglevel = _level.lower()
accesslog = "-"
logger_class = AccessLogger
access_log_format = "%(m)s %(U)s %(s)s"  # message text only; AccessJsonFormatter writes the line
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": JsonFormatter},
        "access": {"()": AccessJsonFormatter},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        },
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stderr",
        },
    },
    "root": {"level": _level, "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": _level, "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        # urllib3 logs full request URLs (FHIR searches carry patient ids) at DEBUG.
        "urllib3": {"level": "WARNING"},
    },
}
