"""A generated corpus of bad requests (truncated JSON, wrong types everywhere, hostile strings,
huge arrays, wrong resource types, other patients' data), sent with valid EHR JWTs.

Every answer must be a documented status with a proper body; no 5xx. The outcome table is written
to ``test-artifacts/bad-input-corpus.json`` for the record.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service import create_app
from tests import fhir_builders as fb
from tests.hook_calls import SERVICE_IDS, hook_body, prefetch_for, recent_patient
from tests.jwt_factory import bearer, claims, mint, signing_key

BASE = "https://cds.example.org"
ISS = "https://ehr.example.org"
PATH = f"/cds-services/{SERVICE_IDS['patient-view']}"
DOCUMENTED = {200, 400, 404, 412, 413, 415}
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
HOSTILE = [
    "' OR 1=1; DROP TABLE audit; --",
    "<script>alert(1)</script>",
    "{{context.patientId}}",
    "../../../../etc/passwd",
    "\u0000\u0001\u0002",
    "\ud83d\ude00" * 500,
    "A" * 100_000,
    "%7C%00%0A",
    "Patient/p1/_history/1?x=`rm -rf /`",
    "\u202e\u2066evil",
    "[click](javascript:alert(1))",
]
WRONG_TYPES: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], [1, "a"], {}, {"a": {"b": []}}]

Request = tuple[str, bytes | str, str]  # (category, body, content type)


def _valid() -> dict[str, Any]:
    return hook_body("patient-view", recent_patient())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*prefix, i)
            yield from _paths(item, (*prefix, i))


def _set(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


def corpus(seed: int = 20261125) -> list[Request]:
    """At least 500 bad requests, deterministic for a seed."""
    rng = random.Random(seed)
    valid = _valid()
    text = json.dumps(valid)
    out: list[Request] = []
    for cut in sorted(rng.sample(range(1, len(text) - 1), 100)):
        out.append(("truncated-json", text[:cut], "application/json"))
    paths = list(_paths(valid))
    for path in paths:  # every field of a realistic request, two wrong types each
        for wrong in rng.sample(WRONG_TYPES, 2):
            body = _set(copy.deepcopy(valid), path, wrong)
            out.append(("wrong-type", json.dumps(body), "application/json"))
    string_paths = [p for p in paths if isinstance(_get(valid, p), str)]
    for path in rng.sample(string_paths, min(80, len(string_paths))):
        out.append(
            (
                "hostile-string",
                json.dumps(_set(copy.deepcopy(valid), path, rng.choice(HOSTILE))),
                "application/json",
            )
        )
    for field in ("hook", "hookInstance", "fhirServer"):
        for hostile in HOSTILE:
            out.append(
                ("hostile-top-level", json.dumps({**valid, field: hostile}), "application/json")
            )
    for size in (1_000, 10_000, 50_000):
        junk = {
            "resourceType": "Bundle",
            "entry": [{"resource": {"resourceType": "Observation"}}] * size,
        }
        out.append(
            (
                "huge-array",
                json.dumps({**valid, "prefetch": {**valid["prefetch"], "observations": junk}}),
                "application/json",
            )
        )
        out.append(
            (
                "huge-array",
                json.dumps({**valid, "extension": {"a": list(range(size))}}),
                "application/json",
            )
        )
    out.append(("oversized", json.dumps({**valid, "pad": "x" * 6_000_000}), "application/json"))
    out.append(("deep-nesting", "[" * 50_000 + "]" * 50_000, "application/json"))
    for key in ("procedures", "observations", "conditions"):
        for wrong in (
            fb.patient(),
            {"resourceType": "Procedure"},
            {"resourceType": 7},
            "Bundle",
            42,
            [fb.patient()],
        ):
            body = copy.deepcopy(valid)
            body["prefetch"][key] = wrong
            out.append(("wrong-resource-type", json.dumps(body), "application/json"))
    for i in range(20):
        body = copy.deepcopy(valid)
        body["prefetch"] = prefetch_for(
            recent_patient(patient=f"other-{i}", minutes=rng.choice([10, 42, 90]))
        )
        out.append(("other-patient", json.dumps(body), "application/json"))
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "",
    ):
        out.append(("content-type", text, content_type))
    for raw in (b"", b"\xff\xfe\x00", b"null", b"[]", b'"x"', b"1e999999"):
        out.append(("raw-bytes", raw, "application/json"))
    return out


def _get(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


@pytest.fixture(scope="module")
def secured_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """Authentication on, as in production; default request size limit (5 MiB)."""
    trust = tmp_path_factory.mktemp("trust") / "trust.json"
    trust.write_text(
        json.dumps(
            {
                "issuers": [
                    {"iss": ISS, "jwks": {"keys": [signing_key("ES384", "corpus").public_jwk()]}}
                ]
            }
        )
    )
    app = create_app({"TESTING": True, "TRUSTED_ISSUERS_FILE": str(trust), "PUBLIC_BASE_URL": BASE})
    yield app
    app.extensions["hfs_cds"].close()


def test_bad_input_corpus_gets_only_documented_answers(secured_app: Flask) -> None:
    client = secured_app.test_client()
    requests = corpus()
    assert len(requests) >= 500
    outcomes: Counter[tuple[str, int]] = Counter()
    for category, body, content_type in requests:
        token = mint(signing_key("ES384", "corpus"), claims(BASE + PATH, ISS, now=time.time()))
        headers = {"Authorization": bearer(token)}
        if content_type:
            headers["Content-Type"] = content_type
        response = client.post(PATH, data=body, headers=headers)
        outcomes[(category, response.status_code)] += 1
        assert response.status_code in DOCUMENTED, (
            category,
            response.status_code,
            response.get_data()[:300],
        )
        payload: Any = response.get_json(silent=True)
        if category == "other-patient":
            assert payload == {"cards": []}, "another patient's data must never be scored"
        elif response.status_code == 200:
            assert isinstance(payload, dict) and isinstance(payload["cards"], list)
        else:
            assert payload["resourceType"] == "OperationOutcome", category
    ARTIFACTS.mkdir(exist_ok=True)
    table = [{"category": c, "status": s, "count": n} for (c, s), n in sorted(outcomes.items())]
    (ARTIFACTS / "bad-input-corpus.json").write_text(
        json.dumps({"requests": len(requests), "outcomes": table}, indent=1)
    )
    assert not any(status >= 500 for _, status in outcomes)
