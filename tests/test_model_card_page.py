"""The public model-card page: ``/model-card`` (HTML) and ``/model-card.json``, linked from every card.

No sign-in (the CDS Hooks JWT check stays on the hook endpoints), no patient data, no SMART app
needed, and every assumption and limitation of the loaded card.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from flask import Flask

from cds_service import create_app
from cds_service.model import ModelCard
from cds_service.presentation import NO_CI_STATEMENT, RANGE_STATEMENT
from tests.smart.pages import Page

FALSE_CERTAINTY = re.compile(r"(?<![\d.])(?:0|100)%")


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """EHR authentication ON (development issuers) and no SMART app configured."""
    for name in [n for n in os.environ if n.startswith("SMART_")]:
        monkeypatch.delenv(name)
    built = create_app({"TESTING": True, "AUTH_REQUIRED": True, "DEV_MODE": True})
    assert not built.extensions["hfs_cds_smart"].settings.enabled
    yield built
    built.extensions["hfs_cds_smart"].close()
    built.extensions["hfs_cds"].close()


def _card(app: Flask) -> ModelCard:
    card: ModelCard = app.extensions["hfs_cds"].assessor.card
    return card


def test_the_hooks_need_a_jwt_but_the_model_card_does_not(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/cds-services").status_code == 401  # the check is on
    for path in ("/model-card", "/model-card.json", "/smart/static/smart.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "Set-Cookie" not in response.headers
        response.close()  # the static file is streamed


def test_the_html_page_shows_the_whole_card(app: Flask) -> None:
    card = _card(app)
    response = app.test_client().get("/model-card")
    assert response.mimetype == "text/html"
    page = Page(response.get_data(as_text=True))
    text = page.text
    for expected in (
        card.title,
        card.citation.text,
        card.population,
        card.caveat,
        NO_CI_STATEMENT,
        RANGE_STATEMENT,
        card.reference_basis,
        card.baseline_basis[1:],  # written as sentences: the first letter is capitalised
        card.scenarios.basis[1:],
        card.tier_basis[1:],
        card.version,
        card.sha256,
        *card.assumptions,
        *card.limitations,
    ):
        assert expected in text, expected
    assert f'href="{card.citation.url}"' in response.get_data(as_text=True)
    assert str(card.operation_time.coefficient) in page.text_of("coefficients")
    assert str(card.hb_grade.coefficient) in page.text_of("coefficients")
    assert [k for k in page.text_of("baseline").split() if k[0].isdigit()] == [
        *(f"{k.month:g}" for k in card.baseline_knots),
        *(f"{k.survival:g}" for k in card.baseline_knots),
    ]
    tiers = page.text_of("tiers")
    for tier in card.tiers:
        assert tier.label in tiers and tier.advice in tiers and tier.risk_sentence in tiers
    assert "70% or more" in tiers and "30% to under 70%" in tiers and "under 30%" in tiers
    assert page.text_of("governance").startswith("Not approved by local clinical governance")
    alerting = page.text_of("alerting")
    assert f"{card.alerting.suppress_after_feedback_days:g} days" in alerting
    assert f"{card.alerting.post_ablation_window_days:g} days" in alerting
    assert page.text_of("limitations") == " ".join(" ".join(t.split()) for t in card.limitations)
    assert not FALSE_CERTAINTY.search(text), FALSE_CERTAINTY.findall(text)
    assert "Patient/" not in text and "patient-banner" not in page.html


def test_the_json_is_the_whole_card(app: Flask) -> None:
    card = _card(app)
    body = app.test_client().get("/model-card.json").get_json()
    assert (body["id"], body["version"], body["sha256"]) == (card.id, card.version, card.sha256)
    assert body["assumptions"] == list(card.assumptions)
    assert body["limitations"] == list(card.limitations)
    assert body["caveat"] == card.caveat
    assert body["uncertainty"] == NO_CI_STATEMENT and body["covariance"] is None
    assert body["tiers_approved"] is False
    assert body["alerting"] == {
        "suppress_after_feedback_days": card.alerting.suppress_after_feedback_days,
        "post_ablation_window_days": card.alerting.post_ablation_window_days,
    }
    assert [t["id"] for t in body["tiers"]] == [t.id for t in card.tiers]
    assert body["operation_time"]["coefficient"] == card.operation_time.coefficient
    assert body["citation"]["url"] == card.citation.url


@pytest.mark.parametrize("path", ["/model-card", "/model-card.json"])
def test_the_page_is_cacheable_by_etag_and_readable_from_any_origin(app: Flask, path: str) -> None:
    client = app.test_client()
    first = client.get(path)
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "public, max-age=3600"
    assert first.headers["X-Model-Card-SHA256"] == _card(app).sha256
    assert first.headers["Access-Control-Allow-Origin"] == "*"
    assert first.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src" not in first.headers["Content-Security-Policy"]  # nothing runs here
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    assert client.get(path).headers["ETag"] == etag  # static for the card
    head = client.head(path)
    assert head.status_code == 200 and head.headers["ETag"] == etag
