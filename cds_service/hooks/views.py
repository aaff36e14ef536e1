"""The CDS Hooks HTTP endpoints: discovery and one POST endpoint per service id."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, cast

import orjson
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from cds_service.assessment import Assessment, Status
from cds_service.gather.prefetch import PrefetchUnavailable, resolve_prefetch
from cds_service.hooks.cards import CardContext, build_cards
from cds_service.hooks.errors import (
    AuditUnavailable,
    FeedbackNotStored,
    HookError,
    InvalidHookRequest,
    UnknownService,
    UnsupportedMediaType,
    outcome_response,
)
from cds_service.hooks.feedback import InvalidFeedback, parse_feedback, refusal
from cds_service.hooks.relevance import is_relevant
from cds_service.hooks.request import parse_hook_request
from cds_service.hooks.services import HookServices
from cds_service.i18n import Locale
from cds_service.logging_setup import plain_token
from cds_service.runtime import Runtime
from cds_service.security import ReplayCheckUnavailable
from cds_service.security.ehr_auth import AuthenticationError, VerifiedClient
from cds_service.store import FeedbackResult, StoreError, audit_record_from, inputs_key
from cds_service.store.feedback import (
    DEFAULT_POLICY,
    CardNotIssued,
    FeedbackEntry,
    FeedbackRefused,
)
from fhir_mappings.orders import drafts_follow_up, follow_up_ordered

log = logging.getLogger(__name__)
bp = Blueprint("cds_hooks", __name__)

#: WSGI environ key under which a hook call leaves its outcome for the access log line.
OUTCOME_ENVIRON_KEY = "hfs_cds.outcome"
#: Seconds between looks for a card another replica may still be writing (1.5 s in all).
_UNKNOWN_CARD_WAITS = (0.1, 0.2, 0.4, 0.8)
#: Feedback this recent on a card not in the audit trail is "not there yet" (503), older "not ours"
#: (422): another replica's record may wait that long in its spool after a database fault.
_RECENT_OUTCOME = timedelta(minutes=15)
EXTENSION = "hfs_cds_hooks"


def init_hooks(app: Flask, app_launch_path: str | None) -> None:
    """Mount the CDS Hooks endpoints on an app whose runtime is built. ``app_launch_path`` is the
    SMART app's launch path (linked from cards on the public base), None without the app."""
    runtime: Runtime = app.extensions["hfs_cds"]
    app.extensions[EXTENSION] = HookServices.build(runtime.assessor.value_sets, app_launch_path)
    app.register_blueprint(bp)


def _runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["hfs_cds"]
    return runtime


def _hooks() -> HookServices:
    hooks: HookServices = current_app.extensions[EXTENSION]
    return hooks


@bp.before_request
def authenticate_ehr() -> Response | None:
    """Every call but the CORS preflight must carry a valid JWT from a trusted EHR."""
    authenticator = _runtime().authenticator
    g.ehr_client = None
    if authenticator is None or request.method == "OPTIONS":
        return None
    try:
        g.ehr_client = authenticator.authenticate(
            request.headers.get("Authorization"), _endpoint_audience()
        )
    except AuthenticationError as exc:
        log.warning("EHR authentication failed: %s", exc.reason)
        return Response(status=401, headers={"WWW-Authenticate": "Bearer"})
    except ReplayCheckUnavailable as exc:
        # The token may be valid: never a 401. Nothing was accepted; the EHR may retry.
        log.error("EHR authentication not possible: %s", exc.reason)
        response = outcome_response(
            503, "the JWT replay check is unavailable; retry later", code="transient"
        )
        response.headers["Retry-After"] = "1"
        return response
    return None


def _endpoint_audience() -> str:
    """The URL the EHR called, from the configured public base (a proxy may rewrite request.url)."""
    return _public_url(request.path)


def _public_url(path: str) -> str:
    """An absolute URL of this service, on the configured public base when there is one."""
    base = _runtime().settings.public_base_url or request.host_url
    return base.rstrip("/") + path


def _model_card_url() -> str | None:
    """The public model-card page for the card's link: only on an https base (or in development
    mode), since a clinician's browser cannot follow an internal http address behind a proxy."""
    url = _public_url("/model-card")
    return url if url.startswith("https://") or _runtime().settings.dev_mode else None


def _locale(ehr: VerifiedClient | None) -> Locale:
    """The calling EHR's language from its trust-list entry, else CDS_LANGUAGE (issue 18); both
    were normalized to locale names when they were read at start-up."""
    language = ehr.language if ehr is not None and ehr.language else _runtime().settings.language
    return cast(Locale, language)


