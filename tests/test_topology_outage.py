"""Faults of the store on the real topology (issue 14, item 4): PostgreSQL stopped under load, the
database made read-only, the instance disk full.

PostgreSQL is a private throwaway cluster of this module (:func:`tests.postgres.throwaway_cluster`):
these tests stop it and make it read-only, which the session's shared ``postgres_server`` must
never see. The replicas are the image's gunicorn command behind nginx (:mod:`tests.topology`); the
disk-full test runs one replica on the embedded SQLite file, its instance folder on a small tmpfs.

What must hold in every fault: a hook call with a valid token is answered with a card or with 503
(never 401, never 500), a card that was answered has exactly one audit record once the fault is
over, feedback is answered 200 only when stored. Each test prints its figures (``pytest -s``).
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from cds_service.config import DEFAULT_DATABASE_FILE
from cds_service.store.schema import audit_record, feedback
from tests.fhir_server import free_port
from tests.polling import wait_until
from tests.postgres import INSTALL_HINT, PostgresUnavailable, ThrowawayCluster, throwaway_cluster
from tests.test_docker_gunicorn import image_environment, mounted_trust_list
from tests.topology import Call, Caller, Replica, SteadyLoad, running_topology

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc"),
]

#: How long PostgreSQL stays down (issue 14: "stopped for 20 s under load").
OUTAGE_SECONDS = 20.0
#: Spool bound of the read-only test: a handful of records (about 1.3 kB each), so it fills at once.
SMALL_SPOOL_BYTES = 8 * 1024
#: How long the read-only test gives the replicas to recover once the setting alone is undone.
SELF_RECOVERY_SECONDS = 5.0
#: Size of the disk-full test's tmpfs: the SQLite database, its WAL and the spool fit easily.
TMPFS_SIZE = "24m"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    """A PostgreSQL cluster of this module's own, which its tests stop and start."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(throwaway_cluster())
        except PostgresUnavailable as exc:
            pytest.fail(f"PostgreSQL could not start: {exc}. {INSTALL_HINT}")
        yield server


