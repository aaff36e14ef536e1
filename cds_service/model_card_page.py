"""The public model-card page (clinical-presentation.md §3): what every CDS card links to.

``GET /model-card``       the model card as HTML (the SMART page's base template and style sheet)
``GET /model-card.json``  the same card as JSON

Two URLs, no content negotiation: each answer is one representation, so caches need no ``Vary``
and a link can name the form it wants. Neither holds patient data, needs a sign-in, or depends on
the SMART app being configured; they are outside the CDS Hooks blueprint, so its JWT check does not
apply. Both are static for a given card and service version: a strong ``ETag`` (the body's
SHA-256) answers ``If-None-Match`` with 304, and ``X-Model-Card-SHA256`` names the card file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, cast

from flask import Blueprint, Response, current_app, render_template, request, url_for

from cds_service.i18n import Locale, normalize
from cds_service.i18n.jinja import template_context
from cds_service.model import ModelCard
from cds_service.presentation import RANGE_STATEMENT
from cds_service.presentation.statement import uncertainty_statement as _uncertainty
from cds_service.presentation.wording import Wording, wording
from cds_service.runtime import Runtime
from fhir_mappings import roman

# The template and the style sheet are the SMART app's (smart/templates/smart/model_card.html,
# smart/static/smart.css): create_app always mounts that blueprint, configured or not, and the
# package data already ships them.
bp = Blueprint("model_card", __name__)

#: Public and PHI-free: any page may read it; revalidated hourly (a new card changes the ETag).
CACHE_CONTROL = "public, max-age=3600"


def _card() -> ModelCard:
    runtime: Runtime = current_app.extensions["hfs_cds"]
    return runtime.assessor.card


def uncertainty_statement(card: ModelCard) -> str:
    """What the card's numbers can say about uncertainty, as the presentation layer says it."""
    return _uncertainty(wording("en"), covariance=card.covariance is not None)


def card_json(card: ModelCard) -> dict[str, Any]:
    """Every field of the loaded card (as validated at start-up), with the statements the
    clinical surfaces print about its uncertainty."""
    body: dict[str, Any] = _finite(dataclasses.asdict(card))
    body["uncertainty"] = uncertainty_statement(card)
    body["range_statement"] = RANGE_STATEMENT
    return body


def _locale() -> Locale:
    """``?lang=`` (a Chinese card links with ``lang=zh-Hans``), else CDS_LANGUAGE. Not
    Accept-Language: one URL is one representation, so shared caches need no ``Vary``."""
    runtime: Runtime = current_app.extensions["hfs_cds"]
    chosen = normalize((request.args.get("lang") or "")[:64])
    return chosen if chosen is not None else cast(Locale, runtime.settings.language)


@bp.get("/model-card")
def page() -> Response:
    card = _card()
    locale = _locale()
    w = wording(locale)
    html = render_template(
        "smart/model_card.html",
        card=card,
        texts=card.texts(locale),
        uncertainty=_uncertainty(w, covariance=card.covariance is not None),
        range_statement=w.gettext(RANGE_STATEMENT),
        thresholds=_thresholds(card, w),
        roman={grade: roman(grade) for grade in range(1, 7)},
        sentence=_sentence,
        json_url=url_for(".card_json_view"),
        **template_context(locale),
    )
    return _static(Response(html, mimetype="text/html"), card)


@bp.get("/model-card.json")
def card_json_view() -> Response:
    card = _card()
    body = json.dumps(card_json(card), ensure_ascii=False, indent=2) + "\n"
    return _static(Response(body, mimetype="application/json"), card)


def _static(response: Response, card: ModelCard) -> Response:
    response.set_etag(hashlib.sha256(response.get_data()).hexdigest())
    response.headers["Cache-Control"] = CACHE_CONTROL
    response.headers["X-Model-Card-SHA256"] = card.sha256
    response.make_conditional(request)  # 304 (without the body) when If-None-Match matches
    return response


@bp.after_request
def headers(response: Response) -> Response:
    """Public, read-only, no patient data: any origin may read it, nothing may run in it."""
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _thresholds(card: ModelCard, w: Wording) -> dict[str, str]:
    """Each tier's band of 12-month point estimates in words: "30% to under 70%"."""
    out: dict[str, str] = {}
    upper: float | None = None
    for tier in card.tiers:  # highest threshold first
        fill = {
            "low": f"{tier.min_risk_12m * 100:g}%",
            "high": f"{upper * 100:g}%" if upper is not None else "",
        }
        if upper is None:
            out[tier.id] = w.gettext("%(low)s or more") % fill
        elif tier.min_risk_12m <= 0:
            out[tier.id] = w.gettext("under %(high)s") % fill
        else:
            out[tier.id] = w.gettext("%(low)s to under %(high)s") % fill
        upper = tier.min_risk_12m
    return out


def _sentence(text: str) -> str:
    """A card's basis note as a sentence: capital first letter, full stop."""
    text = text.strip()
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _finite(value: Any) -> Any:
    """JSON has no NaN: an absent optional number (NaN in the dataclass) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
