"""``hfs-cds fit --fhir`` against a real FHIR server (sekmet-fhir), and the search client's rules.

The integration test is the issue's "done when": synthetic patients get follow-up outcomes drawn
from the published card (recurrence Conditions, last-contact Encounters), are loaded into a real
FHIR server, ``fit --mode baseline --fhir BASE`` writes a card, and the service then scores with it.
The shared server holds other tests' patients too; ids here start with ``recal-fhir-`` and the fit
is restricted to 2023 ablations (``--since/--until``), which no other test uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from cds_service import create_app
from cds_service.cli import main
from cds_service.model import RecurrenceModel, load_model_card
from cds_service.recalibration import (
    SimulatedFollowUp,
    cohort_from_source,
    fetch_fhir_resources,
    simulate_follow_up,
)
from cds_service.recalibration.errors import SourceError
from cds_service.recalibration.simulate import transaction
from cds_service.recalibration.sources import FhirSearchClient
from fhir_mappings import load_value_sets
from tests.cds_invariants import assert_valid_cds_response
from tests.fhir_server import FhirServerProcess
from tests.hook_calls import HookCaller, recent_patient
from tests.test_fhir_client import DROP, Answer, Scripted, bundle, scripted
from tests.test_recal_cohort import AS_OF, base_patients

PREFIX = "recal-fhir-"
WINDOW = ["--since", "2023-01-01", "--until", "2023-12-31", "--as-of", AS_OF.isoformat()]
N = 60


@dataclass
class Loaded:
    server: FhirServerProcess
    follow_up: SimulatedFollowUp


@pytest.fixture(scope="module")
def loaded(fhir_server: FhirServerProcess) -> Loaded:
    """60 synthetic 2023 patients plus outcomes drawn from the published card, in the server."""
    patients = base_patients(N, seed=17, prefix=PREFIX)
    sim = simulate_follow_up(load_model_card(), patients, seed=5, as_of=AS_OF, id_prefix=PREFIX)
    resources = [r for rs in patients.values() for r in rs] + list(sim.resources)
    fhir_server.transaction(transaction(resources))
    return Loaded(fhir_server, sim)


def _table(rows: Any) -> list[tuple[Any, ...]]:
    return sorted(
        (r.patient, r.operation_minutes, r.hb_grade, round(r.time_months, 9), r.event) for r in rows
    )


@pytest.mark.integration
def test_fit_baseline_from_the_fhir_server_writes_a_card_the_service_uses(
    loaded: Loaded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "site.json"
    code = main(
        ["fit", "--mode", "baseline", "--fhir", loaded.server.base, "--out", str(out), *WINDOW]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    card = load_model_card(out)
    fit = card.fit
    assert fit["mode"] == "baseline"
    assert fit["cohort"]["patients"] == N
    assert fit["cohort"]["recurrences"] == loaded.follow_up.cohort.n_events
    assert fit["input"]["kind"] == "fhir" and fit["input"]["location"] == loaded.server.base
    assert len(fit["input"]["sha256"]) == 64
    assert fit["cohort"]["date_range"]["first_procedure"].startswith("2023-")

    app = create_app({"TESTING": True, "AUTH_REQUIRED": False, "MODEL_CARD": str(out)})
    try:
        response = HookCaller(app.test_client()).call("patient-view", recent_patient())
    finally:
        app.extensions["hfs_cds"].fhir_client.close()
    (cds_card,) = assert_valid_cds_response(response.get_json())
    ext = cds_card["extension"]["org.example.hfs-cds.assessment"]
    assert ext["model"]["sha256"] == card.sha256
    risk_12 = float(RecurrenceModel(card).predict_risk(42, 2, 12))
    assert ext["risks"][-1]["risk"] == round(risk_12, 4)
    assert f"{risk_12 * 100:.0f}% by 12 months" in cds_card["summary"]


@pytest.mark.integration
def test_the_server_gives_back_exactly_the_simulated_cohort(loaded: Loaded) -> None:
    value_sets = load_value_sets()
    data = fetch_fhir_resources(
        loaded.server.base, value_sets, since=date(2023, 1, 1), until=date(2023, 12, 31)
    )
    cohort = cohort_from_source(data, load_model_card(), value_sets, as_of=AS_OF)
    assert not cohort.excluded, cohort.report()
    assert _table(cohort.rows) == _table(loaded.follow_up.cohort.rows)
    # The checksum is over content, not the server's order: the same data, the same sum.
    again = fetch_fhir_resources(
        loaded.server.base, value_sets, since=date(2023, 1, 1), until=date(2023, 12, 31)
    )
    assert again.sha256 == data.sha256


@pytest.mark.integration
def test_small_pages_are_followed_and_the_page_bound_holds(loaded: Loaded) -> None:
    subjects = ",".join(f"Patient/{PREFIX}{i:03d}" for i in range(10))
    big = FhirSearchClient(loaded.server.base).search("Observation", [("subject", subjects)])
    small = FhirSearchClient(loaded.server.base, page_size=3)
    paged = small.search("Observation", [("subject", subjects)])
    assert sorted(r["id"] for r in paged) == sorted(r["id"] for r in big)
    assert small.requests_made >= 4  # 10 HB grades (+ any others) at 3 per page
    with pytest.raises(SourceError, match="more than 2 pages; raise --max-pages"):
        FhirSearchClient(loaded.server.base, page_size=3, max_pages=2).search(
            "Observation", [("subject", subjects)]
        )


@pytest.mark.integration
def test_validate_against_the_fhir_server(
    loaded: Loaded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published = Path(__file__).parents[1] / "cds_service/model/model_cards/fei-2022-hfs-rfa.json"
    html = tmp_path / "report.html"
    code = main(
        [
            "validate",
            "--model",
            str(published),
            "--cohort",
            loaded.server.base,
            "--html",
            str(html),
            *WINDOW,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "C-index" in captured.out and html.read_text().count("<svg") == 2


# -- the search client without a FHIR server (a scripted one, see test_fhir_client) ----------------


def FakeResponse(status_code: int, body: Any = None) -> Answer:  # noqa: N802 (the old fake's name)
    return Answer(status_code, body)


@contextmanager
def client(*answers: Answer | str) -> Iterator[tuple[FhirSearchClient, Scripted]]:
    with scripted(*answers) as session:
        search = FhirSearchClient("https://ehr.example.org/fhir", "s3cret-t0ken")
        session.route(search.client)
        yield search, session
        search.close()


def test_next_links_away_from_the_base_are_not_followed() -> None:
    away = FakeResponse(200, bundle("a", next_url="https://evil.example.com/fhir/x"))
    with client(away) as (c, session):
        with pytest.raises(SourceError, match="points away from https://ehr.example.org/fhir"):
            c.search("Procedure", [])
        assert len(session.seen) == 1


def test_the_token_goes_with_every_page_and_transient_errors_are_retried() -> None:
    with client(
        FakeResponse(503),
        FakeResponse(200, bundle("a", next_url="https://ehr.example.org/fhir/Procedure?page=2")),
        DROP,
        FakeResponse(200, bundle("b")),
    ) as (c, session):
        assert [r["id"] for r in c.search("Procedure", [("code", "x|y")])] == ["a", "b"]
        assert len(session.seen) == 4
        assert all(headers["Authorization"] == "Bearer s3cret-t0ken" for _, headers in session.seen)
        assert session.seen[0][0].startswith("https://ehr.example.org/fhir/Procedure?code=x%7Cy")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (FakeResponse(401), "HTTP 401; check --token"),
        (FakeResponse(404), "HTTP 404"),
        (FakeResponse(200), "not JSON"),
        (FakeResponse(200, {"resourceType": "OperationOutcome"}), "not a Bundle"),
    ],
)
def test_failed_searches_are_clear_errors_without_the_token(answer: Answer, message: str) -> None:
    with client(answer) as (c, _):
        with pytest.raises(SourceError, match=message) as info:
            c.search("Procedure", [])
        assert "s3cret-t0ken" not in str(info.value)


def test_retries_are_bounded() -> None:
    with client(*[DROP] * 3) as (c, session):
        with pytest.raises(SourceError, match="could not be reached \\(ConnectionError\\)"):
            c.search("Procedure", [])
        assert len(session.seen) == 3