@bp.get("/cds-services")
def discovery() -> Response:
    # Built once at start-up: discovery is static and called often.
    return Response(_hooks().discovery_json, mimetype="application/json")


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    runtime, hooks = _runtime(), _hooks()
    service = hooks.services.get(service_id)
    if service is None:
        raise UnknownService(f"no CDS service with id '{service_id[:64]}'")
    if not runtime.audit.can_keep:  # every card shown has its audit record (issue 14)
        raise AuditUnavailable(
            "the audit trail cannot be written now (database and local spool both unavailable), "
            "so no card is shown; retry later"
        )
    hook_request = parse_hook_request(_json_body(), service)
    g.hook_instance = plain_token(hook_request.hook_instance) or "not-a-plain-token"
    ehr = g.ehr_client
    auth = hook_request.fhir_authorization
    resources = resolve_prefetch(
        service.prefetch,
        hook_request.prefetch,
        hook_request.context,
        fhir_server=hook_request.fhir_server,
        token=auth.access_token if auth else None,
        client=runtime.fhir_client,
        policy=runtime.fetch_policy,
        optional_keys=service.optional_prefetch,
        issuer_fhir_servers=ehr.fhir_servers if ehr else (),
        issuer=ehr.iss if ehr else None,
    )
    assessor = runtime.assessor
    assessment = assessor.assess(
        resources,
        hook_request.patient_id,
        as_of=runtime.clock(),
        fhir_server=hook_request.fhir_server,  # another server's Patient/x is not this patient
    )
    context = hook_request.context
    issuer, tenant = (ehr.iss, ehr.tenant) if ehr else (None, None)
    # For suppression and the audit; only a patient who gets a card has one (most charts don't).
    key = (
        inputs_key(assessment, issuer=issuer, tenant=tenant)
        if assessment.status is not Status.NOT_APPLICABLE
        else ""
    )
    follow_up_codes = assessor.value_sets.follow_up_order
    # Alert fatigue (clinical-presentation.md §4): workflow hooks speak only when relevant, and
    # patient-view stays silent after the clinician acted on a card for the same inputs.
    silenced = None
    if not is_relevant(
        hook_request.hook,
        context,
        assessment.inputs.ablation,
        assessment.as_of,
        assessor.card.alerting.post_ablation_window_days,
        follow_up_codes,
    ):
        silenced = "not-relevant"
    elif service.hook == "patient-view" and _acted_on(runtime, assessment, key, issuer, tenant):
        silenced = "acted-on"
    cards = (
        []
        if silenced
        else build_cards(
            assessment,
            CardContext(
                patient_id=hook_request.patient_id,
                user_id=context.get("userId"),
                encounter_id=context.get("encounterId"),
                app_launch_url=_public_url(path) if (path := hooks.app_launch_path) else None,
                # On record, or being signed right now (order-sign's draftOrders).
                follow_up_ordered=follow_up_ordered(
                    resources, hook_request.patient_id, follow_up_codes
                )
                or drafts_follow_up(context.get("draftOrders"), follow_up_codes),
                model_card_url=_model_card_url(),
                locale=_locale(ehr),
            ),
        )
    )
    for card in cards:  # queued for a background writer: the response does not wait for the disk
        runtime.audit.submit(
            audit_record_from(
                assessment,
                card,
                service_id=service.id,
                hook=hook_request.hook,
                hook_instance=hook_request.hook_instance,
                issuer=issuer,
                tenant=tenant,
                inputs_key=key,
            )
        )
    outcome = {
        "service": service.id,
        "status": assessment.status.value,
        "cards": len(cards),
        "hook_instance": g.hook_instance,
    }
    if silenced:
        outcome["silenced"] = silenced
    # Under gunicorn the access line carries the outcome (one line per call: a second line cost
    # a measurable share of a loaded worker); other servers see it at DEBUG.
    request.environ[OUTCOME_ENVIRON_KEY] = outcome
    log.debug("hook answered", extra=outcome)
    return Response(orjson.dumps({"cards": cards}), mimetype="application/json")


