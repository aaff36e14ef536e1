"""Finding a server's worker processes (Linux ``/proc``), for the gunicorn tests and the benchmark."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path


def child_pids(parent: int) -> set[int]:
    """Processes whose parent is ``parent`` (from ``/proc/<pid>/stat``)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(command name)"
            if int(fields[1]) == parent:
                children.add(int(stat.parent.name))
    return children
