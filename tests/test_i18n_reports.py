"""Languages (issue 18) in the governance report (``hfs-cds db report``): the same counts, rates
and durations in English and Simplified Chinese; JSON does not depend on the language."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from cds_service.store.report import Report, render_html, render_json, render_text
from tests.test_store_report import report, seed  # noqa: F401  (the seeded report fixture)

NUMBER = re.compile(r"\d+(?:\.\d+)?")
CJK = re.compile(r"[\u4e00-\u9fff]")


def _numbers(text: str) -> list[str]:
    return sorted(NUMBER.findall(text))


def _visible(page: str) -> str:
    """The page's text outside the chart (its week labels are dates in each language's form)."""
    page = re.sub(r"<svg.*?</svg>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_the_text_report_says_the_same_numbers_in_chinese(report: Report) -> None:  # noqa: F811
    en, zh = render_text(report, "en"), render_text(report, "zh_Hans")
    assert CJK.search(zh) and not CJK.search(en)
    assert "已接受" in zh and "反馈" in zh
    assert _numbers(zh) == _numbers(en)


def test_the_html_report_says_the_same_numbers_in_chinese(report: Report) -> None:  # noqa: F811
    en, zh = render_html(report, "en"), render_html(report, "zh_Hans")
    assert '<html lang="zh-Hans">' in zh and '<html lang="en">' in en
    assert CJK.search(_visible(zh)) and not CJK.search(_visible(en))
    assert _numbers(_visible(zh)) == _numbers(_visible(en))
    assert "每周各等级卡片数" in zh  # the chart's titles too


def test_the_json_report_has_no_language(report: Report) -> None:  # noqa: F811
    assert not CJK.search(render_json(report))


@pytest.mark.parametrize("lang", ["fr", "zh-TW"])
def test_the_report_command_refuses_an_unsupported_language(lang: str, cli: Any) -> None:
    code, _, err = cli("report", "--lang", lang)
    assert code == 2 and "--lang: unsupported language" in err
