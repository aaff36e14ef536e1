"""The SMART app's HTTP endpoints (blueprint ``smart``, mounted at ``/smart``).

``/smart/launch``        EHR launch (``iss`` + ``launch``) or, without parameters, standalone launch
``/smart/callback``      the registered redirect URI: checks ``state``, exchanges the code
``/smart/app/<ref>/``    the risk page for the launch ``ref`` (``?minutes=&hb=`` adds a what-if)
``/smart/app/<ref>/assessment.json``   the same assessment as JSON (as in the card's extension)
``/smart/app/<ref>/what-if.json``      risks for typed-in inputs (the page's script uses it)

Every failure renders a page that says what happened and what to do; nothing sensitive is logged.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any, cast

from flask import (
    Blueprint,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from cds_service.assessment import Status
from cds_service.gather.app_context import CardInputs, card_inputs
from cds_service.i18n import Locale, negotiate, normalize, warm_up
from cds_service.i18n.jinja import install as install_i18n
from cds_service.i18n.jinja import template_context
from cds_service.presentation import RANGE_STATEMENT, Statement, present
from cds_service.presentation.problems import problem_texts
from cds_service.presentation.risk_assessment import risk_assessment
from cds_service.presentation.wording import wording
from cds_service.smart.app_state import SmartRuntime
from cds_service.smart.chart import line_path
from cds_service.smart.errors import HTTP_TO_DO, Failure, SmartError
from cds_service.smart.oauth import TokenResponse, missing_access, new_pkce, new_state
from cds_service.smart.page import (
    ROMAN,
    CardNotice,
    WhatIfInput,
    card_notice,
    chart_for,
    display_json,
    input_rows,
    parse_what_if,
    what_if,
    what_if_json_body,
)
from cds_service.smart.record import FhirUnauthorized, PatientRecord, last_updated
from cds_service.smart.sessions import (
    LaunchContext,
    PendingAuthorization,
    RefreshedTokens,
    new_ref,
)
from cds_service.store.errors import StoreUnavailable

log = logging.getLogger(__name__)

bp = Blueprint(
    "smart",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: The session cookie over http (development and tests on loopback: ``SMART_COOKIE_SECURE=false``).
COOKIE = "hfs_smart_sid"
#: The session cookie when it is ``Secure`` (production): the ``__Host-`` prefix makes browsers
#: accept it only from this host over https, with ``Path=/`` and no ``Domain``, so a sibling
#: subdomain or a plain-http response cannot plant or overwrite it (session fixation).
SECURE_COOKIE = "__Host-" + COOKIE
#: A token this close to its expiry is refreshed before use.
EXPIRY_MARGIN = timedelta(seconds=60)
_MAX_PARAM = 2048
#: The language the EHR launched the app in (the launch's ``locale`` parameter), for the pages that
#: follow the OAuth round trip; not sensitive, same attributes as the session cookie.
LANG_COOKIE = "hfs_smart_lang"
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@bp.record_once
def _jinja_i18n(state: Any) -> None:
    """At app creation (create_app always registers this blueprint): the templates' i18n, and
    every catalogue loaded now, so a broken install stops start-up, not a patient's page."""
    install_i18n(state.app.jinja_env)
    warm_up()


def _smart() -> SmartRuntime:
    runtime: SmartRuntime = current_app.extensions["hfs_cds_smart"]
    return runtime


# -- launch ------------------------------------------------------------------------------------------


