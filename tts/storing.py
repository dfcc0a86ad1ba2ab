"""Storing a session's chunks: in order, in batches, on a writer thread of its own.

chunks_store writes chunks and advances their session in one transaction, only while
the worker still holds it; OrderedWriter runs a session's stores on a lent thread while
its engine makes the next chunks (tts.generation).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import F, FloatField
from django.db.models.functions import Cast, NullIf
from django.utils import timezone

from tts import compiled
from tts.compiled import Compiled
from tts.db import mark_checkpointing
from tts.models import AudioBlob, SessionStatus, TTSChunk, TTSSession
from tts.segmentation import Segment
from tts.synthesis import SegmentAudio
from tts.threads import DaemonThread, LentThreads

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _release_thread_connections() -> None:
    """On a store thread, before and after a session's stores: keep its connections
    where this process keeps connections (``CONN_MAX_AGE``: a worker's, see runworker),
    as Django does between two requests; close (or give back to the pool) those that
    are obsolete, broken, or not to be kept (``CONN_MAX_AGE`` 0: tests, the narrate
    command), as before."""
    try:
        close_old_connections()
    except Exception:  # noqa: BLE001 - the next query opens a fresh one, or fails there
        logger.warning("closing a store thread's connection failed", exc_info=True)


def _store_thread() -> DaemonThread:
    thread = DaemonThread("tts-store")
    thread.submit(mark_checkpointing)  # its SQLite log copies are off the way to first audio
    return thread


# The threads sessions' writers (OrderedWriter) run on, lent to one session at a time
# and kept for the next, with their database connection. A session used to start a
# thread for its stores and open a connection on it (on SQLite also registering Django's
# SQL functions: 0.7 ms idle, two to three times that on two busy cores), right when its
# first chunk was on its way to the listeners, and close both at its end. As many are
# made as sessions ever ran at once in this process (TTS_WORKER_SESSIONS for a worker);
# daemon threads, as the writers' own threads were.
_store_threads: LentThreads[DaemonThread] = LentThreads(_store_thread)


def warm_store_thread() -> None:
    """Make a store thread and open its connections now, not on a session's first store
    (``tts.warmup``)."""
    from tts.warmup import open_connections

    thread = _store_threads.take()
    if thread is None:
        return

    def warm() -> None:
        open_connections()
        _release_thread_connections()  # kept as after a session's stores

    try:
        thread.submit(warm).result(timeout=30)
    finally:
        _store_threads.give_back(thread)


@dataclass(frozen=True)
class Unstored:
    """A chunk on its way to storage; ``meta``: its event, when not yet sent."""

    row: TTSChunk
    audio: SegmentAudio
    meta: dict | None


def keep_unstored(chunk: Unstored) -> None:
    """A chunk that will not be stored: its audio is still kept for the cache."""
    if not chunk.audio.cached:
        blob_create(chunk.audio.key, chunk.audio)


class OrderedWriter(Generic[T]):
    """One background thread that hands the items submitted to ``store`` in order, all
    those that queued up while it was busy at once (a batch: several chunks in one
    transaction, when the database is slower than the engine). Once a batch fails
    (``store`` returns False or raises), ``skipped`` is called for each item after it
    instead, and for those of a batch that raised (its transaction was rolled back):
    nothing is stored after a chunk that was not. At most MAX_QUEUED items are on their
    way; submit blocks beyond that."""

    # Enough for the engine never to wait for a SQLite checkpoint (10-20 ms on the writer's
    # thread, about once per 4 MB written) at espeak's pace of a chunk every few
    # milliseconds; 4 held it up about once a session (P59). A chunk holds its PCM here
    # until stored: at most 16 chunks' worth per session (about 3 MB at espeak's).
    MAX_QUEUED = 16

    def __init__(
        self,
        store: Callable[[list[T]], bool],
        *,
        skipped: Callable[[T], None] | None = None,
    ) -> None:
        self._store, self._skipped = store, skipped
        self._changed = threading.Condition()
        self._queued: deque[T] = deque()
        self._running = 0  # items in the batch being stored
        self._failed = False
        self._error: BaseException | None = None  # raised once, on the caller's thread
        self._closing = False
        self._thread: DaemonThread | None = None  # lent with the first item
        self._ran: Future[None] | None = None

    def _run(self) -> None:
        # A kept connection past its age, or broken by an error, is closed first; one the
        # server dropped meanwhile fails Django's health check at its first query.
        _release_thread_connections()
        try:
            while batch := self._next_batch():
                error = None
                try:
                    done = not self._failed and self._store(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    done, error = False, exc
                if not done:
                    self._skip(batch if error is not None or self._failed else [])
                with self._changed:
                    self._failed = self._failed or not done
                    self._error = self._error or error
                    self._running = 0
                    self._changed.notify_all()
        finally:
            _release_thread_connections()

    def _next_batch(self) -> list[T]:
        with self._changed:
            while not self._queued and not self._closing:
                self._changed.wait()
            batch = list(self._queued)
            self._queued.clear()
            self._running = len(batch)
            return batch

    def _skip(self, items: list[T]) -> None:
        if self._skipped is None:
            return
        for item in items:
            try:
                self._skipped(item)
            except Exception:  # noqa: BLE001 - the failure before it is what matters
                logger.warning("a skipped item's clean-up failed", exc_info=True)

    def submit(self, item: T) -> None:
        if self._thread is None:
            thread = _store_threads.take()  # never None: no limit
            assert thread is not None
            ran = thread.submit(self._run)  # back to the pool once _run has returned:
            ran.add_done_callback(lambda _: _store_threads.give_back(thread))
            self._thread, self._ran = thread, ran
        with self._changed:
            self._queued.append(item)
            self._changed.notify_all()
            while len(self._queued) + self._running > self.MAX_QUEUED and not self._failed:
                self._changed.wait()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def healthy(self) -> bool:
        """False once a batch has failed; a failed batch's exception is raised (after the
        items queued behind it were skipped)."""
        if self._failed:
            self.wait()
            return False
        return True

    def idle(self) -> bool:
        """Every item so far is stored."""
        with self._changed:
            return not self._queued and not self._running and not self._failed

    def wait(self) -> bool:
        """Wait for every item submitted: True when all of them were stored (else False,
        or the failed batch's exception)."""
        with self._changed:
            while self._queued or self._running:
                self._changed.wait()
            self._raise_error()
            return not self._failed

    def __enter__(self) -> OrderedWriter[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Queued items are stored first, even after an interrupt; then the thread goes
        # back for the next session, its connection kept or closed as this process keeps
        # connections (_release_thread_connections).
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        # Waits for _run; the store's own errors are caught there, for the caller.
        if self._ran is not None and (error := self._ran.exception()) is not None:
            logger.error("a store thread failed", exc_info=error)


def chunk_store(
    *,
    session: TTSSession,
    chunk: TTSChunk,
    audio: SegmentAudio,
    worker: str,
    total_chunks: int | None = None,
) -> bool:
    """Store one chunk: chunks_store with one."""
    return chunks_store(
        session=session, chunks=[(chunk, audio)], worker=worker, total_chunks=total_chunks
    )


def chunks_store(
    *,
    session: TTSSession,
    chunks: list[tuple[TTSChunk, SegmentAudio]],
    worker: str,
    total_chunks: int | None = None,
    complete_key: str | None = None,
) -> bool:
    """Store chunks that follow each other (their rows from chunk_row, and their audio when
    new) and advance the session, in one transaction, only while this worker still holds
    the session. False when it does not (cancelled, taken over) or a chunk exists
    already: a seq is never stored twice. ``complete_key``: the last chunks, so the
    session is completed in the same transaction (session_complete's work, without its
    own trip to the database), keyed by it."""
    first, last = chunks[0][0], chunks[-1][0]
    values: dict[str, Any] = {
        "session_id": session.id,
        "worker": worker,
        "completed": last.seq + 1,
        "now": timezone.now(),
        "engine_ms": sum(audio.engine_ms for _, audio in chunks),
        "audio_ms": sum(chunk.duration_ms for chunk, _ in chunks),
    }
    if total_chunks is not None:
        values["total"] = total_chunks
    if complete_key is not None:
        values["key"] = complete_key
    if first.seq == 0:
        values["first_ms"] = max(
            0, round((first.created_at - session.created_at).total_seconds() * 1000)
        )
    advance = _advance(frozenset(values.keys() & _SET_AS_GIVEN.keys()))
    try:
        with transaction.atomic():
            landed: dict[str, str] = {}  # a key whose audio went under a key of its own
            for chunk, audio in chunks:  # kept even when the chunks are not: nothing made twice
                if not audio.cached:
                    chunk.audio_id = landed[audio.key] = _blob_store(audio)
                else:  # the same audio as a chunk before it in this batch, maybe
                    chunk.audio_id = landed.get(chunk.audio_id, chunk.audio_id)
            if not advance.run(**values):  # no longer this worker's to store
                return False
            compiled.insert([chunk for chunk, _ in chunks])
    except IntegrityError:  # a chunk exists already
        return False
    return True


# chunks_store's values that only some stores set, and the session's column each goes into.
_SET_AS_GIVEN = {"total": "total_chunks", "key": "narration_key", "first_ms": "first_chunk_ms"}


@functools.cache
def _advance(given: frozenset[str]) -> Compiled:
    """chunks_store's update of its session, while this worker holds it: one statement,
    compiled once (P58), for each kind of store, by which of _SET_AS_GIVEN it sets: the
    first chunks (the session's count of chunks, and the time to the first), the last (the
    session completed, under its narration key), any other."""
    field = TTSSession._meta.get_field
    fields = {
        "session_id": TTSSession._meta.pk,
        "worker": field("claimed_by"),
        "completed": field("completed_chunks"),
        "now": field("heartbeat_at"),
        "engine_ms": field("engine_ms"),
        "audio_ms": field("audio_ms"),
        **{name: field(_SET_AS_GIVEN[name]) for name in given},
    }

    def build(*, session_id, worker, completed, now, engine_ms, audio_ms, **more):
        updates: dict[str, Any] = {
            "completed_chunks": completed,
            "heartbeat_at": now,
            "engine_ms": F("engine_ms") + engine_ms,
            "audio_ms": F("audio_ms") + audio_ms,
            **{_SET_AS_GIVEN[name]: value for name, value in more.items()},
        }
        if "key" in more:  # completed; every expression reads the row as it was
            updates |= {
                "status": SessionStatus.COMPLETED,
                "finished_at": now,
                "real_time_factor": Cast(F("engine_ms") + engine_ms, FloatField())
                / NullIf(F("audio_ms") + audio_ms, 0),
            }
        held = TTSSession.objects.filter(
            pk=session_id, status=SessionStatus.RUNNING, claimed_by=worker
        )
        return held, updates

    return Compiled.update(build, **fields)


def _blob_store(audio: SegmentAudio) -> str:
    """Store the audio under its key; return the key it now lies under.

    Another worker may have stored the same key meanwhile (the same segment, narrated at
    the same moment). Engines need not make the same bytes twice (a VITS samples noise;
    libespeak-ng carries a little state from one utterance to the next), and listeners
    already have these bytes: so unless the stored ones are the same, these go under a
    key of their own (the key and their digest), which their chunk refers to. The key's
    blob stays what the cache serves."""
    if blob_create(audio.key, audio):
        return audio.key
    stored = AudioBlob.objects.filter(key=audio.key).values_list("pcm", flat=True).first()
    if stored is not None and bytes(stored) == audio.pcm:
        return audio.key
    own = hashlib.sha256(f"{audio.key}:{hashlib.sha256(audio.pcm).hexdigest()}".encode())
    blob_create(own.hexdigest(), audio)
    return own.hexdigest()


def blob_create(key: str, audio: SegmentAudio) -> bool:
    """False when the key is stored already (another worker may store the same key)."""
    return AudioBlob.objects.add(
        key=key, pcm=audio.pcm, sample_rate=audio.sample_rate, samples=audio.samples
    )


def chunk_row(session_id: uuid.UUID, seq: int, segment: Segment, audio: SegmentAudio) -> TTSChunk:
    """The chunk's row, not yet saved; its created_at is now, when it was made."""
    return TTSChunk(
        session_id=session_id,
        seq=seq,
        text=segment.text,
        char_start=segment.char_start,
        char_end=segment.char_end,
        samples=audio.samples,
        sample_rate=audio.sample_rate,
        audio_id=audio.key,
        cached=audio.cached,
        engine_ms=audio.engine_ms,
    )
