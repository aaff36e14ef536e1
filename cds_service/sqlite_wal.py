"""Switching a SQLite database to WAL mode when several processes may open it at once."""

from __future__ import annotations

import sqlite3
import time


def switch_to_wal(db: sqlite3.Connection | sqlite3.Cursor, timeout_seconds: float) -> str:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock; the mode.

    The first switch of a new file needs an exclusive lock, and SQLite answers SQLITE_BUSY at
    once, without its busy handler, when several connections open the new database together
    (workers, replicas or a command running migrations at start-up).
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            row = db.execute("PRAGMA journal_mode=WAL").fetchone()
            return str(row[0]) if row else ""
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
