"""Crash test: a writer process killed with SIGKILL mid-stream loses nothing it reported committed.

The child (this module run with ``python -m tests.test_store_crash URL RUN``) writes feedback
POSTs and audit batches as fast as it can and prints each id, flushed, only after the commit
returned. The parent reads until it has seen a given number of ids, kills the child with SIGKILL
wherever it is (often inside a transaction), then reopens the store: the schema check must pass,
SQLite must pass ``PRAGMA integrity_check``, and every reported id must be there. Rows committed
but not yet reported (killed between commit and print) are allowed and counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

import tests.postgres
from cds_service.store import Store, open_store
from cds_service.store.feedback import FeedbackEntry, Outcome
from cds_service.store.schema import audit_record, feedback

# Fixtures from tests/postgres.py (redundant once conftest.py lists it in pytest_plugins).
postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url
store = tests.postgres.store

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "hfs-rfa-recurrence-patient-view"
T0 = datetime(2026, 5, 20, 8, 0, tzinfo=UTC)
#: Ids seen before each of the three kills, and how long the child then runs on before SIGKILL
#: (so that the kill lands wherever the child happens to be: usually inside a transaction).
KILL_AFTER = ((150, 0.0), (600, 0.007), (1500, 0.013))


def _child(url: str, run: str) -> None:
    """Write until killed; print each id after its transaction committed."""
    from tests.test_store_audit import synthetic_record

    store = open_store(url)
    out = sys.stdout
    i = 0
    while True:
        if i % 4 == 3:
            records = [synthetic_record(f"{run}-a{i}-{k}", T0) for k in range(5)]
            store.write_audit(records)
            out.write("".join(f"A {r.card_uuid}\n" for r in records))
        else:
            entries = [
                FeedbackEntry(f"{run}-f{i}-{k}", Outcome.OVERRIDDEN, T0 + timedelta(seconds=i))
                for k in range(1 + i % 3)
            ]
            store.save_feedback(SERVICE, entries)
            out.write("".join(f"F {e.card}\n" for e in entries))
        out.flush()
        i += 1


def _kill_mid_stream(url: str, run: str, kill_after: int, grace: float) -> list[tuple[str, str]]:
    """Start a child, SIGKILL it after ``kill_after`` reported ids; return every id it reported."""
    seen: list[bytes] = []
    with subprocess.Popen(
        [sys.executable, "-m", "tests.test_store_crash", url, run],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        try:
            while len(seen) < kill_after:
                line = child.stdout.readline()
                if not line:
                    child.wait(30)
                    err = child.stderr.read().decode(errors="replace")
                    pytest.fail(f"the writer process ended early: {err[-800:]}")
                seen.append(line)
            time.sleep(grace)
            os.kill(child.pid, signal.SIGKILL)
            seen += child.stdout.read().splitlines(keepends=True)  # incl. lines still buffered
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(30)
    assert child.returncode == -signal.SIGKILL
    # A line cut by the kill was not reported.
    complete = [line.decode() for line in seen if line.endswith(b"\n")]
    return [tuple(line.split()) for line in complete]  # type: ignore[misc]


def test_a_killed_writer_loses_no_committed_record(
    store: Store, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = store.backend
    store.close()  # the parent holds no connection while the children write
    figures = []
    for round_no, (kill_after, grace) in enumerate(KILL_AFTER):
        run = f"r{round_no}"
        began = time.perf_counter()
        reported = _kill_mid_stream(database_url, run, kill_after, grace)
        elapsed = time.perf_counter() - began

        reopened = open_store(database_url)  # the schema check passes on the crashed store
        try:
            with reopened.engine.connect() as conn:
                if reopened.backend == "sqlite":
                    assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
                stored_f = set(
                    conn.execute(
                        select(feedback.c.card_uuid).where(feedback.c.card_uuid.like(f"{run}-%"))
                    ).scalars()
                )
                stored_a = set(
                    conn.execute(
                        select(audit_record.c.card_uuid).where(
                            audit_record.c.card_uuid.like(f"{run}-%")
                        )
                    ).scalars()
                )
        finally:
            reopened.close()
        reported_f = {card for kind, card in reported if kind == "F"}
        reported_a = {card for kind, card in reported if kind == "A"}
        assert reported_f <= stored_f, f"lost feedback: {sorted(reported_f - stored_f)[:5]}"
        assert reported_a <= stored_a, f"lost audit records: {sorted(reported_a - stored_a)[:5]}"
        unreported = len(stored_f - reported_f) + len(stored_a - reported_a)
        assert unreported <= 5  # at most the one transaction between its commit and its print
        figures.append(
            f"kill {round_no + 1}: {len(reported)} reported committed "
            f"({len(reported_f)} feedback, {len(reported_a)} audit), all found, "
            f"{unreported} committed-but-unreported, {elapsed:.2f} s"
        )
    with capsys.disabled():
        print(f"\n[figures] crash {backend}: " + "; ".join(figures))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
