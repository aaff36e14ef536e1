"""Languages (issue 18): why there is nothing to assess ("no ablation on record as of …", "… beyond
the model's 12-month horizon") reads in the reader's language on the SMART page and in ``hfs-cds
score``, with the same dates and months as the English; the JSON's ``notApplicableBecause`` stays
English, and the English texts are unchanged."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cds_service.assessment import Assessment, Assessor, NotApplicable, Status
from cds_service.cli import render_text
from cds_service.presentation import present
from tests import fhir_builders as fb

CJK = re.compile(r"[\u4e00-\u9fff]")
PROCEDURE_END = datetime(2026, 5, 1, 1, 42, tzinfo=UTC)  # the builders' default ablation end
#: Its ablation ends 2026-11-10T10:42+08:00.
EXAMPLE = str(Path(__file__).parent / "data" / "bundle-42min-hb2.json")


def _numbers(text: str) -> list[float]:
    """Every number, as a value (a zero-padded ISO month and a Chinese month read the same)."""
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)]


def _both(a: Assessment) -> tuple[str, str]:
    assert a.status is Status.NOT_APPLICABLE
    en, zh = present(a, "en"), present(a, "zh_Hans")
    assert en.headline is not None and zh.headline is not None
    return en.headline, zh.headline


def test_before_the_ablation_the_date_reads_in_chinese(assessor: Assessor) -> None:
    a = assessor.assess(fb.typical_patient(), as_of=datetime(2026, 4, 30, tzinfo=UTC))
    en, zh = _both(a)
    assert a.not_applicable is NotApplicable.NO_ABLATION and a.not_applicable_as_of
    assert en == a.not_applicable_because == "no ablation on record as of 2026-04-30"
    assert zh == "截至2026年4月30日无射频消融记录"
    assert _numbers(zh) == _numbers(en)
    assert a.to_json()["notApplicableBecause"] == en  # the JSON is language-neutral (English)


def test_a_moment_with_a_time_keeps_its_iso_form(assessor: Assessor) -> None:
    a = assessor.assess(fb.typical_patient(), as_of=PROCEDURE_END - timedelta(days=1))
    en, zh = _both(a)
    assert en == "no ablation on record as of 2026-04-30T01:42+00:00"
    assert "2026-04-30T01:42+00:00" in zh and "射频消融" in zh
    assert _numbers(zh) == _numbers(en)


def test_no_ablation_at_all(assessor: Assessor) -> None:
    a = assessor.assess([fb.patient(), fb.hfs_condition()], as_of=PROCEDURE_END)
    en, zh = _both(a)
    assert not a.not_applicable_as_of
    assert (en, zh) == ("no ablation on record", "无射频消融记录")


def test_beyond_the_horizon_says_the_same_months(assessor: Assessor) -> None:
    a = assessor.assess(fb.typical_patient(), as_of=PROCEDURE_END + timedelta(days=500))
    en, zh = _both(a)
    assert a.not_applicable is NotApplicable.BEYOND_HORIZON
    assert en == a.not_applicable_because
    assert a.months_since_procedure is not None
    months = f"{a.months_since_procedure:.1f}"
    assert en == (
        f"the last ablation ended {months} months ago, beyond the model's 12-month horizon"
    )
    assert zh == f"最近一次射频消融结束于{months}个月前，超出模型12个月的适用范围"
    assert _numbers(zh) == _numbers(en)
    # The summary a reader might see says the reason too, under 140 characters.
    summary = present(a, "zh_Hans").summary
    assert zh in summary and len(summary) < 140


def test_the_cli_text_report_says_it_in_chinese(assessor: Assessor) -> None:
    a = assessor.assess(fb.typical_patient(), as_of=PROCEDURE_END + timedelta(days=500))
    en, zh = render_text(a, "en"), render_text(a, "zh_Hans")
    assert "beyond the model's 12-month horizon" in en and not CJK.search(en)
    assert "超出模型12个月的适用范围" in zh and "beyond" not in zh
    assert sorted(_numbers(zh)) == sorted(_numbers(en))  # Chinese puts a date before its months


def test_hfs_cds_score_lang_says_why_in_chinese(cli: Callable[..., tuple[int, str, str]]) -> None:
    code, zh, _ = cli("score", EXAMPLE, "--at", "2026-11-01", "--lang", "zh-Hans")
    assert code == 0 and "截至2026年11月1日无射频消融记录" in zh
    code, en, _ = cli("score", EXAMPLE, "--at", "2026-11-01")
    assert code == 0 and "no ablation on record as of 2026-11-01" in en and not CJK.search(en)
