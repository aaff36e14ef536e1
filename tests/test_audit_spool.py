"""The audit spool (issue 14): cards answered during a database outage keep their audit records on
local disk, written back in order, exactly once, when the database answers again."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path

import orjson
import pytest
from flask import Flask
from sqlalchemy import select, text

import tests.postgres
from cds_service.assessment import Assessor
from cds_service.store import AuditRecord, AuditWriter, Store
from cds_service.store.audit import audit_record_from_row
from cds_service.store.schema import audit_record
from cds_service.store.spool import AuditSpool, SpoolError, SpoolFull
from tests import fhir_builders as fb
from tests.hook_calls import HookCaller, recent_patient
from tests.polling import wait_until
from tests.test_store_audit import (
    AS_OF,
    assess_and_card,
    assessor,
    record_for,
    synthetic_record,
)

postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url
store = tests.postgres.store
assessor = assessor  # the module-scoped fixture, shared


class Outage:
    """A sink in front of a real one that refuses every write while ``down`` is set."""

    def __init__(self, target: Store | None = None) -> None:
        self.target = target
        self.down = threading.Event()
        self.calls = 0
        self.batches: list[list[str]] = []

    def write_audit(self, records: Sequence[AuditRecord]) -> None:
        self.calls += 1
        if self.down.is_set():
            raise ConnectionError("database unreachable")
        self.batches.append([r.card_uuid for r in records])
        if self.target is not None:
            self.target.write_audit(records)

    @property
    def written(self) -> list[str]:
        return [uuid for batch in self.batches for uuid in batch]


def records(prefix: str, n: int) -> list[AuditRecord]:
    return [synthetic_record(f"{prefix}-{i:03d}", AS_OF + timedelta(seconds=i)) for i in range(n)]


# -- the record survives the round trip through the spool's JSON --------------------------------


def test_a_scored_and_a_not_scored_record_read_back_equal(assessor: Assessor) -> None:
    scored = record_for(*assess_and_card(assessor, fb.typical_patient()), issuer="https://ehr")
    hb_iv = [
        fb.patient(),
        fb.hfs_condition(),
        fb.ablation_procedure(),
        fb.hb_observation(grade="IV"),
    ]
    not_scored = record_for(*assess_and_card(assessor, hb_iv))
    assert scored.risks and scored.inputs and not_scored.reasons and not_scored.inputs
    for record in (scored, not_scored):
        assert audit_record_from_row(orjson.loads(orjson.dumps(record.to_row()))) == record


# -- the writer ----------------------------------------------------------------------------------


def test_an_outage_spools_and_the_records_are_written_back_in_order_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Outage()
    writer = AuditWriter(sink, retry_delay=0.05, linger_seconds=0, spool=AuditSpool(tmp_path))
    caplog.set_level(logging.WARNING)
    before, during, after = records("a", 3), records("b", 40), records("c", 3)
    for r in before:
        writer.submit(r)
    assert writer.flush(10)
    sink.down.set()
    for r in during:
        writer.submit(r)
    assert writer.flush(10)
    stats = writer.stats
    assert stats.spooled == 40 and stats.spool_bytes > 0 and stats.spooling_since is not None
    assert "kept in the local spool" in caplog.text
    time.sleep(0.3)  # the writer keeps retrying the database on its own, and keeps failing
    assert writer.stats.retries >= 2 and writer.stats.spooled == 40
    sink.down.clear()
    for r in after:
        writer.submit(r)
    assert writer.flush(10)
    assert wait_until(lambda: writer.stats.spooling_since is None, 10, interval=0.01)
    writer.close()
    expected = [r.card_uuid for r in before + during + after]
    assert sink.written == expected  # every record, in the order submitted, none twice
    stats = writer.stats
    assert stats.replayed == 43 and stats.written == 46 and stats.dropped_after_retries == 0
    assert stats.spool_bytes == 0 and stats.can_keep
    assert "answers again: 43 spooled audit record(s) written" in caplog.text
    assert list(tmp_path.iterdir()) == []  # the empty spool file is removed at close


def test_the_spool_is_replayed_without_new_cards(tmp_path: Path) -> None:
    """The writer retries the database on its own: the spool empties without another submit."""
    sink = Outage()
    sink.down.set()
    writer = AuditWriter(sink, retry_delay=0.02, linger_seconds=0, spool=AuditSpool(tmp_path))
    for r in records("q", 5):
        writer.submit(r)
    assert writer.flush(10)
    sink.down.clear()
    assert wait_until(lambda: writer.stats.spooling_since is None, 10, interval=0.01)
    assert sink.written == [f"q-{i:03d}" for i in range(5)]
    writer.close()


def test_a_full_spool_says_it_cannot_keep_and_holds_the_batch_until_the_database_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Outage()
    sink.down.set()
    line = len(orjson.dumps(synthetic_record("f-000", AS_OF).to_row())) + 1
    spool = AuditSpool(tmp_path, max_bytes=2 * line + 10)  # two records fit, not three
    writer = AuditWriter(sink, retry_delay=0.01, linger_seconds=0, batch_size=1, spool=spool)
    for r in records("f", 2):
        writer.submit(r)
    assert writer.flush(10)
    assert writer.can_keep and writer.stats.spooled == 2
    writer.submit(synthetic_record("f-overflow", AS_OF))
    assert wait_until(lambda: not writer.can_keep, 10, interval=0.01)
    assert not writer.stats.can_keep and "audit spool unusable" in caplog.text
    assert not writer.flush(0.3)  # held in memory, retried: not dropped
    writer.submit(synthetic_record("f-later", AS_OF))
    sink.down.clear()
    assert writer.flush(10)
    assert wait_until(lambda: writer.stats.spooling_since is None, 10, interval=0.01)
    assert writer.can_keep and writer.stats.dropped_after_retries == 0
    assert sink.written == ["f-000", "f-001", "f-overflow", "f-later"]  # the spool's first
    writer.close()


def test_an_unwritable_spool_folder_is_a_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spool folder should be")
    with pytest.raises(SpoolError, match="cannot be written"):
        AuditSpool(blocker / "spool").append(records("x", 1))
    with pytest.raises(SpoolFull):
        AuditSpool(tmp_path / "small", max_bytes=10).append(records("y", 1))


def test_a_torn_last_line_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = AuditSpool(tmp_path)
    spool.append(records("t", 2))
    (own,) = tmp_path.iterdir()
    with own.open("ab") as handle:
        handle.write(b'{"card_uuid": "t-torn", "recorded_')  # a crash mid-append
    sink = Outage()
    assert spool.replay(sink.write_audit, batch_size=10) == 2
    assert sink.written == ["t-000", "t-001"]
    assert "1 unreadable line(s) skipped" in caplog.text
    assert not spool.pending()
    spool.close()
    assert list(tmp_path.iterdir()) == []


# -- several processes share the folder ----------------------------------------------------------


def _spool_and_die(folder: str, prefix: str, ready: object, hold: bool) -> None:
    spool = AuditSpool(Path(folder))
    spool.append(records(prefix, 4))
    ready.set()  # type: ignore[attr-defined]
    if hold:
        time.sleep(30)  # alive, holding its file's lock, until the test kills it
    os._exit(0)  # no close: the file stays, as after a SIGKILL


def _child(folder: Path, prefix: str, *, hold: bool) -> BaseProcess:
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_spool_and_die, args=(str(folder), prefix, ready, hold))
    child.start()
    assert ready.wait(20)
    return child


def test_a_dead_processs_spool_is_replayed_by_another_and_removed(tmp_path: Path) -> None:
    child = _child(tmp_path, "dead", hold=False)
    child.join(20)
    spool = AuditSpool(tmp_path)
    assert spool.pending()
    sink = Outage()
    assert spool.replay(sink.write_audit, batch_size=3) == 4
    assert sink.written == [f"dead-{i:03d}" for i in range(4)]
    assert list(tmp_path.iterdir()) == [] and not spool.pending()


def test_a_live_processs_spool_is_left_to_it(tmp_path: Path) -> None:
    child = _child(tmp_path, "live", hold=True)
    try:
        sink = Outage()
        assert AuditSpool(tmp_path).replay(sink.write_audit, batch_size=10) == 0
        assert sink.written == []
    finally:
        child.kill()
        child.join(20)
    sink = Outage()
    assert AuditSpool(tmp_path).replay(sink.write_audit, batch_size=10) == 4  # now an orphan


def test_a_new_writer_replays_what_a_killed_one_left(tmp_path: Path, store: Store) -> None:
    """A replica SIGKILLed during an outage: its successor writes the records to the database."""
    child = _child(tmp_path, "killed", hold=False)
    child.join(20)
    writer = AuditWriter(store, retry_delay=0.02, linger_seconds=0, spool=AuditSpool(tmp_path))
    writer.submit(synthetic_record("successor-1", AS_OF))
    assert writer.flush(10)
    assert wait_until(
        lambda: writer.stats.spooling_since is None and not writer.stats.spool_bytes,
        10,
        interval=0.01,
    )
    writer.close()
    with store.engine.connect() as conn:
        stored = list(conn.execute(select(audit_record.c.card_uuid)).scalars())
    assert sorted(stored) == sorted([f"killed-{i:03d}" for i in range(4)] + ["successor-1"])


def test_records_spooled_during_an_outage_reach_the_real_store_once(
    tmp_path: Path, store: Store
) -> None:
    """SQLite and PostgreSQL: a replay repeated after a lost acknowledgement writes nothing twice."""
    sink = Outage(store)
    writer = AuditWriter(sink, retry_delay=0.02, linger_seconds=0, spool=AuditSpool(tmp_path))
    sink.down.set()
    for r in records("db", 25):
        writer.submit(r)
    assert writer.flush(10)
    sink.down.clear()
    assert wait_until(lambda: writer.stats.spooling_since is None, 10, interval=0.01)
    writer.close()
    store.write_audit(records("db", 25))  # as if the same records were replayed again
    with store.engine.connect() as conn:
        stored = list(conn.execute(select(audit_record.c.card_uuid)).scalars())
    assert sorted(stored) == [f"db-{i:03d}" for i in range(25)]


# -- the service ---------------------------------------------------------------------------------


def test_cards_answered_while_the_audit_table_is_unusable_are_spooled_then_stored(
    app: Flask, hooks: HookCaller
) -> None:
    """The store answers but refuses audit rows: cards keep coming, their records wait in the
    spool (/readyz "degraded", the spool shown) and reach the table once it is back."""
    runtime = app.extensions["hfs_cds"]
    with runtime.store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_record RENAME TO audit_record_away"))
    uuids = []
    for _ in range(3):
        response = hooks.call("patient-view", recent_patient())
        assert response.status_code == 200
        uuids += [card["uuid"] for card in response.get_json()["cards"]]
    assert len(uuids) == 3
    assert runtime.audit.flush(10)
    ready = app.test_client().get("/readyz")
    spool = ready.get_json()["auditSpool"]
    assert ready.status_code == 200 and ready.get_json()["status"] == "degraded"
    assert spool["bytes"] > 0 and spool["spooledRecords"] == 3 and spool["canKeep"] is True
    assert spool["since"].endswith("+00:00")
    with runtime.store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_record_away RENAME TO audit_record"))
    assert wait_until(lambda: runtime.audit.stats.spooling_since is None, 20, interval=0.01)
    with runtime.store.engine.connect() as conn:
        stored = list(conn.execute(select(audit_record.c.card_uuid)).scalars())
    assert sorted(stored) == sorted(uuids)
    recovered = app.test_client().get("/readyz").get_json()
    assert recovered["status"] == "ready" and "auditSpool" not in recovered


@pytest.mark.parametrize(
    "app_config",
    [
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "PUBLIC_BASE_URL": "https://cds.test",
            "AUDIT_SPOOL_MAX_BYTES": 1,
        }
    ],
)
def test_when_nothing_can_record_a_card_the_service_answers_503_not_a_card(
    app: Flask, hooks: HookCaller
) -> None:
    """The store refuses audit rows and the spool is full: the card already queued is kept in
    memory and retried, new hook calls get 503 (never a card without its record), /readyz says
    not ready; when the store takes rows again, cards come back."""
    runtime = app.extensions["hfs_cds"]
    with runtime.store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_record RENAME TO audit_record_away"))
    first = hooks.call("patient-view", recent_patient())
    assert first.status_code == 200 and first.get_json()["cards"]
    assert wait_until(lambda: not runtime.audit.can_keep, 10, interval=0.01)
    refused = hooks.call("patient-view", recent_patient())
    assert refused.status_code == 503
    (issue,) = refused.get_json()["issue"]
    assert issue["code"] == "transient" and "audit trail cannot be written" in issue["diagnostics"]
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["auditSpool"]["canKeep"] is False
    with runtime.store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_record_away RENAME TO audit_record"))
    assert wait_until(lambda: runtime.audit.can_keep, 30, interval=0.01)
    assert hooks.call("patient-view", recent_patient()).status_code == 200
    assert runtime.audit.flush(10)
    with runtime.store.engine.connect() as conn:
        stored = list(conn.execute(select(audit_record.c.card_uuid)).scalars())
    assert first.get_json()["cards"][0]["uuid"] in stored and len(stored) == 2
