"""``hfs-cds examples``: requests dated from a day, for every hook, that the service accepts.

The committed ``examples/`` folder is the command's output for the day its README.txt names; the
test below fails when the builders change and the folder was not written again (run the command
README.txt quotes). That the requests get the intended cards today and a year on is checked through
``hfs-cds preview`` in ``test_preview.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_service import create_app
from cds_service.examples.build import (
    CARD_PLACEHOLDER,
    INDEX_NAME,
    PATIENT_PLACEHOLDER,
    build_examples,
)
from cds_service.hooks.feedback import parse_feedback, parse_rfc3339
from cds_service.hooks.request import parse_hook_request
from cds_service.hooks.services import build_services
from cds_service.model import load_model_card
from cds_service.sandbox.bundles import iter_references
from fhir_mappings import load_value_sets
from tests.cds_invariants import assert_valid_cds_response

Cli = Callable[..., tuple[int, str, str]]
COMMITTED = Path(__file__).resolve().parents[1] / "examples"
DAY = date(2026, 12, 5)


def written(cli: Cli, out: Path, day: date) -> dict[str, str]:
    """Run ``hfs-cds examples --today DAY --out OUT``; the files it wrote, by name."""
    code, _, err = cli("examples", "--out", str(out), "--today", day.isoformat())
    assert code == 0, err
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.iterdir())}


def test_the_same_day_gives_the_same_files_and_another_day_other_dates(
    cli: Cli, tmp_path: Path
) -> None:
    first = written(cli, tmp_path / "a", DAY)
    again = written(cli, tmp_path / "b", DAY)
    later = written(cli, tmp_path / "c", DAY + timedelta(days=400))
    assert first == again
    assert set(later) == set(first)
    assert first["patient-view.json"] != later["patient-view.json"]
    assert "2026-12-02" in first["patient-view.json"]  # the ablation, 3 days before the day
    assert "2028-01-06" in later["patient-view.json"]  # the same, 400 days on


def test_the_committed_examples_are_the_commands_output_for_their_day(
    cli: Cli, tmp_path: Path
) -> None:
    """Regenerate with the command that examples/README.txt names when this fails."""
    index = (COMMITTED / INDEX_NAME).read_text(encoding="utf-8")
    match = re.search(r"hfs-cds examples --today (\d{4}-\d{2}-\d{2}) --out DIR", index)
    assert match, "examples/README.txt does not say which day it was written for"
    expected = written(cli, tmp_path, date.fromisoformat(match.group(1)))
    committed = {p.name: p.read_text(encoding="utf-8") for p in sorted(COMMITTED.iterdir())}
    assert committed == expected


def test_every_hook_the_service_offers_has_a_request_it_accepts() -> None:
    """Discovery's hooks, each with a prefetch-filled request: every prefetch key filled, the body
    valid for the service's context rules."""
    value_sets = load_value_sets()
    services = build_services(value_sets)
    examples = build_examples(DAY, value_sets, load_model_card())
    requests = [f for f in examples.files if f.kind == "hook"]
    assert {services[f.service_id].hook for f in requests if f.service_id} == {
        s.hook for s in services.values()
    }
    for f in requests:
        assert f.service_id is not None
        service = services[f.service_id]
        assert f.document["hook"] == service.hook
        assert set(f.document["prefetch"]) == set(service.prefetch), f.name
        parse_hook_request(f.document, service)  # raises on a context the service refuses


@pytest.mark.parametrize("day", [DAY, date(2027, 2, 28), date(2030, 7, 1)])
def test_every_record_lies_before_the_day(day: date) -> None:
    """Nothing dated on or after midnight UTC starting the day: a service whose clock reads any time
    of that day sees the whole record (an assessment ignores what is recorded after "now")."""
    midnight = datetime.combine(day, time(0), UTC)
    examples = build_examples(day, load_value_sets(), load_model_card())
    stamps = [
        value
        for f in examples.files
        if f.kind in ("hook", "bundle")
        for value in _strings(f.document)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}([+-]\d{2}:\d{2}|Z)", value)
    ]
    assert len(stamps) > 10, "the pattern finds the records' times"
    assert all(parse_rfc3339(s) < midnight for s in stamps)
    assert examples.discharge_until >= day + timedelta(days=3)


def test_feedback_names_a_card_reason_and_parses_once_the_uuid_is_in() -> None:
    examples = build_examples(DAY, load_value_sets(), load_model_card())
    feedback = next(f for f in examples.files if f.kind == "feedback")
    text = feedback.text.replace(CARD_PLACEHOLDER, "3e53faba-ef54-42a8-9d4b-ae90dac59173")
    (entry,) = parse_feedback(json.loads(text))
    assert entry.outcome.value == "overridden" and entry.reason is not None
    assert entry.outcome_at == datetime.combine(DAY, time(0), UTC)
    assert CARD_PLACEHOLDER in (COMMITTED / INDEX_NAME).read_text(encoding="utf-8")


def test_the_fetch_request_sends_no_prefetch_and_names_its_placeholders() -> None:
    examples = build_examples(DAY, load_value_sets(), load_model_card())
    fetch = next(f for f in examples.files if f.kind == "fetch")
    assert "prefetch" not in fetch.document
    assert fetch.document["context"]["patientId"] == PATIENT_PLACEHOLDER
    assert fetch.document["fhirAuthorization"]["token_type"] == "Bearer"
    assert fetch.document["fhirServer"].startswith("https://")


def test_the_bundle_scores_as_the_patient_view_card_says(cli: Cli, tmp_path: Path) -> None:
    """One pipeline: ``hfs-cds score bundle.json`` and the card for patient-view.json agree."""
    files = written(cli, tmp_path, DAY)
    now = datetime.combine(DAY, time(9), UTC)
    code, out, err = cli("score", str(tmp_path / "bundle.json"), "--at", now.isoformat(), "--json")
    assert code == 0, err
    app = create_app({"TESTING": True, "AUTH_REQUIRED": False, "CLOCK": lambda: now})
    try:
        response = app.test_client().post(
            "/cds-services/hfs-rfa-recurrence-patient-view",
            json=json.loads(files["patient-view.json"]),
        )
    finally:
        app.extensions["hfs_cds"].close()
    (card,) = assert_valid_cds_response(response.get_json())
    assert card["extension"]["org.example.hfs-cds.assessment"] == json.loads(out)
    assert json.loads(out)["status"] == "scored"


def test_references_resolve_within_each_request() -> None:
    """Every reference in a prefetch-filled request names a resource it carries (or the patient)."""
    examples = build_examples(DAY, load_value_sets(), load_model_card())
    for f in (f for f in examples.files if f.kind == "hook"):
        carried = {
            f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for value in f.document["prefetch"].values()
            for e in value.get("entry", [])
        }
        carried.add(f"Patient/{f.document['context']['patientId']}")
        refs = {r["reference"] for r in iter_references(f.document["prefetch"])}
        assert refs and refs <= carried, f.name


def test_an_unwritable_folder_is_one_line(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out, err = cli("examples", "--out", str(blocker / "sub"))
    assert code == 2 and out == ""
    assert err.startswith("hfs-cds examples: cannot write") and err.count("\n") == 1


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []
