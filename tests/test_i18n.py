"""Languages (issue 18): complete catalogues, the same numbers in every language, who chooses.

Every renderer here runs in English and Simplified Chinese on the HB I/II/III × 20/42 min × 0.5/3.3/11
months grid, and the numbers are parsed back out of both texts and compared: a translation may
reword, never renumber. The machine-readable extension must be byte-identical across languages.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from babel.dates import format_date
from babel.numbers import format_percent
from flask import Flask

from cds_service import create_app
from cds_service.assessment import Assessment, Assessor
from cds_service.cli import render_text
from cds_service.hooks.cards import EXTENSION_KEY, CardContext, build_cards
from cds_service.i18n import SUPPORTED, catalogues, negotiate, normalize, parse
from cds_service.model import ModelCardError, parse_model_card
from cds_service.model.card import DEFAULT_MODEL_CARD, load_model_card
from cds_service.presentation import percent, present
from cds_service.presentation.wording import wording
from cds_service.security.trusted_issuers import TrustConfigError, parse_trusted_issuers
from tests.hook_calls import SERVICE_IDS, hook_body, recent_patient
from tests.jwt_factory import bearer, claims, mint, signing_key
from tests.test_presentation import DETAIL_LIMIT, GRID, _assess

#: A figure as people read it ("<5%", ">95%", "15%"), in the order the text gives them.
FIGURE = re.compile(r"[<>]?\d+%")
ZH_DATE = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})日")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
CJK = re.compile(r"[\u4e00-\u9fff]")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _figures(text: str) -> list[str]:
    return FIGURE.findall(text)


def _dates(text: str) -> list[date]:
    """Every calendar date in a text, ISO or Chinese, in order (ISO times are left out)."""
    found = [(m.start(), date(*map(int, m.groups()))) for m in ZH_DATE.finditer(text)]
    found += [
        (m.start(), date.fromisoformat(m.group()))
        for m in ISO_DATE.finditer(text)
        if text[m.end() : m.end() + 1] != "T"
    ]
    return [d for _, d in sorted(found)]


def _cards(a: Assessment, locale: str) -> dict[str, Any]:
    ctx = CardContext(
        "p1",
        model_card_url="https://cds.example/model-card",
        app_launch_url="https://cds.example/smart/launch",
        locale=parse(locale),
    )
    (card,) = build_cards(a, ctx)
    return card


# -- catalogues ------------------------------------------------------------------------------------


def test_the_catalogues_are_complete_and_compiled() -> None:
    """Every marked message has a Chinese translation and every .mo is its .po's compilation
    (run ``python -m cds_service.i18n update``, translate, then ``compile``)."""
    assert list(catalogues.problems()) == []


def test_an_untranslated_message_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    read = catalogues.read

    def without_one(locale: Any) -> Any:
        catalog = read(locale)
        if locale == "zh_Hans":
            catalog["To fix:"].string = ""
        return catalog

    monkeypatch.setattr(catalogues, "read", without_one)
    assert any("untranslated" in p and "To fix:" in p for p in catalogues.problems())


def test_a_stale_compiled_catalogue_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stale = tmp_path / "messages.mo"
    stale.write_bytes(catalogues.mo_path("zh_Hans").read_bytes()[:-8])
    monkeypatch.setattr(catalogues, "mo_path", lambda locale: stale)
    assert any("not the compilation" in p for p in catalogues.problems())


@pytest.mark.parametrize("locale", SUPPORTED)
def test_percentages_read_as_the_locales_cldr_pattern_says(locale: str) -> None:
    """``percent`` is precomputed (no Babel per risk on the hot path): it must agree with the
    locale's own percent format wherever it shows a plain number."""
    for value in (0.05, 0.051, 0.125, 0.15, 0.5, 0.61, 0.949, 0.95):
        assert percent(value) == format_percent(round(value + 1e-12, 2), locale=locale)


def test_chinese_dates_are_the_cldr_long_form() -> None:
    for day in (date(2027, 1, 2), date(2026, 12, 31)):
        assert wording("zh_Hans").date(day) == format_date(day, "long", locale="zh_Hans")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh_Hans"),
        ("en-GB,en;q=0.9,zh;q=0.8", "en"),
        ("fr-FR,zh-Hans;q=0.5", "zh_Hans"),
        ("zh-TW,zh-Hant;q=0.9", "en"),  # Traditional script is not offered Simplified
        ("en;q=0.2,zh;q=0.8", "zh_Hans"),
        ("", "en"),
        ("garbage;q=x", "en"),
    ],
)
def test_accept_language_negotiation(header: str, expected: str) -> None:
    assert negotiate(header) == expected


