"""Languages (issue 18) in the recalibration reports: ``hfs-cds validate --lang`` and ``hfs-cds fit
--lang`` say the same numbers in English and Simplified Chinese, the Chinese leaves no English
sentence behind, JSON and the written card do not depend on the language, and an unsupported
language is a one-line error. Run through ``hfs-cds`` itself (the real option handling)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from babel.numbers import format_decimal, format_percent

from cds_service.cli import main
from cds_service.i18n import SUPPORTED
from cds_service.model import load_model_card
from cds_service.model.card import DEFAULT_MODEL_CARD
from cds_service.recalibration import cohort_from_arrays, simulate_cohort
from cds_service.recalibration.notes import MESSAGES, Note, catalogue
from cds_service.recalibration.report import number

PUBLISHED = Path(__file__).parents[1] / "cds_service" / "model" / "model_cards" / DEFAULT_MODEL_CARD
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
CJK = re.compile(r"[\u4e00-\u9fff]")
WORD = re.compile(r"[A-Za-z][\w'/-]*")
#: English words a Chinese report keeps: proper names of methods and scales, standard
#: abbreviations, FHIR resource types, CSV column names and the --bootstrap option.
ALLOWED = {
    "C",
    "O/E",
    "Harrell",
    "Uno",
    "Kaplan-Meier",
    "House-Brackmann",
    "HB",
    "CSV",
    "csv",
    "FHIR",
    "JSON",
    "Wald",
    "Greenwood",
    "Beran",
    "Silverman",
    "ICI",
    "SD",
    "cloglog",
    "p",
    "n",
    "X1",
    "X2",
    "I",
    "II",
    "III",
    "sha256",
    "bootstrap",
    "--bootstrap",
    "event",
    "time_months",
    "Condition",
    "Observation",
    "Encounter",
}
BOOTSTRAP = "20"  # resamples: enough for intervals and the optimism correction, quick to run


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two CSV cohorts drawn (seeded) from the published card: ``full`` (300 patients followed
    past the 12-month horizon) and ``short`` (follow-up censored at 8 months, so the evaluation
    horizon falls back and 12 months is "not reported": the notes with most parameters)."""
    folder = tmp_path_factory.mktemp("i18n-validate")
    full = simulate_cohort(load_model_card(), 300, seed=3)
    t, e = full.time_months, full.event
    short = cohort_from_arrays(
        full.operation_minutes,
        full.hb_grade,
        np.minimum(t, 8.0),
        np.where(t <= 8.0, e, 0.0),
        source="csv",
    )
    paths = {"full": folder / "full.csv", "short": folder / "short.csv"}
    paths["full"].write_text(full.to_csv())
    paths["short"].write_text(short.to_csv())
    return paths