@bp.get("/launch")
def launch() -> Response:
    """Start an authorization: EHR launch with ``iss`` and ``launch``, else standalone."""
    smart = _smart()
    settings = smart.settings
    if not settings.enabled:
        raise SmartError(Failure.NOT_CONFIGURED)
    iss, launch_id = request.args.get("iss"), request.args.get("launch")
    if iss or launch_id:
        if not iss or not launch_id:
            raise SmartError(Failure.LAUNCH_PARAMETERS, "both iss and launch are required")
        if len(iss) > _MAX_PARAM or len(launch_id) > _MAX_PARAM:
            raise SmartError(Failure.LAUNCH_PARAMETERS, "a launch parameter is too long")
        fhir_base = iss.strip().rstrip("/")
        if fhir_base not in settings.allowed_issuers:
            # Checked before anything is fetched: an unknown iss is never contacted.
            log.warning("SMART launch refused: iss is not on SMART_ALLOWED_ISSUERS")
            raise SmartError(Failure.ISS_NOT_ALLOWED, f"iss: {iss[:200]}")
        scopes = settings.scopes
        standalone = False
    elif settings.standalone_fhir_base:
        fhir_base = settings.standalone_fhir_base
        scopes = tuple("launch/patient" if s == "launch" else s for s in settings.scopes)
        if "launch/patient" not in scopes:
            scopes += ("launch/patient",)
        standalone = True
    else:
        raise SmartError(Failure.LAUNCH_PARAMETERS)
    config = smart.oauth.discover(fhir_base)
    cookie, _ = smart.store.open(_cookie())
    verifier, challenge = new_pkce()
    state = new_state()
    redirect_uri = _redirect_uri()
    smart.store.add_pending(
        cookie,
        PendingAuthorization(
            state=state,
            code_verifier=verifier,
            fhir_base=fhir_base,
            token_endpoint=config.token_endpoint,
            redirect_uri=redirect_uri,
            standalone=standalone,
            created=smart.clock(),
        ),
    )
    url = smart.oauth.authorize_url(
        config,
        redirect_uri=redirect_uri,
        scopes=scopes,
        state=state,
        code_challenge=challenge,
        aud=fhir_base,
        launch=None if standalone else launch_id,
    )
    log.info("SMART authorization started", extra={"status": "standalone" if standalone else "ehr"})
    response = redirect(url, 302)
    _set_cookie(response, cookie)
    launched_in = normalize((request.args.get("locale") or "")[:_MAX_PARAM])
    if launched_in is not None:
        _set_cookie(response, launched_in, name=LANG_COOKIE)
    return response


# -- callback ----------------------------------------------------------------------------------------


@bp.get("/callback")
def callback() -> Response:
    """The redirect URI: the ``state`` first (single use, this browser's), then the code."""
    smart = _smart()
    state = request.args.get("state")
    if not state:
        raise SmartError(Failure.STATE_MISSING)
    cookie = _cookie()
    if not cookie or not smart.store.exists(cookie):
        raise SmartError(Failure.NO_SESSION)
    pending = smart.store.take_pending(cookie, state[:_MAX_PARAM])
    if not isinstance(pending, PendingAuthorization):
        raise SmartError(
            {
                "no-session": Failure.NO_SESSION,
                "unknown": Failure.STATE_INVALID,
                "used": Failure.STATE_USED,
                "expired": Failure.STATE_EXPIRED,
            }[pending]
        )
    error = request.args.get("error")
    if error:
        code = error if _ERROR_CODE.fullmatch(error) else "unrecognised error"
        description = (request.args.get("error_description") or "")[:300]
        log.warning("SMART authorization answered an error: %s", code)
        raise SmartError(
            Failure.AUTHORIZATION_DENIED
            if code == "access_denied"
            else Failure.AUTHORIZATION_ERROR,
            f"{code}: {description}" if description else code,
        )
    code_value = request.args.get("code")
    if not code_value or len(code_value) > _MAX_PARAM:
        raise SmartError(Failure.CODE_MISSING)
    token = smart.oauth.exchange_code(
        pending.token_endpoint, code_value, pending.redirect_uri, pending.code_verifier
    )
    if not token.patient:
        raise SmartError(Failure.NO_PATIENT)
    if token.scope is not None:
        missing = missing_access(token.scope)
        if missing:
            raise SmartError(Failure.SCOPE_INSUFFICIENT, "missing: " + ", ".join(missing))
    now = smart.clock()
    context = LaunchContext(
        ref=new_ref(),
        fhir_base=pending.fhir_base,
        token_endpoint=pending.token_endpoint,
        access_token=token.access_token,
        token_type=token.token_type,
        expires_at=_expires_at(now, token),
        refresh_token=token.refresh_token,
        scope=token.scope or (),
        patient_id=token.patient,
        encounter_id=token.encounter,
        need_patient_banner=token.need_patient_banner,
        app_context=token.app_context,
        fhir_context=token.fhir_context,
        standalone=pending.standalone,
        created=now,
    )
    # Signed in: a new session id from here on, the one the browser came with stops working.
    signed_in = smart.store.sign_in(cookie, context)
    if signed_in is None:
        raise SmartError(Failure.NO_SESSION)
    log.info("SMART launch completed")
    # 303: the page's URL carries no code, so a reload or the back button cannot replay it.
    response = redirect(url_for(".risk_page", ref=context.ref), 303)
    _set_cookie(response, signed_in)
    return response


