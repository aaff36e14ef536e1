"""CDS cards from an :class:`~cds_service.assessment.Assessment` (the CDS Hooks answer).

Not to be confused with the *model* card (``cds_service.model.ModelCard``). The card lays out the
presentation layer's :class:`~cds_service.presentation.Statement` and formats no risk itself. It
follows CDS Hooks 2.0 §4 (``summary`` under 140 characters, GitHub-flavoured markdown ``detail``
with no raw HTML, a ``uuid`` for feedback, no ``null`` or empty members) and
clinical-presentation.md §3: a short detail (about 700 characters), the full assumptions and
limitations one link away on the public model-card page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cds_service import __version__
from cds_service.assessment import Assessment, Status
from cds_service.gather.app_context import app_context_for
from cds_service.i18n import BCP47, DEFAULT, Locale
from cds_service.ids import new_uuid
from cds_service.model import ModelCard
from cds_service.presentation import Statement, present
from cds_service.presentation.problems import problem_texts
from cds_service.presentation.risk_assessment import record_suggestion
from cds_service.presentation.statement import N_
from cds_service.presentation.wording import Wording, per_card
from cds_service.store.feedback import OVERRIDE_REASON_SYSTEM, OVERRIDE_REASONS
from fhir_mappings import Provenance, roman

#: The override reasons' displays (``store.feedback.OVERRIDE_REASONS``), marked for the catalogue
#: here; the codes are language-neutral and a test checks the two lists agree.
OVERRIDE_DISPLAYS = (
    N_("Follow-up already planned"),
    N_("Operation time or House-Brackmann grade on record is wrong"),
    N_("Does not apply to this patient"),
    N_("Different plan on clinical judgement"),
)
#: Reverse-domain key of the machine-readable assessment in ``card.extension``.
EXTENSION_KEY = "org.example.hfs-cds.assessment"
# Characters that carry inline markdown or HTML meaning; escaped in text outside code spans.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|<>&~#])")
# Absolute URLs (code systems, often with "|code"): shown as code spans, never escaped, because
# EHR renderers auto-link bare URLs and a backslash inside one makes a broken link.
_URL = re.compile(r"https?://[^\s`]+")


@dataclass(frozen=True, slots=True)
class CardContext:
    """What a card needs from the hook call besides the assessment."""

    patient_id: str
    user_id: str | None = None
    encounter_id: str | None = None
    app_launch_url: str | None = None  # the SMART app's launch URL, when the app is set up
    #: A matching follow-up order is already active or drafted: no follow-up suggestion then.
    follow_up_ordered: bool = False
    #: The service's public model-card page (PHI-free, no sign-in), linked from every card.
    model_card_url: str | None = None
    #: The language of the texts (the trust list's issuer language, else CDS_LANGUAGE); the
    #: machine-readable extension and the resources' codes do not depend on it.
    locale: Locale = DEFAULT


class _Said:
    """The card's texts that depend only on the language and the model card: labels, templates,
    the source label with the model's version, the override reasons' displays. Looked up and
    formatted on every card they were ~6 us of build_cards' 69 (issue 12 benchmark); the
    ``per_card`` memo keeps them per (locale, card). Every dict of a card is still built fresh
    (callers may mutate the answer)."""

    __slots__ = (
        "overrides",
        "source",
        "app_label",
        "model_card_label",
        "model_card_query",
        "citation_label",
        "by",
        "risk",
        "over",
        "ci",
        "tier",
        "basis",
        "ot_over",
        "ot_not_over",
        "hb",
        "hb_late",
        "review_text",
        "review_note",
        "review_label",
        "review_description",
        "tables",
        "cut",
    )

    def __init__(self, w: Wording, model: ModelCard) -> None:
        self.overrides = tuple((code, w.gettext(display)) for code, display in OVERRIDE_REASONS)
        self.source = w.gettext(
            "HFS-RFA recurrence model (Fei et al. 2022), %(version)s; hfs-cds %(software)s"
        ) % {"version": model.version, "software": __version__}
        self.app_label = w.gettext("Open the recurrence-risk app (curve, what-if)")
        self.model_card_label = w.gettext("Model card: assumptions and limitations")
        # The page in the card's language (the page's default is CDS_LANGUAGE).
        self.model_card_query = "" if w.locale == "en" else f"?lang={BCP47[w.locale]}"
        self.citation_label = w.card(model).citation_label
        self.by, self.risk = w.gettext("By"), w.gettext("Risk")
        self.over, self.ci = w.gettext("Range over codings"), w.gettext("95% CI")
        self.tier = w.gettext("%(tier)s.")
        self.basis = w.gettext(" (%(basis)s.)")
        self.ot_over = w.gettext("- Operation time **%(minutes)s min** (over %(cut)s): %(source)s")
        self.ot_not_over = w.gettext(
            "- Operation time **%(minutes)s min** (not over %(cut)s): %(source)s"
        )
        self.hb = w.gettext("- HB grade **%(grade)s** (%(hours)s h after): %(source)s")
        self.hb_late = w.gettext(
            "- HB grade **%(grade)s** (%(hours)s h after, outside the preferred 72 h): %(source)s"
        )
        self.review_text = w.gettext("Hemifacial spasm review after radiofrequency ablation")
        self.review_note = w.gettext(
            "Reviews at %(months)s months after the ablation (%(schedule)s, model "
            "%(model)s %(version)s). Record the House-Brackmann grade at each visit."
        )
        self.review_label = w.gettext("Order follow-up reviews at %(months)s months")
        self.review_description = w.gettext(
            "Create a draft follow-up ServiceRequest for reviews at %(months)s months"
        )
        #: The risk table's header rows for the card's report months (every scored card's).
        self.tables = {model.report_months: _table_head(self, w, model.report_months)}
        self.cut = f"{model.operation_time.cut_minutes:g}"


_said = per_card(_Said)


def build_cards(assessment: Assessment, ctx: CardContext) -> list[dict[str, Any]]:
    """Zero or one card: nothing when no ablation is in the horizon, else a risk or an info card."""
    if assessment.status is Status.NOT_APPLICABLE:
        return []
    statement = present(assessment, ctx.locale)
    if assessment.status is Status.SCORED:
        return [_risk_card(assessment, statement, ctx)]
    return [_not_scored_card(assessment, statement, ctx)]


def _risk_card(a: Assessment, st: Statement, ctx: CardContext) -> dict[str, Any]:
    said = _said(st.words, a.model)
    card = _base_card(a, st, _risk_detail(st, said), ctx, said)
    follow_up = None if ctx.follow_up_ordered else _follow_up_suggestion(st, ctx, said)
    # Ordering reviews and recording the assessment are independent: the clinician may do both.
    card["suggestions"] = [
        s for s in (follow_up, record_suggestion(st, ctx.patient_id)) if s is not None
    ]
    card["selectionBehavior"] = "any"
    card["overrideReasons"] = [
        {"system": OVERRIDE_REASON_SYSTEM, "code": code, "display": display}
        for code, display in said.overrides
    ]
    return card


def _risk_detail(st: Statement, said: _Said) -> str:
    """At most ~700 characters: risks, tier and next review, inputs, one caveat line."""
    assert st.estimate_tier is not None and st.horizon is not None
    risks = st.risks
    months = tuple([r.month for r in risks])
    head = said.tables.get(months) or _table_head(said, st.words, months)
    # The figures are never empty here (a scored statement has its horizon among them).
    lines = [
        *head,
        f"| {said.risk} | **" + "** | **".join([r.text for r in risks]) + "** |",
        f"| {said.over} | " + " | ".join([r.range_text for r in risks]) + " |",
    ]
    if any(r.ci for r in risks):
        lines.append(f"| {said.ci} | " + " | ".join(r.ci_text or "" for r in risks) + " |")
    if st.conditional:
        lines += ["", st.conditional.sentence]
    tier = said.tier % {"tier": st.tier_text}
    lines += ["", f"**{tier}** {st.risk_sentence}"]
    if st.coding_note and not st.schedule_basis:
        lines.append(st.coding_note)  # with a schedule basis, the summary gives the range
    schedule = f"**{st.schedule_text}**"
    if st.schedule_basis:
        schedule += said.basis % {"basis": st.schedule_basis}
    lines += ["", schedule, "", *_input_lines(st, said), "", st.caveat]
    return "\n".join(lines)


def _table_head(said: _Said, w: Wording, months: tuple[float, ...]) -> tuple[str, str]:
    """The risk table's header row ("By | 3 months | …") and its separator."""
    header = " | ".join([w.months(m) for m in months])
    return f"| {said.by} | {header} |", "|---" * (len(months) + 1) + "|"


