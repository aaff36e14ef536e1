"""Request bodies, single-use JWTs and FHIR data for the benchmark scenarios."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cds_service.gather.queries import build_prefetch
from fhir_mappings import load_value_sets
from tests import fhir_builders as fb
from tests.fhir_server import FhirServerProcess
from tests.hook_calls import hook_body, prefetch_for, recent_patient
from tests.jwt_factory import SigningKey, claims, generate_key, jwks, mint

SERVICE_ID = "hfs-rfa-recurrence-patient-view"
ISS = "https://bench-ehr.example.org"
PATIENT = "bench-patient-1"


@dataclass
class Payloads:
    hook_path: str
    files: dict[str, Path]
    token_files: dict[str, Path]
    trust_file: Path
    fhir_queries: list[str]
    audience: str
    keys: dict[str, SigningKey]  # by algorithm

    def mint_tokens(self, count: int) -> None:
        """``count`` single-use JWTs per algorithm (the service refuses a replayed jti)."""
        now = time.time()
        for alg, key in self.keys.items():
            with self.token_files[alg.lower()].open("w") as out:
                for _ in range(count):
                    token = mint(key, claims(self.audience, ISS, now=now, lifetime=3000))
                    out.write(token + "\n")


def _typical() -> list[dict[str, Any]]:
    """1 ablation, 3 HB Observations, 1 Condition (the issue's typical prefetch).

    Sent to patient-view with every prefetch key (``followUpOrders`` an empty Bundle, so nothing
    is fetched) and never followed by feedback: S2 always answers with a card, after paying the
    suppression read on the audit store as a real chart opening does.
    """
    resources = recent_patient(patient=PATIENT)
    first = datetime.fromisoformat(resources[-1]["effectiveDateTime"])
    for i, hours in ((2, 24), (3, 48)):
        later = (first + timedelta(hours=hours)).isoformat(timespec="seconds")
        resources.append(
            fb.hb_observation(id=f"hb{i}", grade="II", effective=later, patient=PATIENT)
        )
    return resources


def _heavy() -> list[dict[str, Any]]:
    """A patient with 500 unrelated Observations and 20 Procedures besides the ablation."""
    resources = _typical()
    for i in range(500):
        resources.append(
            fb.observation(
                id=f"lab{i}",
                coding=("http://loinc.org", "2345-7", "Glucose"),
                effective="2026-01-01T08:00:00Z",
                patient=PATIENT,
            )
        )
    for i in range(20):
        resources.append(
            fb.procedure(
                id=f"other{i}",
                codings=[("http://snomed.info/sct", "80146002", "Appendectomy")],
                performed="2020-01-01",
                patient=PATIENT,
            )
        )
    return resources


def build_payloads(work: Path, fhir: FhirServerProcess, secured_base: str) -> Payloads:
    hook_path = f"/cds-services/{SERVICE_ID}"
    files = {
        "typical": work / "typical.json",
        "heavy": work / "heavy.json",
        "no_prefetch": work / "no_prefetch.json",
    }
    files["typical"].write_text(
        json.dumps(hook_body("patient-view", patient=PATIENT, prefetch=prefetch_for(_typical())))
    )
    files["heavy"].write_text(
        json.dumps(hook_body("patient-view", patient=PATIENT, prefetch=prefetch_for(_heavy())))
    )
    files["no_prefetch"].write_text(
        json.dumps(hook_body("patient-view", patient=PATIENT, prefetch={}, fhirServer=fhir.base))
    )
    seed = [fb.patient(id=PATIENT), *_typical()]
    fhir.put_all(seed)
    keys = {alg: generate_key(alg, kid=f"bench-{alg.lower()}") for alg in ("ES384", "RS384")}
    trust_file = work / "trust.json"
    trust_file.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": jwks(*keys.values())}]}))
    token_files = {alg: work / f"tokens-{alg}.txt" for alg in ("rs384", "es384")}
    queries = [
        t.replace("{{context.patientId}}", PATIENT)
        for t in build_prefetch(load_value_sets()).values()
    ]
    return Payloads(
        hook_path, files, token_files, trust_file, queries, secured_base + hook_path, keys
    )
