"""The presentation layer's shortcuts say exactly what the plain path says (issue 12 benchmark).

``present`` keeps the texts that depend only on the model card and the language per (locale,
card), builds its figures and reviews through the slots, and the RiskAssessment of a Chinese card
is said in English without presenting again. These tests check the results against the plain
constructors and ``in_locale``, that two cards never share their texts, and that every card is
built of fresh dicts (an EHR adapter may mutate the answer).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import pytest

from cds_service.assessment import Assessment, Assessor
from cds_service.hooks.cards import CardContext, build_cards
from cds_service.i18n import Locale
from cds_service.model import parse_model_card
from cds_service.model.card import DEFAULT_MODEL_CARD
from cds_service.presentation import ConditionalFigure, Review, RiskFigure, present
from cds_service.presentation.risk_assessment import risk_assessment
from fhir_mappings import load_value_sets
from tests import fhir_builders as fb
from tests.hook_calls import iso

ABLATION_END = datetime(2026, 5, 1, 9, 42, tzinfo=UTC)
CASES = [("I", 20, 0.5), ("II", 42, 3.3), ("III", 20, 11), ("III", 42, 0.5)]
LOCALES: list[Locale] = ["en", "zh_Hans"]


def _assess(assessor: Assessor, hb: str, minutes: int, months: float) -> Assessment:
    resources_ = [
        fb.hfs_condition(),
        fb.ablation_procedure(
            start=iso(ABLATION_END - timedelta(minutes=minutes)), end=iso(ABLATION_END)
        ),
        fb.hb_observation(grade=hb, effective=iso(ABLATION_END + timedelta(hours=20))),
    ]
    return assessor.assess(resources_, "p1", as_of=ABLATION_END + timedelta(days=months * 30.4375))


def _card_json(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(
        (resources.files("cds_service.model") / "model_cards" / DEFAULT_MODEL_CARD).read_text()
    )
    raw.update(changes)
    return raw


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize(("hb", "minutes", "months"), CASES)
def test_figures_and_reviews_are_those_the_public_constructors_build(
    assessor: Assessor, hb: str, minutes: int, months: float, locale: Locale
) -> None:
    st = present(_assess(assessor, hb, minutes, months), locale)
    for r in st.risks:
        plain = RiskFigure(r.risk, r.low, r.high, month=r.month, ci=r.ci, words=st.words)
        assert (r, r.text, r.range_text, r.label) == (
            plain,
            plain.text,
            plain.range_text,
            plain.label,
        )
    c = st.conditional
    if c is not None:
        plain_c = ConditionalFigure(
            c.risk, c.low, c.high, from_month=c.from_month, to_month=c.to_month, words=st.words
        )
        assert (c, c.sentence) == (plain_c, plain_c.sentence)
    assert st.reviews_ahead, "every case has a review ahead"
    for review in st.reviews_ahead:
        plain_r = Review(review.month, review.on, words=st.words)
        assert (review, review.text) == (plain_r, plain_r.text)


@pytest.mark.parametrize(("hb", "minutes", "months"), CASES)
def test_the_record_of_a_chinese_card_is_the_english_statement_s(
    assessor: Assessor, hb: str, minutes: int, months: float
) -> None:
    """The RiskAssessment reads as if the statement were said again in English (in_locale)."""
    zh = present(_assess(assessor, hb, minutes, months), "zh_Hans")
    assert risk_assessment(zh, "p1") == risk_assessment(zh.in_locale("en"), "p1")


def test_a_refit_card_s_chinese_record_keeps_its_confidence_intervals() -> None:
    raw = _card_json()
    raw["fit"]["covariance"] = [[0.09, 0.01], [0.01, 0.25]]
    a = _assess(Assessor(parse_model_card(raw, sha256="refit"), load_value_sets()), "II", 42, 0.5)
    zh = present(a, "zh_Hans")
    resource = risk_assessment(zh, "p1")
    assert resource == risk_assessment(zh.in_locale("en"), "p1")
    assert all("95% CI" in p["rationale"] for p in resource["prediction"])


@pytest.mark.parametrize("locale", LOCALES)
def test_two_cards_never_share_their_texts(assessor: Assessor, locale: Locale) -> None:
    """The memo is per card: a site's card with its own caveat and version says its own."""
    raw = _card_json(caveat="Site caveat: informational only.", version="9.9.9")
    raw["translations"]["zh-Hans"]["caveat"] = "本地说明：仅供参考。"
    site = parse_model_card(raw, sha256="site")
    published = present(_assess(assessor, "II", 42, 0.5), locale)
    local = present(_assess(Assessor(site, load_value_sets()), "II", 42, 0.5), locale)
    assert local.caveat == site.texts(locale).caveat != published.caveat
    (card,) = build_cards(local.assessment, CardContext("p1", locale=locale))
    assert "9.9.9" in card["source"]["label"]
    again = present(_assess(assessor, "II", 42, 0.5), locale)
    assert again.caveat == published.caveat


@pytest.mark.parametrize("locale", LOCALES)
def test_every_card_is_built_of_fresh_dicts(assessor: Assessor, locale: Locale) -> None:
    """A caller that edits one answer (an EHR adapter adding fields) cannot change the next."""
    a = _assess(assessor, "III", 20, 0.5)
    ctx = CardContext("p1", model_card_url="https://cds.example/model-card", locale=locale)
    (first,) = build_cards(a, ctx)
    expected = json.dumps(build_cards(a, ctx)[0]["overrideReasons"])
    first["overrideReasons"][0]["display"] = "edited"
    first["links"][-1]["label"] = "edited"
    for suggestion in first["suggestions"]:
        resource = suggestion["actions"][0]["resource"]
        resource["code"]["text"] = "edited"
        for prediction in resource.get("prediction", []):
            prediction["outcome"]["coding"][0]["display"] = "edited"
            prediction["whenRange"]["low"]["value"] = 99
    (second,) = build_cards(a, ctx)
    assert json.dumps(second["overrideReasons"]) == expected
    assert "edited" not in json.dumps(second) and '"value": 99' not in json.dumps(second)
