"""Issue 15, item 7, in process: another server's patient, a chunked body over the limit, and a
``hookInstance`` with control characters (the header limit of gunicorn is in
``test_gunicorn_limits.py``).

* an absolute subject reference to another FHIR server counted as the patient when the id matched:
  now it is another patient (relative references, and absolute ones to the hook's own
  ``fhirServer`` however spelled, still count; without a ``fhirServer``, see
  :mod:`fhir_mappings.subjects`);
* a chunked body over ``CDS_MAX_REQUEST_BYTES`` was cut at the limit and answered 400 "not valid
  JSON": now 413 with an OperationOutcome, as a body with a Content-Length over the limit is;
* ``hookInstance`` went to the audit trail raw, control characters included: now a value that is
  not a plain token (every UUID is one) is refused with a 400, and nothing is audited.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from cds_service.store.schema import audit_record
from fhir_mappings import map_patient
from fhir_mappings.references import normalise_base, reference_base, same_base
from tests import fhir_builders as fb
from tests.cds_invariants import assert_valid_cds_response
from tests.hook_calls import SERVICE_IDS, HookCaller, hook_body, recent_patient

PATH = f"/cds-services/{SERVICE_IDS['patient-view']}"
EHR_FHIR = "https://ehr.example.org/fhir"
OTHER = "https://registry.example.net/fhir"


def _with_subject(resources: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    for resource in resources:
        resource["subject"] = {"reference": reference}
    return resources


# -- another server's patient ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "scored"),
    [
        ("Patient/p1", True),
        (f"{EHR_FHIR}/Patient/p1", True),
        ("https://EHR.example.org:443/fhir/Patient/p1/_history/3", True),  # the same server
        ("http://ehr.example.org/fhir/Patient/p1", True),  # FHIR: http and https are one
        (f"{OTHER}/Patient/p1", False),
        ("https://ehr.example.org/fhir2/Patient/p1", False),
        ("https://ehr.example.org:8443/fhir/Patient/p1", False),
    ],
)
def test_a_subject_on_another_server_is_another_patient(
    hooks: HookCaller, reference: str, scored: bool
) -> None:
    resources = _with_subject(recent_patient(), reference)
    body = hook_body("patient-view", resources, fhirServer=EHR_FHIR)
    cards = assert_valid_cds_response(hooks.post(SERVICE_IDS["patient-view"], body).get_json())
    assert len(cards) == (1 if scored else 0)


def test_the_mapping_says_why_it_set_another_servers_record_aside() -> None:
    theirs = fb.ablation_procedure(id="theirs", subject={"reference": f"{OTHER}/Patient/p1"})
    inputs = map_patient([theirs], "p1", fhir_server=EHR_FHIR)
    assert inputs.ablation is None
    assert inputs.ignored == ("Procedure/theirs: subject is a patient on another FHIR server",)
    assert OTHER not in " ".join(inputs.ignored)


@pytest.mark.parametrize(
    ("references", "kept"),
    [
        # One server throughout (a file exported from it): its absolute references count.
        ((f"{OTHER}/Patient/p1", f"{OTHER}/Patient/p1"), 2),
        # Relative references say which server is home; an absolute one might be anyone.
        (("Patient/p1", f"{OTHER}/Patient/p1"), 1),
        # Two servers: no telling which one is home.
        ((f"{EHR_FHIR}/Patient/p1", f"{OTHER}/Patient/p1"), 0),
    ],
)
def test_without_a_fhir_server_absolute_references_count_only_from_one_server_alone(
    references: tuple[str, str], kept: int
) -> None:
    procedure = fb.ablation_procedure(subject={"reference": references[0]})
    grade = fb.hb_observation(subject={"reference": references[1]})
    inputs = map_patient([procedure, grade], "p1")
    set_aside = [note for note in inputs.ignored if "another FHIR server" in note]
    assert len(set_aside) == 2 - kept


def test_the_patient_is_not_inferred_from_another_server() -> None:
    resources = [
        fb.ablation_procedure(subject={"reference": "Patient/p1"}),
        fb.hb_observation(subject={"reference": f"{OTHER}/Patient/p2"}),
    ]
    assert map_patient(resources).patient_id == "p1"


def test_base_urls_compare_as_fhir_compares_them() -> None:
    assert reference_base(f"{EHR_FHIR}/Patient/p1/_history/2") == EHR_FHIR
    assert reference_base("Patient/p1") is None
    assert normalise_base("https://EHR.example.org:443/fhir/") == "//ehr.example.org/fhir"
    assert same_base("http://ehr.example.org:80/fhir", "https://ehr.example.org/fhir")
    assert not same_base("https://ehr.example.org/FHIR", "https://ehr.example.org/fhir")
    assert not same_base("https://ehr.example.org/fhir", None)


# -- a chunked body over the limit -------------------------------------------------------------------

LIMIT = 10_000


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"TESTING": True, "AUTH_REQUIRED": False, "MAX_REQUEST_BYTES": LIMIT}


def _chunked(client: FlaskClient, body: bytes) -> Any:
    """A POST without Content-Length, as a server that reads chunked bodies hands it to the app."""
    return client.post(
        PATH,
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_the_limit_is_413(client: FlaskClient) -> None:
    body = json.dumps(hook_body("patient-view", recent_patient(), pad="x" * LIMIT)).encode()
    response = _chunked(client, body)
    assert response.status_code == 413
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "too-costly"


def test_a_chunked_body_of_exactly_the_limit_is_read(client: FlaskClient) -> None:
    body = json.dumps(hook_body("patient-view", recent_patient())).encode()
    body = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(body) == LIMIT
    response = _chunked(client, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(assert_valid_cds_response(response.get_json())) == 1


# -- hookInstance --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hook_instance",
    [
        'd1577c69-dfbe-44ad-ba6d-3e05e953b2ea\n{"forged": 1}',
        "a\u0000b",
        "x\ty",
        "\u202eabc",
        "a" * 65,
    ],
)
def test_a_hook_instance_that_is_not_a_plain_token_is_refused(
    app: Flask, hooks: HookCaller, hook_instance: str
) -> None:
    body = hook_body("patient-view", recent_patient(), hookInstance=hook_instance)
    response = hooks.post(SERVICE_IDS["patient-view"], body)
    assert response.status_code == 400
    assert "hookInstance" in response.get_json()["issue"][0]["diagnostics"]
    runtime = app.extensions["hfs_cds"]
    assert runtime.audit.flush(10.0)
    with runtime.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_record)).scalar() == 0


@pytest.mark.parametrize(
    "hook_instance", ["d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "urn-uuid.1_2", "A" * 64]
)
def test_uuids_and_plain_tokens_are_kept_as_sent(
    app: Flask, hooks: HookCaller, hook_instance: str
) -> None:
    body = hook_body("patient-view", recent_patient(), hookInstance=hook_instance)
    response = hooks.post(SERVICE_IDS["patient-view"], body)
    assert len(assert_valid_cds_response(response.get_json())) == 1
    runtime = app.extensions["hfs_cds"]
    assert runtime.audit.flush(10.0)
    with runtime.store.engine.connect() as conn:
        assert conn.execute(select(audit_record.c.hook_instance)).scalar() == hook_instance