# -- the risk page -----------------------------------------------------------------------------------


@bp.get("/app/<ref>/")
def risk_page(ref: str) -> Response:
    smart = _smart()
    launch_context = _launch(ref)
    locale = _page_locale(launch_context.fhir_base)
    w = wording(locale)
    record = _read_record(launch_context)
    a = record.assessment
    st = present(a, locale)
    from_card = card_inputs(launch_context.app_context, launch_context.fhir_context)
    model = smart.cds.assessor.model
    chosen = parse_what_if(model, request.args.get("minutes"), request.args.get("hb"), w)
    what_if_error = chosen if isinstance(chosen, str) else None
    what_if_result = what_if_curve = None
    if a.status is Status.SCORED and a.operation_time and a.hb_grade:
        recorded = WhatIfInput(a.operation_time.minutes, a.hb_grade.grade)
        if not isinstance(chosen, WhatIfInput):
            chosen = recorded
        what_if_result, what_if_curve = what_if(model, chosen, w)
        if chosen == recorded:
            what_if_curve = None  # the same line as the recorded one: nothing extra to draw
    html = render_template(
        "smart/risk.html",
        a=a,
        st=st,
        card=a.model,
        texts=w.card(a.model),
        problems=[problem_texts(p, w) for p in st.problems],
        banner=record.banner if launch_context.need_patient_banner else None,
        chart=chart_for(model, a, what_if_curve, w),
        inputs=input_rows(a, w),
        notice=_card_notice(launch_context, record, st, from_card),
        from_card=from_card,
        what_if=what_if_result,
        what_if_changed=what_if_curve is not None,
        what_if_error=what_if_error,
        range_statement=w.gettext(RANGE_STATEMENT),
        ablation_codes=", ".join(
            code for _, code in smart.cds.assessor.value_sets.codes("ablation_procedure")
        ),
        roman=ROMAN,
        ref=ref,
        lang_param=_lang_param(locale),
        **template_context(locale),
    )
    return Response(html, mimetype="text/html")


@bp.get("/app/<ref>/assessment.json")
def assessment_json(ref: str) -> Response:
    """The page's assessment as JSON: ``Assessment.to_json()`` (as in the card extension) plus
    ``display``, the same texts the page shows (and the card-difference notice, if any), and for a
    scored patient ``riskAssessment``, the FHIR R4 RiskAssessment the card offers to record."""
    launch_context = _launch(ref)
    record = _read_record(launch_context)
    st = present(record.assessment, _page_locale(launch_context.fhir_base))
    from_card = card_inputs(launch_context.app_context, launch_context.fhir_context)
    notice = _card_notice(launch_context, record, st, from_card)
    fhir = {"riskAssessment": risk_assessment(st, launch_context.patient_id)} if st.scored else {}
    return jsonify({**record.assessment.to_json(), "display": display_json(st, notice), **fhir})


@bp.get("/app/<ref>/what-if.json")
def what_if_json(ref: str) -> Response:
    """Risks for typed-in inputs (no FHIR access: the model only), with the curve for the chart."""
    smart = _smart()
    launch_context = _launch(ref)
    w = wording(_page_locale(launch_context.fhir_base))
    model = smart.cds.assessor.model
    chosen = parse_what_if(model, request.args.get("minutes"), request.args.get("hb"), w)
    if not isinstance(chosen, WhatIfInput):
        message = chosen or w.gettext(
            "Give an operation time (minutes) and a House-Brackmann grade."
        )
        response = jsonify({"error": message})
        response.status_code = 400
        return response
    result, result_curve = what_if(model, chosen, w)
    labels = {tier_id: t.label for tier_id, t in w.card(model.card).tiers.items()}
    return jsonify(
        {
            **what_if_json_body(result, labels),
            "line": line_path(model.card.horizon_months, result_curve),
        }
    )