def test_configured_languages_are_checked() -> None:
    assert (normalize("zh-Hans"), normalize("ZH_cn"), normalize("en-US")) == (
        "zh_Hans",
        "zh_Hans",
        "en",
    )
    with pytest.raises(ValueError, match="unsupported language 'fr'"):
        parse("fr")


# -- the model card's own texts ----------------------------------------------------------------------


def _published() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(load_model_card_bytes())
    return data


def load_model_card_bytes() -> bytes:
    from importlib import resources

    return (resources.files("cds_service.model") / "model_cards" / DEFAULT_MODEL_CARD).read_bytes()


def test_the_packaged_card_is_translated_in_full() -> None:
    card = load_model_card()
    zh, en = card.texts("zh_Hans"), card.texts("en")
    assert card.untranslated == {"zh_Hans": ()}
    assert len(zh.limitations) == len(en.limitations) and len(zh.assumptions) == len(en.assumptions)
    for text in (
        zh.caveat,
        *zh.limitations,
        *zh.assumptions,
        *(t.advice for t in zh.tiers.values()),
    ):
        assert CJK.search(text), text


def test_a_missing_translation_reads_english_and_is_named_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _published()
    del data["translations"]["zh-Hans"]["tiers"]["high"]["advice"]
    del data["translations"]["zh-Hans"]["caveat"]
    path = tmp_path / "site-card.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="cds_service.model.card"):
        card = load_model_card(path)
    zh = card.texts("zh_Hans")
    assert zh.caveat == card.caveat and zh.tiers["high"].advice == card.tiers[0].advice
    assert CJK.search(zh.tiers["high"].risk_sentence)  # the rest stays translated
    assert "caveat" in caplog.text and "tiers.high.advice" in caplog.text


def test_a_card_with_plain_strings_only_still_loads() -> None:
    """Backward compatible: a card without a translations block reads English in Chinese."""
    data = _published()
    del data["translations"]
    card = parse_model_card(data)
    assert card.texts("zh_Hans") == card.texts("en")
    assert card.untranslated == {"zh_Hans": ("all texts",)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update({"fr": {}}), "translations.fr: expected one of zh-Hans"),
        (lambda t: t["zh-Hans"]["limitations"].pop(), "texts for the 15 English ones"),
        (lambda t: t["zh-Hans"]["tiers"]["high"].update(label=""), "non-empty string"),
    ],
)
def test_a_broken_translations_block_is_a_model_card_error(change: Any, message: str) -> None:
    data = _published()
    change(data["translations"])
    with pytest.raises(ModelCardError, match=message):
        parse_model_card(data)


# -- the same numbers in both languages ---------------------------------------------------------------


@pytest.mark.parametrize(("hb", "minutes", "months"), GRID)
def test_card_says_the_same_numbers_in_both_languages(
    assessor: Assessor, hb: str, minutes: int, months: float
) -> None:
    a = _assess(assessor, hb, minutes, months)
    en, zh = _cards(a, "en"), _cards(a, "zh-Hans")
    for key in ("summary", "detail"):
        assert _figures(zh[key]) == _figures(en[key]), key
        assert _dates(zh[key]) == _dates(en[key]), key
        assert CJK.search(zh[key]) and not CJK.search(en[key])
    for card in (en, zh):
        assert len(card["summary"]) < 140
        assert len(card["detail"]) <= DETAIL_LIMIT
    # Language-neutral parts: the indicator, the extension (byte for byte), codes and dates.
    assert zh["indicator"] == en["indicator"]
    assert json.dumps(zh["extension"], sort_keys=True) == json.dumps(
        en["extension"], sort_keys=True
    )
    assert set(zh["extension"]) == {EXTENSION_KEY}
    en_actions = [s["actions"][0]["resource"] for s in en["suggestions"]]
    zh_actions = [s["actions"][0]["resource"] for s in zh["suggestions"]]
    assert [r["resourceType"] for r in zh_actions] == [r["resourceType"] for r in en_actions]
    for e, z in zip(en_actions, zh_actions, strict=True):
        assert z.get("occurrenceTiming") == e.get("occurrenceTiming")
        assert z.get("prediction") == e.get("prediction")
    assert [s["isRecommended"] for s in zh["suggestions"]] == [
        s["isRecommended"] for s in en["suggestions"]
    ]


@pytest.mark.parametrize(("hb", "minutes", "months"), GRID)
def test_cli_text_says_the_same_numbers_in_both_languages(
    assessor: Assessor, hb: str, minutes: int, months: float
) -> None:
    a = _assess(assessor, hb, minutes, months)
    en, zh = render_text(a, "en"), render_text(a, "zh_Hans")
    assert _figures(zh) == _figures(en)
    assert _dates(zh) == _dates(en)
    assert CJK.search(zh) and not CJK.search(en)


