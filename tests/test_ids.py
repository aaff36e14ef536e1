"""Card, suggestion and request ids: version-7 UUIDs, unique, in time order, and never shared
across a fork."""

from __future__ import annotations

import os
import time
import uuid

from cds_service.ids import new_uuid


def test_ids_are_version_7_uuids_and_unique() -> None:
    """More ids than one read of randomness serves, so the buffer refill is exercised."""
    texts = [new_uuid() for _ in range(2000)]
    ids = [uuid.UUID(t) for t in texts]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert texts == [str(i) for i in ids]  # the canonical form: lower-case hex, 8-4-4-4-12
    assert len(set(ids)) == len(ids)


def test_ids_carry_the_time_they_were_made_in_milliseconds() -> None:
    """Time-ordered, so the audit table's unique index on card ids grows at its right edge."""
    before = time.time_ns() // 1_000_000
    stamps = []
    for _ in range(5):
        stamps += [uuid.UUID(new_uuid()).int >> 80 for _ in range(300)]
        time.sleep(0.002)
    after = time.time_ns() // 1_000_000
    assert stamps == sorted(stamps)
    assert before <= stamps[0] and stamps[-1] <= after
    assert len(set(stamps)) >= 5  # the sleeps cross milliseconds


def test_a_forked_worker_never_repeats_the_parents_next_ids() -> None:
    """gunicorn forks workers after start-up: a buffer copied into the child would repeat ids."""
    new_uuid()  # the parent holds a part-used buffer
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, b"".join(uuid.UUID(new_uuid()).bytes for _ in range(10)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(child, 0)
    child_ids = {data[i : i + 16] for i in range(0, len(data), 16)}
    parent_ids = {uuid.UUID(new_uuid()).bytes for _ in range(10)}
    assert len(child_ids) == 10 and not child_ids & parent_ids