def _page_locale(fhir_base: str | None = None) -> Locale:
    """The page's language: ``?lang=`` (the page's own switch) > the launch's ``locale`` > the
    trust-list language of the EHR whose FHIR server launched the app > ``Accept-Language`` >
    CDS_LANGUAGE."""
    cookie = ("__Host-" if _smart().settings.cookie_secure else "") + LANG_COOKIE
    for given in (request.args.get("lang"), request.cookies.get(cookie)):
        locale = normalize((given or "")[:64])
        if locale is not None:
            return locale
    runtime = _smart().cds
    if fhir_base and runtime.authenticator is not None:
        for issuer in runtime.authenticator.issuers:
            covers = any(fhir_base.startswith(b.rstrip("/")) for b in issuer.fhir_servers)
            if covers and issuer.language is not None:
                return cast(Locale, issuer.language)
    default = cast(Locale, runtime.settings.language)
    return negotiate(request.headers.get("Accept-Language"), default)


def _lang_param(locale: Locale) -> dict[str, str]:
    """The ``lang`` query parameter that keeps an explicitly chosen language on the page's links
    and form (nothing when the language came from the launch, the trust list or the browser)."""
    chosen = normalize((request.args.get("lang") or "")[:64])
    return {"lang": chosen} if chosen == locale and chosen is not None else {}


def _card_notice(
    context: LaunchContext, record: PatientRecord, st: Statement, card: CardInputs | None
) -> CardNotice | None:
    """The difference notice; the versions the card read are fetched back only when one differs
    from the record's, to say what the old value was."""
    if card is None:
        return None
    references = card.references
    updated = {
        ref.plain: value
        for ref in references
        if (value := last_updated(record.current(ref.plain))) is not None
    }
    previous = None
    if any(ref.version and record.version_of(ref.plain) != ref.version for ref in references):
        try:
            token = _usable_token(context)
            previous = _smart().reader.as_the_card_saw_it(
                context.fhir_base, context.patient_id, token, record, references
            )
        except SmartError:
            previous = None  # the notice still says what changed, without the old value
    return card_notice(st, card, previous, updated)


# -- tokens and the record ---------------------------------------------------------------------------


def _launch(ref: str) -> LaunchContext:
    context = _smart().store.launch(_cookie(), ref[:64])
    if context is None:
        raise SmartError(Failure.LAUNCH_NOT_FOUND)
    return context


def _read_record(context: LaunchContext) -> PatientRecord:
    """The patient's record with a fresh token; one refresh and retry when FHIR answers 401."""
    smart = _smart()
    token = _usable_token(context)
    try:
        return smart.reader.read(context.fhir_base, context.patient_id, token)
    except FhirUnauthorized as exc:
        if exc.status != 401 or not context.refresh_token:
            raise SmartError(Failure.FHIR_UNAUTHORIZED, f"HTTP {exc.status}") from exc
        log.info("FHIR answered 401; refreshing the access token once")
        token = _refresh(context, stale=token)
        try:
            return smart.reader.read(context.fhir_base, context.patient_id, token)
        except FhirUnauthorized as again:
            raise SmartError(Failure.FHIR_UNAUTHORIZED, f"HTTP {again.status}") from again


def _usable_token(context: LaunchContext) -> str:
    """The access token, refreshed first when it has expired (or is about to)."""
    now = _smart().clock()
    if context.expires_at is None or now < context.expires_at - EXPIRY_MARGIN:
        return context.access_token
    if not context.refresh_token:
        raise SmartError(
            Failure.SESSION_EXPIRED, "the access token expired and no refresh token was issued"
        )
    return _refresh(context, stale=context.access_token)


def _refresh(context: LaunchContext, stale: str) -> str:
    """Refresh once per expiry even if several requests, in any worker process, need it at the
    same moment (the store serialises them; the others get the new token)."""
    smart = _smart()

    def refresh(refresh_token: str) -> RefreshedTokens:
        token = smart.oauth.refresh(context.token_endpoint, refresh_token)
        log.info("SMART access token refreshed")
        return RefreshedTokens(
            token.access_token, _expires_at(smart.clock(), token), token.refresh_token, token.scope
        )

    try:
        current = smart.store.refresh_launch(_cookie(), context.ref, stale, refresh)
    except SmartError as exc:  # the store has forgotten the refresh token that failed
        log.warning("SMART token refresh failed: %s", exc.failure.value)
        raise SmartError(Failure.SESSION_EXPIRED, exc.detail) from exc
    if current is None:
        raise SmartError(Failure.SESSION_EXPIRED, "the access token could not be refreshed")
    return current.access_token