def _acted_on(
    runtime: Runtime, assessment: Assessment, key: str, issuer: str | None, tenant: str | None
) -> bool:
    """Feedback on a card with these inputs within the suppression period.

    Answered from the process's index of recent actions (a dict lookup; the store is read at most
    once a second, see :mod:`cds_service.store.recent_actions`). Skipped when suppression is off
    or no card would be shown. A store failure shows the card unless feedback read before says
    otherwise: an alert repeated once too often is better than one hidden by an outage.
    """
    days = runtime.assessor.card.alerting.suppress_after_feedback_days
    if days <= 0 or assessment.status not in (Status.SCORED, Status.NOT_SCORED):
        return False
    try:
        return runtime.recent_actions.acted_on_since(
            key,
            assessment.as_of - timedelta(days=days),
            issuer=issuer,
            tenant=tenant,
            now=assessment.as_of,
        )
    except Exception as exc:  # any failure at all: never hide a card because of the store
        log.warning("feedback suppression check failed, card shown: %s", type(exc).__name__)
        return False


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    """CDS Hooks feedback: stored durably (and idempotently) before the 200."""
    runtime = _runtime()
    if service_id not in _hooks().services:
        raise UnknownService(f"no CDS service with id '{service_id[:64]}'")
    try:
        entries = parse_feedback(_json_body())
    except InvalidFeedback as exc:
        raise InvalidHookRequest(str(exc)) from exc
    ehr = g.ehr_client
    # Feedback can follow its card within the writer's linger time: let queued audit records land
    # first so the card is recognised (feedback is rare; the wait is bounded and usually nil).
    # A record waiting in the spool (the database refused it) is not in the audit trail yet either.
    caught_up = runtime.audit.flush(timeout=1.0) and not runtime.audit.stats.spool_bytes
    try:
        result = _save_feedback(runtime, service_id, entries, ehr)
    except FeedbackRefused as exc:  # nothing was stored; the answer says why (hooks/feedback.py)
        if isinstance(exc, CardNotIssued) and _recent(entries[exc.index], runtime.clock()):
            # A card acted on minutes ago may have been answered by another replica whose record
            # still waits (its queue, or its spool until the database takes writes again): say
            # "send it again", not a 422 that loses the feedback for good.
            caught_up = False
        refused = refusal(exc, audit_caught_up=caught_up)
        log.warning("feedback refused: %s %s", refused.status, type(exc).__name__)
        response = outcome_response(refused.status, refused.diagnostics, refused.issue_code)
        response.headers.update(refused.headers)
        return response
    except StoreError as exc:
        log.error("feedback not stored: %s", type(exc).__name__)
        raise FeedbackNotStored(
            "feedback could not be stored now; nothing was kept, send it again"
        ) from exc
    # This worker silences the next patient-view at once; other workers within a second.
    runtime.recent_actions.force_refresh(runtime.clock())
    log.info("feedback stored", extra={"service": service_id, "cards": result.received})
    return Response(
        orjson.dumps(
            {
                "stored": result.stored,
                "duplicates": result.duplicates,
                "unknownCards": result.unknown_cards,
            }
        ),
        mimetype="application/json",
    )


def _recent(entry: FeedbackEntry, now: datetime) -> bool:
    return entry.outcome_at >= now - _RECENT_OUTCOME


def _save_feedback(
    runtime: Runtime, service_id: str, entries: list[FeedbackEntry], ehr: VerifiedClient | None
) -> FeedbackResult:
    """Store the feedback; a card unknown yet is looked for again for up to 1.5 s.

    Behind a load balancer the card may have been answered by another replica moments ago, its
    audit record still in that replica's writer queue (it lingers 50 ms, then commits). Refused
    feedback stores nothing, so asking again is safe; the EHR never resends a 422.
    """
    for wait in (*_UNKNOWN_CARD_WAITS, None):
        try:
            return runtime.store.save_feedback(
                service_id,
                entries,
                received_at=runtime.clock(),  # the app's one "now" (suppression counts from it)
                issuer=ehr.iss if ehr else None,
                tenant=ehr.tenant if ehr else None,
                policy=DEFAULT_POLICY,  # only cards issued to this EHR; bounded volume (issue 15)
            )
        except CardNotIssued:
            if wait is None:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


@bp.errorhandler(HookError)
def hook_error(error: HookError) -> Response:
    log.info("hook call refused: %s %s", error.status, error.diagnostics)
    return outcome_response(error.status, error.diagnostics, error.issue_code)


@bp.errorhandler(PrefetchUnavailable)
def prefetch_unavailable(error: PrefetchUnavailable) -> Response:
    # The EHR shows no card for a 412, which a clinician cannot tell from "nothing to say":
    # make it visible to operators.
    log.warning(
        "hook call answered 412, data could not be obtained (no card shown): %s",
        error,
        extra={"hook_instance": g.get("hook_instance", "-")},
    )
    return outcome_response(412, str(error))


@bp.after_request
def cors(response: Response) -> Response:
    """CORS on every CDS Hooks answer, preflight included (browser EHRs and the sandbox need it)."""
    origins = _runtime().settings.cors_origins
    origin = request.headers.get("Origin")
    if "*" in origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.vary.add("Origin")
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
    response.headers["Access-Control-Max-Age"] = "600"
    return response


def _json_body() -> Any:
    if not request.mimetype or not (
        request.mimetype == "application/json" or request.mimetype.endswith("+json")
    ):
        raise UnsupportedMediaType("the request body must be application/json")
    length, limit = request.content_length, request.max_content_length
    if length is not None:
        if limit is not None and length > limit:
            raise RequestEntityTooLarge()
        # The declared length, read straight from the server's stream: werkzeug's get_data wraps
        # it in a LimitedStream read in chunks, 4% of a hook call's worker time (S2, py-spy). A
        # body shorter than it declared is cut JSON, refused below.
        raw = request.environ["wsgi.input"].read(length)
    else:
        raw = request.get_data(cache=False)
        # A body without Content-Length (chunked) is cut at the limit without a word (werkzeug's
        # LimitedStream stops there): one more byte from the server's stream tells a body of
        # exactly the limit from a longer one, which is refused as one with a length would be.
        if limit is not None and len(raw) >= limit and request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    try:
        # orjson: several times faster than json on big prefetch; depth-limited, strict UTF-8.
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidHookRequest("the request body is not valid JSON") from exc
