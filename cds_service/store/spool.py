"""Audit records kept on local disk while the database is unreachable, replayed in order after.

A card that was answered must have its audit record (the README promises one for every card), and
a database outage must not stop cards. So when a batch cannot be written, the writer appends it
to this spool: JSON lines in files of its own, flushed and fsync'd, one file per process. When the
database answers again the records are written back oldest first, and the file goes.

Several processes share the folder (gunicorn workers, replicas on one host). Each holds an
exclusive ``flock`` on its own file for as long as it lives; a file nobody holds belongs to a
process that died (a SIGKILLed worker, a crash) and is replayed by whichever process gets its lock
first. Replaying a file twice is harmless: the store skips card uuids it already has.

Bounded: past ``max_bytes`` in the folder, :meth:`AuditSpool.append` refuses (:class:`SpoolFull`),
as it does when the disk is full; the writer then says it can no longer keep records, and the
service answers 503 rather than show a card it could not record.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import orjson

from cds_service.store.audit import AuditRecord, audit_record_from_row

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 2**20
_PREFIX, _SUFFIX = "audit-spool-", ".jsonl"


class SpoolError(Exception):
    """The spool cannot take these records (the message says why; no record content)."""


class SpoolFull(SpoolError):
    """The folder holds ``max_bytes`` already."""


class AuditSpool:
    """Append-only, per-process spool files in ``directory`` (created on first use)."""

    def __init__(self, directory: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._own: BinaryIO | None = None
        self._own_pid = 0
        self._own_records = 0
        me = weakref.ref(self)  # the fork hook cannot be unregistered: it must not keep us alive
        os.register_at_fork(after_in_child=lambda: _forget_in_child(me))

    # -- writing ---------------------------------------------------------------------------------

    def append(self, records: Sequence[AuditRecord]) -> None:
        """Add ``records`` durably (flushed and fsync'd) or raise :class:`SpoolError`."""
        data = b"".join(orjson.dumps(r.to_row()) + b"\n" for r in records)
        if self.size_bytes() + len(data) > self.max_bytes:
            raise SpoolFull(f"the audit spool holds {self.max_bytes} bytes, its limit")
        try:
            own = self._own_file()
            own.write(data)
            own.flush()
            os.fsync(own.fileno())
        except OSError as exc:  # disk full, read-only, folder gone: the class and errno only
            raise SpoolError(f"the audit spool cannot be written ({type(exc).__name__})") from None
        self._own_records += len(records)

    def close(self) -> None:
        """Release this process's file; an empty one is removed (a full one stays for replay)."""
        own, self._own = self._own, None
        if own is None or self._own_pid != os.getpid():
            return
        path = Path(own.name)
        empty = own.tell() == 0
        own.close()
        if empty:
            path.unlink(missing_ok=True)

    # -- state -----------------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes in every spool file of the folder (this process's and others')."""
        return sum(size for _, size in self._files())

    def pending(self) -> bool:
        """Whether any spool file in the folder holds records."""
        return any(size for _, size in self._files())

    # -- replay ----------------------------------------------------------------------------------

    def replay(self, write: Callable[[Sequence[AuditRecord]], None], batch_size: int) -> int:
        """Write every spooled record with ``write``, oldest file first; the records written.

        This process's file and those of dead processes are replayed; a file another live process
        holds is left to it. ``write`` raising stops the replay with the file kept (it is
        replayed whole next time: the store skips what it already has).
        """
        done = 0
        for path, size in sorted(self._files(), key=lambda f: _age(f[0])):
            if not size:
                continue
            own = self._own is not None and self._own_pid == os.getpid()
            if own and self._own is not None and Path(self._own.name) == path:
                done += self._replay_own(write, batch_size)
            else:
                done += self._replay_orphan(path, write, batch_size)
        return done

    def _replay_own(self, write: Callable[[Sequence[AuditRecord]], None], batch_size: int) -> int:
        assert self._own is not None
        path = Path(self._own.name)
        written = _write_file(path, write, batch_size)
        self._own.truncate(0)
        self._own.seek(0)
        self._own_records = 0
        return written

    def _replay_orphan(
        self, path: Path, write: Callable[[Sequence[AuditRecord]], None], batch_size: int
    ) -> int:
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # another process replayed it meanwhile
            return 0
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process owns it
                return 0
            if not path.exists():  # replayed and removed between our open and our lock
                return 0
            written = _write_file(path, write, batch_size)
            path.unlink()
            log.warning("audit spool of a stopped process replayed: %d record(s)", written)
            return written

    # -- files -----------------------------------------------------------------------------------

    def _own_file(self) -> BinaryIO:
        if self._own is None or self._own_pid != os.getpid():
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
            handle = (self.directory / name).open("ab")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live
            self._own, self._own_pid = handle, os.getpid()
        return self._own

    def _forget_own(self) -> None:
        # A forked child must not write into (or truncate) its parent's file: it opens its own.
        self._own, self._own_pid, self._own_records = None, 0, 0

    def _files(self) -> list[tuple[Path, int]]:
        try:
            entries = list(os.scandir(self.directory))
        except OSError:  # not made yet, or unusable (append then says why)
            return []
        out = []
        for entry in entries:
            if entry.name.startswith(_PREFIX) and entry.name.endswith(_SUFFIX):
                try:
                    out.append((Path(entry.path), entry.stat().st_size))
                except FileNotFoundError:
                    continue
        return out


def _forget_in_child(ref: weakref.ref[AuditSpool]) -> None:
    spool = ref()
    if spool is not None:
        spool._forget_own()


def _age(path: Path) -> tuple[float, str]:
    try:
        return path.stat().st_mtime, path.name
    except FileNotFoundError:
        return 0.0, path.name


def _write_file(path: Path, write: Callable[[Sequence[AuditRecord]], None], batch_size: int) -> int:
    """Write the file's records in batches; a torn last line (a crash mid-append) is skipped."""
    records: list[AuditRecord] = []
    torn = 0
    with path.open("rb") as handle:
        for line in handle:
            try:
                records.append(audit_record_from_row(orjson.loads(line)))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                torn += 1
    if torn:
        log.error("audit spool %s: %d unreadable line(s) skipped", path.name, torn)
    for start in range(0, len(records), batch_size):
        write(records[start : start + batch_size])
    return len(records)
