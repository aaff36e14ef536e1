"""Fixtures of the SMART app tests; test modules load them with ``pytest_plugins``.

* ``ehr_shim`` (session): the EHR shim process in front of the session's real FHIR server.
* ``shim``: the same shim, reset to its default behaviour for one test.
* ``clock``: the service's clock for one test (advance it to expire tokens).
* ``serve_smart``: builds the app with the SMART app mounted, serves it on a free loopback port,
  and registers its client id and redirect URI with the shim; keyword arguments override settings.
* ``seed``: loads one patient's resources into the FHIR server (ids made unique per patient).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from cds_service import create_app
from cds_service.smart import init_smart
from tests import fhir_builders as fb
from tests.fhir_server import FhirServerProcess
from tests.hook_calls import recent_patient
from tests.smart.served import FakeClock, Seed, ServedApp, ServeSmart, serving
from tests.smart.shim import EhrShim, running_shim

Resource = dict[str, Any]


@pytest.fixture(scope="session")
def ehr_shim(
    fhir_server: FhirServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EhrShim]:
    """The EHR shim (oauth2-mock-server + FHIR front) for the whole session."""
    with running_shim(fhir_server.base, tmp_path_factory.mktemp("ehr-shim")) as process:
        yield process


@pytest.fixture
def shim(ehr_shim: EhrShim) -> EhrShim:
    """The EHR shim with default behaviour and an empty request log."""
    ehr_shim.reset()
    return ehr_shim


@pytest.fixture
def clock() -> FakeClock:
    """The service's "now" for this test: real time until the test advances it."""
    return FakeClock()


@pytest.fixture
def serve_smart(
    shim: EhrShim, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServeSmart]:
    """``serve_smart(**settings)`` → the app served for real, its client registered with the shim.

    Defaults: a public client allowed to be launched by the shim's FHIR base, cookies without
    ``Secure`` (plain http on loopback; ``requests`` would not send a Secure cookie there), and
    development mode (http to loopback servers). Any ``create_app`` key may be overridden.
    """
    for name in list(os.environ):
        if name.startswith("SMART_"):
            monkeypatch.delenv(name)
    with ExitStack() as stack:

        def start(**overrides: Any) -> ServedApp:
            client_id = f"hfs-smart-{uuid.uuid4().hex[:8]}"

            def build(base: str) -> Any:
                config: dict[str, Any] = {
                    "TESTING": True,
                    "AUTH_REQUIRED": False,
                    "DEV_MODE": True,
                    "CLOCK": clock,
                    "SMART_CLIENT_ID": client_id,
                    "SMART_ALLOWED_ISSUERS": shim.fhir_base,
                    "SMART_REDIRECT_URL": f"{base}/smart/callback",
                    "SMART_COOKIE_SECURE": False,
                    **overrides,
                }
                app = create_app(config)
                stack.callback(app.extensions["hfs_cds"].close)
                init_smart(app, app.extensions["hfs_cds"].settings)
                stack.callback(app.extensions["hfs_cds_smart"].close)
                return app

            served = stack.enter_context(serving(build))
            settings = served.app.extensions["hfs_cds_smart"].settings
            shim.register_client(
                settings.client_id,
                [settings.redirect_url],
                secret=settings.client_secret or None,
            )
            return served

        yield start


@pytest.fixture
def seed(fhir_server: FhirServerProcess) -> Seed:
    """``seed(patient_id, resources=None, **recent_patient_kwargs)`` loads a patient; returns it.

    Without ``resources`` the patient is scorable (``recent_patient``: a 42-minute RFA 20 days ago,
    HB II the next day). Resource ids get the patient id appended, so patients never collide.
    """

    def load(patient_id: str, resources: list[Resource] | None = None, **kw: Any) -> list[Resource]:
        clinical = resources if resources is not None else recent_patient(patient=patient_id, **kw)
        for resource in clinical:
            resource["id"] = f"{resource['id']}-{patient_id}"
        everything = [fb.patient(id=patient_id), *clinical]
        fhir_server.put_all(everything)
        return everything

    return load
