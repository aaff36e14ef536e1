"""Languages (issue 18) on the SMART page, served for real over the HB I/II/III × 20/42 minutes ×
0.5/3.3/11 months grid: a Chinese browser (``Accept-Language: zh-CN``) gets the page in Simplified
Chinese with exactly the English page's numbers, tiers and review dates."""

from __future__ import annotations

import re
from datetime import date

import pytest
import requests

from cds_service.assessment import Assessor
from cds_service.presentation import present
from tests.smart.pages import Page
from tests.smart.served import FakeClock, Seed, ServedApp, ServeSmart
from tests.smart.shim import EhrShim
from tests.test_smart_presentation import CASES, DAYS_PER_MONTH, TIMEOUT

pytest_plugins = ("tests.smart.fixtures",)
pytestmark = pytest.mark.integration

CJK = re.compile(r"[\u4e00-\u9fff]")
ZH_DATE = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})日")


def _page(served: ServedApp, shim: EhrShim, patient: str, accept: str) -> Page:
    response = requests.Session().get(
        served.url("/smart/launch"),
        params={"iss": shim.fhir_base, "launch": shim.new_launch(patient)},
        headers={"Accept-Language": accept},
        timeout=TIMEOUT,
    )
    return Page(response.text)


@pytest.mark.parametrize(("hb", "minutes", "months"), CASES)
def test_the_chinese_page_has_the_english_pages_numbers(
    serve_smart: ServeSmart,
    shim: EhrShim,
    seed: Seed,
    assessor: Assessor,
    clock: FakeClock,
    hb: str,
    minutes: int,
    months: float,
) -> None:
    patient = f"smart-zh-{hb}-{minutes}-{months:g}"
    resources = seed(patient, hb=hb, minutes=minutes, days_ago=months * DAYS_PER_MONTH)
    served = serve_smart()
    en, zh = (_page(served, shim, patient, accept) for accept in ("en-GB,en", "zh-CN,zh;q=0.9"))
    assert en.status == zh.status == "scored", zh.text[:400]
    for css in ("risk-table__risk", "risk-table__range"):
        assert [c.replace("至", " to ") for c in zh.cells(css)] == en.cells(css)
    assert zh.risks == en.risks  # the raw fractions in data-risk
    assert zh.first("data-tier") == en.first("data-tier")
    assert zh.first("data-schedule-tier") == en.first("data-schedule-tier")
    dates = [e["data-date"] for e in zh.elements if e["tag"] == "li" and "data-date" in e]
    assert dates == [e["data-date"] for e in en.elements if e["tag"] == "li" and "data-date" in e]
    if dates:  # shown as 2026年12月10日, the same days as the English page's ISO dates
        found = ZH_DATE.findall(zh.text_of("reviews"))
        assert [date(*map(int, m)).isoformat() for m in found] == dates
    st = present(assessor.assess(resources, patient, as_of=clock()), "zh_Hans")
    assert zh.text_of("tier") == st.tier_text and CJK.search(st.tier_text)
    assert zh.text_of("schedule") == st.schedule_text
    assert zh.text_of("advice") == st.advice
    assert not CJK.search(en.text)
