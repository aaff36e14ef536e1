"""The Flask application factory."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from cds_service import __version__
from cds_service.config import Settings, load_settings
from cds_service.hooks.errors import outcome_response
from cds_service.hooks.views import init_hooks
from cds_service.logging_setup import quiet_third_party_loggers, request_id_from
from cds_service.model_card_page import bp as model_card_bp
from cds_service.runtime import Runtime
from cds_service.smart import init_smart, launch_path
from cds_service.store import StoreError

log = logging.getLogger(__name__)

_ISSUE_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """Build the app from settings already read, or from the environment with ``config``
    overriding settings by upper-case name (e.g. ``FHIR_ALLOWLIST``, ``SMART_CLIENT_ID``; see
    :func:`~cds_service.config.load_settings`)."""
    settings = config if isinstance(config, Settings) else load_settings(overrides=config)
    app = Flask(__name__)
    app.config.update(settings.flask)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    runtime = Runtime.build(settings)
    app.extensions["hfs_cds"] = runtime
    init_smart(app, settings)
    init_hooks(app, app_launch_path=launch_path(app))
    app.register_blueprint(model_card_bp)
    quiet_third_party_loggers()

    @app.before_request
    def assign_request_id() -> None:
        g.request_id = request_id_from(request.headers.get("X-Request-ID"))

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        """Liveness: the process answers."""
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        """Readiness: this process can answer hook calls and record every card it shows.

        The model card is loaded (start-up fails otherwise). With the store unreachable, or
        refusing audit records, it is still ready, "degraded": cards are audited to the local
        spool and tokens checked in memory (both shown here, with since when). Not ready (503)
        only when one of those cannot take more: the replay memory is full, or neither the
        database nor the spool takes records.
        """
        card = runtime.assessor.card
        now = time.time()
        body: dict[str, Any] = {
            "software": {"name": "hfs-cds", "version": __version__},
            "model": {"id": card.id, "version": card.version},
        }
        replay = runtime.replay.status(now) if runtime.replay is not None else None
        if replay is not None:
            body["replayCheck"] = replay.to_json(now)
        audit = runtime.audit.stats
        if audit.spooling_since is not None or audit.spool_bytes or not audit.can_keep:
            body["auditSpool"] = {
                "bytes": audit.spool_bytes,
                "spooledRecords": audit.spooled,
                "replayedRecords": audit.replayed,
                "since": _iso(audit.spooling_since),
                "canKeep": audit.can_keep,
            }
        try:
            runtime.store.ping()
            store = runtime.store.backend
        except StoreError:
            store = "unreachable"
        if (replay is not None and replay.full) or not audit.can_keep:
            response = jsonify({"status": "unavailable", "store": store, **body})
            response.status_code = 503
            return response
        spooling = audit.spooling_since is not None or audit.spool_bytes > 0
        status = "degraded" if store == "unreachable" or spooling else "ready"
        return jsonify({"status": status, "store": store, **body})

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        return outcome_response(
            status, error.description or error.name, _ISSUE_CODES.get(status, "processing")
        )

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        # The traceback goes to the log (no request data in it); the client gets no internals.
        log.exception("unhandled error: %s", type(error).__name__)
        return outcome_response(500, "internal error; the service log has the details", "exception")

    if settings.dev_mode:
        log.warning(
            "DEVELOPMENT MODE: development and CDS Hooks sandbox JWT issuers are trusted and http "
            "FHIR servers on loopback are allowed. NEVER use this in production."
        )
    if runtime.authenticator is None:
        log.warning(
            "EHR authentication is OFF (CDS_AUTH_REQUIRED=false): anyone can call the service"
        )
    elif not settings.public_base_url:
        log.warning(
            "CDS_PUBLIC_BASE_URL is not set: JWT audiences are checked against the Host header"
        )
    return app


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