@pytest.fixture(scope="module")
def slope_card(cohorts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``slope`` card fitted on the full cohort: validated there it gets the optimism
    correction, and beside it the published card says why it gets none."""
    out = tmp_path_factory.mktemp("i18n-card") / "slope.json"
    assert main(["fit", "--mode", "slope", "--csv", str(cohorts["full"]), "--out", str(out)]) == 0
    return out


def _validate(
    capsys: pytest.CaptureFixture[str], card: Path, cohort: Path, lang: str, fmt: str
) -> str:
    args = ["validate", "--model", str(card), "--csv", str(cohort), "--bootstrap", BOOTSTRAP]
    code, out, err = _run(capsys, *args, "--format", fmt, "--lang", lang)
    assert code == 0, err
    return out


def _visible(page: str) -> str:
    """The text a reader sees (chart labels included), without tags, styles or attributes."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def _numbers(text: str) -> list[str]:
    return sorted(NUMBER.findall(text))


def _english_left(text: str) -> list[str]:
    """English words outside identifiers (card ids and versions, checksums, file names) and the
    allowed names; a sentence left untranslated shows up here as its words."""
    text = re.sub(r"fei-[\w.+-]+ \d[\w.+-]*|\b[0-9a-f]{12,64}\b|\S+\.csv", " ", text)
    return sorted({w for w in WORD.findall(text) if w not in ALLOWED})


def _same_json(a: str, b: str) -> tuple[Any, Any]:
    """Both reports without their timings (seconds differ from run to run)."""

    def strip(text: str) -> Any:
        data = json.loads(text)
        for model in data["models"]:
            model["bootstrap"].pop("seconds")
            model["bootstrap"].pop("optimism_seconds", None)
        return data

    return strip(a), strip(b)


@pytest.mark.parametrize("which", ["full", "short"])
@pytest.mark.parametrize("fmt", ["text", "html"])
def test_validate_says_the_same_numbers_in_chinese(
    capsys: pytest.CaptureFixture[str],
    cohorts: dict[str, Path],
    slope_card: Path,
    which: str,
    fmt: str,
) -> None:
    card = slope_card if which == "full" else PUBLISHED
    en = _validate(capsys, card, cohorts[which], "en", fmt)
    zh = _validate(capsys, card, cohorts[which], "zh-Hans", fmt)
    if fmt == "html":
        assert '<html lang="zh-Hans">' in zh and '<html lang="en">' in en
        en, zh = _visible(en), _visible(zh)
    assert CJK.search(zh) and not CJK.search(en)
    assert _numbers(zh) == _numbers(en)
    assert "校准斜率" in zh and "Harrell C 指数" in zh and "置信区间" in zh
    if which == "full":
        assert "乐观偏差校正" in zh and "自助法" in zh  # the slope card's optimism correction
    else:
        assert "不报告" in zh and "not reported" in en  # 12 months is beyond the horizon


@pytest.mark.parametrize("which", ["full", "short"])
@pytest.mark.parametrize("fmt", ["text", "html"])
def test_the_chinese_report_leaves_no_english_sentence(
    capsys: pytest.CaptureFixture[str],
    cohorts: dict[str, Path],
    slope_card: Path,
    which: str,
    fmt: str,
) -> None:
    card = slope_card if which == "full" else PUBLISHED
    zh = _validate(capsys, card, cohorts[which], "zh-Hans", fmt)
    text = _visible(zh) if fmt == "html" else zh
    assert _english_left(text) == []
    # Control: the same check finds the English report's words.
    en = _validate(capsys, card, cohorts[which], "en", fmt)
    assert {"months", "patients", "recurrences"} <= set(_english_left(en))


def test_validate_json_does_not_depend_on_the_language(
    capsys: pytest.CaptureFixture[str],
    cohorts: dict[str, Path],
    slope_card: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    en = _validate(capsys, slope_card, cohorts["full"], "en", "json")
    zh = _validate(capsys, slope_card, cohorts["full"], "zh-Hans", "json")
    assert not CJK.search(zh)
    a, b = _same_json(en, zh)
    assert a == b
    assert a["models"][1]["label"].endswith("(slope)")  # JSON keeps its English texts
    # CDS_LANGUAGE is the default language, and JSON ignores it too.
    monkeypatch.setenv("CDS_LANGUAGE", "zh-Hans")
    args = ["validate", "--model", str(slope_card), "--csv", str(cohorts["full"])]
    code, text, _ = _run(capsys, *args, "--bootstrap", "0")
    assert code == 0 and "评估时间点" in text
    code, env_json, _ = _run(capsys, *args, "--bootstrap", BOOTSTRAP, "--format", "json")
    assert code == 0 and _same_json(env_json, en)[0] == a


def test_fit_speaks_the_language_and_writes_the_same_card(
    capsys: pytest.CaptureFixture[str], cohorts: dict[str, Path], tmp_path: Path
) -> None:
    outputs = {}
    for lang in ("en", "zh-Hans"):
        out = tmp_path / f"{lang}.json"
        args = ["fit", "--mode", "full", "--csv", str(cohorts["short"]), "--out", str(out)]
        code, stdout, stderr = _run(capsys, *args, "--allow-short-follow-up", "--lang", lang)
        assert code == 0, stderr
        card = json.loads(out.read_text())
        card["fit"].pop("fitted_at", None)
        outputs[lang] = (stdout.replace(str(out), "CARD"), stderr, card)
    (en_out, en_err, en_card), (zh_out, zh_err, zh_card) = outputs["en"], outputs["zh-Hans"]
    assert en_card == zh_card  # the card is for machines and the service: English
    assert "LR test" in en_out and "似然比检验" in zh_out and "面神经功能分级" in zh_out
    assert _numbers(zh_out) == _numbers(en_out)
    assert "警告" in zh_err and "warning" in en_err  # short follow-up: the baseline is extended
    assert _numbers(zh_err) == _numbers(en_err)


@pytest.mark.parametrize("command", ["validate", "fit"])
@pytest.mark.parametrize("lang", ["fr", "zh-TW"])
def test_an_unsupported_language_is_a_clean_error(
    capsys: pytest.CaptureFixture[str], cohorts: dict[str, Path], command: str, lang: str
) -> None:
    args = ["--csv", str(cohorts["full"]), "--lang", lang]
    if command == "validate":
        args = ["validate", "--model", str(PUBLISHED), *args]
    else:
        out = str(cohorts["full"].with_name("never-written.json"))
        args = ["fit", "--mode", "baseline", "--out", out, *args]
    code, out, err = _run(capsys, *args)
    assert code == 2 and out == ""
    assert "--lang: unsupported language" in err and "Traceback" not in err


@pytest.mark.parametrize("locale", SUPPORTED)
def test_report_numbers_read_as_the_locales_cldr_patterns_say(locale: str) -> None:
    """The reports format a number once for every language: that must be each locale's own form."""
    for value in (0.0, 0.049, 0.5, 0.7149, 1.0, 1.234):
        assert number(value) == format_decimal(value, "0.00", locale=locale)
        assert number(value, percent=True) == format_percent(value, "0.0%", locale=locale)


def test_every_note_is_said_in_every_language() -> None:
    """Each note code has a message, and its Chinese keeps the note's numbers."""
    params: dict[str, object] = {
        "at_start": 26,
        "months": 11.97,
        "model_months": 12.0,
        "at_risk": 9,
        "min_at_risk": 10,
        "at_model": 3,
        "found": 2,
        "wanted": 3,
        "followed": 4,
        "month": 12.0,
        "horizon": 8.5,
        "error": "separation",
        "failed": 5,
        "replicates": 200,
        "why": Note.of("too-few-resamples"),
        "mode": Note.of("fit-mode-slope"),
        "failures": 2,
        "card": "c 1",
        "kind": Note.of("fit-mode-published"),
    }
    zh = catalogue("zh_Hans")
    for code, message in MESSAGES.items():
        wanted = {k: v for k, v in params.items() if f"%({k})" in message}
        note = Note.of(code, **wanted)
        english, chinese = note.say(), note.say(zh)
        assert english != chinese and CJK.search(chinese), code
        assert _numbers(chinese) == _numbers(english), code
    with pytest.raises(ValueError, match="unknown note code"):
        Note.of("no-such-note")