def _input_lines(st: Statement, said: _Said) -> list[str]:
    """One line per input with the resource it came from."""
    a = st.assessment
    lines = []
    ot, hb = a.operation_time, a.hb_grade
    if ot:
        over = ot.minutes > a.model.operation_time.cut_minutes
        lines.append(
            (said.ot_over if over else said.ot_not_over)
            % {"minutes": f"{ot.minutes:.0f}", "cut": said.cut, "source": _ref(ot.provenance)}
        )
    if hb:
        line = said.hb if hb.within_primary_window else said.hb_late
        lines.append(
            line
            % {
                "grade": roman(hb.grade),
                "hours": f"{hb.hours_after_procedure:.0f}",
                "source": _ref(hb.provenance),
            }
        )
    return lines


def _follow_up_suggestion(st: Statement, ctx: CardContext, said: _Said) -> dict[str, Any] | None:
    """A draft ServiceRequest for the schedule's reviews still ahead of the patient.

    Recommended only when the model card says local governance approved its tiers.
    """
    a, w = st.assessment, st.words
    assert st.schedule_tier is not None and a.inputs.ablation is not None
    reviews = st.reviews_ahead
    if not reviews:
        return None
    model = a.model
    fill = {
        "months": w.series([f"{r.month:g}" for r in reviews]),
        "schedule": st.schedule_label,
        "model": model.id,
        "version": model.version,
    }
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "390906007",
                    "display": "Follow-up encounter",
                }
            ],
            "text": said.review_text,
        },
        "subject": {"reference": f"Patient/{ctx.patient_id}"},
        "occurrenceTiming": {"event": [r.on.isoformat() for r in reviews]},
        "reasonReference": [{"reference": _plain_ref(a.inputs.ablation.provenance)}],
        "note": [{"text": said.review_note % fill}],
    }
    if ctx.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{ctx.encounter_id}"}
    if ctx.user_id and ctx.user_id.split("/", 1)[0] in ("Practitioner", "PractitionerRole"):
        resource["requester"] = {"reference": ctx.user_id}
    return {
        "label": (said.review_label % fill)[:80],
        "uuid": new_uuid(),
        "isRecommended": model.tiers_approved,
        "actions": [
            {
                "type": "create",
                "description": said.review_description % fill,
                "resource": resource,
            }
        ],
    }