def _expires_at(now: datetime, token: TokenResponse) -> datetime | None:
    return now + timedelta(seconds=token.expires_in) if token.expires_in is not None else None


# -- responses ---------------------------------------------------------------------------------------


def _redirect_uri() -> str:
    smart = _smart()
    if smart.settings.redirect_url:
        return smart.settings.redirect_url
    base = smart.cds.settings.public_base_url or request.host_url
    return base.rstrip("/") + url_for(".callback")


def _cookie_name() -> str:
    return SECURE_COOKIE if _smart().settings.cookie_secure else COOKIE


def _cookie() -> str | None:
    """The session id the browser sent (in the cookie of this configuration's name)."""
    return request.cookies.get(_cookie_name())


def _set_cookie(response: Response, value: str, name: str | None = None) -> None:
    """An opaque id only; ``SameSite=None; Secure; Partitioned`` so an EHR iframe keeps it.

    Secure: ``__Host-`` name, ``Path=/``, no ``Domain`` (what the prefix requires). Over http
    (loopback development) the prefix is not allowed, and the cookie keeps the app's path."""
    secure = _smart().settings.cookie_secure
    if name is not None and secure:
        name = "__Host-" + name
    response.set_cookie(
        name or _cookie_name(),
        value,
        path="/" if secure else url_for(".launch").rsplit("/", 1)[0] or "/",
        domain=None,
        secure=secure,
        httponly=True,
        samesite="None" if secure else "Lax",
        partitioned=secure,
    )


@bp.after_request
def security_headers(response: Response) -> Response:
    """No caching of patient pages, no referrer, a strict CSP that lets the registered EHRs frame us."""
    smart = _smart()
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; "
        f"frame-ancestors {' '.join(smart.frame_ancestors)}"
    )
    response.headers["Content-Security-Policy"] = csp
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.pop("X-Frame-Options", None)
    if request.endpoint != "smart.static":
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    return response


@bp.errorhandler(SmartError)
def smart_error(error: SmartError) -> Response:
    log.warning("SMART page failed: %s", error.failure.value)
    return _failure_page(error)


@bp.errorhandler(StoreUnavailable)
def store_unavailable(error: StoreUnavailable) -> Response:
    """The session database is away (a page of the app cannot work without it): 503 and "try
    again", never the 500 of an unexpected error. The message names the exception class only."""
    log.error("SMART page failed, its session store is unavailable: %s", error)
    response = _failure_page(SmartError(Failure.STORE_UNAVAILABLE))
    response.headers["Retry-After"] = "30"
    return response


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    status = error.code or 500
    return _error_page(
        "http-" + str(status),
        status,
        error.name,
        error.description or error.name,
        HTTP_TO_DO,
        None,
    )


@bp.errorhandler(Exception)
def unexpected(error: Exception) -> Response:
    log.exception("SMART page failed unexpectedly: %s", type(error).__name__)
    return _failure_page(SmartError(Failure.INTERNAL))


def _failure_page(error: SmartError) -> Response:
    text = error.text
    return _error_page(
        error.failure.value,
        text.status,
        text.title,
        text.what_happened,
        text.what_to_do,
        error.detail,
    )


def _error_page(
    code: str, status: int, title: str, happened: str, to_do: str, detail: str | None
) -> Response:
    smart = _smart()
    if request.path.endswith(".json"):  # the JSON siblings answer JSON, for integration engineers
        body = {"error": code, "title": title, "whatToDo": to_do}
        if detail:
            body["detail"] = detail
        response = jsonify(body)
        response.status_code = status
        return response
    # The texts are English msgids (errors.py): the page shows them in its language, the JSON
    # above stays English for the integration engineers; ``detail`` is technical and stays as is.
    locale = _page_locale()
    gettext = wording(locale).gettext
    html = render_template(
        "smart/error.html",
        code=code,
        title=gettext(title),
        happened=gettext(happened),
        to_do=gettext(to_do),
        detail=detail,
        standalone=bool(smart.settings.standalone_fhir_base and smart.settings.enabled),
        **template_context(locale),
    )
    return Response(html, status=status, mimetype="text/html")
