"""Audit records: their content for scored and not-scored calls, what never reaches them, and the
background writer that keeps them off the hook response path."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

import tests.postgres
from cds_service import __version__
from cds_service.assessment import Assessment, Assessor, Status
from cds_service.hooks.cards import CardContext, build_cards
from cds_service.model import load_model_card
from cds_service.store import AuditRecord, AuditWriter, Store, audit_record_from
from cds_service.store.audit import AuditInput, AuditReason, AuditRisk, ResourceRef
from cds_service.store.schema import audit_record, metadata
from fhir_mappings import Reason, load_value_sets
from tests import fhir_builders as fb
from tests.hook_calls import HookCaller, recent_patient

# Fixtures from tests/postgres.py (redundant once conftest.py lists it in pytest_plugins).
postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url
store = tests.postgres.store

AS_OF = datetime(2026, 5, 20, 8, 0, tzinfo=UTC)
SERVICE = "hfs-rfa-recurrence-patient-view"
TOKEN = "eyJhbGciOiJSUzM4NCJ9.eyJzdWIiOiJmYWtlLWJlYXJlci10b2tlbiJ9.c2lnbmF0dXJl"


# -- helpers shared with the other store tests ---------------------------------------------------


def synthetic_record(
    card_uuid: str,
    at: datetime,
    *,
    status: str = "scored",
    tier: str | None = "intermediate",
    model_version: str = "1.0.0",
    suggestion_ids: tuple[str, ...] = (),
) -> AuditRecord:
    """A small audit record without running the model (for store, report and crash tests)."""
    scored = status == "scored"
    return AuditRecord(
        recorded_at=at,
        service_id=SERVICE,
        hook="patient-view",
        hook_instance=f"hi-{card_uuid}",
        card_uuid=card_uuid,
        patient_id="p1",
        model_id="fei-2022-hfs-rfa-recurrence",
        model_version=model_version,
        model_sha256="0" * 64,
        status=status,
        indicator="info",
        summary="Hemifacial spasm recurrence risk after RFA: 61% by 12 months",
        tier=tier if scored else None,
        risks=(AuditRisk(12, 0.61, 0.35, 0.61),) if scored else (),
        inputs=(AuditInput("operationMinutes", 42.0, ResourceRef("Procedure", "rfa1", "1")),),
        reasons=() if scored else (AuditReason("no-hb-in-window"),),
        suggestion_ids=suggestion_ids,
    )


def all_text(store: Store) -> str:
    """Every value of every row of every table, as one string to grep."""
    parts = []
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                parts += [json.dumps(v, default=str) for v in row]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def assessor() -> Assessor:
    """The packaged model card and value sets (module-scoped: loaded once here)."""
    return Assessor(load_model_card(), load_value_sets())


def assess_and_card(
    assessor: Assessor, resources: list[dict[str, Any]]
) -> tuple[Assessment, dict[str, Any]]:
    assessment = assessor.assess(resources, as_of=AS_OF)
    (card,) = build_cards(assessment, CardContext(patient_id="p1", user_id="Practitioner/u1"))
    return assessment, card


def record_for(assessment: Assessment, card: dict[str, Any], **extra: Any) -> AuditRecord:
    return audit_record_from(
        assessment,
        card,
        service_id=SERVICE,
        hook="patient-view",
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        **extra,
    )


# -- content -------------------------------------------------------------------------------------


def test_scored_record_has_model_risks_tier_and_inputs_with_their_resources(
    assessor: Assessor,
) -> None:
    assessment, card = assess_and_card(assessor, fb.typical_patient())
    assert assessment.status is Status.SCORED
    record = record_for(assessment, card, issuer="https://ehr.example.org", tenant="t1")
    model = load_model_card()
    assert (record.card_uuid, record.service_id, record.hook) == (
        card["uuid"],
        SERVICE,
        "patient-view",
    )
    assert record.hook_instance == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert record.recorded_at == AS_OF
    assert (record.model_id, record.model_version, record.model_sha256) == (
        model.id,
        model.version,
        model.sha256,
    )
    assert (record.status, record.tier, record.indicator) == ("scored", "intermediate", "info")
    assert record.summary == card["summary"]
    assert [(r.month, r.risk) for r in record.risks] == [
        (p.month, p.risk) for p in assessment.risks
    ]
    assert [r.month for r in record.risks] == [3, 6, 12]
    assert record.conditional_risk is not None and record.conditional_risk.month == 12
    inputs = {i.name: i for i in record.inputs}
    assert inputs["operationMinutes"].value == 42.0 and inputs["operationMinutes"].coded == 1.0
    assert inputs["operationMinutes"].source == ResourceRef(
        "Procedure", "rfa1", "1", "2026-05-01T09:00:00+08:00/2026-05-01T09:42:00+08:00"
    )
    assert inputs["houseBrackmannGrade"].value == 2
    assert inputs["houseBrackmannGrade"].source == ResourceRef(
        "Observation", "hb1", "1", "2026-05-01T15:00:00+08:00"
    )
    assert inputs["procedureEnd"].value == "2026-05-01T09:42:00+08:00"
    assert record.reasons == ()
    # Every suggestion (follow-up order, RiskAssessment record) can be named in acceptedSuggestions.
    assert record.suggestion_ids == tuple(s["uuid"] for s in card["suggestions"])
    assert (record.patient_id, record.issuer, record.tenant) == (
        "p1",
        "https://ehr.example.org",
        "t1",
    )


def test_not_scored_record_has_the_reason_codes_and_the_resources_concerned(
    assessor: Assessor,
) -> None:
    resources = [
        fb.patient(),
        fb.hfs_condition(),
        fb.ablation_procedure(),
        fb.hb_observation(grade="IV"),
    ]
    assessment, card = assess_and_card(assessor, resources)
    assert assessment.status is Status.NOT_SCORED
    record = record_for(assessment, card)
    assert (record.status, record.tier, record.risks) == ("not-scored", None, ())
    assert record.indicator == card["indicator"] == "warning"
    assert record.reasons == (
        AuditReason(
            Reason.HB_OUTSIDE_MODEL.value,
            ResourceRef("Observation", "hb1", "1", "2026-05-01T15:00:00+08:00"),
        ),
    )
    names = [i.name for i in record.inputs]
    assert "operationMinutes" in names  # derived inputs are kept even when not scored
    assert record.suggestion_ids == ()


def test_missing_input_gives_a_reason_without_a_resource(assessor: Assessor) -> None:
    assessment, card = assess_and_card(
        assessor, [fb.patient(), fb.hfs_condition(), fb.ablation_procedure()]
    )
    record = record_for(assessment, card)
    assert Reason.NO_HB_IN_WINDOW.value in [r.code for r in record.reasons]


def test_a_card_without_uuid_cannot_be_audited(assessor: Assessor) -> None:
    assessment, card = assess_and_card(assessor, fb.typical_patient())
    del card["uuid"]
    with pytest.raises(ValueError, match="uuid"):
        record_for(assessment, card)


def test_overlong_identifiers_from_the_ehr_are_cut_to_the_columns(assessor: Assessor) -> None:
    assessment, card = assess_and_card(assessor, fb.typical_patient())
    record = audit_record_from(
        assessment,
        card,
        service_id=SERVICE,
        hook="patient-view",
        hook_instance="h" * 500,
        issuer="i" * 500,
    )
    assert (
        len(record.hook_instance) == 128 and record.issuer is not None and len(record.issuer) == 255
    )


def test_stored_records_round_trip(store: Store, assessor: Assessor) -> None:
    scored = record_for(*assess_and_card(assessor, fb.typical_patient()))
    not_scored = record_for(
        *assess_and_card(
            assessor, [fb.patient(), fb.ablation_procedure(), fb.hb_observation(grade="IV")]
        )
    )
    store.write_audit([scored, not_scored])
    with store.engine.connect() as conn:
        stored = {r.card_uuid: dict(r._mapping) for r in conn.execute(select(audit_record))}
    for record in (scored, not_scored):
        row = stored[record.card_uuid]
        del row["id"]
        assert row == record.to_row()


def test_a_repeated_record_is_stored_once(store: Store) -> None:
    record = synthetic_record("c1", AS_OF)
    store.write_audit([record])
    store.write_audit([record, synthetic_record("c2", AS_OF)])
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_record)).scalar() == 2


def test_no_token_free_text_or_name_reaches_any_stored_column(
    store: Store, assessor: Assessor
) -> None:
    """A bearer token and clinical free text in every place an EHR might put them; none is stored."""
    carrying: dict[str, Any] = {
        "meta": {"versionId": "1", "source": f"Bearer {TOKEN}"},
        "extension": [{"url": "https://ehr.example.org/fhir/token", "valueString": TOKEN}],
        "identifier": [{"system": "urn:ehr:notes", "value": fb.FREE_TEXT}],
    }
    resources = [
        fb.patient(**carrying),
        fb.hfs_condition(**carrying),
        fb.ablation_procedure(**carrying),
        fb.hb_observation(**carrying),
        fb.duration_observation(id="dur1", valueString=fb.FREE_TEXT),
    ]
    scored = record_for(*assess_and_card(assessor, resources), issuer="https://ehr.example.org")
    bad_hb = [*resources[:3], fb.hb_observation(grade=None, valueString=fb.FREE_TEXT, **carrying)]
    not_scored = record_for(*assess_and_card(assessor, bad_hb))
    writer = AuditWriter(store)
    writer.submit(scored)
    writer.submit(not_scored)
    assert writer.close()
    text = all_text(store)
    assert scored.card_uuid in text and not_scored.card_uuid in text
    for secret in (TOKEN, "Bearer", fb.FREE_TEXT, "eyelid", "Chen", "Wei", "1968-07-14"):
        assert secret not in text, secret


# -- the writer ----------------------------------------------------------------------------------


class GatedSink:
    """Records batches; blocks inside write_audit until ``release`` is set (if ``gate``)."""

    def __init__(self, *, gate: bool = False, failures: int = 0) -> None:
        self.batches: list[list[AuditRecord]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not gate:
            self.release.set()
        self.failures = failures

    def write_audit(self, records: Sequence[AuditRecord]) -> None:
        self.entered.set()
        self.release.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError(f"database down; {records[0].patient_id} was in the batch")
        self.batches.append(list(records))

    @property
    def written(self) -> list[str]:
        return [r.card_uuid for b in self.batches for r in b]


def test_submit_never_blocks_a_full_queue_drops_and_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = GatedSink(gate=True)
    writer = AuditWriter(sink, max_queue=5)
    assert writer.submit(synthetic_record("first", AS_OF))
    assert sink.entered.wait(10)  # the thread is now stuck writing "first"
    with caplog.at_level(logging.WARNING, logger="cds_service.store.writer"):
        accepted = [writer.submit(synthetic_record(f"r{i}", AS_OF)) for i in range(20)]
    assert accepted == [True] * 5 + [False] * 15
    stats = writer.stats
    assert (stats.submitted, stats.dropped_queue_full, stats.queued) == (6, 15, 6)
    assert "audit queue full" in caplog.text and "r6" not in caplog.text
    sink.release.set()
    assert writer.flush(10)
    assert sink.written == ["first", "r0", "r1", "r2", "r3", "r4"]
    assert writer.close()


def test_queued_records_are_written_in_batches() -> None:
    sink = GatedSink(gate=True)
    writer = AuditWriter(sink, batch_size=50)
    writer.submit(synthetic_record("first", AS_OF))
    assert sink.entered.wait(10)
    for i in range(120):
        writer.submit(synthetic_record(f"r{i}", AS_OF))
    sink.release.set()
    assert writer.flush(10)
    assert [len(b) for b in sink.batches] == [1, 50, 50, 20]
    assert writer.stats.written == 121
    writer.close()


def test_failed_batches_are_retried(caplog: pytest.LogCaptureFixture) -> None:
    sink = GatedSink(failures=2)
    writer = AuditWriter(sink, retry_delay=0)
    with caplog.at_level(logging.WARNING, logger="cds_service.store.writer"):
        writer.submit(synthetic_record("c1", AS_OF))
        assert writer.flush(10)
    assert sink.written == ["c1"]
    assert (writer.stats.retries, writer.stats.written) == (2, 1)
    assert "attempt 1 of 5" in caplog.text and "ConnectionError" in caplog.text
    assert "p1" not in caplog.text  # the exception's message (with a patient id) is not logged
    writer.close()


def test_a_batch_that_keeps_failing_is_dropped_after_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = GatedSink(failures=1000)
    writer = AuditWriter(sink, max_attempts=3, retry_delay=0)
    with caplog.at_level(logging.WARNING, logger="cds_service.store.writer"):
        writer.submit(synthetic_record("c1", AS_OF))
        assert writer.flush(10)
        writer.submit(synthetic_record("c2", AS_OF))
        assert writer.close()
    assert sink.failures == 1000 - 6
    stats = writer.stats
    assert (stats.dropped_after_retries, stats.written, stats.retries) == (2, 0, 4)
    assert "dropped after 3 attempts" in caplog.text
    assert "2 audit record(s) were dropped" in caplog.text
    assert "c1" not in caplog.text and "p1" not in caplog.text


def test_close_writes_what_is_queued_and_refuses_more() -> None:
    sink = GatedSink(gate=True)
    writer = AuditWriter(sink)
    for i in range(10):
        writer.submit(synthetic_record(f"r{i}", AS_OF))
    sink.release.set()
    assert writer.close(timeout=10)
    assert len(sink.written) == 10
    assert writer.submit(synthetic_record("late", AS_OF)) is False
    assert writer.stats.dropped_closed == 1
    assert writer.close()  # twice is harmless


def test_flush_times_out_while_the_database_hangs() -> None:
    sink = GatedSink(gate=True)
    writer = AuditWriter(sink)
    writer.submit(synthetic_record("r", AS_OF))
    assert writer.flush(timeout=0.05) is False
    sink.release.set()
    assert writer.flush(timeout=10)
    writer.close()


def test_after_a_fork_the_writer_starts_its_own_thread() -> None:
    """A pre-forking server creates the app (and writer) before forking; workers must still audit."""
    sink = GatedSink()
    writer = AuditWriter(sink)
    writer.submit(synthetic_record("parent", AS_OF))
    assert writer.flush(10)
    parent_thread = writer._thread
    pid = os.fork()
    if pid == 0:  # the child: a real fork, so the parent's writer thread does not exist here
        code = 1
        try:
            fresh = writer._thread is None and writer.stats.queued == 0
            writer.submit(synthetic_record("child", AS_OF))
            written = writer.flush(10) and sink.written == ["parent", "child"]
            code = 0 if fresh and written and writer._thread is not parent_thread else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert writer._thread is parent_thread and parent_thread is not None
    assert parent_thread.is_alive() and sink.written == ["parent"]  # the parent is untouched
    assert writer.close()


def test_invalid_writer_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        AuditWriter(GatedSink(), max_queue=0)


def test_many_threads_and_two_writers_store_each_record_once(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """16 request threads, two writers (two replicas) sharing the database, repeats included."""
    writers = [AuditWriter(store, batch_size=200), AuditWriter(store, batch_size=200)]
    threads_n, per_thread = 16, 250
    start = threading.Barrier(threads_n)

    def requests(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            record = synthetic_record(f"t{n}-{i}", AS_OF + timedelta(seconds=i))
            writers[i % 2].submit(record)
            if i % 5 == 0:  # a retried hook call answered by the other replica
                writers[(i + 1) % 2].submit(record)

    threads = [threading.Thread(target=requests, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        assert w.close(timeout=60)
    stats = [w.stats for w in writers]
    assert sum(s.dropped_queue_full + s.dropped_after_retries for s in stats) == 0
    with store.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(audit_record)).scalar()
        distinct = conn.execute(select(func.count(audit_record.c.card_uuid.distinct()))).scalar()
    assert count == distinct == threads_n * per_thread
    with capsys.disabled():
        print(
            f"\n[figures] audit writer {store.backend}: {sum(s.submitted for s in stats)} "
            f"submissions -> {count} rows, {sum(s.retries for s in stats)} retries"
        )


def test_a_hook_calls_audit_record_carries_the_software_version(app: Flask) -> None:
    """Issue 16: every record the service writes names the release that wrote it."""
    response = HookCaller(app.test_client()).call("patient-view", recent_patient())
    (card,) = response.get_json()["cards"]
    runtime = app.extensions["hfs_cds"]
    assert runtime.audit.flush(10.0)
    with runtime.store.engine.connect() as conn:
        (row,) = conn.execute(select(audit_record)).mappings()
    assert row["card_uuid"] == card["uuid"]
    assert row["software_version"] == __version__ and __version__
