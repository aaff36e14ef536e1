"""Request bodies, single-use JWTs and FHIR data for the benchmark scenarios."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.hooks.services import build_prefetch
from fhir_mappings import load_value_sets
from tests import fhir_builders as fb
from tests.fhir_server import FhirServerProcess
from tests.hook_calls import hook_body, prefetch_for, recent_patient

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
    private_keys: dict[str, Any]

    def mint_tokens(self, count: int) -> None:
        """``count`` single-use JWTs per algorithm (the service refuses a replayed jti)."""
        now = int(time.time())
        for alg, key in self.private_keys.items():
            path = self.token_files[alg.lower()]
            headers = {"kid": f"bench-{alg.lower()}"}
            with path.open("w") as out:
                for _ in range(count):
                    claims = {
                        "iss": ISS,
                        "aud": self.audience,
                        "iat": now,
                        "exp": now + 3000,
                        "jti": str(uuid.uuid4()),
                    }
                    out.write(jwt.encode(claims, key, algorithm=alg, headers=headers) + "\n")


def _typical() -> list[dict[str, Any]]:
    """1 ablation, 3 HB Observations, 1 Condition (the issue's typical prefetch)."""
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


def _keys() -> tuple[dict[str, Any], dict[str, Any]]:
    """One ES384 and one RS384 key: (public JWKS, private keys by algorithm)."""
    es = ec.generate_private_key(ec.SECP384R1())
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = [
        ECAlgorithm.to_jwk(es.public_key(), as_dict=True),
        RSAAlgorithm.to_jwk(rs.public_key(), as_dict=True),
    ]
    for jwk, alg in zip(public, ("ES384", "RS384"), strict=True):
        jwk.update({"kid": f"bench-{alg.lower()}", "alg": alg, "use": "sig"})
    return {"keys": public}, {"ES384": es, "RS384": rs}


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
    public, private = _keys()
    trust_file = work / "trust.json"
    trust_file.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": public}]}))
    token_files = {alg: work / f"tokens-{alg}.txt" for alg in ("rs384", "es384")}
    queries = [
        t.replace("{{context.patientId}}", PATIENT)
        for t in build_prefetch(load_value_sets()).values()
    ]
    return Payloads(
        hook_path, files, token_files, trust_file, queries, secured_base + hook_path, private
    )