def test_a_statement_said_in_another_language_keeps_its_numbers(assessor: Assessor) -> None:
    a = _assess(assessor, "II", 42, 3.3)
    en = present(a)
    zh = en.in_locale("zh_Hans")
    assert [(r.risk, r.low, r.high) for r in zh.risks] == [
        (r.risk, r.low, r.high) for r in en.risks
    ]
    assert zh.estimate_tier == en.estimate_tier and zh.schedule_tier == en.schedule_tier
    assert [r.on for r in zh.reviews_ahead] == [r.on for r in en.reviews_ahead]
    assert zh.summary != en.summary and zh.in_locale("en") == en


def test_a_not_scored_card_explains_in_chinese_and_keeps_the_english_detail(
    assessor: Assessor,
) -> None:
    a = _assess(assessor, "IV", 42, 0.5)  # outside the model: palsy safety advice
    en, zh = _cards(a, "en"), _cards(a, "zh-Hans")
    assert zh["indicator"] == en["indicator"] == "warning"
    assert "保护眼睛" in zh["detail"] and "处理方法" in zh["detail"]
    problem = a.problems[0]
    assert problem.message.split(" (")[0][:40] in zh["detail"].replace("\\", "")
    assert len(zh["summary"]) < 140 and CJK.search(zh["summary"])


def test_cli_lang_option(cli: Any, tmp_path: Path, assessor: Assessor) -> None:
    bundle = Path(__file__).parent / "data" / "bundle-42min-hb2.json"
    code, zh, _ = cli("score", str(bundle), "--at", "2026-11-25T10:00:00Z", "--lang", "zh-CN")
    assert code == 0 and "复发风险" in zh and "House-Brackmann 面神经功能分级" in zh
    code, en, _ = cli("score", str(bundle), "--at", "2026-11-25T10:00:00Z")
    assert code == 0 and not CJK.search(en) and _figures(en) == _figures(zh)
    code, _, err = cli("score", str(bundle), "--lang", "fr")
    assert code == 2 and "--lang: unsupported language 'fr'" in err


# -- who chooses the language ---------------------------------------------------------------------------

BASE = "https://cds.example.org"
ZH_ISS, PLAIN_ISS = "https://zh-ehr.example.org", "https://en-ehr.example.org"


def _secured(tmp_path: Path, language: str | None) -> Flask:
    zh_key, plain_key = signing_key("ES384", "zh"), signing_key("ES384", "plain")
    trust = {
        "issuers": [
            {"iss": ZH_ISS, "jwks": {"keys": [zh_key.public_jwk()]}, "language": "zh-Hans"},
            {"iss": PLAIN_ISS, "jwks": {"keys": [plain_key.public_jwk()]}},
        ]
    }
    path = tmp_path / "trusted-issuers.json"
    path.write_text(json.dumps(trust))
    config: dict[str, Any] = {
        "TESTING": True,
        "TRUSTED_ISSUERS_FILE": str(path),
        "PUBLIC_BASE_URL": BASE + "/",
    }
    if language:
        config["LANGUAGE"] = language
    return create_app(config)


def _summary(app: Flask, iss: str, name: str) -> str:
    path = f"/cds-services/{SERVICE_IDS['patient-view']}"
    jwt = mint(signing_key("ES384", name), claims(BASE + path, iss, now=time.time()))
    response = app.test_client().post(
        path,
        json=hook_body("patient-view", recent_patient()),
        headers={"Authorization": bearer(jwt)},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.get_json()["cards"][0]["summary"])


@pytest.mark.parametrize("configured", [None, "en", "zh-Hans"])
def test_the_trust_lists_issuer_language_wins_over_cds_language(
    tmp_path: Path, configured: str | None
) -> None:
    app = _secured(tmp_path, configured)
    try:
        assert CJK.search(_summary(app, ZH_ISS, "zh"))  # the issuer says zh-Hans: always Chinese
        plain = _summary(app, PLAIN_ISS, "plain")  # no language in its entry: CDS_LANGUAGE
        assert bool(CJK.search(plain)) == (configured == "zh-Hans")
    finally:
        app.extensions["hfs_cds"].close()


def test_a_trust_list_language_must_be_supported(tmp_path: Path) -> None:
    entry = {"iss": ZH_ISS, "jwks": {"keys": [signing_key("ES384", "zh").public_jwk()]}}
    with pytest.raises(TrustConfigError, match="language: unsupported language 'de'"):
        parse_trusted_issuers({"issuers": [{**entry, "language": "de"}]}, tmp_path)
    (issuer,) = parse_trusted_issuers({"issuers": [{**entry, "language": "zh-CN"}]}, tmp_path)
    assert issuer.language == "zh_Hans"


