"""What the clinician reads (clinical-presentation.md), pinned on the card and the CLI alike.

The engine keeps its own raw golden table (``test_model_engine``); this one pins what people see:
the summary, the tiers, the next review. Every case of the grid HB I/II/III × 20/42 min × 0.5/3.3/11
months after the ablation is also checked against the rules that made the old wording misleading:
no "0%" or "100%", "likely" only in the high estimate tier, only future reviews, no treatment
named, the indicator rule, and a short card.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import pytest

from cds_service.assessment import Assessment, Assessor
from cds_service.cli import render_text
from cds_service.hooks.cards import CardContext, build_cards
from cds_service.model import parse_model_card
from cds_service.model.card import DEFAULT_MODEL_CARD
from cds_service.presentation import NO_CI_STATEMENT, percent, percent_range, present
from fhir_mappings import load_value_sets
from tests import fhir_builders as fb
from tests.hook_calls import iso

ABLATION_END = datetime(2026, 5, 1, 9, 42, tzinfo=UTC)
DAYS_PER_MONTH = 30.4375
#: A risk written as an absolute: "0%" or "100%" (a "<5%" or ">95%" is fine).
CERTAINTY = re.compile(r"(?<![\d<>.])(?:100|0)%")
TREATMENT = re.compile(r"\bRFA\b|radiofrequency|botulinum|toxin|decompression|\bMVD\b", re.I)
DETAIL_LIMIT = 720  # "at most ~700 characters" (clinical-presentation.md §3)

GRID = [(hb, minutes, months) for hb in ("I", "II", "III") for minutes in (20, 42)
        for months in (0.5, 3.3, 11)]  # fmt: skip

#: (HB, minutes, months since ablation) -> (summary, estimate tier, schedule tier, next review).
GOLDEN: dict[tuple[str, int, float], tuple[str, str, str, str | None]] = {
    ("I", 20, 0.5): (">95% by 12 months (high estimate)", "high", "high", "2026-05-31 (1 month)"),
    ("I", 20, 3.3): (">95% by 12 months (high estimate)", "high", "high", "2026-10-31 (6 months)"),
    ("I", 20, 11): (">95% by 12 months (high estimate)", "high", "high", "2027-05-01 (12 months)"),
    ("I", 42, 0.5): (">95% by 12 months (high estimate)", "high", "high", "2026-05-31 (1 month)"),
    ("I", 42, 3.3): (">95% by 12 months (high estimate)", "high", "high", "2026-10-31 (6 months)"),
    ("I", 42, 11): (">95% by 12 months (high estimate)", "high", "high", "2027-05-01 (12 months)"),
    ("II", 20, 0.5): (
        "82% by 12 months (high estimate); 64% to 94% under other codings",
        "high", "high", "2026-05-31 (1 month)",
    ),
    ("II", 20, 3.3): (
        "82% by 12 months (high estimate); 64% to 94% under other codings",
        "high", "high", "2026-10-31 (6 months)",
    ),
    ("II", 20, 11): (
        "82% by 12 months (high estimate); 64% to 94% under other codings",
        "high", "high", "2027-05-01 (12 months)",
    ),
    ("II", 42, 0.5): (
        "61% by 12 months (intermediate estimate)", "intermediate", "intermediate",
        "2026-05-31 (1 month)",
    ),
    ("II", 42, 3.3): (
        "61% by 12 months (intermediate estimate)", "intermediate", "intermediate",
        "2026-10-31 (6 months)",
    ),
    ("II", 42, 11): (
        "61% by 12 months (intermediate estimate)", "intermediate", "intermediate",
        "2027-05-01 (12 months)",
    ),
    ("III", 20, 0.5): (
        "12% by 12 months (low estimate); 7% to 94% under other codings", "low", "high",
        "2026-05-31 (1 month)",
    ),
    ("III", 20, 3.3): (
        "12% by 12 months (low estimate); 7% to 94% under other codings", "low", "high",
        "2026-10-31 (6 months)",
    ),
    ("III", 20, 11): (
        "12% by 12 months (low estimate); 7% to 94% under other codings", "low", "high",
        "2027-05-01 (12 months)",
    ),
    ("III", 42, 0.5): (
        "7% by 12 months (low estimate); <5% to 61% under other codings", "low",
        "intermediate", "2026-05-31 (1 month)",
    ),
    ("III", 42, 3.3): (
        "7% by 12 months (low estimate); <5% to 61% under other codings", "low",
        "intermediate", "2026-10-31 (6 months)",
    ),
    ("III", 42, 11): (
        "7% by 12 months (low estimate); <5% to 61% under other codings", "low",
        "intermediate", "2027-05-01 (12 months)",
    ),
}  # fmt: skip


def _assess(assessor: Assessor, hb: str, minutes: int, months: float) -> Assessment:
    resources = [
        fb.hfs_condition(),
        fb.ablation_procedure(
            start=iso(ABLATION_END - timedelta(minutes=minutes)), end=iso(ABLATION_END)
        ),
        fb.hb_observation(grade=hb, effective=iso(ABLATION_END + timedelta(hours=20))),
    ]
    as_of = ABLATION_END + timedelta(days=months * DAYS_PER_MONTH)
    return assessor.assess(resources, "p1", as_of=as_of)


def _card(a: Assessment) -> dict[str, object]:
    (card,) = build_cards(a, CardContext("p1", model_card_url="https://cds.example/model-card"))
    return card


@pytest.mark.parametrize(("hb", "minutes", "months"), GRID)
def test_golden_table_of_what_the_clinician_reads(
    assessor: Assessor, hb: str, minutes: int, months: float
) -> None:
    """Summary, tiers and next review for the grid, as the card says them."""
    a = _assess(assessor, hb, minutes, months)
    st = present(a)
    summary, estimate, schedule, next_review = GOLDEN[(hb, minutes, months)]
    assert _card(a)["summary"] == f"Hemifacial spasm recurrence after RFA: {summary}"
    assert (st.estimate_tier and st.estimate_tier.id) == estimate
    assert (st.schedule_tier and st.schedule_tier.id) == schedule
    assert (st.next_review and st.next_review.text) == next_review


@pytest.mark.parametrize(("hb", "minutes", "months"), GRID)
def test_card_and_cli_read_honestly(
    assessor: Assessor, hb: str, minutes: int, months: float
) -> None:
    """The rules of clinical-presentation.md §1-§3 on both surfaces for every grid case."""
    a = _assess(assessor, hb, minutes, months)
    st = present(a)
    card = _card(a)
    detail, summary = str(card["detail"]), str(card["summary"])
    cli = render_text(a).split("\n", 1)[1]  # the first line names the model id (…-hfs-rfa-…)
    high = st.estimate_tier is not None and st.estimate_tier.id == "high"
    for text in (detail, summary, cli):
        assert not CERTAINTY.search(text), text
        assert high or "likely" not in text, text
        schedule = [line for line in text.splitlines() if "review" in line.lower()]
        for day in re.findall(r"\d{4}-\d{2}-\d{2}", "\n".join(schedule)):
            assert date.fromisoformat(day) > a.as_of.date(), f"review {day} is not ahead"
    if high:
        assert "likely" in detail and "likely" in cli
    assert not TREATMENT.search(detail)
    for sentence in (st.advice, st.risk_sentence, st.schedule_note or "", st.coding_note or ""):
        assert not TREATMENT.search(sentence), sentence
    assert card["indicator"] == ("warning" if high else "info")
    assert len(detail) <= DETAIL_LIMIT, len(detail)
    assert st.schedule_text in detail and st.schedule_text in cli
    assert all(r.text in detail and r.text in cli for r in st.risks)
    assert all(r.on > a.as_of.date() for r in st.reviews_ahead)


def test_a_coding_sensitive_low_estimate_follows_the_high_schedule_and_says_why(
    assessor: Assessor,
) -> None:
    """HB III, 20 min: 12% is the estimate; other codings reach 94%, so the schedule is high."""
    st = present(_assess(assessor, "III", 20, 3.3))
    assert (
        st.risk_sentence
        == "Recurrence within a year is less common than in the study, but possible."
    )
    assert st.schedule_note == (
        "Follow up on the high-risk schedule: under other plausible codings the risk reaches 94%."
    )
    assert st.coding_note is not None and "7% to 94% by 12 months" in st.coding_note
    assert st.indicator == "info"
    assert [r.month for r in st.reviews_ahead] == [6, 9, 12]


def test_hb_ii_seen_at_3_3_months_lists_only_reviews_ahead(assessor: Assessor) -> None:
    """The old card still said "review at about 1 month" at 3.3 months."""
    a = _assess(assessor, "II", 42, 3.3)
    detail = str(_card(a)["detail"])
    assert "1 month" not in detail and "about 1" not in detail
    assert "**Next review 2026-10-31 (6 months); then 12 months.**" in detail
    assert present(a).conditional is not None


def test_the_published_card_says_it_has_no_confidence_interval(assessor: Assessor) -> None:
    a = _assess(assessor, "II", 42, 0.5)
    st = present(a)
    assert st.uncertainty_note == NO_CI_STATEMENT
    assert all(r.ci is None for r in st.risks)
    assert NO_CI_STATEMENT in render_text(a)


def test_a_refit_card_with_a_covariance_shows_a_95_percent_interval() -> None:
    """Delta method on the log cumulative hazard: each interval contains its point estimate."""
    raw = _published_json()
    raw["fit"]["covariance"] = [[0.09, 0.01], [0.01, 0.25]]
    assessor = Assessor(parse_model_card(raw, sha256="refit"), load_value_sets())
    a = _assess(assessor, "II", 42, 0.5)
    st = present(a)
    for figure in st.risks:
        assert figure.ci is not None
        low, high = figure.ci
        assert low < figure.risk < high
    assert st.uncertainty_note.startswith("95% confidence intervals")
    assert "95% CI" in str(_card(a)["detail"]) and "95% CI" in render_text(a)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "<5%"), (0.0499, "<5%"), (0.05, "5%"), (0.125, "13%"), (0.5, "50%"),
        (0.95, "95%"), (0.9501, ">95%"), (1.0, ">95%"),
    ],
)  # fmt: skip
def test_percent_never_claims_certainty(value: float, text: str) -> None:
    assert percent(value) == text


def test_a_range_that_reads_the_same_at_both_ends_is_written_once() -> None:
    assert percent_range(0.997, 1.0) == ">95%"
    assert percent_range(0.01, 0.15) == "<5% to 15%"


def test_not_scored_card_writes_code_systems_as_code_spans_not_broken_links(
    assessor: Assessor,
) -> None:
    """The sandbox auto-linked ``…/hfs-rfa\\|hb-grade-post-rfa`` into a broken link."""
    resources = [
        fb.ablation_procedure(
            start=iso(ABLATION_END - timedelta(minutes=42)), end=iso(ABLATION_END)
        )
    ]
    a = assessor.assess(resources, "p1", as_of=ABLATION_END + timedelta(days=3))
    detail = str(_card(a)["detail"])
    assert "\\|" not in detail
    assert "`https://hfs-cds.example.org/fhir/CodeSystem/hfs-rfa|hb-grade-post-rfa`" in detail


def _published_json() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(
        (resources.files("cds_service.model") / "model_cards" / DEFAULT_MODEL_CARD).read_text()
    )
    return raw


@pytest.mark.parametrize("approved", [False, True])
def test_follow_up_is_recommended_only_when_governance_approved_the_tiers(approved: bool) -> None:
    """The published card calls its tiers placeholders, so its suggestion is never recommended."""
    raw = _published_json()
    raw["governance"]["tiers_approved"] = approved
    assessor = Assessor(parse_model_card(raw, sha256="site"), load_value_sets())
    suggestions: list[dict[str, Any]] = _card(_assess(assessor, "II", 42, 0.5))["suggestions"]  # type: ignore[assignment]
    follow_up, record = suggestions
    assert follow_up["isRecommended"] is approved
    assert record["isRecommended"] is False
