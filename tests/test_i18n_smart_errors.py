"""Languages (issue 18) on the SMART app's error pages: a Chinese browser reads what happened and
what to do in Simplified Chinese, with the same status, error code and detail as the English page,
and the English page is unchanged."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from flask import Flask

from cds_service import create_app
from cds_service.presentation.wording import wording
from cds_service.smart import init_smart
from cds_service.smart.errors import FAILURES, HTTP_TO_DO, Failure
from tests.smart.pages import Page

CJK = re.compile(r"[\u4e00-\u9fff]")
EHR = "https://ehr.example/fhir"
ZH = "zh-CN,zh;q=0.9"


def _app(monkeypatch: pytest.MonkeyPatch, **config: object) -> Iterator[Flask]:
    for name in [n for n in os.environ if n.startswith(("SMART_", "CDS_LANGUAGE"))]:
        monkeypatch.delenv(name)
    app = create_app({"TESTING": True, "AUTH_REQUIRED": False, **config})
    init_smart(app, app.extensions["hfs_cds"].settings)
    yield app
    app.extensions["hfs_cds_smart"].close()
    app.extensions["hfs_cds"].close()


@pytest.fixture
def unconfigured_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The SMART app mounted without a client id (every launch is ``not-configured``)."""
    yield from _app(monkeypatch)


@pytest.fixture
def configured_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The SMART app registered with one EHR (``EHR``), no standalone FHIR server."""
    yield from _app(monkeypatch, SMART_CLIENT_ID="c", SMART_ALLOWED_ISSUERS=EHR)


def _get(app: Flask, url: str, accept: str) -> tuple[int, Page]:
    response = app.test_client().get(url, headers={"Accept-Language": accept})
    return response.status_code, Page(response.get_data(as_text=True))


def _assert_in(page: Page, failure: Failure, gettext: object) -> None:
    """The page shows the failure's three texts as ``gettext`` gives them (HTML-unescaped)."""
    assert callable(gettext)
    text = FAILURES[failure].translated(gettext)
    for sentence in (text.title, text.what_happened, text.what_to_do):
        assert sentence in page.text, (sentence, page.text[:800])


@pytest.mark.parametrize(
    ("fixture", "url", "failure", "detail"),
    [
        ("unconfigured_app", f"/smart/launch?iss={EHR}&launch=1", Failure.NOT_CONFIGURED, None),
        ("configured_app", "/smart/launch", Failure.LAUNCH_PARAMETERS, None),
        (
            "configured_app",
            "/smart/launch?iss=https://other.example/fhir&launch=1",
            Failure.ISS_NOT_ALLOWED,
            "iss: https://other.example/fhir",
        ),
        ("configured_app", "/smart/callback?code=x", Failure.STATE_MISSING, None),
    ],
)
def test_an_error_page_is_in_the_browsers_language_with_the_same_code_status_and_detail(
    request: pytest.FixtureRequest, fixture: str, url: str, failure: Failure, detail: str | None
) -> None:
    app: Flask = request.getfixturevalue(fixture)
    en_status, en = _get(app, url, "en-GB,en")
    zh_status, zh = _get(app, url, ZH)
    assert en_status == zh_status == FAILURES[failure].status
    assert en.error == zh.error == failure.value
    _assert_in(en, failure, wording("en").gettext)
    _assert_in(zh, failure, wording("zh_Hans").gettext)
    assert not CJK.search(en.text)
    assert "发生了什么" in zh.text and "错误代码" in zh.text  # the page's own labels
    if detail is not None:
        assert detail in en.text and detail in zh.text  # technical, the same in both
    # The English texts are gone from the Chinese page (only codes and setting names remain).
    english = FAILURES[failure]
    for sentence in (english.title, english.what_happened, english.what_to_do):
        assert sentence not in zh.text


def test_the_english_error_page_is_the_english_text_itself(unconfigured_app: Flask) -> None:
    status, page = _get(unconfigured_app, f"/smart/launch?iss={EHR}&launch=1", "en")
    assert status == 503
    assert "The app is not set up on this server" in page.text
    assert "SMART_CLIENT_ID and SMART_ALLOWED_ISSUERS (see the README)." in page.text


def test_lang_chooses_chinese_over_an_english_browser(configured_app: Flask) -> None:
    status, page = _get(configured_app, "/smart/launch?lang=zh-Hans", "en")
    assert (status, page.error) == (400, "launch-parameters")
    assert "本应用未经 EHR 启动而被打开" in page.text


@pytest.mark.parametrize("failure", list(Failure))
def test_every_failure_has_chinese_texts_that_keep_the_names_a_reader_must_type(
    failure: Failure,
) -> None:
    """All 23 failures (not only those a test can provoke) read in Chinese; setting names, URLs,
    FHIR resource types and parameter names are kept verbatim, since someone copies them."""
    english = FAILURES[failure]
    chinese = english.translated(wording("zh_Hans").gettext)
    assert chinese.status == english.status
    for en_text, zh_text in zip(
        (english.title, english.what_happened, english.what_to_do),
        (chinese.title, chinese.what_happened, chinese.what_to_do),
        strict=True,
    ):
        assert zh_text != en_text and CJK.search(zh_text), en_text
        kept = re.findall(r"[A-Z][A-Z_]{3,}|\.well-known/[\w-]+|'state'", en_text)
        kept += ["iss", "launch"] if "(iss and launch)" in en_text else []
        kept += [t for t in ("Patient", "Procedure", "Observation", "Condition") if t in en_text]
        for name in kept:
            assert name in zh_text, (name, zh_text)


def test_the_generic_http_error_advice_is_translated() -> None:
    assert CJK.search(wording("zh_Hans").gettext(HTTP_TO_DO))
    assert wording("en").gettext(HTTP_TO_DO) == HTTP_TO_DO