# -- the SMART app's language ----------------------------------------------------------------------


def _app_with_trust(tmp_path: Path, fhir_base: str, language: str | None) -> Flask:
    """The service with a trust list whose one EHR serves FHIR at ``fhir_base`` in ``language``,
    and CDS_LANGUAGE zh-Hans (so each rule above it has something to beat)."""
    entry: dict[str, Any] = {
        "iss": ZH_ISS,
        "jwks": {"keys": [signing_key("ES384", "zh").public_jwk()]},
        "fhir_servers": [fhir_base],
    }
    if language:
        entry["language"] = language
    path = tmp_path / "trusted-issuers.json"
    path.write_text(json.dumps({"issuers": [entry]}))
    return create_app({"TESTING": True, "TRUSTED_ISSUERS_FILE": str(path), "LANGUAGE": "zh-Hans"})


@pytest.mark.parametrize(
    ("query", "cookie", "trust", "accept", "expected"),
    [
        ("", None, None, "", "zh_Hans"),  # nothing said: CDS_LANGUAGE
        ("", None, None, "en-GB,en;q=0.9", "en"),  # the browser's language beats the default
        ("", None, "zh-Hans", "en-GB", "zh_Hans"),  # the EHR's trust-list language beats it
        ("", "en", "zh-Hans", "zh-CN", "en"),  # the launch's locale beats the trust list
        ("?lang=zh-Hans", "en", None, "en-GB", "zh_Hans"),  # the page's own switch beats all
        ("?lang=xx", None, None, "en-GB", "en"),  # an unknown choice is ignored
    ],
)
def test_the_app_chooses_its_language_in_order(
    tmp_path: Path,
    query: str,
    cookie: str | None,
    trust: str | None,
    accept: str,
    expected: str,
) -> None:
    from cds_service.smart import views

    fhir_base = "https://ehr.example.org/fhir"
    app = _app_with_trust(tmp_path, fhir_base, trust)
    headers = {"Accept-Language": accept} if accept else {}
    if cookie:
        headers["Cookie"] = f"__Host-{views.LANG_COOKIE}={cookie}"
    try:
        with app.test_request_context(f"/smart/app/r/{query}", headers=headers):
            assert views._page_locale(fhir_base + "/") == expected
    finally:
        app.extensions["hfs_cds"].close()


def test_the_model_card_page_follows_its_lang_parameter(client: Any) -> None:
    zh = client.get("/model-card?lang=zh-Hans").get_data(as_text=True)
    en = client.get("/model-card").get_data(as_text=True)
    assert '<html lang="zh-Hans">' in zh and "局限性" in zh and "单中心回顾性队列" in zh
    assert '<html lang="en">' in en and not CJK.search(en)
    assert "99例成人原发性面肌痉挛患者" in zh  # the population, from the card's translation
    # The same numbers (tier thresholds, coefficients, hours, the 63% vs 72%), however worded;
    # the population's study period is left out (month names in English, numbers in Chinese).
    population = re.compile(r'<p data-testid="population">.*?</p>', re.S)
    zh, en = population.sub("", zh), population.sub("", en)
    assert sorted(NUMBER.findall(_visible(zh))) == sorted(NUMBER.findall(_visible(en)))


def _visible(page: str) -> str:
    """A page's text as a reader sees it (tags dropped, entities such as &#39; decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_every_override_reason_is_translated(assessor: Assessor) -> None:
    from cds_service.hooks.cards import OVERRIDE_DISPLAYS
    from cds_service.store.feedback import OVERRIDE_REASONS

    assert tuple(display for _, display in OVERRIDE_REASONS) == OVERRIDE_DISPLAYS
    a = _assess(assessor, "II", 42, 0.5)
    en, zh = _cards(a, "en"), _cards(a, "zh-Hans")
    assert [r["code"] for r in zh["overrideReasons"]] == [r["code"] for r in en["overrideReasons"]]
    assert all(CJK.search(r["display"]) for r in zh["overrideReasons"])


def test_a_missing_catalogue_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A broken install (no compiled zh_Hans catalogue) fails when the app is created, not on the
    first Chinese card."""
    import cds_service.i18n as i18n

    monkeypatch.setattr(i18n, "LOCALES_DIR", tmp_path)
    i18n.translations.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="messages.mo"):
            create_app({"TESTING": True, "AUTH_REQUIRED": False})
    finally:
        i18n.translations.cache_clear()
