"""One software version, written once (``cds_service.__version__``) and shown wherever an operator
or a clinician may need to say which build answered: ``--version``, ``/readyz``, the card."""

from __future__ import annotations

from importlib.metadata import version

from flask.testing import FlaskClient

from cds_service import __version__
from tests.hook_calls import HookCaller, recent_patient


def test_the_package_metadata_takes_the_version_from_the_code() -> None:
    assert version("hfs-cds") == __version__


def test_readyz_names_the_software_and_the_model(client: FlaskClient) -> None:
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready"
    assert body["software"] == {"name": "hfs-cds", "version": __version__}
    assert body["model"]["id"] and body["model"]["version"]


def test_the_cards_source_names_the_software_version(hooks: HookCaller) -> None:
    card = hooks.call("patient-view", recent_patient()).get_json()["cards"][0]
    assert card["source"]["label"].endswith(f"; hfs-cds {__version__}")
