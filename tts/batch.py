"""Batch narration and deletion: plain functions for the admin and `manage.py narrate`.

Every status transition still goes through ``tts.services``; these functions only decide
which service to call for many subjects at once, follow the sessions through the
database (the source of truth), and clean up audio that nothing uses any more.

A *subject* is any model instance with ``get_narration_text()`` (and optionally a
``voice`` attribute): a scene in this project, found through ``TTS_SCENE_MODEL``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.contrib.contenttypes.models import ContentType
from django.db import connection, models, transaction
from django.utils import timezone

from tts import db, services, synthesis
from tts.audio import wav_header
from tts.conf import settings
from tts.errors import InvalidInput, NotFound
from tts.models import ACTIVE_STATUSES, AudioBlob, SessionStatus, TTSChunk, TTSSession
from tts.validation import clean_text

logger = logging.getLogger(__name__)

# Command-line narrations belong to nobody (staff see them all) and, like staff, are
# exempt from the per-owner limits meant for browsers.
CLI_OWNER = services.Owner(is_staff=True)
UNFINISHED = (
    SessionStatus.QUEUED,
    SessionStatus.RUNNING,
    SessionStatus.FAILED,
    SessionStatus.CANCELLED,
)
RETRYABLE = (SessionStatus.FAILED, SessionStatus.CANCELLED)
_BATCH = 500  # rows per IN (...) query: well under every database's parameter limit
_HOLDER_PREFIX = "narrate@"
# How long to wait for this process's synthesis to notice a cancel (one segment's time).
THREAD_GRACE_S = 60.0


# --- Subjects -----------------------------------------------------------------------------


def scene_model() -> type[models.Model]:
    return apps.get_model(settings.TTS_SCENE_MODEL)


def scenes_of_story(slug: str) -> list[models.Model]:
    """The scenes of the story with ``slug``, in story order. NotFound if no such story."""
    story_model = scene_model()._meta.get_field("story").related_model
    story = story_model.objects.filter(slug=slug).first()
    if story is None:
        raise NotFound(f"No story with slug {slug!r}.", code="unknown_story")
    return list(scene_model().objects.filter(story=story))


def scenes_by_id(ids: Iterable[int]) -> list[models.Model]:
    """Those scenes, in the order given. NotFound names every id that does not exist."""
    wanted = list(dict.fromkeys(ids))
    found = scene_model().objects.in_bulk(wanted)
    missing = [str(pk) for pk in wanted if pk not in found]
    if missing:
        raise NotFound(f"No scene with id {', '.join(missing)}.", code="unknown_scene")
    return [found[pk] for pk in wanted]


def scenes_all() -> list[models.Model]:
    return list(scene_model().objects.all())


def subject_sessions(subject: models.Model) -> models.QuerySet[TTSSession]:
    subject_type = ContentType.objects.get_for_model(subject)
    return TTSSession.objects.filter(subject_type=subject_type, subject_id=str(subject.pk))


# --- Planning and starting ----------------------------------------------------------------


@dataclass
class Narration:
    """One subject in a batch, and what became of it."""

    subject: Any
    voice_id: str = ""
    text: str = ""
    session_id: uuid.UUID | None = None
    # new: no usable session yet; resume: an unfinished one continues after its stored
    # chunks; complete: already narrated (skipped with --missing); invalid: cannot start.
    plan: str = "new"
    total_chunks: int = 0
    stored_before: int = 0
    audio_ms_before: int = 0
    status: str = ""
    completed_chunks: int = 0
    audio_ms: int = 0
    error_code: str = ""
    error_message: str = ""
    thread: _Generator | None = field(default=None, repr=False)
    takeovers: int = 0

    @property
    def needs_work(self) -> bool:
        return self.plan in ("new", "resume")

    @property
    def ok(self) -> bool:
        return self.status == SessionStatus.COMPLETED

    def fail_before_start(self, code: str, message: str) -> None:
        self.plan, self.status = "invalid", SessionStatus.FAILED
        self.error_code, self.error_message = code, message


def narration_plan(
    *, subject: Any, voice_id: str | None, owner: services.Owner, skip_complete: bool
) -> Narration:
    """Decide, without changing anything, how ``subject`` will be narrated.

    An unfinished session of the same owner, subject, voice and text is continued
    rather than started afresh, so an interrupted batch resumes where it stopped.
    With ``skip_complete`` a completed narration of the current text (by anyone) counts
    as done.
    """
    narration = Narration(subject=subject)
    try:
        voice = services.voice_resolve(voice_id=voice_id or getattr(subject, "voice", "") or None)
        narration.text = clean_text(subject.get_narration_text())
    except InvalidInput as exc:
        narration.fail_before_start(exc.code, exc.message)
        return narration
    narration.voice_id = voice.id
    same = subject_sessions(subject).filter(voice=voice.id, text=narration.text)
    done = same.filter(status=SessionStatus.COMPLETED).first() if skip_complete else None
    unfinished = same.filter(
        status__in=UNFINISHED,
        owner_id=owner.user_id,
        owner_session_key=owner.session_key if owner.is_anonymous else "",
    ).first()
    session = done or unfinished
    if session is not None:
        narration.plan = "complete" if done else "resume"
        narration.session_id = session.id
        _snapshot(narration, session)
        narration.stored_before = services.stored_chunk_count(session_id=session.id)
        narration.audio_ms_before = session.audio_ms
    probe = session or TTSSession(text=narration.text, voice=voice.id)
    narration.total_chunks = len(synthesis.session_segments(session=probe, voice=voice))
    return narration


def narration_start(narration: Narration, *, owner: services.Owner, dispatch: bool) -> None:
    """Create the session, or make an unfinished one runnable again."""
    if not narration.needs_work:
        return
    if narration.session_id is None:
        try:
            session = services.session_create(
                text=narration.text,
                owner=owner,
                voice_id=narration.voice_id,
                subject=narration.subject,
                dispatch=dispatch,
            )
        except InvalidInput as exc:
            narration.fail_before_start(exc.code, exc.message)
            return
        narration.session_id = session.id
        _snapshot(narration, session)
        return
    session = TTSSession.objects.get(pk=narration.session_id)
    if session.status in RETRYABLE:
        # Continues after the last stored chunk; in-process runs claim it themselves.
        services.session_retry(session_id=session.id, dispatch=dispatch)
    elif session.status == SessionStatus.QUEUED and dispatch:
        services.session_dispatch(session_id=session.id)
    session.refresh_from_db()
    _snapshot(narration, session)


def scenes_narrate(
    *, subjects: Iterable[Any], owner: services.Owner, voice_id: str | None = None
) -> list[Narration]:
    """Queue narrations of ``subjects`` for the workers (the admin's action). A subject
    already narrated with its current text and voice, or already on its way, is left
    as it is; a failed or cancelled one is retried."""
    narrations = []
    for subject in subjects:
        narration = narration_plan(
            subject=subject, voice_id=voice_id, owner=owner, skip_complete=True
        )
        narration_start(narration, owner=owner, dispatch=True)
        narrations.append(narration)
    return narrations


def _snapshot(narration: Narration, session: TTSSession) -> None:
    narration.status = session.status
    narration.completed_chunks = session.completed_chunks
    narration.audio_ms = session.audio_ms
    narration.error_code, narration.error_message = session.error_code, session.error_message
    if session.total_chunks is not None:
        narration.total_chunks = session.total_chunks


# --- Holders: who is running a session, and are they still alive? ------------------------


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def holder_name() -> str:
    """This process's name as a session holder: host and pid namespace included, so that
    another narrate process can tell for sure whether it is still alive."""
    return f"{_HOLDER_PREFIX}{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}"


def _local_pid(holder: str) -> int | None:
    """The pid of a narrate process on this machine (same pid namespace), else None."""
    if not holder.startswith(_HOLDER_PREFIX):
        return None
    parts = holder[len(_HOLDER_PREFIX) :].rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or parts[1] != _pid_namespace():
        return None
    try:
        return int(parts[2])
    except ValueError:
        return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_alive(session: TTSSession, *, now: Any = None) -> bool:
    """Whether the holder of a running session still works on it: its heartbeat is
    fresh and, for a narrate process on this machine, its process exists."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.TTS_HEARTBEAT_TIMEOUT)
    if session.heartbeat_at is None or session.heartbeat_at < stale:
        return False
    pid = _local_pid(session.claimed_by)
    return pid is None or pid == os.getpid() or _pid_exists(pid)


def session_take_over(session: TTSSession) -> None:
    """Requeue a running session whose holder died, keeping its stored chunks."""
    services.session_requeue_lost(session_id=session.id, worker=session.claimed_by, dispatch=False)


# --- Running and following ----------------------------------------------------------------


class _Generator(threading.Thread):
    """Synthesizes one claimed session in this process, beside the follow loop.

    Others wait on ``finished`` rather than ``join()``: on Python 3.11 a join interrupted
    by Ctrl-C marks a live thread as stopped, and a later join returns at once.
    """

    def __init__(self, session: TTSSession, worker: str) -> None:
        super().__init__(name=f"narrate-{session.id}", daemon=True)
        self.session, self.worker = session, worker
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            services.session_generate(session=self.session, worker=self.worker)
        except Exception as exc:  # noqa: BLE001 - a crash fails the session, never the batch
            logger.exception("narration %s crashed", self.session.id)
            try:
                services.session_fail(
                    session_id=self.session.id,
                    code="crashed",
                    message=f"{type(exc).__name__}: {exc}",
                )
            except Exception:  # noqa: BLE001 - the database itself may be what broke
                logger.exception("could not record the failure of %s", self.session.id)
        finally:
            connection.close()
            self.finished.set()


@dataclass
class Progress:
    done_chunks: int
    total_chunks: int
    audio_ms: int  # made during this run
    elapsed_s: float


ProgressCallback = Callable[[Progress], None]


@dataclass
class BatchRun:
    """Runs narrations to an end: in this process (one after the other), or by the
    workers (all at once, followed through the database)."""

    narrations: list[Narration]
    in_process: bool = True
    worker: str = field(default_factory=holder_name)
    poll_s: float = 0.25
    timeout_s: float | None = None
    on_progress: ProgressCallback | None = None
    started: float = field(default_factory=time.monotonic)

    def run(self, *, owner: services.Owner) -> None:
        pending = [n for n in self.narrations if n.needs_work]
        if self.in_process:
            for narration in pending:
                narration_start(narration, owner=owner, dispatch=False)
                self.follow([narration])
        else:
            for narration in pending:
                narration_start(narration, owner=owner, dispatch=True)
            self.follow(pending)

    def follow(self, group: list[Narration]) -> None:
        deadline = None if self.timeout_s is None else self.started + self.timeout_s
        active = [n for n in group if n.session_id is not None]
        while active:
            for narration in active:
                self.advance(narration)
            active = [n for n in active if n.status in ACTIVE_STATUSES]
            self.report()
            if active and deadline is not None and time.monotonic() > deadline:
                for narration in active:
                    narration.error_code = "timeout"
                    narration.error_message = (
                        f"Still {narration.status} after {self.timeout_s:g} s; left to the workers."
                    )
                return
            self.wait(active)

    def advance(self, narration: Narration) -> None:
        """One look at a session: take it over if its holder died, claim it if it waits
        for this process, and record where it stands."""
        # Read before the row: a thread that ended while its session still shows running
        # (and is still ours) stopped early, and is not coming back.
        ours_ended = narration.thread is not None and narration.thread.finished.is_set()
        session = TTSSession.objects.get(pk=narration.session_id)
        stuck = ours_ended and session.claimed_by == self.worker
        if session.status == SessionStatus.RUNNING and (stuck or not holder_alive(session)):
            self.take_over(narration, session)
            session.refresh_from_db()
        if self.in_process and session.status == SessionStatus.QUEUED:
            claimed = services.session_claim(session_id=session.id, worker=self.worker)
            if claimed is not None:
                narration.thread = _Generator(claimed, self.worker)
                narration.thread.start()
                session = claimed
        _snapshot(narration, session)
        if session.is_final and narration.thread is not None:
            narration.thread.finished.wait(THREAD_GRACE_S)

    def take_over(self, narration: Narration, session: TTSSession) -> None:
        narration.takeovers += 1
        if narration.takeovers > settings.TTS_MAX_ATTEMPTS:
            services.session_fail(
                session_id=session.id,
                code="worker_lost",
                message=f"Its holder stopped {narration.takeovers} times.",
            )
            return
        logger.info("taking over %s from %s", session.id, session.claimed_by)
        session_take_over(session)

    def wait(self, active: list[Narration]) -> None:
        threads = [
            n.thread for n in active if n.thread is not None and not n.thread.finished.is_set()
        ]
        if threads:
            threads[0].finished.wait(self.poll_s)  # returns early when the session is done
        elif active:
            time.sleep(self.poll_s)

    def report(self) -> None:
        if self.on_progress is None:
            return
        work = [n for n in self.narrations if n.needs_work]
        self.on_progress(
            Progress(
                done_chunks=sum(n.completed_chunks for n in work),
                total_chunks=sum(n.total_chunks for n in work),
                audio_ms=sum(max(0, n.audio_ms - n.audio_ms_before) for n in work),
                elapsed_s=time.monotonic() - self.started,
            )
        )

    def interrupt(self) -> None:
        """Ctrl-C: cancel what is still going (stored chunks stay; a later run goes on
        from there) and wait briefly for this process's synthesis to notice."""
        db.drop_interrupted_connections()  # the interrupt may have cut a query short
        for narration in self.narrations:
            if narration.session_id is not None and narration.status in ACTIVE_STATUSES:
                services.session_cancel(session_id=narration.session_id)
                narration.status = SessionStatus.CANCELLED
                narration.error_code = "interrupted"
                narration.error_message = "Interrupted; run the command again to continue."
        for narration in self.narrations:
            if narration.thread is not None:
                narration.thread.finished.wait(THREAD_GRACE_S)


# --- Results and audio files --------------------------------------------------------------


def narration_stats(narration: Narration) -> dict[str, int]:
    """Chunk counts of the session: all, reused from the cache, stored during this run."""
    if narration.session_id is None:
        return {"chunks": 0, "cached_chunks": 0, "new_chunks": 0}
    chunks = TTSChunk.objects.filter(session_id=narration.session_id)
    total = chunks.count()
    return {
        "chunks": total,
        "cached_chunks": chunks.filter(cached=True).count(),
        "new_chunks": max(0, total - narration.stored_before) if narration.needs_work else 0,
    }


def _pcm_parts(session_ids: list[uuid.UUID]) -> Iterator[bytes]:
    for session_id in session_ids:
        rows = (
            TTSChunk.objects.filter(session_id=session_id)
            .order_by("seq")
            .values_list("audio__pcm", flat=True)
        )
        for pcm in rows.iterator(chunk_size=32):
            yield bytes(pcm)


def wav_write(path: Path, session_ids: list[uuid.UUID]) -> int:
    """Write the chunks of these sessions, in order, as one WAV file; the number of
    samples written. The file appears whole or not at all."""
    rows = list(
        TTSChunk.objects.filter(session_id__in=session_ids).values_list("samples", "sample_rate")
    )
    rates = {rate for _, rate in rows}
    if len(rates) > 1:
        raise InvalidInput(
            f"Cannot join audio of different sample rates {sorted(rates)}.",
            code="mixed_sample_rates",
        )
    samples = sum(count for count, _ in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with open(partial, "wb") as out:
        out.write(wav_header(samples * 2, rates.pop() if rates else 22050))
        for part in _pcm_parts(session_ids):
            out.write(part)
    os.replace(partial, path)
    return samples


# --- Deletion -----------------------------------------------------------------------------


@dataclass
class DeleteReport:
    sessions: int = 0
    chunks: int = 0
    blobs_deleted: int = 0
    blobs_kept: int = 0  # still used by chunks of other sessions


def _batches(items: list, size: int = _BATCH) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sessions_delete(*, session_ids: Iterable[uuid.UUID | str]) -> DeleteReport:
    """Delete sessions, their chunks, and the audio that no other chunk uses.

    Audio is shared between sessions (content-addressed), so a blob goes only when
    its last chunk goes. Active sessions are cancelled first so that their listeners
    hear why and their worker stops before its next chunk.
    """
    ids = list(session_ids)
    report = DeleteReport()
    for batch in _batches(ids):
        active = TTSSession.objects.filter(pk__in=batch, status__in=ACTIVE_STATUSES)
        for session_id in active.values_list("pk", flat=True):
            services.session_cancel(session_id=session_id)
    with transaction.atomic():
        keys: set[str] = set()
        for batch in _batches(ids):
            chunks = TTSChunk.objects.filter(session_id__in=batch)
            keys.update(chunks.values_list("audio_id", flat=True).distinct())
            report.chunks += chunks.delete()[0]
            report.sessions += TTSSession.objects.filter(pk__in=batch).delete()[0]
        for key_batch in _batches(sorted(keys)):
            orphans = AudioBlob.objects.filter(key__in=key_batch, chunks__isnull=True)
            report.blobs_deleted += orphans.delete()[0]
        report.blobs_kept = len(keys) - report.blobs_deleted
    return report