# -- not scored --------------------------------------------------------------------------------------


def _not_scored_card(a: Assessment, st: Statement, ctx: CardContext) -> dict[str, Any]:
    w = st.words
    headline = w.gettext("The recurrence risk could not be calculated.")
    lines = [f"**{headline}**", ""]
    to_fix = w.gettext("To fix:")
    for p in st.problems:
        message, action, original = problem_texts(p, w)
        detail = f" ({_md(original)})" if original else ""
        lines += [f"- {_md(message)}{detail} **{to_fix}** {_md(action)}"]
    said = _said(w, a.model)
    derived = _input_lines(st, said)
    if derived:
        found = w.gettext("Inputs found")
        lines += ["", f"**{found}**", "", *derived]
    lines += ["", st.caveat]
    return _base_card(a, st, "\n".join(lines), ctx, said)


# -- shared ------------------------------------------------------------------------------------------


def _base_card(
    a: Assessment, st: Statement, detail: str, ctx: CardContext, said: _Said
) -> dict[str, Any]:
    model = a.model
    links: list[dict[str, Any]] = []
    if ctx.app_launch_url and a.inputs.ablation is not None:
        # The EHR adds iss and launch; appContext names the inputs and the figure the card showed.
        hb, ot = a.hb_grade, a.operation_time
        links.append(
            {
                "label": said.app_label,
                "url": ctx.app_launch_url,
                "type": "smart",
                "appContext": app_context_for(
                    a.inputs.ablation.provenance.reference,
                    hb_grade=hb.provenance.reference if hb else None,
                    operation_time=ot.provenance.reference if ot else None,
                    risk_12m=st.horizon.risk if st.horizon else None,
                ),
            }
        )
    if ctx.model_card_url:
        links.append(
            {
                "label": said.model_card_label,
                "url": ctx.model_card_url + said.model_card_query,
                "type": "absolute",
            }
        )
    links.append({"label": said.citation_label, "url": model.citation.url, "type": "absolute"})
    return {
        "uuid": new_uuid(),
        "summary": st.summary,
        "indicator": st.indicator,
        "detail": detail,
        "source": {"label": said.source, "url": model.citation.url},
        "links": links,
        "extension": {EXTENSION_KEY: a.to_json()},
    }


def _plain_ref(p: Provenance) -> str:
    return f"{p.resource_type}/{p.id}" if p.id else p.resource_type


def _ref(p: Provenance) -> str:
    """A provenance reference as a code span (ids are FHIR ids; backticks cannot occur)."""
    return f"`{p.reference.replace('`', '')}`"


def _md(text: str) -> str:
    """Markdown for our messages, which quote resource ids and code systems: URLs become code spans
    (never auto-linked, never escaped), everything else is escaped so it renders as plain text."""
    out, last = [], 0
    for match in _URL.finditer(text):
        out.append(_MD_SPECIAL.sub(r"\\\1", text[last : match.start()]))
        url = match.group(0).rstrip(".,;:)")
        out.append(f"`{url}`")
        last = match.start() + len(url)
    out.append(_MD_SPECIAL.sub(r"\\\1", text[last:]))
    return "".join(out)