def figures(test: str, **values: object) -> None:
    """The test's measurements, on one line of the test's output."""
    print(f"\n[topology outage] {test}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def settings_for(work: Path, **extra: str) -> dict[str, str]:
    return {"CDS_TRUSTED_ISSUERS_FILE": str(work / "trusted-issuers.json"), **extra}


def audit_counts(database_url: str) -> Counter[str]:
    """How many audit records each card uuid has in the database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(audit_record.c.card_uuid, func.count()).group_by(audit_record.c.card_uuid)
            )
            return Counter({uuid: int(n) for uuid, n in rows})
    finally:
        engine.dispose()


def stored_feedback(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(feedback.c.card_uuid)).scalars())
    finally:
        engine.dispose()


def answered(calls: Sequence[Call]) -> set[str]:
    """The uuids of the cards the EHR was shown."""
    return {c.card["uuid"] for c in calls if c.status == 200 and c.card}


def wait_audited(database_url: str, cards: set[str], timeout: float = 20.0) -> Counter[str]:
    """The audit counts once every card in ``cards`` has a record (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = audit_counts(database_url)
        if cards <= set(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def wait_spools_empty(replicas: Sequence[Replica], timeout: float = 30.0) -> bool:
    """Poll each replica's ``/readyz`` until four answers in a row (so, most likely, each of its
    workers) show no ``auditSpool``: its spool folder is empty and no worker is spooling."""
    deadline = time.monotonic() + timeout
    clean = dict.fromkeys((r.name for r in replicas), 0)
    while min(clean.values()) < 4:
        if time.monotonic() > deadline:
            return False
        for replica in replicas:
            status, body = replica.readiness()
            clean[replica.name] = (
                clean[replica.name] + 1 if status and "auditSpool" not in body else 0
            )
        time.sleep(0.1)
    return True


def phases(calls: Sequence[Call], *bounds: float) -> list[list[Call]]:
    """``calls`` split by their start time at each of ``bounds`` (time.monotonic)."""
    edges = [float("-inf"), *bounds, float("inf")]
    return [[c for c in calls if lo <= c.started < hi] for lo, hi in itertools.pairwise(edges)]


def tally(calls: Sequence[Call]) -> str:
    """sent/answered-with-a-card/failed, and the failures' statuses."""
    good = sum(1 for c in calls if c.status == 200 and c.card)
    statuses = Counter(c.status for c in calls if not (c.status == 200 and c.card))
    return f"{len(calls)}/{good}/{len(calls) - good}" + (f"{dict(statuses)}" if statuses else "")


def slowest(calls: Sequence[Call]) -> str:
    """The longest a call of ``calls`` took, in seconds."""
    return f"{max((c.ended - c.started for c in calls), default=0.0):.2f}"


def diagnostics(call: Call) -> str:
    answer = call.answer if isinstance(call.answer, dict) else {}
    issues = answer.get("issue") or [{}]
    return str(issues[0].get("diagnostics", ""))


# -- PostgreSQL stopped under load --------------------------------------------------------------------


def test_postgresql_stopped_for_20_seconds_under_load(
    tmp_path: Path, cluster: ThrowawayCluster
) -> None:
    """Steady load through nginx (each call a fresh token and a patient of its own, so no card is
    silenced by earlier feedback); PostgreSQL stopped (fast) for 20 s, then started.

    Every hook call is answered with a card throughout; each replica's /readyz says "degraded"
    and shows the spool and the in-memory replay check meanwhile; feedback is answered 503 "send
    it again" while the database is away and 200 (stored) once the spools are written back, when
    every card shown has exactly one audit record."""
    signer = mounted_trust_list(tmp_path)
    with running_topology(tmp_path, settings_for(tmp_path), postgres=cluster) as topology:
        load = SteadyLoad(Caller(topology.base, signer, fresh_patients=True))
        during: list[tuple[int, dict[str, Any]]] = []
        with load.running():
            time.sleep(2.0)
            stopping = time.monotonic()
            cluster.stop()
            down = time.monotonic()
            while time.monotonic() < down + OUTAGE_SECONDS - 1.0:
                time.sleep(1.0)
                if time.monotonic() > down + 2.0:  # each worker has met the outage by now
                    during += [r.readiness() for r in topology.replicas]
            time.sleep(max(0.0, down + OUTAGE_SECONDS - time.monotonic()))
            starting = time.monotonic()  # PostgreSQL may take writes before start() returns
            cluster.start()
            up = time.monotonic()
            emptied = wait_spools_empty(topology.replicas)
            spooled_until = time.monotonic()
            time.sleep(3.0)  # feedback on cards answered after the outage, too
        shown = answered(load.hook_calls)
        counts = wait_audited(topology.database_url, shown)
        stored = stored_feedback(topology.database_url)

    before, outage, after = phases(load.hook_calls, stopping, up)
    fb_before, fb_outage, fb_recovery, fb_after = phases(load.feedback, down, up, spooled_until)
    memory = [
        b["replayCheck"] for _, b in during if b.get("replayCheck", {}).get("store") == "memory"
    ]
    acknowledged = {c.card["uuid"] for c in load.feedback if c.status == 200 and c.card}
    figures(
        "PostgreSQL stopped 20 s",
        stop_s=f"{down - stopping:.2f}",
        calls_sent_answered_failed_before=tally(before),
        during=tally(outage),
        after=tally(after),
        slowest_call_during_s=slowest(outage),
        records_expected=len(shown),
        found=len(shown & set(counts)),
        duplicated=sum(1 for n in counts.values() if n > 1),
        spool_emptied_after_s=f"{spooled_until - up:.2f}" if emptied else "never",
        readyz_during=sorted(Counter((s, b.get("status")) for s, b in during).items()),
        replay_memory_entries_seen=max((m.get("entries", 0) for m in memory), default=0),
        feedback_before=sorted(Counter(c.status for c in fb_before).items()),
        feedback_during=sorted(Counter(c.status for c in fb_outage).items()),
        feedback_while_spools_replay=sorted(Counter(c.status for c in fb_recovery).items()),
        feedback_after=sorted(Counter(c.status for c in fb_after).items()),
        feedback_200_stored=f"{len(acknowledged & stored)}/{len(acknowledged)}",
    )
    assert len(outage) > 50 and len(after) > 10  # the load really ran through the outage
    assert [c for c in load.hook_calls if not (c.status == 200 and c.card)] == []
    assert during and all(
        status == 200 and body.get("status") == "degraded" and body.get("store") == "unreachable"
        for status, body in during
    ), during
    assert all("auditSpool" in body and "replayCheck" in body for _, body in during)
    assert memory  # some worker answered /readyz while checking tokens in memory
    assert emptied
    assert shown <= set(counts)  # every card shown has its audit record
    assert all(counts[u] == 1 for u in shown)
    strictly_during = [c for c in fb_outage if c.ended < starting]
    assert strictly_during and all(c.status == 503 for c in strictly_during)
    # Never a 422 (the EHR drops it) for a card the service did show: while its record is still
    # in a spool the answer is 503 "send it again", or the feedback waits until it is written.
    refused = [c for c in load.feedback if c.status != 200]
    assert all(c.status == 503 and "send it again" in diagnostics(c) for c in refused), sorted(
        Counter((c.status, diagnostics(c)) for c in refused).items()
    )
    assert fb_after and all(c.status == 200 for c in fb_after)
    assert acknowledged <= stored  # a 200 only for feedback that is stored


# -- the database read-only -------------------------------------------------------------------------


def set_read_only(
    cluster: ThrowawayCluster, database_url: str, on: bool, *, end_sessions: bool = True
) -> int:
    """``default_transaction_read_only`` on (or reset) for the topology's database (it applies to
    sessions opened from then on), and its open sessions ended unless ``end_sessions`` is False;
    the sessions ended."""
    name = make_url(database_url).database
    engine = create_engine(cluster.admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            setting = "SET default_transaction_read_only = on" if on else "RESET ALL"
            conn.execute(text(f'ALTER DATABASE "{name}" {setting}'))
            if not end_sessions:
                return 0
            ended = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar()
            return int(ended or 0)
    finally:
        engine.dispose()


def wait_not_ready(replicas: Sequence[Replica], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll each replica's ``/readyz`` until each has answered 503 once; its first 503 body, by
    replica name (those that never did are missing)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < len(replicas) and time.monotonic() < deadline:
        for replica in replicas:
            status, body = replica.readiness()
            if status == 503 and replica.name not in seen:
                seen[replica.name] = body
        time.sleep(0.1)
    return seen


def wait_refused(load: SteadyLoad, timeout: float = 10.0) -> None:
    """Until a hook call of ``load`` has been answered 503, for the fault to be met before it is
    undone: while the audit writer cannot write, feedback waits for it, so the load slows to about
    a call a second per client (a fixed pause after /readyz turned 503 sometimes saw none)."""
    wait_until(lambda: any(c.status == 503 for c in load.hook_calls), timeout)


def test_a_read_only_database_gives_503_or_cards_then_recovers(
    tmp_path: Path, cluster: ThrowawayCluster
) -> None:
    """The database made read-only (new sessions) under load, with a small audit spool: hook calls
    are answered with a card or 503, never 401 nor 500; each replica's /readyz turns 503 once its
    spool is full; after the setting is undone cards come again and every card shown has exactly
    one audit record."""
    signer = mounted_trust_list(tmp_path)
    settings = settings_for(tmp_path, CDS_AUDIT_SPOOL_MAX_BYTES=str(SMALL_SPOOL_BYTES))
    with running_topology(tmp_path, settings, postgres=cluster) as topology:
        load = SteadyLoad(Caller(topology.base, signer, fresh_patients=True))
        with load.running():
            time.sleep(1.5)
            read_only_at = time.monotonic()
            ended = set_read_only(cluster, topology.database_url, True)
            not_ready = wait_not_ready(topology.replicas, timeout=20.0)
            not_ready_s = time.monotonic() - read_only_at
            wait_refused(load)  # each worker finds the spool full only at its next write
            undone_at = time.monotonic()
            # First the setting alone: sessions opened while it was on stay read-only, and the
            # replicas keep them in their pools. Then those sessions are ended too.
            set_read_only(cluster, topology.database_url, False, end_sessions=False)
            by_itself = wait_spools_empty(topology.replicas, timeout=SELF_RECOVERY_SECONDS)
            stuck = [r.readiness() for r in topology.replicas]
            if not by_itself:
                set_read_only(cluster, topology.database_url, False)
            emptied = wait_spools_empty(topology.replicas)
            recovered_at = time.monotonic()
            time.sleep(2.0)
        shown = answered(load.hook_calls)
        counts = wait_audited(topology.database_url, shown)
        stored = stored_feedback(topology.database_url)

    before, read_only, recovery, after = phases(
        load.hook_calls, read_only_at, undone_at, recovered_at
    )
    acknowledged = {c.card["uuid"] for c in load.feedback if c.status == 200 and c.card}
    figures(
        "read-only database",
        sessions_ended=ended,
        calls_sent_answered_failed_before=tally(before),
        read_only=tally(read_only),
        slowest_call_read_only_s=slowest(read_only),
        until_spools_empty=tally(recovery),
        after=tally(after),
        readyz_503_after_s=f"{not_ready_s:.2f}",
        readyz_503_bodies=[
            (n, b.get("status"), b.get("auditSpool", {}).get("canKeep"))
            for n, b in not_ready.items()
        ],
        recovered_without_ending_sessions=by_itself,
        readyz_5s_after_reset=[
            (status, b.get("status"), b.get("replayCheck", {}).get("store")) for status, b in stuck
        ],
        spools_empty_after_undo_s=f"{recovered_at - undone_at:.2f}" if emptied else "never",
        records_expected=len(shown),
        found=len(shown & set(counts)),
        duplicated=sum(1 for n in counts.values() if n > 1),
        feedback=sorted(Counter(c.status for c in load.feedback).items()),
        feedback_200_stored=f"{len(acknowledged & stored)}/{len(acknowledged)}",
    )
    assert ended > 0  # the replicas had sessions, which now read only
    assert all((c.status == 200 and c.card) or c.status == 503 for c in load.hook_calls)
    assert any(c.status == 503 for c in read_only)  # the spool did fill
    assert set(not_ready) == {r.name for r in topology.replicas}
    assert all(b.get("status") == "unavailable" for b in not_ready.values())
    assert emptied and len(after) > 10
    assert all(c.status == 200 and c.card for c in after)
    assert shown <= set(counts) and all(counts[u] == 1 for u in shown)
    assert acknowledged <= stored
    # Feedback on a card whose record waits in the spool of a readable database is "send it
    # again" (503), never a 422 the EHR would not resend (hooks/views.py).
    unknown = [c for c in load.feedback if c.status == 422 and c.card and c.card["uuid"] in shown]
    assert unknown == []
    # The sessions opened while the database was read-only are dropped from the pools at their
    # first refused write (store/database.py), so undoing the setting alone is enough.
    assert by_itself
    assert all(c.status in (200, 503) for c in load.feedback)


# -- the disk full (embedded SQLite) ----------------------------------------------------------------


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``where`` (needs root, or CAP_SYS_ADMIN); skips the test
    with the reason when mounting is not permitted here."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ('mount' needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(folder: Path) -> int:
    """Write a filler file in ``folder`` until its filesystem is full; the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with (folder / "filler").open("wb", buffering=0) as filler:
        while True:
            try:
                written += filler.write(chunk)
            except OSError:
                break
        with suppress(OSError):  # the last few bytes, a smaller write at a time
            while filler.write(b"\0" * 512):
                written += 512
    return written


def test_a_full_disk_under_sqlite_gives_503_or_cards_then_recovers(tmp_path: Path) -> None:
    """One replica on the embedded SQLite file, its instance folder (database, audit spool) on a
    small tmpfs, filled up by a filler file under load: hook calls are answered with a card or 503,
    never 401 nor 500, and /readyz turns 503; the filler removed, cards come again and every card
    shown has exactly one audit record."""
    signer = mounted_trust_list(tmp_path)
    with small_tmpfs(tmp_path / "disk", TMPFS_SIZE) as disk, ExitStack() as stack:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = image_environment(
            disk / "volume",
            HOST="127.0.0.1",
            PORT=str(port),
            CDS_PUBLIC_BASE_URL=base,
            **settings_for(tmp_path),
        )
        replica = Replica("sqlite", port, env, tmp_path / "replica")
        stack.callback(replica.stop)
        replica.start()
        replica.wait_ready()
        load = SteadyLoad(Caller(base, signer, fresh_patients=True))
        with load.running():
            time.sleep(1.5)
            full_at = time.monotonic()
            filled = fill(disk)
            not_ready = wait_not_ready([replica], timeout=20.0)
            not_ready_s = time.monotonic() - full_at
            wait_refused(load)
            freed_at = time.monotonic()
            (disk / "filler").unlink()
            emptied = wait_spools_empty([replica])
            recovered_at = time.monotonic()
            time.sleep(2.0)
        shown = answered(load.hook_calls)
        database_url = f"sqlite:///{disk / 'volume' / DEFAULT_DATABASE_FILE}"
        counts = wait_audited(database_url, shown)
        stored = stored_feedback(database_url)
        replica.stop()

    before, full, recovery, after = phases(load.hook_calls, full_at, freed_at, recovered_at)
    acknowledged = {c.card["uuid"] for c in load.feedback if c.status == 200 and c.card}
    figures(
        "full disk (SQLite)",
        tmpfs=TMPFS_SIZE,
        filler_bytes=filled,
        calls_sent_answered_failed_before=tally(before),
        full=tally(full),
        slowest_call_full_s=slowest(full),
        until_spool_empty=tally(recovery),
        after=tally(after),
        readyz_503_after_s=f"{not_ready_s:.2f}" if not_ready else "never",
        readyz_503_body=[(b.get("status"), b.get("auditSpool")) for b in not_ready.values()],
        spool_empty_after_freeing_s=f"{recovered_at - freed_at:.2f}" if emptied else "never",
        records_expected=len(shown),
        found=len(shown & set(counts)),
        duplicated=sum(1 for n in counts.values() if n > 1),
        feedback=sorted(Counter(c.status for c in load.feedback).items()),
        feedback_200_stored=f"{len(acknowledged & stored)}/{len(acknowledged)}",
    )
    assert all((c.status == 200 and c.card) or c.status == 503 for c in load.hook_calls)
    assert any(c.status == 503 for c in full)
    assert not_ready and all(b.get("status") == "unavailable" for b in not_ready.values())
    assert emptied and len(after) > 10
    assert all(c.status == 200 and c.card for c in after)
    assert shown <= set(counts) and all(counts[u] == 1 for u in shown)
    assert acknowledged <= stored
