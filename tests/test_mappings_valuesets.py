"""Value sets are data: the packaged file loads, membership is by (system, code), bad files fail
loudly with ValueSetError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_mappings import CodeSet, ValueSetError, ValueSets, load_value_sets
from fhir_mappings.valuesets import SET_NAMES
from tests.fhir_builders import CPT, HB_SYSTEM, ICD10CM, ICD10PCS, PROJECT, SNOMED, codeable

PACKAGED = Path(__file__).parents[1] / "fhir_mappings" / "data" / "valuesets.json"


def test_packaged_value_sets_load_with_code_system_urls() -> None:
    vs = load_value_sets()
    assert isinstance(vs, ValueSets)
    assert vs.version == "1.0.0"
    assert vs.project_code_system == PROJECT
    assert vs.house_brackmann_code_system == HB_SYSTEM


def test_default_is_loaded_once() -> None:
    assert load_value_sets() is load_value_sets()


@pytest.mark.parametrize(
    ("name", "system", "code"),
    [
        ("ablation_procedure", ICD10PCS, "005M3ZZ"),
        ("ablation_procedure", CPT, "64640"),
        ("ablation_procedure", PROJECT, "ct-guided-stylomastoid-rfa"),
        ("later_treatment_procedure", CPT, "61458"),
        ("operation_duration_observation", PROJECT, "operation-duration"),
        ("hb_grade_observation", PROJECT, "hb-grade-post-rfa"),
        ("hb_grade_observation", SNOMED, "112106009"),
        ("hemifacial_spasm_condition", ICD10CM, "G51.39"),
        ("hemifacial_spasm_condition", SNOMED, "13753008"),
        ("recurrence_finding", PROJECT, "hfs-recurrence"),
    ],
)
def test_membership_is_by_system_and_code(name: str, system: str, code: str) -> None:
    code_set = load_value_sets().code_set(name)
    assert (system, code) in code_set
    assert ("http://example.org/other", code) not in code_set
    assert (system, code.lower() + "x") not in code_set


def test_odd_membership_probes_are_not_members() -> None:
    ablation = load_value_sets().ablation_procedure
    assert [CPT, "64640"] not in ablation  # unhashable
    assert None not in ablation
    assert (CPT,) not in ablation


def test_match_returns_first_member_coding_with_the_value_set_display() -> None:
    ablation = load_value_sets().ablation_procedure
    concept = codeable(
        (SNOMED, "1234", "Something else"),
        (CPT, "64640", "local display"),
        (ICD10PCS, "005M3ZZ", "x"),
    )
    match = ablation.match(concept)
    assert match is not None
    assert (match.system, match.code) == (CPT, "64640")
    assert match.display == "Destruction by neurolytic agent; other peripheral nerve or branch"
    assert ablation.match({"coding": "not a list"}) is None
    assert ablation.match("64640") is None


def test_codes_lists_pairs_in_file_order_for_search_tokens() -> None:
    vs = load_value_sets()
    assert vs.codes("later_treatment_procedure") == [(CPT, "61458")]
    assert vs.codes("ablation_procedure")[0] == (ICD10PCS, "005M3ZZ")
    with pytest.raises(KeyError, match="unknown value set"):
        vs.codes("nonsense")


def test_describe_lists_system_and_code() -> None:
    text = load_value_sets().operation_duration_observation.describe()
    assert text == f"{PROJECT}|operation-duration"


def test_a_site_file_with_the_same_shape_loads(tmp_path: Path) -> None:
    data = json.loads(PACKAGED.read_text())
    data["ablation_procedure"].append({"system": "urn:local", "code": "RFA-7"})
    path = tmp_path / "site.json"
    path.write_text(json.dumps(data))
    vs = load_value_sets(path)
    assert ("urn:local", "RFA-7") in vs.ablation_procedure
    assert load_value_sets(str(path)) == vs
    assert isinstance(vs.ablation_procedure, CodeSet)


def _write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "vs.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _packaged_with(**changes: object) -> dict[str, object]:
    data: dict[str, object] = json.loads(PACKAGED.read_text())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ([], "top level must be a JSON object"),
        (_packaged_with(project_code_system=None), "'project_code_system' must be a non-empty"),
        (_packaged_with(house_brackmann_code_system=""), "'house_brackmann_code_system'"),
        (_packaged_with(version=3), "'version'"),
        (_packaged_with(recurrence_finding=None), "'recurrence_finding' must be a list"),
        (_packaged_with(hb_grade_observation={"system": "x"}), "'hb_grade_observation' must be"),
        (_packaged_with(ablation_procedure=["64640"]), "ablation_procedure[0] must be an object"),
        (_packaged_with(ablation_procedure=[{"system": CPT}]), "ablation_procedure[0]: 'code'"),
        (
            _packaged_with(ablation_procedure=[{"system": "", "code": "1"}]),
            "ablation_procedure[0]: 'system'",
        ),
        (
            _packaged_with(ablation_procedure=[{"system": CPT, "code": "1", "display": 5}]),
            "'display' must be a string",
        ),
    ],
)
def test_malformed_files_raise_value_set_error(
    tmp_path: Path, content: object, fragment: str
) -> None:
    with pytest.raises(ValueSetError) as raised:
        load_value_sets(_write(tmp_path, content))
    assert fragment in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_missing_file_raises_value_set_error(tmp_path: Path) -> None:
    with pytest.raises(ValueSetError, match="cannot read value sets"):
        load_value_sets(tmp_path / "absent.json")


def test_every_set_name_is_an_attribute() -> None:
    vs = load_value_sets()
    for name in SET_NAMES:
        assert vs.code_set(name).name == name
