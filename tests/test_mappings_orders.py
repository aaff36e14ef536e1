"""The follow-up/referral order value set and the pure "is a follow-up ordered" checks."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from fhir_mappings import load_value_sets
from fhir_mappings.orders import drafts_follow_up, follow_up_ordered
from tests import fhir_builders as fb

CODES = load_value_sets().follow_up_order


def _order(status: str = "active", code: str = "390906007", patient: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "status": status,
        "intent": "order",
        "code": fb.codeable((fb.SNOMED, code, "x")),
        "subject": {"reference": f"Patient/{patient}"},
    }


def test_the_packaged_set_holds_our_suggestion_code_the_project_code_and_a_referral() -> None:
    assert CODES.codes and (fb.SNOMED, "390906007") in CODES  # what our suggestion creates
    assert (fb.PROJECT, "follow-up-review") in CODES
    assert (fb.SNOMED, "306098008") in CODES  # referral to neurology service


def test_only_open_orders_for_this_patient_count() -> None:
    assert follow_up_ordered([_order("active")], "p1", CODES)
    assert follow_up_ordered([_order("draft")], "p1", CODES)
    for status in ("completed", "revoked", "entered-in-error", "on-hold", "unknown"):
        assert not follow_up_ordered([_order(status)], "p1", CODES), status
    assert not follow_up_ordered([_order(patient="p2")], "p1", CODES)
    assert not follow_up_ordered([{**_order(), "subject": None}], "p1", CODES)
    assert not follow_up_ordered([_order(code="73761001")], "p1", CODES)
    assert not follow_up_ordered([{**_order(), "resourceType": "Procedure"}], "p1", CODES)


def test_draft_orders_bundle_is_searched_for_follow_up_codes() -> None:
    assert drafts_follow_up(fb.bundle(_order(code="306098008")), CODES)
    assert not drafts_follow_up(fb.bundle(_order(code="73761001")), CODES)
    assert not drafts_follow_up({"resourceType": "Bundle"}, CODES)
    assert not drafts_follow_up("not a bundle", CODES)


def _packaged() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        files("fhir_mappings").joinpath("data", "valuesets.json").read_text("utf-8")
    )
    return data


def test_a_site_file_without_the_optional_set_loads_with_the_packaged_default(
    tmp_path: Path,
) -> None:
    """A site's value-set file written before this set existed must keep working unchanged."""
    data = _packaged()
    del data["follow_up_order"]
    path = tmp_path / "site.json"
    path.write_text(json.dumps(data))
    assert load_value_sets(path).follow_up_order.codes == CODES.codes


def test_a_site_file_may_replace_the_optional_set(tmp_path: Path) -> None:
    data = _packaged()
    data["follow_up_order"] = [{"system": "urn:local", "code": "hfs-clinic"}]
    path = tmp_path / "site.json"
    path.write_text(json.dumps(data))
    sets = load_value_sets(path)
    assert sets.codes("follow_up_order") == [("urn:local", "hfs-clinic")]
    assert ("urn:local", "hfs-clinic") not in sets.relevant  # not a mapping input
