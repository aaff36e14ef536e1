"""The SMART page and the CDS card say the same thing about the same record (issue 12, item 7).

Over HB I/II/III × 20/42 minutes × 0.5/3.3/11 months since the ablation, the page served for real
(EHR launch through the shim, data from the FHIR server) and the patient-view card of the same
service for the same resources show the same display strings, and both follow
clinical-presentation.md: no "0%" or "100%", "likely" only in the high estimate tier, every review
listed still ahead, no treatment named.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
import requests

from cds_service.assessment import Assessor
from cds_service.presentation import present
from tests.hook_calls import HookCaller
from tests.smart.pages import Page
from tests.smart.served import FakeClock, Seed, ServeSmart
from tests.smart.shim import EhrShim

pytest_plugins = ("tests.smart.fixtures",)
pytestmark = pytest.mark.integration

TIMEOUT = 10
DAYS_PER_MONTH = 30.4375
#: "0%" or "100%" as a figure of their own (not the end of "70%" or "20.2%").
FALSE_CERTAINTY = re.compile(r"(?<![\d.])(?:0|100)%")
TREATMENTS = re.compile(
    r"botulinum|toxin|microvascular|decompression|\bMVD\b|repeat (?:RFA|ablation)|surgery",
    re.IGNORECASE,
)

CASES = [
    (hb, minutes, months)
    for hb in ("I", "II", "III")
    for minutes in (20, 42)
    for months in (0.5, 3.3, 11)
]


def _before_assumptions(page: Page) -> str:
    """The page's text up to the assumptions and limitations (a limitation says "likely")."""
    return page.text.split("Assumptions The paper did not publish these", 1)[0]


@pytest.mark.parametrize(("hb", "minutes", "months"), CASES)
def test_the_page_and_the_card_say_the_same(
    serve_smart: ServeSmart,
    shim: EhrShim,
    seed: Seed,
    assessor: Assessor,
    clock: FakeClock,
    hb: str,
    minutes: int,
    months: float,
) -> None:
    patient = f"smart-table-{hb}-{minutes}-{months:g}"
    resources = seed(patient, hb=hb, minutes=minutes, days_ago=months * DAYS_PER_MONTH)
    served = serve_smart()
    answer = HookCaller(served.app.test_client()).call(
        "patient-view", resources[1:], patient=patient
    )
    (card,) = answer.get_json()["cards"]
    response = requests.Session().get(
        served.url("/smart/launch"),
        params={"iss": shim.fhir_base, "launch": shim.new_launch(patient)},
        timeout=TIMEOUT,
    )
    page = Page(response.text)
    assert page.status == "scored", page.text[:800]
    st = present(assessor.assess(resources, patient, as_of=clock()))
    assert st.estimate_tier is not None and st.schedule_tier is not None

    # The same numbers, as the presentation layer writes them, on both surfaces.
    texts, ranges = [r.text for r in st.risks], [r.range_text for r in st.risks]
    assert page.cells("risk-table__risk") == texts
    assert page.cells("risk-table__range") == ranges
    assert "| Risk | " + " | ".join(f"**{t}**" for t in texts) + " |" in card["detail"]
    assert "| Range over codings | " + " | ".join(ranges) + " |" in card["detail"]
    # The same estimate tier and risk sentence; the same schedule.
    assert page.text_of("tier") == st.tier_text
    assert f"({st.estimate_tier.label.lower()} estimate)" in card["summary"]
    assert page.text_of("risk-sentence") == f"{st.tier_text}. {st.risk_sentence}"
    assert f"**{st.tier_text}.** {st.risk_sentence}" in card["detail"]
    assert page.text_of("schedule") == st.schedule_text
    assert st.schedule_text in card["detail"]
    assert page.text_of("advice") == st.advice
    if st.schedule_note:
        assert page.text_of("schedule-note") == st.schedule_note
    else:
        assert not page.has_testid("schedule-note")
    if st.coding_note:
        assert page.text_of("coding-note") == st.coding_note

    card_text = card["summary"] + "\n" + card["detail"]
    for surface in (page.text, card_text):
        assert not FALSE_CERTAINTY.search(surface), FALSE_CERTAINTY.findall(surface)
        assert not TREATMENTS.search(surface), TREATMENTS.findall(surface)
    high = st.estimate_tier.id == "high"
    assert ("likely" in _before_assumptions(page)) is high
    assert ("likely" in card_text) is high

    # Every review listed is still ahead, and they are the card's suggestion's dates.
    today = clock().date()
    listed = [e["data-date"] for e in page.elements if e["tag"] == "li" and "data-date" in e]
    assert listed == [r.on.isoformat() for r in st.reviews_ahead]
    assert all(date.fromisoformat(d) >= today for d in listed)
    assert all(r.month > months for r in st.reviews_ahead)
    orders: list[Any] = [
        action["resource"]
        for suggestion in card.get("suggestions", [])
        for action in suggestion["actions"]
        if action["resource"]["resourceType"] == "ServiceRequest"
    ]
    if listed:
        (order,) = orders
        assert order["occurrenceTiming"]["event"] == listed
    else:
        assert orders == []
        assert page.text_of("schedule") == "Every review of the schedule has passed."
