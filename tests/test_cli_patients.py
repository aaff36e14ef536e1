"""``hfs-cds score`` on files that hold several patients: it names them and asks for ``--patient``,
refuses a ``--patient`` the file does not hold, and reads ``hfs-cds synth`` transactions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests import fhir_builders as fb

Cli = Callable[..., tuple[int, str, str]]


def _two_patients(tmp_path: Path) -> str:
    second = [fb.patient("p2"), fb.ablation_procedure(id="rfa2", patient="p2")]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(fb.bundle(*fb.typical_patient(), *second)))
    return str(path)


def test_several_patients_are_listed_and_one_must_be_chosen(cli: Cli, tmp_path: Path) -> None:
    path = _two_patients(tmp_path)
    code, out, err = cli("score", path, "--at", "2026-05-20")
    assert (code, out) == (2, "")
    assert err == f"hfs-cds: {path} holds 2 patients (p1, p2): choose one with --patient\n"


def test_the_chosen_patient_is_scored(cli: Cli, tmp_path: Path) -> None:
    code, out, _ = cli("score", _two_patients(tmp_path), "--patient", "p1", "--at", "2026-05-20")
    assert code == 0 and "Patient: Patient/p1" in out and "by 12 months" in out
    code, out, _ = cli("score", _two_patients(tmp_path), "--patient", "Patient/p2", "--json")
    assert code == 0 and json.loads(out)["patient"] == "Patient/p2"


def test_a_patient_the_file_does_not_hold_is_an_error(cli: Cli, tmp_path: Path) -> None:
    path = _two_patients(tmp_path)
    code, out, err = cli("score", path, "--patient", "p9")
    assert (code, out) == (2, "")
    assert err == f"hfs-cds: {path} holds no patient 'p9' (it holds p1, p2)\n"
    example = str(Path(__file__).parent / "data" / "bundle-42min-hb2.json")
    code, _, err = cli("score", example, "--patient", "p9")
    assert code == 2 and "holds no patient 'p9' (it holds p1)" in err


def test_a_synth_bundle_is_read_as_a_server_would_store_it(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "synthetic.json"
    code, _, _ = cli(
        "synth", "--seed", "7", "--patients", "12", "--today", "2026-01-15", "--out", str(path)
    )
    assert code == 0
    code, out, err = cli("score", str(path), "--at", "2026-01-15T12:00:00Z")
    assert (code, out) == (2, "")
    assert "holds 12 patients (hfs-synth-7-000, hfs-synth-7-001, " in err
    assert "hfs-synth-7-009 and 2 more): choose one with --patient" in err
    code, out, _ = cli(
        "score", str(path), "--patient", "hfs-synth-7-000", "--at", "2026-01-15T12:00:00Z", "--json"
    )
    assert code == 0
    assessment = json.loads(out)
    assert assessment["status"] == "scored"
    assert assessment["patient"] == "Patient/hfs-synth-7-000"
