"""Server processes in tests and the benchmark: finding a server's workers (Linux ``/proc``),
stopping a server."""

from __future__ import annotations

import subprocess
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


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
