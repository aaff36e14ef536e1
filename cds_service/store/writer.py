"""Writes audit records off the hook response path: a bounded queue and one background thread.

The request thread calls :meth:`AuditWriter.submit`, which only puts the record on an in-memory
queue and returns at once. A daemon thread takes whatever has accumulated (up to ``batch_size``)
and writes it in one transaction, so under load the batches grow and the database sees few
commits; when idle, a record is written as soon as it arrives.

**Drop policy: when the queue is full, the record is dropped, counted and logged — submit never
blocks.** The queue only fills when the database has been unavailable or far too slow for a
while (10,000 records by default: hours of normal traffic). Blocking then would turn a database
outage into a CDS outage, every hook call stalling for the EHR's timeout, which is worse for
patients than a gap in the audit trail. Drops are visible: :attr:`AuditWriter.stats`, a warning
on the first drop and every 1,000th, and an error naming the count when the writer closes.

**With a spool** (:mod:`.spool`, the service always has one): a batch the database refuses is
appended to local disk at once, and from then on new batches join it there, so order is kept; the
writer retries the database with back-off and replays the spool, oldest first, when it answers. A
WARNING says when spooling starts and when the spool is empty again. Only when the spool cannot take
a batch either (disk full, its size limit) does the writer fall back to the in-memory retries
below, and :attr:`AuditWriter.can_keep` turns False so the web layer answers 503 instead of cards
it could not record.

Without a spool, failed batches are retried with exponential back-off, ``max_attempts`` times in
all, then dropped and logged. Inserts skip card uuids already stored, so a retry after a commit whose
acknowledgement was lost writes nothing twice. Logs name counts and exception classes only,
never a record's content or a database error message (which could quote parameter values).

Fork-aware: the thread starts on the first ``submit`` in each process, so an app created before
a pre-forking server forks still audits in every worker.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cds_service.store.audit import AuditRecord
from cds_service.store.spool import AuditSpool, SpoolError

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_LINGER_SECONDS = 0.05
DEFAULT_RETRY_DELAY = 0.5  # seconds, doubled after each failed attempt
MAX_RETRY_DELAY = 8.0
#: Longest wait between two tries of the database while records wait for it (spooled, or held
#: because the spool is full). Short, because feedback on a card whose record is still spooled is
#: refused as "not a card this service returned" once its bounded wait (1.5 s, hooks/views.py)
#: runs out, and while records are held every hook call is answered 503: both end within about a
#: second of the database's return. A failed try costs one refused connection or statement.
MAX_REPLAY_DELAY = 1.0
_DROP_LOG_EVERY = 1000


class AuditSink(Protocol):
    """Where batches go (:class:`~cds_service.store.database.Store` in production)."""

    def write_audit(self, records: Sequence[AuditRecord]) -> None: ...


@dataclass(frozen=True, slots=True)
class WriterStats:
    submitted: int  # accepted onto the queue
    written: int  # in batches that committed
    dropped_queue_full: int
    dropped_after_retries: int
    dropped_closed: int  # submitted after close()
    retries: int
    queued: int  # waiting or being written now
    spooled: int = 0  # appended to the local spool while the database was unreachable
    replayed: int = 0  # written from the spool once it answered again
    spool_bytes: int = 0  # in the spool folder now (every process's files)
    spooling_since: float | None = None  # time.time() when spooling began; None when not spooling
    can_keep: bool = True  # False while neither the database nor the spool takes records


def _reset_in_child(ref: weakref.ref[AuditWriter]) -> None:
    writer = ref()
    if writer is not None:
        writer._after_fork_in_child()


class _Stop:
    """Queue sentinel: finish what is queued, then stop."""


class AuditWriter:
    """Asynchronous, batching, bounded writer of :class:`AuditRecord` to an :class:`AuditSink`."""

    def __init__(
        self,
        sink: AuditSink,
        *,
        max_queue: int = DEFAULT_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        linger_seconds: float = DEFAULT_LINGER_SECONDS,
        spool: AuditSpool | None = None,
    ) -> None:
        if (
            max_queue < 1
            or batch_size < 1
            or max_attempts < 1
            or retry_delay < 0
            or linger_seconds < 0
        ):
            raise ValueError(
                "max_queue, batch_size, max_attempts must be positive, retry_delay >= 0"
            )
        self._sink = sink
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._linger = linger_seconds
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: queue.Queue[AuditRecord | _Stop] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._pending = 0
        self._submitted = self._written = self._retries = 0
        self._dropped_full = self._dropped_failed = self._dropped_closed = 0
        self._spool = spool
        self._spooled = self._replayed = 0
        self._spooling_since: float | None = None
        self._next_replay = 0.0  # time.monotonic() of the next attempt while spooling
        self._replay_delay = retry_delay
        self._can_keep = True
        atexit.register(self._at_exit)
        # A weak reference: the fork hook can never be unregistered and must not keep us alive.
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(me))

    # -- request side ----------------------------------------------------------------------------

    def submit(self, record: AuditRecord) -> bool:
        """Queue a record for writing; never blocks. False if it was dropped (queue full, closed)."""
        with self._lock:
            if self._closed:
                self._dropped_closed += 1
                return False
            self._ensure_thread()
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._dropped_full += 1
                dropped = self._dropped_full
            else:
                self._pending += 1
                self._submitted += 1
                return True
        if dropped == 1 or dropped % _DROP_LOG_EVERY == 0:
            log.warning(
                "audit queue full (%d records): %d audit record(s) dropped so far",
                self._max_queue,
                dropped,
            )
        return False

    # -- shutdown and tests ----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far is written or given up; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop accepting records, write what is queued, stop the thread; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            first_close = not self._closed
            self._closed = True
            thread = self._thread if self._pid == os.getpid() else None
            send_stop = first_close and thread is not None and thread.is_alive()
            if send_stop:
                self._pending += 1  # the sentinel; counted down when the thread reaches it
        atexit.unregister(self._at_exit)
        finished = True
        if send_stop:
            try:  # outside the lock: the thread needs it to drain a full queue
                self._queue.put(_Stop(), timeout=timeout)
            except queue.Full:
                finished = False
        if finished and thread is not None and thread is not threading.current_thread():
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            finished = not thread.is_alive()
        if finished and self._spool is not None:
            self._spool.close()
        stats = self.stats
        lost = stats.dropped_queue_full + stats.dropped_after_retries
        if lost:
            log.error("audit writer closed; %d audit record(s) were dropped in all", lost)
        if not finished:
            log.error("audit writer closed with %d record(s) still unwritten", stats.queued)
        return finished

    @property
    def can_keep(self) -> bool:
        """False while neither the database nor the spool takes records (a card shown now could
        not be recorded); True again once either does."""
        return self._can_keep

    @property
    def stats(self) -> WriterStats:
        spool_bytes = self._spool.size_bytes() if self._spool is not None else 0
        with self._lock:
            return WriterStats(
                submitted=self._submitted,
                written=self._written,
                dropped_queue_full=self._dropped_full,
                dropped_after_retries=self._dropped_failed,
                dropped_closed=self._dropped_closed,
                retries=self._retries,
                queued=self._pending,
                spooled=self._spooled,
                replayed=self._replayed,
                spool_bytes=spool_bytes,
                spooling_since=self._spooling_since,
                can_keep=self._can_keep,
            )

    # -- the writer thread -----------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """The parent's thread and queued records are not the child's: start afresh."""
        self._pid = os.getpid()
        self._lock = threading.Lock()  # the parent may have held it at the fork
        self._idle = threading.Condition(self._lock)
        self._queue = queue.Queue(maxsize=self._max_queue)
        self._thread = None
        self._pending = 0

    def _ensure_thread(self) -> None:
        """Start the thread on first use in this process (called with the lock held)."""
        # No os.getpid() here: a fork is seen by _after_fork_in_child, and a syscall per hook
        # call showed in the profile.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="hfs-cds-audit", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        q = self._queue
        if self._spool is not None and self._spool.pending():
            self._spooling_started()  # records left by this process's predecessor or a dead one
        while True:
            if self._spooling_since is None:
                first = q.get()
            else:  # wake up to retry the database even when no card comes
                try:
                    first = q.get(timeout=max(0.05, self._next_replay - time.monotonic()))
                except queue.Empty:
                    self._try_replay()
                    continue
            batch: list[AuditRecord] = []
            stop = isinstance(first, _Stop)
            if not stop:
                assert isinstance(first, AuditRecord)
                batch.append(first)
                # Linger so records arriving together share one transaction: one write per
                # record would cost an fsync each and hold the GIL the request threads need.
                # Sleep rather than wait on the queue: a waiting thread is woken by every put,
                # which costs each request a wake-up syscall and a GIL hand-off.
                if self._linger and q.qsize() < self._batch_size - 1:  # no wait with a backlog
                    time.sleep(self._linger)
                while len(batch) < self._batch_size:
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Stop):
                        stop = True
                        break
                    batch.append(item)
            if batch:
                self._write(batch)
            with self._idle:
                self._pending -= len(batch) + (1 if stop else 0)
                self._idle.notify_all()
            if stop:
                return

    def _write(self, batch: list[AuditRecord]) -> None:
        if self._spool is None:
            self._write_retrying(batch)
            return
        if self._spooling_since is not None and time.monotonic() >= self._next_replay:
            self._try_replay()  # first: a batch may go straight to the database only after them
        if self._spooling_since is None:
            try:
                self._sink.write_audit(batch)
            except Exception as exc:
                log.warning(
                    "audit database unreachable (%s): audit records are kept in the local spool "
                    "until it answers",
                    _kind(exc),
                )
                self._spooling_started()
            else:
                with self._lock:
                    self._written += len(batch)
                return
        try:  # behind what is spooled already: order is kept
            self._spool.append(batch)
        except SpoolError as exc:
            self._can_keep = False
            log.error("audit spool unusable: %s; the service answers 503 until it recovers", exc)
            self._write_after_spool(batch)
            return
        self._can_keep = True
        with self._lock:
            self._spooled += len(batch)

    def _write_after_spool(self, batch: list[AuditRecord]) -> None:
        """Neither the database nor the spool took ``batch``: keep it and try both, the spool's
        records first, with back-off, until one does. Meanwhile ``can_keep`` is False and the
        service shows no new card, so nothing else piles up; after ``close`` it gives up after
        ``max_attempts``."""
        assert self._spool is not None
        delay = self._retry_delay
        attempt = 0
        while True:
            attempt += 1
            self._try_replay()
            if self._spooling_since is None:
                try:
                    self._sink.write_audit(batch)
                except Exception:
                    pass
                else:
                    with self._lock:
                        self._written += len(batch)
                    self._can_keep = True
                    log.warning("audit records are written again")
                    return
            try:
                self._spool.append(batch)
            except SpoolError:
                pass
            else:
                self._spooling_started()
                with self._lock:
                    self._spooled += len(batch)
                self._can_keep = True
                log.warning("audit spool usable again")
                return
            if self._closed and attempt >= self._max_attempts:
                with self._lock:
                    self._dropped_failed += len(batch)
                log.error(
                    "audit batch of %d record(s) dropped at close: neither the database nor the "
                    "spool took it",
                    len(batch),
                )
                return
            with self._lock:
                self._retries += 1
            time.sleep(delay)
            delay = min(delay * 2, MAX_REPLAY_DELAY)

    def _spooling_started(self) -> None:
        with self._lock:
            if self._spooling_since is None:
                self._spooling_since = time.time()
        self._replay_delay = self._retry_delay
        self._next_replay = time.monotonic() + self._replay_delay

    def _try_replay(self) -> None:
        """Write the spool back if the database answers; else wait longer before the next try."""
        assert self._spool is not None
        if not self._spool.pending():  # nothing ahead of new records: the next write tells
            with self._lock:
                self._spooling_since = None
            return
        try:
            written = self._spool.replay(self._sink.write_audit, self._batch_size)
        except Exception as exc:
            with self._lock:
                self._retries += 1
            self._replay_delay = min(max(self._replay_delay * 2, 0.05), MAX_REPLAY_DELAY)
            self._next_replay = time.monotonic() + self._replay_delay
            log.debug("audit database still unreachable (%s)", _kind(exc))
            return
        with self._lock:
            self._replayed += written
            self._written += written
            since, self._spooling_since = self._spooling_since, None
        self._can_keep = True
        log.warning(
            "audit database answers again: %d spooled audit record(s) written%s",
            written,
            f" after {time.time() - since:.0f} s" if since else "",
        )

    def _write_retrying(self, batch: list[AuditRecord]) -> None:
        delay = self._retry_delay
        for attempt in range(1, self._max_attempts + 1):
            try:
                self._sink.write_audit(batch)
            except Exception as exc:  # any failure: log the class only, retry, then give up
                kind = _kind(exc)
                if attempt == self._max_attempts:
                    with self._lock:
                        self._dropped_failed += len(batch)
                    log.error(
                        "audit batch of %d record(s) dropped after %d attempts: %s",
                        len(batch),
                        attempt,
                        kind,
                    )
                    return
                with self._lock:
                    self._retries += 1
                log.warning(
                    "audit batch of %d record(s) failed (attempt %d of %d), retrying in %.1f s: %s",
                    len(batch),
                    attempt,
                    self._max_attempts,
                    delay,
                    kind,
                )
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
            else:
                with self._lock:
                    self._written += len(batch)
                self._can_keep = True
                return

    def _at_exit(self) -> None:
        self.close(timeout=5.0)


def _kind(exc: BaseException) -> str:
    """The exception's class, and its cause's: never the message (it may quote parameters)."""
    cause = exc.__cause__ or getattr(exc, "orig", None)
    return type(exc).__name__ + (f" ({type(cause).__name__})" if cause else "")
