"""``hfs-cds fit`` and ``hfs-cds validate``, run in-process through ``hfs-cds`` itself, so these
tests exercise the real argument handling and error paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cds_service.cli import main
from cds_service.model import load_model_card
from cds_service.model.card import DEFAULT_MODEL_CARD
from cds_service.recalibration import simulate_cohort, simulate_follow_up, write_ndjson_dir
from tests.test_recal_cohort import AS_OF, base_patients

Run = Callable[..., tuple[int, str, str]]
PUBLISHED_FILE = (
    Path(__file__).parents[1] / "cds_service" / "model" / "model_cards" / DEFAULT_MODEL_CARD
)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run a recalibration command in-process: ``code, out, err = run("fit", ...)``."""

    def call(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV cohort of 500 patients drawn (seeded) from the published card."""
    path = tmp_path_factory.mktemp("cohort") / "cohort.csv"
    path.write_text(simulate_cohort(load_model_card(), 500, seed=3).to_csv())
    return path


def test_fit_baseline_from_csv_writes_a_card_the_service_loads(
    run: Run, cohort_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "card.json"
    code, stdout, stderr = run(
        "fit", "--mode", "baseline", "--csv", str(cohort_csv), "--out", str(out)
    )
    assert code == 0, stderr
    card = load_model_card(out)
    assert card.fit["mode"] == "baseline" and card.fit["cohort"]["patients"] == 500
    assert card.fit["input"]["kind"] == "csv" and len(card.fit["input"]["sha256"]) == 64
    assert f"wrote {out}: fei-2022-hfs-rfa-recurrence-local" in stdout
    assert f"use it: CDS_MODEL_CARD={out}" in stdout
    assert stderr.startswith("cohort: 500 patients")


def test_fit_full_prints_estimates_and_the_lr_test(
    run: Run, cohort_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "full.json"
    saved = tmp_path / "table.csv"
    code, stdout, _ = run(
        "fit",
        "--mode",
        "full",
        "--csv",
        str(cohort_csv),
        "--out",
        str(out),
        "--save-cohort",
        str(saved),
    )
    assert code == 0
    assert "House-Brackmann grade (X2): -2." in stdout and "LR test: chi2" in stdout
    assert load_model_card(out).fit["mode"] == "full"
    assert (
        saved.read_text().splitlines()[0]
        == "patient_id,operation_minutes,hb_grade,time_months,event"
    )


def test_fit_from_a_bulk_export_directory_via_ndjson(run: Run, tmp_path: Path) -> None:
    patients = base_patients(40, seed=9, prefix="nd")
    sim = simulate_follow_up(load_model_card(), patients, seed=2, as_of=AS_OF)
    write_ndjson_dir(
        [r for rs in patients.values() for r in rs] + list(sim.resources), tmp_path / "x"
    )
    out = tmp_path / "card.json"
    code, _, stderr = run(
        "fit", "--mode", "baseline", "--ndjson", str(tmp_path / "x"), "--out", str(out),
        "--as-of", AS_OF.isoformat(),
    )  # fmt: skip
    assert code == 0, stderr
    fit = load_model_card(out).fit
    assert fit["input"]["kind"] == "ndjson" and fit["cohort"]["patients"] == 40
    assert fit["cohort"]["date_range"]["first_procedure"].startswith("2023-")


def test_validate_writes_the_side_by_side_report(
    run: Run, cohort_csv: Path, tmp_path: Path
) -> None:
    card = tmp_path / "card.json"
    assert run("fit", "--mode", "baseline", "--csv", str(cohort_csv), "--out", str(card))[0] == 0
    html = tmp_path / "report.html"
    code, stdout, stderr = run(
        "validate", "--model", str(card), "--cohort", str(cohort_csv), "--html", str(html),
        "--bootstrap", "20",
    )  # fmt: skip
    assert code == 0, stderr
    assert stdout.count("C-index") == 2  # the published card and the refit
    assert "(published)" in stdout and "(baseline)" in stdout
    page = html.read_text()
    assert page.count('<section class="model">') == 2 and page.count("<svg") == 4


def test_validate_the_published_card_alone(run: Run, cohort_csv: Path) -> None:
    code, stdout, _ = run(
        "validate", "--model", str(PUBLISHED_FILE), "--csv", str(cohort_csv), "--bootstrap", "20"
    )
    assert code == 0 and stdout.count("C-index") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--mode", "baseline", "--csv", "missing.csv"], "hfs-cds: cannot read missing.csv"),
        (["fit", "--mode", "full", "--csv", "{small}"], "too few to recalibrate"),
        (["fit", "--mode", "baseline", "--csv", "{small}", "--min-patients", "3"], "too few"),
        (["fit", "--mode", "baseline", "--csv", "{csv}", "--since", "2024-01-01"], "need dates"),
        (["fit", "--mode", "baseline", "--csv", "{csv}", "--model", "{bad}"], "not valid JSON"),
        (["fit", "--mode", "baseline", "--fhir", "ftp://x", "--out", "o"], "not an http(s) FHIR"),
        (["validate", "--model", "{bad}", "--csv", "{csv}"], "not valid JSON"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    run: Run, cohort_csv: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    small = tmp_path / "small.csv"
    small.write_text("operation_minutes,hb_grade,time_months,event\n40,2,3,1\n25,1,12,0\n")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    values = {"small": str(small), "csv": str(cohort_csv), "bad": str(bad)}
    argv = [a.format(**values) for a in args]
    if "--out" not in argv and argv[0] == "fit":
        argv += ["--out", str(tmp_path / "o.json")]
    code, stdout, stderr = run(*argv)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not (tmp_path / "o.json").exists()


def test_argument_errors_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--csv", "x.csv", "--out", "o.json"])
    assert exit_info.value.code == 2
    assert "--mode" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--mode", "full", "--csv", "a", "--ndjson", "b", "--out", "o"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_card_is_strict_json_and_takes_an_explicit_version(
    run: Run, cohort_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "card.json"
    run(
        "fit",
        "--mode",
        "full",
        "--csv",
        str(cohort_csv),
        "--out",
        str(out),
        "--card-version",
        "9.9.9",
    )

    def reject(constant: str) -> None:
        raise AssertionError(f"{constant} in the card: not valid JSON for other readers")

    data = json.loads(out.read_text(), parse_constant=reject)
    assert data["version"] == "9.9.9" == load_model_card(out).version
